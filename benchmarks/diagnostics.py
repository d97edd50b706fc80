"""Timing of the diagnostics on a synthetic catalogue: ``python benchmarks/diagnostics.py``.

Synthetic clustered embeddings (1000 Gaussian blobs), ``RQKMeans`` with 3 x 256 codes
fitted on a 100k sample, then: code-only ``diagnose``, full ``diagnose`` (Monte Carlo
on ``--n-mc`` items) and optionally the Monte Carlo on every item (``--full-mc``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--n-mc", type=int, default=100_000)
    ap.add_argument("--full-mc", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from sidkit.diagnostics import diagnose, perturbation_overlap
    from sidkit.tokenizers import RQKMeans

    g = np.random.default_rng(a.seed)
    centers = g.normal(size=(1000, a.d)).astype(np.float32)
    X = centers[g.integers(0, 1000, a.n)] + 0.3 * g.standard_normal((a.n, a.d), dtype=np.float32)
    out: dict = {"n": a.n, "d": a.d, "machine": platform.processor() or platform.machine()}
    t = time.perf_counter()
    tok = RQKMeans(codebook_sizes=(256, 256, 256), n_iter=10, device="cpu",
                   random_state=a.seed).fit(X[: min(a.n, 100_000)])
    out["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    codes = tok.encode(X)
    out["encode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    diagnose(codes, monte_carlo=False)
    out["diagnose_codes_only_s"] = time.perf_counter() - t
    t = time.perf_counter()
    res = diagnose(codes, X, tok, n_mc=a.n_mc, random_state=a.seed)
    out["diagnose_full_s"] = time.perf_counter() - t
    out["diagnose_full_sections_s"] = res["timing_s"]
    if a.full_mc:
        t = time.perf_counter()
        perturbation_overlap(tok, X, n_sample=None, random_state=a.seed)
        out["monte_carlo_all_items_s"] = time.perf_counter() - t
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
