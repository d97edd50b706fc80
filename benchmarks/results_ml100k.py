"""MovieLens-100K leave-one-out results over seeds -> docs/results.{md,json}.

Usage::

    python benchmarks/results_ml100k.py                  # 3 seeds, popularity and SASRec
    python benchmarks/results_ml100k.py --models sasrec --seeds 1
    python benchmarks/results_ml100k.py --models causal_sid@rqkmeans,causal_sid@gaoq,causal_sid_id
    python benchmarks/results_ml100k.py --write-only                              # docs from the records

Model names: ``popularity``, ``sasrec``, ``MODEL@TOKENIZER`` (a generative model over the
Semantic IDs of a tokenizer: ``causal_sid@rqkmeans``, ``tiger@rqkmeans``, ...; the SIDs
come from ``sidkit run`` with that ``[codes] method`` into ``--work/sids-TOKENIZER``, text
embeddings as in the default run; ``METHOD-KxL``, e.g. ``causal_sid@rqkmeans-256x3``, sets
L levels of K codewords; a method name alone means 24 x 24 x 24, the default sizes when
those rows ran, GAOQ its own tree), and ``causal_sid_id`` (the ID-only ablation).  SID
models use the settings of the default run's causal model (``src/sidkit/default.toml``)
or ``configs/tiger.toml``, with ``--epochs`` / ``--patience`` as the budget.

Each (model, seed) run appends one record to ``--records`` (JSON lines; a finished
run is not repeated, an interrupted SASRec run resumes from its epoch checkpoint in
``--work``).  ``docs/results.json`` (every record) and ``docs/results.md`` (the
protocol, then mean ± std tables) are always rewritten from all records, so both
files carry the same numbers.  Protocol: ML-100K, users with >= 5 interactions,
leave-one-out on the chronological order, full ranking over all 1,682 items, seen
items not masked, ties to the lower catalogue index, test figures from the
best-validation-NDCG@10 epoch (see docs/evaluation.md).  Choices between models and
settings are made on validation NDCG@10 (the "Choosing on validation" section of
docs/results.md, :func:`choice_markdown`); test figures are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_records(path: Path) -> list[dict]:
    """The records of ``path``; ``train_seconds`` re-read from each record's history
    (:func:`sidkit.recommender_stage.train_seconds`: every epoch, including those before a
    resume, which the process-wall figure of older records missed)."""
    from sidkit.recommender_stage import train_seconds

    if not path.is_file():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in recs:
        if r.get("history"):
            r["train_seconds"] = train_seconds(r["history"])
    return recs


def write_docs(records: list[dict], docs: Path, command: str, note: str = "") -> None:
    from sidkit.recommender_stage import metrics_markdown, summarise
    from sidkit.io import write_json, write_text

    if not records:
        raise SystemExit("no records to write")
    proto = records[0]["protocol"]
    groups: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r.get("label", r["model"]), r["seed"])):
        groups.setdefault(r.get("label", r["model"]), []).append(r)
    order = [m for m in ("popularity", "sasrec") if m in groups] + [m for m in groups if m not in ("popularity", "sasrec")]
    groups = {m: groups[m] for m in order}
    write_json(docs / "results.json", {"protocol": proto, "command": command, "note": note,
                                       "summary": {m: summarise(rs) for m, rs in groups.items()},
                                       "records": [r for rs in groups.values() for r in rs]})
    md = metrics_markdown(groups, proto, title="Results: MovieLens-100K, leave-one-out")
    md = md.rstrip("\n") + "\n\n" + "\n".join(choice_markdown(groups)) + "\n"
    def spe(r: dict) -> str:
        return "" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.2f}"

    seeds = "\n".join(f"| {r.get('label', r['model'])} | {r['seed']} | {r['test']['recall@10']:.4f} | {r['test']['ndcg@10']:.4f} | "
                      f"{r['valid']['ndcg@10']:.4f} | {r['best_epoch']} | {r['epochs_run']} | {spe(r)} |"
                      for rs in groups.values() for r in rs)
    extra = ["", "## Per seed", "",
             "| model | seed | test recall@10 | test ndcg@10 | valid ndcg@10 | best epoch | epochs run | s/epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|", seeds, "",
             "Written by `benchmarks/results_ml100k.py` from `docs/results.json`'s records; reproduce with", "",
             *sorted({f"    {r['command']}" for rs in groups.values() for r in rs if r.get("command")}
                     or {f"    {command}"}), "",
             *([note, ""] if note else []),
             "Seconds per epoch are medians of the training time of each epoch (validation excluded) on a "
             "shared 2-core CPU (1 torch thread per run); they vary with the machine's load. "
             "\"train s\" sums every epoch's training time from the run's history (epochs before a resume "
             "included) plus its validations' time where the history records it (runs recorded since the "
             "history carries `valid_seconds`; older rows count training epochs only).", ""]
    write_text(docs / "results.md", md + "\n".join(extra))


def choice_markdown(groups: dict[str, list[dict]]) -> list[str]:
    """The "Choosing on validation" section of docs/results.md: per model, the validation
    NDCG@10 (which decides) beside the test NDCG@10 (reported, never chooses), and the SID
    recipe (``MODEL@TOKENIZER`` rows) with the highest validation NDCG@10 -- the recipe of
    ``configs/presets/sidkit.toml`` (:func:`sidkit.selection.select_best`)."""
    import numpy as np

    from sidkit.selection import select_best

    def pm(rs: list[dict], role: str) -> str:
        v = [r[role]["ndcg@10"] for r in rs if r.get(role)]
        return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}" if v else ""

    def cap(rs: list[dict]) -> str:
        caps = sorted({r["train"]["epochs"] for r in rs if r.get("train")})
        return " / ".join(str(c) for c in caps) or "--"

    sid = {m: rs for m, rs in groups.items() if "@" in m and all(r.get("valid") for r in rs)}
    chosen = select_best(sid) if sid else None
    lines = ["## Choosing on validation", "",
             "Every choice made from these records (codebook sizes, levels, tokenizer, the preset's recipe, "
             "training budget) is made on **validation** NDCG@10 (mean over seeds; "
             "`sidkit.selection.select_best`, docs/evaluation.md); the test figures are reported beside it "
             "and never choose."]
    if chosen is not None:
        lines += ["", f"The SID recipe with the highest validation NDCG@10: **{chosen}** "
                      f"(valid {pm(sid[chosen], 'valid')}, test {pm(sid[chosen], 'test')}); "
                      "`configs/presets/sidkit.toml` takes its SIDs (tests/test_selection.py checks that it does). "
                      "Epoch caps differ between rows: compare rows of equal caps for a fair reading."]
    lines += ["", "| model | seeds | epoch cap | valid NDCG@10 (decides) | test NDCG@10 |", "|---|---:|---:|---:|---:|"]
    for m, rs in groups.items():
        v = pm(rs, "valid")
        lines.append(f"| {m}{' (chosen)' if m == chosen else ''} | {len(rs)} | {cap(rs)} | "
                     f"{f'**{v}**' if m == chosen else v} | {pm(rs, 'test')} |")
    return lines


def _portable(params: dict) -> dict:
    """``params`` with a ``codes`` path under the repository written relative to it."""
    codes = params.get("codes")
    if codes and Path(codes).is_absolute() and Path(codes).is_relative_to(ROOT):
        params = {**params, "codes": str(Path(codes).relative_to(ROOT))}
    return params


def _sid_codes(tokenizer: str, work: Path) -> Path:
    """The codes directory of ``sidkit run`` with ``[codes] method = tokenizer`` (cached)."""
    from _common import ml100k_sid_run

    return ml100k_sid_run(tokenizer, work) / "codes"


def _model_table(name: str, work: Path) -> tuple[dict, dict, str | None]:
    """(model table, its train overrides, tokenizer) of a --models entry."""
    import tomllib

    from sidkit.config import default_config

    if name in ("popularity", "sasrec"):
        return {"type": name}, {}, None
    causal = next(m for _, m, _ in default_config().recommenders() if m.type == "causal_sid")
    base, kind = name.split("@", 1) if "@" in name else (name, None)
    if base == "causal_sid_id":
        table = causal.model_dump(exclude={"train", "label"}) | {"id_only": True}
        return table, causal.train.model_dump(exclude_unset=True), None
    if base == "causal_sid" and kind:
        table = causal.model_dump(exclude={"train", "label"}) | {"codes": str(_sid_codes(kind, work))}
        return table, causal.train.model_dump(exclude_unset=True), kind
    if base == "tiger" and kind:
        doc = tomllib.loads((ROOT / "configs" / "tiger.toml").read_text())
        return doc["model"] | {"codes": str(_sid_codes(kind, work))}, doc.get("train", {}), kind
    raise SystemExit(f"unknown model {name!r}: use popularity, sasrec, causal_sid@TOKENIZER, "
                     "tiger@TOKENIZER or causal_sid_id")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="popularity,sasrec")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "results" / "results_ml100k.jsonl")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "results_ml100k")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--write-only", action="store_true")
    ap.add_argument("--note", default="", help="a sentence added to docs/results.md (e.g. how runs were capped)")
    args = ap.parse_args()
    command = ("python benchmarks/results_ml100k.py "
               f"--models {args.models} --seeds {args.seeds} --epochs {args.epochs} --patience {args.patience} --threads {args.threads}")
    if args.write_only:
        write_docs(_load_records(args.records), args.docs, command, args.note)
        return

    import torch

    torch.set_num_threads(args.threads)
    from sidkit.config import config_from_dict
    from sidkit.data import load_dataset, make_split, preprocess
    from sidkit.eval import SequenceData
    from sidkit.recommender_stage import fit_one, protocol, score_record

    ds = load_dataset("ml-100k")
    data = SequenceData.from_split(make_split(preprocess(ds.interactions, user_k=5), "leave_one_out"))
    for name in args.models.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            done = {(r.get("label", r["model"]), r["seed"]) for r in _load_records(args.records)}
            if (name, seed) in done:   # read again before each run: several processes may share it
                print(f"{name} seed {seed}: already in {args.records}", flush=True)
                continue
            model_cfg, train_over, tokenizer = _model_table(name, args.work)
            cfg = config_from_dict({"seed": seed, "device": args.device, "model": model_cfg,
                                    "train": {**train_over, "epochs": args.epochs, "patience": args.patience}})
            t0 = time.time()
            model, rec = fit_one(cfg.model, cfg.train, data, seed, args.device,
                                 args.work / f"{name.replace('@', '-')}-seed{seed}", progress=False)
            rec = score_record(model, data, rec, cfg.train)
            rec["label"], rec["tokenizer"], rec["command"] = name, tokenizer, command
            rec["protocol"] = protocol(data, cfg.train, getattr(model, "max_len", None), "ml-100k (user_core=5)")
            rec["train"] = cfg.train.model_dump() if name != "popularity" else None
            rec["params"] = _portable(model.get_params())
            rec["history"] = [{k: h[k] for k in ("epoch", "loss", "seconds", "valid_seconds") if k in h} |
                              ({"valid_ndcg@10": h["valid"]["ndcg@10"]} if "valid" in h else {})
                              for h in getattr(model, "history_", [])]
            args.records.parent.mkdir(parents=True, exist_ok=True)
            with open(args.records, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{name} seed {seed}: test ndcg@10 {rec['test']['ndcg@10']:.4f} recall@10 "
                  f"{rec['test']['recall@10']:.4f} best epoch {rec['best_epoch']} ({time.time() - t0:.0f}s)", flush=True)
    write_docs(_load_records(args.records), args.docs, command, args.note)


if __name__ == "__main__":
    sys.exit(main())
