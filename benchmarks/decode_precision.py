"""Decoding in float32 against bfloat16 (``precision="bf16"``) on trained models of a grid:
validation time, NDCG@10 / Recall@10 and how many top-10 lists are the same.

Usage::

    python benchmarks/decode_precision.py GRID.toml --out GRID_OUT --models causal_sid_dense:1,id_only:1 \\
        [--threads 2] [--repeat 2]

For each ``label:seed`` whose training in the grid's folder has ended, loads its
best-validation weights (the grid's own checkpoint: nothing is retrained) and evaluates the
validation users ``--repeat`` times in each precision, alternating (fp32 first, then bf16,
then fp32 ...).  Reports the median seconds, the metrics and the share of users whose
top-10 list is identical.  Validation only: a choice of precision is made on it
(docs/evaluation.md).  Writes ``benchmarks/results/decode_precision{tag}.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid")
    ap.add_argument("--out", default=None, help="the grid's output folder (default: the file's)")
    ap.add_argument("--models", required=True, help="label:seed, comma separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
    from sidkit.eval import evaluate
    from sidkit.grid import load_grid, progress
    from sidkit.recommender_stage import fit_in_run

    grid = load_grid(args.grid, args.out)
    ended = {(r["run"], r["model"], r["seed"]) for r in progress(grid) if r["status"] in ("trained", "done")}
    info = machine()
    rows = []
    for spec in args.models.split(","):
        label, seed = spec.rsplit(":", 1)
        for cell in grid.cells:
            if (cell.id, label, int(seed)) not in ended:     # never train here: ended trainings only
                print(f"{cell.id} {label}:{seed}: training not ended, skipped", flush=True)
                continue
            model, _, data, _ = fit_in_run(cell.cfg, cell.dir, label, int(seed))
            secs: dict[str, list[float]] = {"fp32": [], "bf16": []}
            res = {}
            for r in range(args.repeat):
                for prec in ("fp32", "bf16"):
                    model.precision = prec
                    t0 = time.perf_counter()
                    res[prec] = evaluate(model, data, "valid", return_ranks=True)
                    secs[prec].append(time.perf_counter() - t0)
                    print(f"{cell.id} {label}:{seed} {prec} [{r}]: {secs[prec][-1]:.1f} s, "
                          f"ndcg@10 {res[prec]['ndcg@10']:.4f}", flush=True)
            model.precision = "fp32"
            inp = data.eval_inputs("valid", model.max_len)
            lists = {}
            for prec in ("fp32", "bf16"):
                model.precision = prec
                lists[prec] = np.concatenate([np.asarray(model.recommend(inp["history"][lo:lo + 1024], 10))
                                              for lo in range(0, len(inp["targets"]), 1024)])
            model.precision = "fp32"
            same = float((lists["fp32"] == lists["bf16"]).all(1).mean())
            rows.append({"run": cell.id, "label": label, "seed": int(seed), "same_top10_share": same,
                         **{f"{p}_seconds": secs[p] for p in secs},
                         **{f"{p}_{m}": res[p][m] for p in res for m in ("ndcg@10", "recall@10")}})
    cmd = "python benchmarks/decode_precision.py " + " ".join(sys.argv[1:])
    md = [f"# Decoding precision: fp32 against bf16{args.tag}", "",
          f"`{cmd}`; {info['cpu']}, {info['cores']} cores, {args.threads} torch threads; validation users; "
          f"median seconds of {args.repeat}, alternating.", "",
          "| run | model | seed | fp32 s | bf16 s | speed-up | fp32 N@10 | bf16 N@10 | fp32 R@10 | bf16 R@10 "
          "| same top-10 lists |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, b = float(np.median(r["fp32_seconds"])), float(np.median(r["bf16_seconds"]))
        md.append(f"| {r['run']} | {r['label']} | {r['seed']} | {a:.1f} | {b:.1f} | {a / b:.2f}x | "
                  f"{r['fp32_ndcg@10']:.4f} | {r['bf16_ndcg@10']:.4f} | {r['fp32_recall@10']:.4f} | "
                  f"{r['bf16_recall@10']:.4f} | {r['same_top10_share']:.3f} |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"decode_precision{args.tag}.md").write_text("\n".join(md) + "\n")
    (out / f"decode_precision{args.tag}.json").write_text(json.dumps({"command": cmd, "machine": info,
                                                                      "rows": rows}, indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
