"""Encode speed: VQ / RQ-KMeans ``encode`` vs a bare matrix product and faiss (SPEC 8).

Usage::

    python benchmarks/encode.py --quick          # 200k x 384
    python benchmarks/encode.py                  # 1M x 384 (the SPEC size)
    python benchmarks/encode.py --src /path/to/old/src --tag _before   # another sidkit

SPEC 8: "Encode: within 1.5x of a bare matrix product of the same shapes".  In ONE
run, on synthetic clustered float32 data ``N x d`` (``--n``, ``--dim``):

* ``vq``: ``VQ(K, resolve_collisions=False).encode(X)`` (one level);
* ``rqkmeans``: ``RQKMeans(codebook_sizes=[K]*L, resolve_collisions=False).encode(X)``;
* ``mm``: the bare ``torch.mm(X, C_l^T)`` into a preallocated ``(N, K)`` output, once
  per level (same threads) -- the reference of the SPEC ratio;
* ``faiss``: ``IndexFlatL2(d).search(X, k=1)`` once per level (no residual update,
  so it is a lower bound for a faiss RQ encode).

The tokenizers are fitted first (on at most ``--fit-n`` rows, ``--iters`` Lloyd
iterations; not timed).  Every entry is timed ``--repeat`` times, interleaved, and the
fastest run is kept (all runs are in the JSON).  A SHA-1 of the codes is recorded so
that runs before/after an optimisation can be checked to produce the same codes.
Writes ``benchmarks/results/encode.json`` and ``encode.md`` with the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import clustered, peak_rss_mb
from _common import machine as _machine

os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return _machine("faiss")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="N = 200k")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--fit-n", type=int, default=100_000, help="rows used to fit (not timed)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the result files (encode<tag>.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"),
                    help="sidkit source tree to import (e.g. an older checkout, for before/after)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 200_000

    import torch

    sys.path.insert(0, args.src)
    from sidkit.tokenizers import VQ, RQKMeans

    n, d, k, L = args.n, args.dim, args.k, args.levels
    X = clustered(n, d, seed=args.seed)
    fit_X = X[: min(n, args.fit_n)]
    rq = RQKMeans(codebook_sizes=[k] * L, n_iter=args.iters, resolve_collisions=False,
                  random_state=args.seed, device="cpu").fit(fit_X)
    vq = VQ(k, n_iter=args.iters, resolve_collisions=False, random_state=args.seed,
            device="cpu").fit(fit_X)
    books = [np.ascontiguousarray(rq.codebooks_[l, :k]) for l in range(L)]

    Xt = torch.from_numpy(X)
    out = torch.empty((n, k), dtype=torch.float32)
    Cts = [torch.from_numpy(C).t() for C in books]

    def bare_mm(levels: int) -> None:
        with torch.no_grad():
            for l in range(levels):
                torch.mm(Xt, Cts[l], out=out)

    index = None
    if not args.no_faiss:
        try:
            import faiss
        except ImportError:  # pragma: no cover
            faiss = None
        if faiss is not None:
            indexes = []
            for C in books:
                ix = faiss.IndexFlatL2(d)
                ix.add(C)
                indexes.append(ix)
            index = indexes

    def faiss_search(levels: int) -> None:
        for l in range(levels):
            index[l].search(X, 1)

    codes: dict[str, str] = {}

    def enc(name, tok):
        def f():
            c = tok.encode(X).codes
            codes[name] = hashlib.sha1(np.ascontiguousarray(c).tobytes()).hexdigest()
        return f

    entries = {
        "vq": enc("vq", vq),
        "mm_1": lambda: bare_mm(1),
        "rqkmeans": enc("rqkmeans", rq),
        f"mm_{L}": lambda: bare_mm(L),
    }
    if index is not None:
        entries["faiss_1"] = lambda: faiss_search(1)
        entries[f"faiss_{L}"] = lambda: faiss_search(L)
    bare_mm(1)  # warm-up: page in the output buffer, load the BLAS kernels
    times: dict[str, list[float]] = {name: [] for name in entries}
    for _ in range(args.repeat):
        for name, f in entries.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    best = {name: min(v) for name, v in times.items()}
    ratios = {
        "vq / mm (1 level)": best["vq"] / best["mm_1"],
        f"rqkmeans / mm ({L} levels)": best["rqkmeans"] / best[f"mm_{L}"],
    }
    if index is not None:
        ratios["faiss flat search / mm (1 level)"] = best["faiss_1"] / best["mm_1"]
        ratios["vq / faiss flat search"] = best["vq"] / best["faiss_1"]
        ratios[f"rqkmeans / faiss flat search x{L}"] = best["rqkmeans"] / best[f"faiss_{L}"]
    gflops = 2.0 * n * d * k / best["mm_1"] / 1e9
    result = {
        "benchmark": "encode", "n": n, "dim": d, "k": k, "levels": L, "repeat": args.repeat,
        "fit_n": len(fit_X), "iters": args.iters, "command": " ".join(["python"] + sys.argv),
        "sidkit_src": str(Path(sys.modules["sidkit"].__file__).parent),
        "machine": machine(), "seconds_best": best, "seconds_all": times, "ratios": ratios,
        "mm_gflops": gflops, "codes_sha1": codes, "peak_rss_mb": peak_rss_mb(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"encode{args.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"# Encode speed ({n:,} x {d}, {L} x {k} codewords)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
        + (f", faiss {m['faiss']}" if "faiss" in m else "")
        + f"; load average at start {m.get('load_avg_at_start')}.", "",
        f"Command: `{result['command']}` (best of {args.repeat}, interleaved).", "",
        "| entry | what runs | seconds (best) |", "|---|---|---:|",
        f"| vq | `VQ({k}).encode(X)` | {best['vq']:.3f} |",
        f"| mm_1 | `torch.mm(X, C^T)` ({n} x {d} x {k}) | {best['mm_1']:.3f} |",
        f"| rqkmeans | `RQKMeans([{k}]*{L}).encode(X)` | {best['rqkmeans']:.3f} |",
        f"| mm_{L} | {L} x `torch.mm(X, C_l^T)` | {best[f'mm_{L}']:.3f} |",
    ]
    if index is not None:
        lines += [f"| faiss_1 | `IndexFlatL2.search(X, 1)` | {best['faiss_1']:.3f} |",
                  f"| faiss_{L} | {L} x `IndexFlatL2.search(X, 1)` | {best[f'faiss_{L}']:.3f} |"]
    lines += ["", f"Bare product: {gflops:.0f} GFLOP/s.", "",
              "| ratio (same run) | value |", "|---|---:|"]
    lines += [f"| {name} | {v:.2f} |" for name, v in ratios.items()]
    lines += ["", f"Codes SHA-1: vq `{codes.get('vq', '')[:12]}`, rqkmeans `{codes.get('rqkmeans', '')[:12]}`.", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
