"""Train and evaluate the configured recommender on a split, over seeds, into one directory.

Layout written by :func:`train_and_evaluate` (``OUT`` is ``RUN/recommender``)::

    OUT/models/<label>/seed-<s>/   model.json, weights.safetensors (best-validation weights)
    OUT/metrics.json       protocol, each model's config, one record per (model, seed),
                           mean and std over seeds per model label
    OUT/metrics.md         the same as Markdown tables (a row per model)

``<label>`` is the model table's ``label`` (default: its type).  A record: ``label``,
``model``, ``tokenizer`` (the run's tokenizer for a SID model on the run's codes, else
None), ``seed``, ``protocol``,
``valid`` and ``test`` metrics (test from the best-validation checkpoint),
``best_epoch``, ``epochs_run``, ``seconds_per_epoch`` (median training seconds of an
epoch), ``train_seconds`` (:func:`train_seconds`: every epoch's training and validation
time, read from the checkpointed history, so a resumed run counts its earlier epochs).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .training import distributed
from .errors import ConfigError, DataError
from .io import write_json, write_text
from .eval.harness import evaluate
from .eval.metrics import DEFAULT_KS, metric_names

TIE_BREAK = "equal scores: lower catalogue index (item ids sorted as strings) first"
TIE_BREAKS = {"index": TIE_BREAK,
              "pessimistic": "pessimistic: every item with the target's score ranks ahead of it"}


def protocol(data, cfg_train, max_len: int | None, dataset: str = "") -> dict[str, Any]:
    """The evaluation protocol of a run, as recorded next to every figure."""
    return {"dataset": dataset, "split": data.kind, "n_items": int(data.n_items),
            "n_users": int(len(data.users)),
            "inputs": "test: history up to and including the validation item; valid: history before it",
            "max_len": max_len, "ranking": "full (all catalogue items, no negative sampling)",
            "mask_seen": bool(cfg_train.mask_seen),
            "tie_break": TIE_BREAKS[getattr(cfg_train, "tie_break", "index")],
            "selection": "best validation ndcg@10 (test figures from that checkpoint)"}


def make_model(model_cfg):
    """A recommender instance from a ``[model]`` config table."""
    from .models import get_recommender_class

    if model_cfg is None:
        raise ConfigError("the config has no [model] table", 'add e.g. [model] type = "sasrec"')
    params = model_cfg.model_dump(exclude={"train", "label"})
    cls = get_recommender_class(params.pop("type"))
    return cls(**params)


def train_seconds(history: list[dict[str, Any]]) -> float:
    """Training time of a run from its per-epoch history: each epoch's ``seconds`` plus
    its validation's ``valid_seconds`` (0 where a record predates that field)."""
    return float(sum(h["seconds"] + h.get("valid_seconds", 0.0) for h in history))


def fit_one(model_cfg, train_cfg, data, seed: int, device: str = "auto",
            checkpoint_dir: Path | None = None, progress: bool | None = None):
    """Fit one model for one seed; returns ``(model, record_without_metrics)``."""
    from .models import TorchRecommender

    model = make_model(model_cfg)
    t0 = time.perf_counter()
    if isinstance(model, TorchRecommender):
        model.fit(data, train=train_cfg, seed=seed, device=device, checkpoint_dir=checkpoint_dir,
                  progress=progress)
    else:
        model.fit(data)
    hist = getattr(model, "history_", [])
    secs = [h["seconds"] for h in hist]
    rec = {"model": model.name, "tokenizer": None, "seed": int(seed),
           "best_epoch": getattr(model, "best_epoch_", None), "epochs_run": len(hist),
           # why training ended: "patience" (validation stopped improving), "cap" (the epoch cap:
           # the row is a lower bound) or "budget" ([train] max_minutes); None for fitted-once models
           "stop": getattr(model, "stop_reason_", None),
           "seconds_per_epoch": float(np.median(secs)) if secs else None,
           "train_seconds": train_seconds(hist) if hist else time.perf_counter() - t0}
    return model, rec


