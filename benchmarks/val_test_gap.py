"""Why does the causal SID model lose more from validation to test than SASRec?

Trains each model for a fixed number of epochs with **no early stopping**, and after every
epoch evaluates the current weights on the validation *and* the test examples of every
user (per-user NDCG@10 from the target ranks). The validation-to-test drop of the reported
figure (test at the checkpoint with the best validation NDCG@10, compared with that best
validation NDCG@10) then splits into two parts, estimated on random halves A / B of the
users (``--splits`` of them, averaged):

- **selection** (winner's curse): the epoch is chosen as the maximum of a noisy validation
  curve, so the chosen figure is optimistic; ``valid_A(e*) - valid_B(e*)`` with ``e*`` chosen
  on A. It grows with the noise of the curve and with how flat it is near its top.
- **shift**: at a fixed checkpoint, the test examples are harder (or easier) than the
  validation ones: ``valid_B(e*) - test_B(e*)``, both on the users B that did not choose.

Popularity (no training, no selection) gives the shift of the data alone.

At the chosen checkpoint (the model ends training with the best-validation weights) it
also measures what could make test harder than validation for one model and not another:
the share of top-10 lists that repeat an item of the input history (in MovieLens nobody
rates a film twice, so a repeat is a wasted slot; a test history ends with the validation
item) and the metrics with the seen items masked (``mask_seen``: the shift that remains
when repeats cannot cost anything).

Usage (the run behind docs/studies/val_test_gap.md)::

    python benchmarks/val_test_gap.py --models popularity,sasrec,causal_sid@rqkmeans-256x3 --seeds 0,1,2 \\
        --threads 1 --out benchmarks/results/val_test_gap
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_ml100k import _model_table  # noqa: E402

EPOCHS = {"sasrec": 60, "causal_sid": 30, "causal_sid_id": 30}


def user_ndcg10(ranks: np.ndarray) -> np.ndarray:
    """Per-example NDCG@10 from 0-based target ranks (-1 = not returned)."""
    r = np.asarray(ranks)
    return np.where((r >= 0) & (r < 10), 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)


def decompose(valid: np.ndarray, test: np.ndarray, n_splits: int = 200, seed: int = 0) -> dict[str, float]:
    """``valid``, ``test``: (epochs, users) per-user NDCG@10 of each epoch's weights.

    Returns the reported figures (best validation epoch on all users, its validation and
    test mean) and the split of their gap into selection and shift, averaged over random
    halves A / B: ``selection = valid_A(e*) - valid_B(e*)``, ``shift = valid_B(e*) -
    test_B(e*)`` with ``e* = argmax_e valid_A(e)`` (first epoch on ties)."""
    valid, test = np.asarray(valid, float), np.asarray(test, float)
    if valid.shape != test.shape or valid.ndim != 2:
        raise ValueError(f"valid and test must be (epochs, users) of one shape, got {valid.shape} / {test.shape}")
    best = int(np.argmax(valid.mean(1)))
    rng = np.random.default_rng(seed)
    n = valid.shape[1]
    sel, shift = [], []
    for _ in range(n_splits):
        a = rng.permutation(n) < n // 2
        e = int(np.argmax(valid[:, a].mean(1)))
        sel.append(valid[e, a].mean() - valid[e, ~a].mean())
        shift.append(valid[e, ~a].mean() - test[e, ~a].mean())
    curve = valid.mean(1)
    return {"best_epoch": best + 1, "valid_at_best": float(curve[best]), "test_at_best": float(test[best].mean()),
            "gap": float(curve[best] - test[best].mean()),
            "selection": float(np.mean(sel)), "shift": float(np.mean(shift)),
            "test_best_any_epoch": float(test.mean(1).max()),
            "valid_curve_noise": float(np.std(np.diff(curve))) if len(curve) > 2 else 0.0}


def at_checkpoint(model, data) -> dict[str, float]:
    """At the model's current weights: per role, the share of top-10 lists holding an item of
    the input history (``repeat_share``, and ``last_share`` for the history's most recent
    item), and NDCG@10 with the seen items masked."""
    from sidkit.eval import evaluate

    out = {}
    for role in ("valid", "test"):
        inp = data.eval_inputs(role, getattr(model, "max_len", 50) or 50)
        top = model.recommend(inp["history"], 10)
        off, flat = inp["seen_offsets"], inp["seen_flat"] - 1
        seen_any = np.zeros(len(top), bool)
        for u in range(len(top)):   # analysis, not a hot path: one set per user
            seen_any[u] = bool(set(top[u].tolist()) & set(flat[off[u]:off[u + 1]].tolist()))
        last = flat[off[1:] - 1]
        out[f"{role}_repeat_share"] = float(seen_any.mean())
        out[f"{role}_last_share"] = float((top == last[:, None]).any(1).mean())
        out[f"{role}_masked_ndcg10"] = float(evaluate(model, data, role, mask_seen=True)["ndcg@10"])
    out["masked_gap"] = out["valid_masked_ndcg10"] - out["test_masked_ndcg10"]
    return out


def markdown(rows: list[dict], command: str) -> str:
    def ms(model: str, key: str) -> str:
        v = [r[key] for r in rows if r["model"] == model]
        return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"

    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| model | seeds | valid N@10 at the chosen epoch | test N@10 there | gap | of which selection | "
             "of which shift | best test N@10 of any epoch | epoch-to-epoch noise of the valid curve |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        n = sum(r["model"] == m for r in rows)
        lines.append(f"| {m} | {n} | {ms(m, 'valid_at_best')} | {ms(m, 'test_at_best')} | {ms(m, 'gap')} | "
                     f"{ms(m, 'selection')} | {ms(m, 'shift')} | {ms(m, 'test_best_any_epoch')} | "
                     f"{ms(m, 'valid_curve_noise')} |")
    lines += ["", "At the chosen checkpoint:", "",
              "| model | top-10 lists repeating a history item (valid / test) | ... holding the most recent "
              "history item (valid / test) | valid N@10, seen masked | test N@10, seen masked | masked gap |",
              "|---|---:|---:|---:|---:|---:|"]
    for m in models:
        lines.append(f"| {m} | {ms(m, 'valid_repeat_share')} / {ms(m, 'test_repeat_share')} | "
                     f"{ms(m, 'valid_last_share')} / {ms(m, 'test_last_share')} | {ms(m, 'valid_masked_ndcg10')} | "
                     f"{ms(m, 'test_masked_ndcg10')} | {ms(m, 'masked_gap')} |")
    lines += ["", f"`{command}`", "",
              "Mean ± sample std over seeds. Selection and shift are averages over 200 random halves of the "
              "users (they add up to the gap only on average: the gap is measured on all users at the epoch "
              "all users chose)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="popularity,sasrec,causal_sid@rqkmeans-256x3")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=2, help="validate every N epochs (the default run's 2)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "val_test_gap")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "val_test_gap")
    args = ap.parse_args()
    command = (f"python benchmarks/val_test_gap.py --models {args.models} --seeds {args.seeds} "
               f"--threads {args.threads} --eval-every {args.eval_every}")

    import torch

    torch.set_num_threads(args.threads)
    from sidkit.config import config_from_dict
    from sidkit.data import load_dataset, make_split, preprocess
    from sidkit.eval import SequenceData, evaluate
    from sidkit.recommender_stage import make_model

    ds = load_dataset("ml-100k")
    data = SequenceData.from_split(make_split(preprocess(ds.interactions, user_k=5), "leave_one_out"))
    rows = []
    for name in args.models.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            t0 = time.time()
            if name == "popularity":
                model = make_model(config_from_dict({"model": {"type": "popularity"}}).model).fit(data)
                valid = user_ndcg10(evaluate(model, data, "valid", return_ranks=True)["ranks"])[None]
                test = user_ndcg10(evaluate(model, data, "test", return_ranks=True)["ranks"])[None]
            else:
                table, train, _ = _model_table(name, args.work)
                epochs = EPOCHS[name.split("@")[0]]
                cfg = config_from_dict({"seed": seed, "model": table,
                                        "train": {**train, "epochs": epochs, "patience": epochs,
                                                  "eval_every": args.eval_every}})
                model = make_model(cfg.model)
                per_epoch: list[tuple[np.ndarray, np.ndarray]] = []

                def both(rec, model=model, per_epoch=per_epoch):
                    if "valid" not in rec:
                        return
                    per_epoch.append(tuple(user_ndcg10(evaluate(model, data, role, return_ranks=True)["ranks"])
                                           for role in ("valid", "test")))
                    model.module_.train()

                model.fit(data, train=cfg.train, seed=seed, device="cpu", callbacks=[both], progress=False)
                valid = np.stack([v for v, _ in per_epoch])
                test = np.stack([t for _, t in per_epoch])
            extra = at_checkpoint(model, data)
            row = {"model": name, "seed": seed, **decompose(valid, test, seed=seed), **extra,
                   "valid_curve": valid.mean(1).round(5).tolist(), "test_curve": test.mean(1).round(5).tolist()}
            rows.append(row)
            print(f"{name} seed {seed}: valid {row['valid_at_best']:.4f} test {row['test_at_best']:.4f} "
                  f"gap {row['gap']:+.4f} = selection {row['selection']:+.4f} + shift {row['shift']:+.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            if name == "popularity":
                break   # deterministic: one seed is all seeds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    sys.exit(main())
