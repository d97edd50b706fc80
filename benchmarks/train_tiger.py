"""TIGER T5 training and validation speed on MovieLens-100K (issue 10).

Usage::

    python benchmarks/train_tiger.py --run runs/ml-100k --threads 1 --targets-per-user 2 --tag _tpu2_1thread
    python benchmarks/train_tiger.py --run runs/ml-100k --threads 1 --targets-per-user 2 --precision fp32,bf16,fp32,bf16 --tag _bf16

Reads a run directory's ``split`` and ``codes`` stages (``sidkit run``), fits
:class:`sidkit.models.TIGER` with its default size (``configs/tiger.toml``: 4+4 layers,
d_model 128, 6 heads x 64, FFN 1024, history 20, user tokens) for ``--epochs`` epochs
(batch ``--batch-size``; each epoch trains on ``--targets-per-user`` samples per user),
then times ``evaluate(model, data, "valid")`` (beam 20, all users).  Reported: training
seconds per epoch (median), ms per training sample, validation seconds, the rows per
epoch and in total.  The machine is shared: the load average at the start and end is
recorded.  ``--precision`` lists ``[train] precision`` values to fit in turn (e.g.
``fp32,bf16,fp32,bf16``: one row each, and the bf16 / fp32 ratio of the median epoch
times, measured in the same run).  Writes ``benchmarks/results/train_tiger{tag}.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import machine as _machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a run directory with split/ and codes/ stages")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--targets-per-user", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", help="comma-separated [train] precision values, fitted in turn")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import numpy as np
    import torch

    from sidkit.config import TrainConfig
    from sidkit.data import Split
    from sidkit.eval import SequenceData, evaluate
    from sidkit.models import TIGER
    from sidkit.types import Codes

    if args.threads:
        torch.set_num_threads(args.threads)
    info = _machine()
    data = SequenceData.from_split(Split.load(args.run / "split"))
    codes = Codes.load(args.run / "codes" / "codes")
    rows_md, results = [], []
    for precision in args.precision.split(","):
        model = TIGER(targets_per_user=args.targets_per_user)
        t0 = time.perf_counter()
        model.fit(data, codes=codes, seed=0, device=args.device, progress=False,
                  train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, warmup_steps=100,
                                    precision=precision))
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        val = evaluate(model, data, "valid")
        val_s = time.perf_counter() - t0
        per_user = model._rows_per_user
        rows = int(np.minimum(per_user, args.targets_per_user).sum()) if args.targets_per_user else int(per_user.sum())
        secs = [h["seconds"] for h in model.history_]
        res = {"precision": precision, "epoch_seconds_median": float(np.median(secs)), "epoch_seconds": secs,
               "ms_per_training_sample": 1000 * float(np.median(secs)) / rows, "rows_per_epoch": rows,
               "rows_total": int(per_user.sum()), "valid_eval_seconds": val_s, "fit_seconds": fit_s,
               "train_loss": model.history_[-1]["loss"], "valid_ndcg@10": val["ndcg@10"],
               "threads": torch.get_num_threads(), "device": str(model.device_),
               "sid": repr(model.tokens_), "encoder_length": 1 + model.max_len * model.tokens_.n_levels}
        results.append(res)
        print(json.dumps(res), flush=True)
        rows_md.append(f"| {precision} | {args.targets_per_user} | {rows} | {res['epoch_seconds_median']:.1f} | "
                       f"{res['ms_per_training_sample']:.1f} | {res['train_loss']:.4f} | {val_s:.1f} | {res['rows_total']} |")
    try:
        info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    med = {p: float(np.median([r["epoch_seconds_median"] for r in results if r["precision"] == p]))
           for p in dict.fromkeys(r["precision"] for r in results)}
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "machine": info, "results": results[0] if len(results) == 1 else results,
           "median_epoch_seconds_by_precision": med}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"train_tiger{args.tag}.json").write_text(json.dumps(out, indent=2))
    res = results[0]
    md = [f"# TIGER T5 training speed ({res['sid']})", "",
          f"machine: {info.get('cpu')}, {info.get('cores')} cores, {res['threads']} torch threads, device "
          f"{res['device']}, load {info.get('load_avg_at_start')} -> {info.get('load_avg_at_end')}", "",
          "| precision | targets/user | rows/epoch | s/epoch (train) | ms/sample | train loss | valid eval s (beam 20) | rows in total |",
          "|---|---|---|---|---|---|---|---|", *rows_md]
    if "fp32" in med and "bf16" in med:
        md += ["", f"bf16 / fp32 median epoch time: {med['bf16'] / med['fp32']:.2f} (same run)."]
    (args.out / f"train_tiger{args.tag}.md").write_text("\n".join(md) + "\n")

if __name__ == "__main__":
    main()
