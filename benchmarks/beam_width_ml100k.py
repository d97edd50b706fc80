"""Beam width of the causal SID model on ML-100K: test metrics of the same trained models
decoded with beam 20 / 50 / 100 (the metrics need the top 20, so a smaller beam is raised to 20) (issue 10: what was tried).

Reuses the checkpoints that ``benchmarks/results_ml100k.py --models causal_sid@TOKENIZER``
left in ``--work`` (the best-validation weights; nothing is retrained) and the record of
each seed in ``--records`` (its train settings).  Writes
``benchmarks/results/beam_width_ml100k.{md,json}``.

Usage::

    python benchmarks/beam_width_ml100k.py --model causal_sid@rqkmeans --seeds 0,1,2 --beams 20,50,100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from results_ml100k import _load_records, _model_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="causal_sid@rqkmeans")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--beams", default="20,50,100")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--records", type=Path, default=ROOT / "results" / "results_ml100k.jsonl")
    ap.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "results_ml100k")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "beam_width_ml100k")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from sidkit.config import config_from_dict
    from sidkit.data import load_dataset, make_split, preprocess
    from sidkit.eval import SequenceData, evaluate
    from sidkit.eval.experiment import fit_one

    data = SequenceData.from_split(make_split(preprocess(load_dataset("ml-100k").interactions, user_k=5),
                                              "leave_one_out"))
    records = {(r.get("label", r["model"]), r["seed"]): r for r in _load_records(args.records)}
    beams = [int(b) for b in args.beams.split(",")]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rec = records.get((args.model, seed))
        ckpt = args.work / f"{args.model.replace('@', '-')}-seed{seed}"
        if rec is None or not ckpt.is_dir():
            raise SystemExit(f"{args.model} seed {seed}: no record in {args.records} or no checkpoint in {ckpt}; "
                             f"run benchmarks/results_ml100k.py --models {args.model} --seeds {seed} first")
        table, _, _ = _model_table(args.model, args.work)
        cfg = config_from_dict({"seed": seed, "device": "cpu", "model": table, "train": rec["train"]})
        model, _ = fit_one(cfg.model, cfg.train, data, seed, "cpu", ckpt, progress=False)
        assert model.best_epoch_ == rec["best_epoch"], "the checkpoint is not the recorded run"
        for b in beams:
            model.beam = b
            t0 = time.perf_counter()
            m = evaluate(model, data, "test", mask_seen=cfg.train.mask_seen, batch_size=cfg.train.eval_batch_size)
            secs = time.perf_counter() - t0
            rows.append({"seed": seed, "beam": b, "test": m, "seconds": secs})
            print(f"seed {seed} beam {b:3d}: test ndcg@10 {m['ndcg@10']:.4f} recall@10 {m['recall@10']:.4f} "
                  f"ndcg@20 {m['ndcg@20']:.4f} ({secs:.1f}s)", flush=True)
    command = (f"python benchmarks/beam_width_ml100k.py --model {args.model} --seeds {args.seeds} "
               f"--beams {args.beams} --threads {args.threads}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    lines = [f"# Beam width: {args.model} on ML-100K (same trained models, test split)", "", f"`{command}`", "",
             "| beam | test NDCG@10 | test Recall@10 | test NDCG@20 | test Recall@20 | MRR@20 | s per evaluation (943 users) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for b in beams:
        rs = [r for r in rows if r["beam"] == b]

        def ms(k):
            v = [r["test"][k] for r in rs]
            return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"
        lines.append(f"| {b} | {ms('ndcg@10')} | {ms('recall@10')} | {ms('ndcg@20')} | {ms('recall@20')} | "
                     f"{ms('mrr@20')} | {np.median([r['seconds'] for r in rs]):.1f} |")
    lines += ["", f"Mean ± std over seeds {args.seeds}; the seconds are medians on a shared 2-core CPU."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