def score_record(model, data, rec: dict[str, Any], train_cfg) -> dict[str, Any]:
    kw = {"mask_seen": train_cfg.mask_seen, "tie_break": train_cfg.tie_break,
          "batch_size": train_cfg.eval_batch_size}
    for role in ("valid", "test"):
        if role == "valid" and data.n_role("valid") == 0:
            rec[role] = None
            continue
        m = evaluate(model, data, role, **kw)
        rec[f"{role}_eval_seconds"] = m.pop("seconds")
        rec[role] = m
    return rec


def summarise(records: list[dict[str, Any]], roles: Iterable[str] = ("valid", "test")) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) over records."""
    out: dict[str, Any] = {"n_seeds": len(records)}
    for role in roles:
        recs = [r[role] for r in records if r.get(role)]
        if not recs:
            continue
        keys = [k for k in recs[0] if isinstance(recs[0][k], float)]
        out[role] = {k: {"mean": float(np.mean([r[k] for r in recs])),
                         "std": float(np.std([r[k] for r in recs], ddof=1)) if len(recs) > 1 else 0.0}
                     for k in keys}
    for k in ("best_epoch", "seconds_per_epoch", "train_seconds"):
        vals = [r[k] for r in records if r.get(k) is not None]
        if vals:
            out[k] = {"mean": float(np.mean(vals)),
                      "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    return out


def _pm(s: dict[str, float] | None, digits: int = 4) -> str:
    if not s:
        return ""
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def metrics_markdown(groups: dict[str, list[dict[str, Any]]], proto: dict[str, Any],
                     title: str = "Recommendation metrics") -> str:
    """Markdown: the protocol, then a mean ± std table per role (one row per model)."""
    names = metric_names()
    lines = [f"# {title}", "", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in proto.items() if v not in ("", None)),
             "", f"Seen items masked: **{'yes' if proto.get('mask_seen') else 'no'}**. "
             "Mean ± sample standard deviation over seeds. *target tied*: the share of examples whose "
             "target's score equals another item's (score models; the tie rule decides their rank).", ""]
    for role in ("test", "valid"):
        rows = []
        for label, recs in groups.items():
            s = summarise(recs)
            if role not in s:
                continue
            rows.append(f"| {label} | {len(recs)} | " + " | ".join(_pm(s[role].get(m)) for m in names)
                        + f" | {_pm(s[role].get('invalid_rate'))} | {_pm(s[role].get('tie_rate'))} "
                        f"| {_pm(s.get('best_epoch'), 1)} "
                        f"| {_pm(s.get('seconds_per_epoch'), 2)} | {_pm(s.get('train_seconds'), 0)} |")
        if rows:
            lines += [f"## {role.capitalize()} (mask seen: {'yes' if proto.get('mask_seen') else 'no'})", "",
                      "| model | seeds | " + " | ".join(names)
                      + " | invalid | target tied | best epoch | s/epoch | train s |",
                      "|---|---:|" + "---:|" * (len(names) + 5)] + rows + [""]
    return "\n".join(lines)


def train_and_evaluate(cfg, data, out: Path | None, *, checkpoint_root: Path | None = None,
                       progress: bool | None = None, codes_dir: Path | None = None,
                       carry_from: Path | None = None, carry: Iterable[str] = (),
                       order: Iterable[str] | None = None) -> dict[str, Any] | None:
    """Fit every recommender of ``cfg`` (``[model]`` or ``[[models]]``) for each of its seeds
    on ``data``, evaluate valid and test, write ``out/models/<label>/seed-<s>``,
    ``out/metrics.json`` and ``out/metrics.md`` (one table, a row per model).

    ``codes_dir``: the run's codes stage, given to SID models that name no ``codes``.
    Checkpoints go to ``checkpoint_root/<label>/seed-<s>`` (resumed when present, removed
    when the stage finishes).  Returns the metrics document.

    ``carry``: labels of models already trained in the stage folder ``carry_from`` (an
    earlier ``RUN/recommender``): their model folders and records are copied over
    unchanged, not retrained (:func:`sidkit.pipeline.recommender_stage` decides which);
    ``order``: the labels' order in the tables.

    In data-parallel training (:mod:`sidkit.training.distributed`) every rank trains, but only rank
    0 evaluates and writes anything; the other ranks return None (and may pass ``out=None``).
    """
    main = distributed.is_main()
    out = Path(out) if out is not None else None
    carry = list(carry)
    recs = cfg.recommenders()
    if not recs and not carry:
        raise ConfigError("the config names no recommender", 'add e.g. [model] type = "sasrec"')
    need = max(max(DEFAULT_KS), 20)              # Recall/NDCG@20 and MRR@20 rank the top 20
    if recs and data.n_items < need:
        raise DataError(f"the split's catalogue holds {data.n_items} items, but the evaluation protocol ranks "
                        f"the top {need} (Recall/NDCG@5,10,20, MRR@20; docs/evaluation.md)",
                        f"use a data set with at least {need} items (check [data] user_core / item_core, "
                        "which may have filtered them out)")
    groups: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, Any] = {}
    protos = {}
    trained: list[tuple[str, int]] = []          # (label, seed): whose checkpoints go when the stage ends
    for label, model_cfg, train_cfg in recs:
        own_codes = codes_dir is not None and uses_run_codes(model_cfg)
        if own_codes:
            model_cfg = with_run_codes(model_cfg, codes_dir)
        records = []
        for seed in list(train_cfg.seeds) or [cfg.seed]:
            ck = checkpoint_root / label / f"seed-{seed}" if checkpoint_root is not None else None
            model, rec = fit_one(model_cfg, train_cfg, data, seed, cfg.device, ck, progress)
            trained.append((label, seed))
            if not main:
                continue
            rec["label"] = label
            rec["tokenizer"] = cfg.codes.method if own_codes else None
            records.append(score_record(model, data, rec, train_cfg))
            model.save(out / "models" / label / f"seed-{seed}")
        if not main:
            continue
        protos[label] = protocol(data, train_cfg, getattr(model, "max_len", None), cfg.data.dataset)
        for r in records:
            r["protocol"] = protos[label]
        groups[label] = records
        models[label] = {"model": model_cfg.fingerprint_dict(), "train": train_cfg.model_dump()}
    if not main:
        return None
    if carry:
        from .io import read_json

        old = read_json(Path(carry_from) / "metrics.json")
        for label in carry:
            shutil.copytree(Path(carry_from) / "models" / label, out / "models" / label)
            groups[label] = [r for r in old["records"] if r.get("label") == label]
            models[label] = old["models"][label]
            protos[label] = groups[label][0]["protocol"]
        rank = {label: i for i, label in enumerate(order or [])}
        groups = dict(sorted(groups.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    proto = {k: v for k, v in next(iter(protos.values())).items()
             if all(p.get(k) == v for p in protos.values())}   # what all models share
    doc = {"protocol": proto, "labels": list(groups), "models": models, "records": [r for rs in groups.values() for r in rs],
           "summary": {label: summarise(rs) for label, rs in groups.items()}}
    write_json(out / "metrics.json", doc)
    write_text(out / "metrics.md", metrics_markdown(groups, proto) + "\n")
    if checkpoint_root is not None:
        remove_checkpoints(checkpoint_root, trained)
    return doc


def remove_checkpoints(root: Path, trainings: Iterable[tuple[str, int]]) -> None:
    """Remove the epoch checkpoints ``root/<label>/seed-<s>`` of ``trainings`` (their models
    are saved), then the folders left empty. Any other training's checkpoint under ``root``
    stays: another config sharing the run folder (a grid run in parts, another seed) may
    still need it."""
    root = Path(root)
    for label, seed in trainings:
        shutil.rmtree(root / label / f"seed-{seed}", ignore_errors=True)
    for label in {label for label, _ in trainings}:
        for folder in (root / label, root):
            try:
                folder.rmdir()             # only when empty
            except OSError:
                pass


def checkpoint_root(run: str | Path) -> Path:
    """Where a run's recommender stage keeps its epoch checkpoints: ``RUN/checkpoints/recommender``,
    outside the stage's temporary folder, so that an interrupted stage resumes."""
    return Path(run) / "checkpoints" / "recommender"


