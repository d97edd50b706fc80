"""Validation and test figures of the Beauty grid's trainings that have ended, while the grid
still runs (its table comes only when a run's every model and seed is done).

Usage::

    python benchmarks/beauty_interim.py [configs/experiments/beauty.toml] [--out DIR] [--threads 1]

For every (run, model, seed) whose epoch checkpoint says training ended (validation
stopped improving, the epoch cap or the time budget: ``sidkit experiment --status`` shows
them as ``trained``), loads its best-validation weights -- exactly what the run's
recommender stage will evaluate -- and evaluates validation and test with the grid's
protocol.  Nothing is chosen here: the epoch was chosen on validation during training, and
the grid's own table (which evaluates the same weights again) supersedes this one.
Writes ``benchmarks/results/beauty_interim.md`` and ``.json``: every evaluated training,
then mean ± sample std per (run, model) over the seeds evaluated so far.  Records of
earlier calls are kept for every (run, model, seed) not evaluated in this call (marked
``"evaluated": "an earlier call"``; ``--fresh`` drops them): a session's run folders may
not survive it, and a part of the grid (``configs/experiments/beauty_sid_seeds.toml``)
can be run and read on its own.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def parse_decodings(specs: list[str]) -> dict[str, list[dict]]:
    """``["LABEL:KEY=VALUE,KEY=VALUE", ...]`` -> {LABEL: [{KEY: VALUE, ...}, ...]}; a value
    is read as an integer or a float where it is one (``all`` stays a string)."""
    out: dict[str, list[dict]] = {}
    for spec in specs:
        label, sep, rest = spec.partition(":")
        pairs = [p.partition("=") for p in rest.split(",") if p]
        if not sep or not pairs or any(not k or not eq for k, eq, _ in pairs):
            raise SystemExit(f"--decode {spec!r}: expected LABEL:KEY=VALUE[,KEY=VALUE], e.g. causal_sid_dense:rerank=all")
        settings = {}
        for k, _, v in pairs:
            for cast in (int, float):
                try:
                    v = cast(v)
                    break
                except ValueError:
                    pass
            settings[k] = v
        out.setdefault(label, []).append(settings)
    return out


def load_saved(cell, label: str, seed: int):
    """A finished run's saved model of (``label``, ``seed``), its split as SequenceData, and
    its training config: what the run evaluated (never a new training)."""
    from sidkit.data import Split
    from sidkit.eval.sequences import SequenceData
    from sidkit.models import Recommender

    model = Recommender.load(cell.dir / "recommender" / "models" / label / f"seed-{seed}")
    train_cfg = next(t for lb, _, t in cell.cfg.recommenders() if lb == label)
    return model, SequenceData.from_split(Split.load(cell.dir / "split")), train_cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", nargs="?", default="configs/experiments/beauty.toml")
    ap.add_argument("--out", default=None, help="the grid's output folder (default: the file's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--decode", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
                    help="also evaluate the ended trainings of model LABEL with other decoding settings of the "
                    "same weights (e.g. causal_sid_dense:rerank=all or causal_sid_dense:rerank=50,beam=50): a "
                    "row each, labelled 'LABEL [KEY=VALUE]' -- a decoding choice made on its validation column; "
                    "repeat for several")
    ap.add_argument("--fresh", action="store_true", help="drop the records of earlier calls (default: keep "
                    "each (run, model, seed) evaluated before and not found in this grid's folder now -- a "
                    "machine's run folders do not outlive a session, the results file does)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
    from sidkit.grid import load_grid, progress
    from sidkit.recommender_stage import fit_in_run, score_record

    decodings = parse_decodings(args.decode)
    grid = load_grid(args.grid, args.out)
    cells = {c.id: c for c in grid.cells}
    info = machine()
    records = []
    for row in progress(grid):
        if row["status"] not in ("trained", "done"):
            continue
        cell = cells[row["run"]]
        t0 = time.perf_counter()
        if row["status"] == "done":                 # the grid evaluated it already: its record
            doc = json.loads((cell.dir / "recommender" / "metrics.json").read_text())
            rec = next(r for r in doc["records"] if r["label"] == row["model"] and r["seed"] == row["seed"])
        else:
            model, rec, data, train_cfg = fit_in_run(cell.cfg, cell.dir, row["model"], row["seed"])
            rec = score_record(model, data, rec, train_cfg)
        rec = {"run": cell.id, "label": row["model"], "seed": row["seed"], "status": row["status"],
               "best_epoch": rec.get("best_epoch"), "epochs_run": rec.get("epochs_run"), "stop": rec.get("stop"),
               "valid": {m: rec["valid"][m] for m in METRICS}, "test": {m: rec["test"][m] for m in METRICS},
               "seconds": time.perf_counter() - t0}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("run", "label", "seed", "best_epoch")} |
                         {"valid_ndcg@10": round(rec["valid"]["ndcg@10"], 4),
                          "test_ndcg@10": round(rec["test"]["ndcg@10"], 4)}), flush=True)
        for settings in decodings.get(row["model"], []):
            if row["status"] == "done":     # the run saved the model (its checkpoint is gone)
                model, data, train_cfg = load_saved(cell, row["model"], row["seed"])
            t0 = time.perf_counter()
            variant = copy.copy(model)
            for key, value in settings.items():
                if not hasattr(variant, key):
                    raise SystemExit(f"--decode: {row['model']} has no setting {key!r}")
                setattr(variant, key, value)
            scored = score_record(variant, data, {}, train_cfg)
            label = f"{row['model']} [{','.join(f'{k}={v}' for k, v in settings.items())}]"
            records.append({**rec, "label": label, "decoding": settings,
                            "valid": {m: scored["valid"][m] for m in METRICS},
                            "test": {m: scored["test"][m] for m in METRICS}, "seconds": time.perf_counter() - t0})
            print(json.dumps({"label": label, "seed": row["seed"],
                              "valid_ndcg@10": round(scored["valid"]["ndcg@10"], 4),
                              "test_ndcg@10": round(scored["test"]["ndcg@10"], 4)}), flush=True)
    res = Path(__file__).parent / "results"
    old_file = res / f"beauty_interim{args.tag}.json"
    if old_file.is_file() and not args.fresh:
        now = {(r["run"], r["label"], r["seed"]) for r in records}
        kept = [r for r in json.loads(old_file.read_text())["records"] if (r["run"], r["label"], r["seed"]) not in now]
        for r in kept:
            r.setdefault("evaluated", "an earlier call")
        records = sorted(kept + records, key=lambda r: (r["run"], r["label"], r["seed"]))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["run"], r["label"]), []).append(r)
    cmd = "python benchmarks/beauty_interim.py " + " ".join(sys.argv[1:])
    lines = ["# Amazon Beauty grid: interim figures of the trainings that have ended", "",
             f"Command: `{cmd}`; {info['cpu']}, {info['cores']} cores. Each training's epoch was chosen on "
             "validation while it trained; test is reported beside it and chooses nothing. The grid's table "
             "(docs/results_beauty.md) supersedes this once a run's every model and seed is done. "
             f"{sum('evaluated' in r for r in records)} of the {len(records)} trainings were evaluated by earlier "
             "calls (their run folders are gone; the records are kept).", "",
             "| run | model | seeds | " + " | ".join(f"valid {m}" for m in ("ndcg@10",)) + " | "
             + " | ".join(f"test {m}" for m in METRICS) + " | best epochs |",
             "|---|---|---|---:|" + "---:|" * len(METRICS) + "---|"]

    def pm(vals):
        v = np.asarray(vals, float)
        return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}"

    def epochs(r):
        """The best epoch, marked when training stopped at its epoch cap or time budget
        (a lower bound of the row, not where validation stopped improving)."""
        mark = {"cap": " (epoch cap)", "budget": f" of {r.get('epochs_run')} (time budget)"}.get(r.get("stop"), "")
        return "-" if r["best_epoch"] is None else f"{r['best_epoch']}{mark}"   # popularity: no epochs

    for (run, label), rs in groups.items():
        lines.append(f"| {run} | {label} | {','.join(str(r['seed']) for r in rs)} | "
                     f"{pm([r['valid']['ndcg@10'] for r in rs])} | "
                     + " | ".join(pm([r["test"][m] for r in rs]) for m in METRICS)
                     + f" | {', '.join(epochs(r) for r in rs)} |")
    md = "\n".join(lines) + "\n"
    res.mkdir(exist_ok=True)
    (res / f"beauty_interim{args.tag}.md").write_text(md)
    (res / f"beauty_interim{args.tag}.json").write_text(json.dumps({"command": cmd, "machine": info,
                                                                   "records": records}, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
