"""SASRec training and full-ranking evaluation speed on MovieLens-100K (SPEC 8).

Usage::

    python benchmarks/train.py                # 3 epochs, 3 eval repeats
    python benchmarks/train.py --threads 1 --tag _1thread

SPEC 8 goals on the 2-core CPU: a SASRec epoch in under 15 s, full-ranking evaluation
of all users under 2 s.  Measured in ONE process on ML-100K (5-core users,
leave-one-out): SASRec with the default hyper-parameters (2 blocks, hidden 64,
2 heads, max_len 50, dropout 0.2, batch ``--batch-size``), ``--epochs`` epochs with the
validation of each epoch (the per-epoch training seconds exclude it); then
``evaluate(model, data, "test")`` of all 943 users, ``--repeat`` times (fastest kept,
all in the JSON), and the same for the popularity baseline.  The load average at the
start and end is recorded: the machine is shared, absolute times are noisy.
Writes ``benchmarks/results/train{tag}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import machine as _machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sidkit.data import load_dataset, make_split, preprocess
    from sidkit.eval import SequenceData, evaluate
    from sidkit.models import Popularity, SASRec

    info = _machine()
    t0 = time.perf_counter()
    ds = load_dataset("ml-100k")
    split = make_split(preprocess(ds.interactions, user_k=5), "leave_one_out")
    data = SequenceData.from_split(split)
    prep = time.perf_counter() - t0
    inputs, targets = data.windows(50)

    model = SASRec().fit(data, train={"epochs": args.epochs, "batch_size": args.batch_size}, seed=0,
                         device=args.device, progress=False)
    epochs = [{"epoch": h["epoch"], "train_s": h["seconds"], "loss": h["loss"],
               "valid_ndcg@10": h["valid"]["ndcg@10"]} for h in model.history_]

    def timed(m):
        runs = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = evaluate(m, data, "test")
            runs.append(time.perf_counter() - t)
        return runs, res

    sas_runs, sas_res = timed(model)
    pop_runs, pop_res = timed(Popularity().fit(data))
    try:
        load_end = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        load_end = None
    out = {
        "machine": {**info, "torch_threads": torch.get_num_threads(), "load_avg_at_end": load_end},
        "data": {"users": int(len(data.users)), "items": int(data.n_items), "train_windows": int(len(inputs)),
                 "train_targets": int((targets > 0).sum()), "prep_s": prep},
        "sasrec": {"batch_size": args.batch_size, "epochs": epochs,
                   "median_epoch_s": sorted(e["train_s"] for e in epochs)[len(epochs) // 2],
                   "eval_all_users_s": min(sas_runs), "eval_runs_s": sas_runs,
                   "test_ndcg@10_after_epochs": sas_res["ndcg@10"]},
        "popularity": {"eval_all_users_s": min(pop_runs), "eval_runs_s": pop_runs},
        "goals": {"epoch_s": 15.0, "eval_all_users_s": 2.0},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"train{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["sasrec"]
    md = [f"# SASRec training / evaluation speed on MovieLens-100K{args.tag}", "",
          f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({torch.get_num_threads()} threads), "
          f"CUDA {info['cuda']}; load average at start {info.get('load_avg_at_start')}, at end {load_end}.", "",
          f"Data: {out['data']['users']} users, {out['data']['items']} items, {out['data']['train_windows']} "
          f"training windows of 51 items, {out['data']['train_targets']} training targets.", "",
          "| measure | seconds | goal |", "|---|---:|---:|",
          f"| SASRec epoch (median of {len(epochs)}, batch {args.batch_size}, training only) | "
          f"{s['median_epoch_s']:.2f} | < 15 |",
          f"| SASRec full-ranking evaluation, all {sas_res['n_examples']} test users (best of {args.repeat}) | "
          f"{s['eval_all_users_s']:.3f} | < 2 |",
          f"| popularity full-ranking evaluation, all users (best of {args.repeat}) | "
          f"{out['popularity']['eval_all_users_s']:.3f} | < 2 |", "",
          "Per-epoch training seconds: " + ", ".join(f"{e['train_s']:.2f}" for e in epochs) + ".", ""]
    (args.out / f"train{args.tag}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