def trainable(cfg) -> list[tuple[str, int]]:
    """``(label, seed)`` of every training of ``cfg``'s recommender stage that keeps epoch
    checkpoints (the torch models), in the stage's order; models fitted in one pass
    (popularity, content kNN) are left out."""
    from .models import TorchRecommender, get_recommender_class

    return [(label, int(seed)) for label, model_cfg, train_cfg in cfg.recommenders()
            if issubclass(get_recommender_class(model_cfg.type), TorchRecommender)
            for seed in (list(train_cfg.seeds) or [cfg.seed])]


def fit_in_run(cfg, run: str | Path, label: str, seed: int):
    """Train model ``label`` of ``cfg`` for ``seed`` on the run's split (and codes), to the end,
    into the epoch checkpoint its recommender stage resumes from (a training that ended
    already only loads its best-validation weights).  ``RUN/split`` (and ``RUN/codes`` for a
    SID model on the run's codes) must be computed.  Returns ``(model, record, data,
    train_cfg)``: the record of :func:`fit_one` (no metrics; :func:`score_record` adds them)."""
    from .data import Split
    from .eval.sequences import SequenceData

    run = Path(run)
    found = [(m, t) for lb, m, t in cfg.recommenders() if lb == label]
    if not found:
        raise ConfigError(f"the config has no model labelled {label!r}",
                          "name one of: " + ", ".join(lb for lb, _, _ in cfg.recommenders()))
    model_cfg, train_cfg = found[0]
    if uses_run_codes(model_cfg):
        model_cfg = with_run_codes(model_cfg, run / "codes")
    data = SequenceData.from_split(Split.load(run / "split"))
    model, rec = fit_one(model_cfg, train_cfg, data, seed, cfg.device,
                         checkpoint_root(run) / label / f"seed-{seed}", progress=False)
    rec["label"] = label
    return model, rec, data, train_cfg


