"""Fit time of every registered tokenizer on synthetic clustered data.

Two distributions (``--dist``): ``clustered`` (Gaussian blobs of equal size, scale 0.3)
and ``zipf`` (unit-normalised vectors in Zipf-sized clusters, like text embeddings:
``_common.zipf_unit``).

Usage::

    python benchmarks/tokenizer_fit.py            # 100k x 128 items
    python benchmarks/tokenizer_fit.py --quick    # 20k x 128 items
    python benchmarks/tokenizer_fit.py --n 50000 --dim 64 --only rqkmeans gaoq
    python benchmarks/tokenizer_fit.py --dist zipf   # unit vectors, Zipf cluster sizes

Times ``fit_encode`` (fit + the training codes), the median and the slowest of
``--repeat`` (default 3) fits for the k-means family, and reports, from the same run,
the ratios of balanced RQ-KMeans and GAOQ to plain RQ-KMeans (SPEC 8 goal: <= 3x): the
median and the worst over repetitions of fit i / RQ-KMeans fit i.  Neural tokenizers
(rqvae, drq) are fitted once for a few epochs only (``--epochs``); their time per
epoch (including k-means init and the final encode) is reported as well.  Writes
``benchmarks/results/tokenizers{--suffix}.json`` and ``.md`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import clustered, machine, zipf_unit

os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")


def configs(epochs: int, device: str) -> dict[str, dict]:
    """Constructor parameters per benchmark entry (entry name -> (tokenizer, params))."""
    return {
        "vq": ("vq", {"device": device}),
        "rqkmeans": ("rqkmeans", {"device": device}),
        "rqkmeans_balanced": ("rqkmeans", {"balanced": True, "device": device}),
        "hkm": ("hkm", {"device": device}),
        "gaoq": ("gaoq", {"device": device}),
        "rqvae": ("rqvae", {"epochs": epochs, "patience": 0, "device": device}),
        "drq": ("drq", {"epochs": epochs, "patience": 0, "device": device}),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of items")
    ap.add_argument("--dim", type=int, default=128, help="embedding dimension")
    ap.add_argument("--quick", action="store_true", help="20k items (overrides --n)")
    ap.add_argument("--dist", choices=("clustered", "zipf"), default="clustered",
                    help="clustered: equal Gaussian blobs; zipf: unit vectors, Zipf cluster sizes")
    ap.add_argument("--epochs", type=int, default=2, help="epochs for rqvae/drq")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3,
                    help="fits per k-means entry (median and slowest reported) (rqvae/drq: one fit)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice, all cores)")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark entries to run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--suffix", default="", help="results file suffix, e.g. _1thread")
    args = ap.parse_args(argv)
    n = 20_000 if args.quick else args.n
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from sidkit.tokenizers import available, get_tokenizer_class

    X = (clustered(n, args.dim, scale=0.3, chunk=None) if args.dist == "clustered"
         else zipf_unit(n, args.dim))
    cfg = configs(args.epochs, args.device)
    for name in available():  # every registered tokenizer, even ones added later
        if not any(v[0] == name for v in cfg.values()):
            cfg[name] = (name, {"device": args.device})
    entries = [e for e in cfg if args.only is None or e in args.only]
    # warm-up: torch thread pools, lazy imports (not timed)
    get_tokenizer_class("rqkmeans")(codebook_sizes=[8, 8], device=args.device).fit(X[:2000])
    rows = []
    for entry in entries:
        tok_name, params = cfg[entry]
        if tok_name not in available():
            continue
        cls = get_tokenizer_class(tok_name)
        params = {k: v for k, v in params.items() if k in cls._param_names()}
        times = []
        reps = 1 if "epochs" in params else max(1, args.repeat)  # neural ones: one fit
        for _ in range(reps):  # median and slowest of --repeat
            tok = cls(**params)
            t0 = time.perf_counter()
            codes = tok.fit_encode(X)
            times.append(time.perf_counter() - t0)
        fit_s = float(np.median(times))
        t0 = time.perf_counter()
        tok.encode(X[: min(n, 20_000)])
        enc_s = time.perf_counter() - t0
        row = {"entry": entry, "tokenizer": tok_name, "params": params, "fit_s": round(fit_s, 3),
               "fit_s_max": round(max(times), 3), "fit_times": [round(t, 3) for t in times],
               "fits": reps,
               "encode_20k_s": round(enc_s, 3), "codebook_sizes": list(codes.codebook_sizes),
               "unique_sids": codes.n_unique(), "collision_rule": codes.collision_rule}
        if hasattr(tok, "n_epochs_"):
            row["epochs"] = int(tok.n_epochs_)
            row["s_per_epoch"] = round(fit_s / max(int(tok.n_epochs_), 1), 3)
        print(f"{entry:>18}: fit {fit_s:8.2f}s (median; slowest {max(times):.2f}s)  "
              f"sizes {list(codes.codebook_sizes)}", flush=True)
        rows.append(row)
    by = {r["entry"]: r for r in rows}
    ratios = {}
    if "rqkmeans" in by:
        base = by["rqkmeans"]["fit_times"]
        for e in ("rqkmeans_balanced", "gaoq"):
            if e in by:  # per repetition i: fit i of e over fit i of RQ-KMeans
                r = [a / b for a, b in zip(by[e]["fit_times"], base)]
                ratios[f"{e}_vs_rqkmeans"] = round(float(np.median(r)), 2)
                ratios[f"{e}_vs_rqkmeans_worst"] = round(max(r), 2)
    result = {"benchmark": "tokenizers", "n_items": n, "dim": args.dim, "dist": args.dist,
              "command": "python benchmarks/tokenizer_fit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "rows": rows, "ratios": ratios, "goal": "ratios <= 3"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tokenizers{args.suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    what = ("equal-sized Gaussian blobs" if args.dist == "clustered"
            else "unit vectors in Zipf-sized clusters")
    md = [f"# Tokenizer fit times ({n:,} x {args.dim} synthetic items, {what})", "",
          f"Command: `{result['command'].strip()}`  ",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"torch {result['machine']['torch']} ({result['machine']['torch_threads']} threads)  ",
          f"Load average at start: {result['machine'].get('load_avg_at_start')} (other jobs share "
          "the cores; absolute times are noisy, compare ratios within one run).", "",
          "| entry | tokenizer | fit_encode (s) | encode 20k (s) | codebook sizes | unique SIDs | collision rule |",
          "|---|---|---:|---:|---|---:|---|"]
    for r in rows:
        name = r["entry"] + (f" ({r['epochs']} epochs, {r['s_per_epoch']:.1f} s/epoch)"
                             if "epochs" in r else f" (median of {r['fits']}; slowest {r['fit_s_max']:.2f} s)")
        md.append(f"| {name} | {r['tokenizer']} | {r['fit_s']:.2f} | {r['encode_20k_s']:.2f} | "
                  f"{r['codebook_sizes']} | {r['unique_sids']} | {r['collision_rule']} |")
    md += ["", "Ratios in the same run (goal <= 3x plain RQ-KMeans; median over repetitions "
           "of fit i / RQ-KMeans fit i, and the worst repetition):", ""]
    md += [f"- {k}: {v}x" for k, v in ratios.items()]
    (out / f"tokenizers{args.suffix}.md").write_text("\n".join(md) + "\n")
    print(json.dumps(ratios))
    return result


if __name__ == "__main__":
    main()
