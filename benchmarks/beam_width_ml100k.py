"""Beam width of the causal SID model on ML-100K: the same trained models decoded with
beam 20 / 50 / 100 (the metrics need the top 20, so a smaller beam is raised to 20),
each evaluated on the **validation** split, which chooses the width, and on the test
split, reported beside it and never used to choose (docs/evaluation.md, "Choosing on
validation"; :func:`sidkit.selection.select_best`).

Reuses the checkpoints that ``benchmarks/results_ml100k.py --models causal_sid@TOKENIZER``
left in ``--work`` (the best-validation weights; nothing is retrained) and the record of
each seed in ``--records`` (its train settings).  Writes ``--out``.{md,json}
(``benchmarks/results/beam_width_ml100k.{md,json}``).

Usage (the run behind ``benchmarks/results/beam_width_ml100k.md``: the default run's causal
SID model over the default 256 x 3 SIDs, its 20-epoch cap, 3 seeds)::

    python benchmarks/results_ml100k.py --models causal_sid@rqkmeans-256x3 --seeds 0,1,2 --epochs 20 --patience 5 \\
        --threads 1 --records benchmarks/results/beam_width_ml100k_train.jsonl --work runs/beam_width_ml100k \\
        --docs runs/beam_width_ml100k/docs
    python benchmarks/beam_width_ml100k.py --model causal_sid@rqkmeans-256x3 --seeds 0,1,2 --beams 20,50,100 \\
        --records benchmarks/results/beam_width_ml100k_train.jsonl --work runs/beam_width_ml100k
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


def choose_beam(rows: list[dict]) -> int:
    """The beam width with the highest mean **validation** NDCG@10 over seeds (ties: the
    narrower beam, which is cheaper).  ``rows``: one dict per (seed, beam) with ``valid``
    and ``test`` metrics; test never chooses."""
    from sidkit.selection import select_best

    beams = sorted({r["beam"] for r in rows})
    return select_best({b: [r for r in rows if r["beam"] == b] for b in beams})


def markdown(model: str, command: str, seeds: str, rows: list[dict], note: str = "") -> str:
    """The results page: validation (decides) beside test, one line per beam width."""
    beams = sorted({r["beam"] for r in rows})
    chosen = choose_beam(rows)

    def ms(rs: list[dict], role: str, k: str) -> str:
        v = [r[role][k] for r in rs]
        return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"

    lines = [f"# Beam width: {model} on ML-100K (same trained models; chosen on validation, test beside)", "",
             f"`{command}`", "",
             "| beam | valid NDCG@10 (decides) | valid Recall@10 | test NDCG@10 | test Recall@10 | test NDCG@20 | "
             "test Recall@20 | test MRR@20 | s per evaluation (943 users) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in beams:
        rs = [r for r in rows if r["beam"] == b]
        vb = ms(rs, "valid", "ndcg@10")
        lines.append(f"| {b}{' (chosen)' if b == chosen else ''} | {f'**{vb}**' if b == chosen else vb} | "
                     f"{ms(rs, 'valid', 'recall@10')} | {ms(rs, 'test', 'ndcg@10')} | {ms(rs, 'test', 'recall@10')} | "
                     f"{ms(rs, 'test', 'ndcg@20')} | {ms(rs, 'test', 'recall@20')} | {ms(rs, 'test', 'mrr@20')} | "
                     f"{np.median([r['seconds'] for r in rs]):.1f} |")
    lines += ["", f"Mean ± sample std over seeds {seeds}. The width is chosen on mean validation NDCG@10 "
              "(`sidkit.selection.select_best`; a tie goes to the narrower beam); the test columns are "
              "reported beside it and never choose. Seconds: median time of one evaluation (validation "
              "and test alike) on a shared 2-core CPU, one torch thread."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="causal_sid@rqkmeans-256x3")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--beams", default="20,50,100")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--records", type=Path, default=ROOT / "results" / "beam_width_ml100k_train.jsonl")
    ap.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "beam_width_ml100k")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "beam_width_ml100k")
    ap.add_argument("--note", default="", help="a paragraph added to the page")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from sidkit.config import config_from_dict
    from sidkit.data import load_dataset, make_split, preprocess
    from sidkit.eval import SequenceData, evaluate
    from sidkit.recommender_stage import fit_one

    data = SequenceData.from_split(make_split(preprocess(load_dataset("ml-100k").interactions, user_k=5),
                                              "leave_one_out"))
    records = {(r.get("label", r["model"]), r["seed"]): r for r in _load_records(args.records)}
    beams = sorted(int(b) for b in args.beams.split(","))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rec = records.get((args.model, seed))
        ckpt = args.work / f"{args.model.replace('@', '-')}-seed{seed}"
        if rec is None or not ckpt.is_dir():
            raise SystemExit(f"{args.model} seed {seed}: no record in {args.records} or no checkpoint in {ckpt}; "
                             f"run benchmarks/results_ml100k.py --models {args.model} --seeds {seed} "
                             f"--records {args.records} --work {args.work} first")
        table, _, _ = _model_table(args.model, args.work)
        cfg = config_from_dict({"seed": seed, "device": "cpu", "model": table, "train": rec["train"]})
        model, _ = fit_one(cfg.model, cfg.train, data, seed, "cpu", ckpt, progress=False)
        assert model.best_epoch_ == rec["best_epoch"], "the checkpoint is not the recorded run"
        for b in beams:
            model.beam = b
            row: dict = {"seed": seed, "beam": b}
            secs = []
            for role in ("valid", "test"):
                t0 = time.perf_counter()
                row[role] = evaluate(model, data, role, mask_seen=cfg.train.mask_seen,
                                     batch_size=cfg.train.eval_batch_size)
                secs.append(time.perf_counter() - t0)
            row["seconds"] = float(np.median(secs))
            rows.append(row)
            print(f"seed {seed} beam {b:3d}: valid ndcg@10 {row['valid']['ndcg@10']:.4f} | test ndcg@10 "
                  f"{row['test']['ndcg@10']:.4f} recall@10 {row['test']['recall@10']:.4f} "
                  f"({row['seconds']:.1f}s per evaluation)", flush=True)
    command = (f"python benchmarks/beam_width_ml100k.py --model {args.model} --seeds {args.seeds} "
               f"--beams {args.beams} --threads {args.threads}")
    chosen = choose_beam(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "model": args.model, "records": str(args.records.name),
         "selection": "highest mean validation ndcg@10 over seeds (ties: narrower beam); test reported, never chooses",
         "chosen_beam": chosen, "rows": rows}, indent=1))
    page = markdown(args.model, command, args.seeds, rows, args.note)
    args.out.with_suffix(".md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