def pretrain(cfg, run: str | Path, label: str, seed: int) -> dict[str, Any]:
    """:func:`fit_in_run`'s record: the recommender stage then finds the training finished
    and only evaluates.  The grid runs a run's trainings as parallel jobs this way
    (:func:`sidkit.grid.run_experiment`); a training resumes from its checkpoint."""
    return fit_in_run(cfg, run, label, seed)[1]


def uses_run_codes(model_cfg) -> bool:
    """True when the model needs SIDs and names no ``codes`` path: it takes the run's own codes stage."""
    return (getattr(model_cfg, "type", None) in ("causal_sid", "tiger")
            and not getattr(model_cfg, "id_only", False) and model_cfg.codes is None)


def recommender_inputs(cfg) -> tuple[str, ...]:
    """Stages the recommender stage reads: the split, plus ``codes`` when a SID model names no codes path."""
    return ("split", "codes") if any(uses_run_codes(m) for _, m, _ in cfg.recommenders()) else ("split",)


def with_run_codes(model_cfg, codes_dir: Path):
    """``model_cfg`` with ``codes`` set to ``codes_dir`` (a run's codes stage) when it needs it."""
    if not uses_run_codes(model_cfg):
        return model_cfg
    return model_cfg.model_copy(update={"codes": str(Path(codes_dir).resolve())})


def recommender_stage_fn(cfg, *, carry_from: Path | None = None, carry: Iterable[str] = (),
                         order: Iterable[str] | None = None):
    """The pipeline stage function: train + evaluate on ``RUN/split``, write into the stage dir
    (``carry``: models copied from ``carry_from``, see :func:`train_and_evaluate`).

    A causal SID model without a ``codes`` path reads the run's own ``RUN/codes`` stage
    (see :func:`recommender_inputs`).

    Checkpoints live in ``RUN/checkpoints/recommender`` (outside the stage's temporary
    directory) so an interrupted stage resumes where it stopped.
    """
    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        from .data import Split
        from .eval.sequences import SequenceData

        data = SequenceData.from_split(Split.load(inp["split"]))
        root = checkpoint_root(inp["split"].parent)
        doc = train_and_evaluate(cfg, data, out, checkpoint_root=root, codes_dir=inp.get("codes"),
                                 carry_from=carry_from, carry=carry, order=order)
        if doc is None:   # a data-parallel rank other than 0: it trained, rank 0 wrote
            return {}
        return {"mask_seen": doc["protocol"].get("mask_seen"), "labels": doc["labels"],
                "models": {label: {"n_seeds": s["n_seeds"], "test": {k: v["mean"] for k, v in s["test"].items()},
                                   "train_seconds": sum(r["train_seconds"] for r in doc["records"]
                                                        if r["label"] == label)}
                           for label, s in doc["summary"].items()}}

    return fn
