"""The default pipeline: data -> split -> items -> embeddings -> codes -> diagnostics.

Each stage reads the artifacts of the stages before it and writes one artifact
directory under the run directory (see :mod:`sidkit.stages`): unchanged stages are
skipped, ``force=True`` reruns everything.

Run layout::

    RUN/data/         interactions.parquet, items.parquet (+ JSON metadata)
    RUN/split/        split.parquet (+ JSON)
    RUN/items/        items.parquet, texts.json (the rendered item texts), or
                      item_ids.json (row order) when [embed] embeddings_file is given
    RUN/embeddings/   embeddings.npy, embeddings.json
    RUN/codes/        codes.npz, codes.json, tokenizer/, summary.json
    RUN/diagnostics/  report.html, report.json, report.md

Every stage folder holds a ``meta.json`` (see :mod:`sidkit.stages`).  Before any stage
runs, :func:`run_pipeline` checks that each existing stage path is a folder sidkit
wrote (anything else is an error and is left untouched), that no input of the config
lies inside a stage folder, that the device exists, and removes the temporary folders
of killed runs.  A cached stage whose files no longer match its meta.json reruns, and
so does every stage after it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import ExperimentConfig
from .errors import ArtifactError, ConfigError, DataError, SidkitError
from .io import hash_file, load_npy, read_json, write_json
from .stages import (Stage, StageResult, check_replaceable, clean_stale_tmp, run_stage,
                     sigterm_as_exit)
from .types import Codes, Embeddings
from .utils import index_of

STAGES = ("data", "split", "items", "embeddings", "codes", "diagnostics")


# ----------------------------------------------------------------- helpers
def _source_fingerprint(dataset: str, source: str | None) -> Any:
    """What identifies the raw input: checksums for ml-100k, file hashes for paths."""
    from .data import ML100K_SHA256

    path = Path(source or dataset).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return [[p.name, hash_file(p)] for p in files]
    if dataset.lower() == "ml-100k":
        return ML100K_SHA256
    return dataset


def training_pairs(split_dir: Path, item_ids: np.ndarray, window: int = 1) -> np.ndarray:
    """Co-engaged item pairs (row indices) from the training sequences of a split."""
    from .data import Split
    from .tokenizers import cooccurrence_pairs

    df = Split.load(split_dir).train.sort_values(["user_id", "position"], kind="stable")
    idx = index_of(df["item_id"].to_numpy(), item_ids)
    lengths = df.groupby("user_id", sort=False).size().to_numpy()
    return cooccurrence_pairs(idx, window=window, lengths=lengths)


def make_tokenizer(cfg: ExperimentConfig):
    """Instantiate the configured tokenizer, passing only the parameters it takes."""
    from .tokenizers import get_tokenizer_class

    cls = get_tokenizer_class(cfg.codes.method)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kw: dict[str, Any] = {"random_state": cfg.seed, "device": cfg.device,
                          "n_levels": cfg.codes.n_levels,
                          "resolve_collisions": cfg.codes.resolve_collisions,
                          "verbose": True}  # progress bars of trained tokenizers
    if cfg.codes.codebook_sizes:
        if "codebook_sizes" not in accepted:   # never drop a size the user asked for
            raise ConfigError(
                f"[codes] codebook_sizes = {list(cfg.codes.codebook_sizes)} does not apply to "
                f"{cfg.codes.method!r}: it has no codebook_sizes parameter"
                + (" (its tree is set by branching, children per node; the last level holds the leaves)"
                   if "branching" in accepted else ""),
                "remove codebook_sizes" + (" and set [codes] params = { branching = [b1, b2] }"
                                           if "branching" in accepted else ""))
        kw["codebook_sizes"] = list(cfg.codes.codebook_sizes)
    kw = {k: v for k, v in kw.items() if k in accepted}
    unknown = set(cfg.codes.params) - accepted
    if unknown:
        raise DataError(f"tokenizer {cfg.codes.method!r} has no parameter(s) {sorted(unknown)}",
                        f"valid parameters: {', '.join(sorted(accepted))}")
    kw.update(cfg.codes.params)
    return cls(**kw)


def apply_hourglass_remedy(codes: Codes, cfg: ExperimentConfig) -> Codes:
    """Apply the configured seed-002 remedy (drop a level, or adaptive top-K removal)."""
    from .tokenizers import drop_level, topk_removal

    c = cfg.codes
    if c.hourglass_remedy == "drop_level":
        return drop_level(codes, c.hourglass_level)
    if c.hourglass_remedy == "topk":
        return topk_removal(codes, c.hourglass_level, c.hourglass_k)[0]
    return codes


def sid_summary(codes: Codes) -> dict[str, Any]:
    """Per-level usage, perplexity and collisions of a Codes artifact.

    ``semantic_collisions`` counts items that share their semantic SID (the tokens
    before a disambiguation token, :meth:`Codes.semantic`): the honest headline.
    ``collisions`` counts whole final SIDs, 0 by construction once a disambiguation
    level was added.
    """
    from .diagnostics.prefix import collisions
    from .diagnostics.usage import usage

    levels = usage(codes, include_counts=False)
    return {"n_items": codes.n_items, "n_levels": codes.n_levels,
            "codebook_sizes": list(codes.codebook_sizes), "method": codes.method,
            "collision_rule": codes.collision_rule, "levels": levels,
            "semantic_collisions": collisions(codes.semantic()),
            "collisions": collisions(codes)}


# ------------------------------------------------------------------ stages
def _data_stage(cfg: ExperimentConfig) -> Stage:
    import pandas as pd

    from .data import ItemTable, dataset_info, load_dataset, preprocess, repeated_pairs
    from .data.split import KCoreEmpty

    d = cfg.data

    def is_sequence_data() -> bool:
        """Whether ``[data] dataset`` is a sequence file (``format``, else detected)."""
        from .data import detect_format

        if d.format or d.columns:   # a column mapping reads a detected sequence file as a table
            return d.format == "sequences"
        path = Path(d.dataset).expanduser()
        try:
            return path.exists() and detect_format(path) == "sequences"
        except SidkitError:   # load_dataset names the problem
            return False

    def fn(out: Path, _: dict[str, Path]) -> dict[str, Any]:
        kw: dict[str, Any] = {"source": d.source} if d.source else {}
        if d.columns:
            kw["columns"] = dict(d.columns)
        if d.format:
            kw["format"] = d.format
        sequences = is_sequence_data()
        if sequences and d.split == "temporal":
            raise DataError(f"[data] split = \"temporal\" cuts at global timestamps, and the sequence file "
                            f"{d.dataset} has none (an item's timestamp is its position in the user's line)",
                            "use [data] split = \"leave_one_out\" (the protocol of these files)")
        ds = load_dataset(d.dataset, **kw)
        if d.items:
            ds.items = _load_items(Path(d.items).expanduser(), d.columns.get("item_id"))
            if sequences:   # every item of the sequences has a row; rows of other items go
                from .data import match_items
                ds.items = match_items(ds.interactions, ds.items)
        elif ds.items is None:
            # no side information: the catalogue is every item id of the data file
            # (before k-core), sorted as strings -- the row order of an embeddings_file
            ids = np.unique(ds.interactions.df["item_id"].astype(str).to_numpy())
            ds.items = ItemTable(pd.DataFrame({"item_id": ids}), name=ds.name,
                                 source="item ids of the interactions")
        if len(ds.interactions.df) == 0:
            raise DataError(f"{d.dataset} holds no interactions (only a header row?)",
                            "add rows (user, item, timestamp) to the file, or point [data] dataset at another one")
        n_repeated = repeated_pairs(ds.interactions)
        try:
            ds.interactions = preprocess(ds.interactions, user_k=d.user_core, item_k=d.item_core,
                                         repeats=d.repeats)
        except KCoreEmpty as e:
            raise DataError(
                f"k-core filtering with [data] user_core = {e.user_k}, item_core = {e.item_k} "
                f"removes every interaction of {d.dataset} ({e.n_interactions} interactions)",
                "set [data] " + ", ".join([f"user_core = {e.max_user_k}"] * bool(e.user_k)
                                          + [f"item_core = {e.max_item_k}"] * bool(e.item_k))
                + " or lower (the largest thresholds that keep data), or 0 to disable") from None
        ds.save(out)
        info = dataset_info(ds.interactions)
        info.update(repeats=d.repeats, repeated_pairs_source=n_repeated)
        return info

    params = {"dataset": d.dataset, "user_core": d.user_core, "item_core": d.item_core,
              "source": _source_fingerprint(d.dataset, d.source)}
    if d.repeats != "keep":   # absent at the default: runs made before the key stay cached
        params["repeats"] = d.repeats
    if d.format:              # likewise
        params["format"] = d.format
    if d.items or d.columns:  # absent for configs without them: their runs stay cached
        params.update(items=_source_fingerprint(d.items, None) if d.items else None,
                      columns=dict(d.columns))
    return Stage("data", fn, params, version=2)  # 2: id-only item table when the data has none


def _load_items(path: Path, id_column: str | None):
    """The ``[data] items`` table; its id column is ``item_id`` or the mapped one.
    JSON Lines (``.jsonl`` / ``.json``, plain or ``.gz``) or CSV/TSV/Parquet."""
    from .data import load_item_table
    from .data._readers import first_record
    from .data._readers import ITEM_JSONL_SUFFIXES
    from .data.tabular import read_table

    if not path.is_file():
        raise DataError(f"[data] items file {path} does not exist",
                        "give the path of a JSON Lines or CSV/TSV/Parquet item table")
    if path.name.lower().endswith(ITEM_JSONL_SUFFIXES):
        keys = list(first_record(path) or {})
        return load_item_table(path, item_id=id_column if id_column and id_column in keys else "item_id")
    cols = list(read_table(path).columns)
    col = id_column if id_column and id_column in cols else "item_id"
    if col not in cols:
        raise DataError(f"[data] items file {path} has no item id column "
                        f"{(id_column or 'item_id')!r}; columns found: {cols}",
                        "name the column item_id, or map it with [data] columns = "
                        "{ item_id = \"<your column>\" }")
    return load_item_table(path, item_id=col)


def _split_stage(cfg: ExperimentConfig) -> Stage:
    from .data import Interactions, make_split

    d = cfg.data

    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        inter = Interactions.load(inp["data"])
        kw = {"test_fraction": d.temporal_test_fraction} if d.split == "temporal" else {}
        split = make_split(inter, d.split, **kw)
        split.save(out)
        return {"kind": d.split, **{r: int(len(split.role(r))) for r in ("train", "valid", "test")}}

    return Stage("split", fn, {"split": d.split, "test_fraction": d.temporal_test_fraction},
                 inputs=("data",))


def _items_stage(cfg: ExperimentConfig) -> Stage:
    from .data import ItemTable, item_texts

    from_file = bool(cfg.embed.embeddings_file)

    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        if not (inp["data"] / "items.json").exists():
            raise DataError("the data set has no item table (titles, categories, ...), so there "
                            "is no item text to embed",
                            "give an item table with [data] items, or set [embed] embeddings_file")
        items = ItemTable.load(inp["data"])
        ids = items.items.astype(str).tolist()
        items.save(out)
        if from_file:  # no texts: the embeddings come from a file, one row per item in this order
            write_json(out / "item_ids.json", {"item_ids": ids})
            return {"n_items": len(items), "texts": "skipped ([embed] embeddings_file is given)"}
        if not items.fields:
            raise DataError("the data set has no item table (titles, categories, ...), so there "
                            "is no item text to embed",
                            "give an item table with [data] items, or set [embed] embeddings_file")
        texts = item_texts(items, cfg.embed.template)
        write_json(out / "texts.json", {"item_ids": ids, "texts": texts})
        return {"n_items": len(items), "example": texts[0] if texts else ""}

    params: dict[str, Any] = {"template": cfg.embed.template}
    if from_file:
        params = {"texts": False}
    return Stage("items", fn, params, inputs=("data",))


def _embeddings_stage(cfg: ExperimentConfig) -> Stage:
    from .embed import TextEmbedder
    from .embed.text import _model_fingerprint, resolve_model_dir

    e = cfg.embed
    if e.method == "famae":
        return _famae_stage(cfg)

    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        if e.embeddings_file:
            ids = np.asarray(read_json(inp["items"] / "item_ids.json")["item_ids"])
            path = Path(e.embeddings_file).expanduser()
            if not path.is_file() or path.suffix != ".npy":
                raise DataError(f"embeddings_file {path} is not an existing .npy file",
                                "save the (items, dim) float32 matrix with numpy.save")
            vec = load_npy(path)
            if vec.ndim != 2 or vec.shape[0] != len(ids):
                raise DataError(
                    f"embeddings_file {path} has shape {vec.shape}, expected ({len(ids)}, dim): "
                    "one row per item in item-table order",
                    f"re-export the embeddings in the order of {inp['items'] / 'item_ids.json'} "
                    "(the item table, or without one the item ids sorted as strings)")
            emb = Embeddings(vec, ids, source=f"file:{path.name}")
        else:
            t = read_json(inp["items"] / "texts.json")
            ids = np.asarray(t["item_ids"])
            emb_vec = TextEmbedder(e.model, e.batch_size, e.normalize, cfg.device).embed(t["texts"])
            emb = Embeddings(emb_vec, ids, source="text", meta={"model": e.model,
                                                                "normalize": e.normalize})
        emb.save(out)
        return {"n_items": len(emb), "dim": emb.dim, "source": emb.source}

    model_id = (hash_file(e.embeddings_file) if e.embeddings_file and Path(e.embeddings_file).is_file()
                else None if e.embeddings_file else _model_fingerprint(resolve_model_dir(e.model)))
    return Stage("embeddings", fn, {"model": model_id, "normalize": e.normalize,
                                    "file": e.embeddings_file}, inputs=("items",))


def _famae_stage(cfg: ExperimentConfig) -> Stage:
    """FAMAE embeddings (docs/famae.md): trained on the split's training interactions only."""
    from .data import ItemTable, Split
    from .embed.famae import famae_from_config

    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        model = famae_from_config(cfg.embed.famae, seed=cfg.seed, device=cfg.device)
        emb = model.fit(ItemTable.load(inp["items"]), Split.load(inp["split"]).train).embeddings()
        emb.save(out)
        return {"n_items": len(emb), "dim": emb.dim, "source": emb.source, "epochs": emb.meta["epochs"],
                "best_valid": emb.meta["best_valid"], "train_seconds": emb.meta["train_seconds"]}

    return Stage("embeddings", fn, {"method": "famae", "famae": cfg.embed.famae.model_dump(), "seed": cfg.seed},
                 inputs=("items", "split"))


def _uses_sizing_rule(cfg: ExperimentConfig) -> bool:
    """Whether the tokenizer's codebook sizes come from the default rule
    (:mod:`sidkit.tokenizers.sizing`): it has codebooks and none were given."""
    from .tokenizers import get_tokenizer_class

    if cfg.codes.codebook_sizes or {"codebook_size", "codebook_sizes"} & set(cfg.codes.params):
        return False
    try:
        accepted = set(inspect.signature(get_tokenizer_class(cfg.codes.method).__init__).parameters)
    except SidkitError:   # an unknown method: validate_run names it
        return False
    return bool(accepted & {"codebook_size", "codebook_sizes"})


def _codes_stage(cfg: ExperimentConfig) -> Stage:
    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        emb = Embeddings.load(inp["embeddings"])
        tok = make_tokenizer(cfg)
        if "pairs" in inspect.signature(tok.fit).parameters:
            tok.fit(emb.vectors, pairs=training_pairs(inp["split"], emb.item_ids))
        else:
            tok.fit(emb.vectors)
        codes = tok.encode(emb.vectors).replace(item_ids=emb.item_ids)
        codes = apply_hourglass_remedy(codes, cfg)
        if codes.has_collisions() and cfg.codes.resolve_collisions:
            from .tokenizers import resolve_collisions
            codes = resolve_collisions(codes)
        codes.save(out / "codes")
        tok.save(out / "tokenizer")
        summary = sid_summary(codes)
        write_json(out / "summary.json", summary)
        return summary

    params = {"codes": cfg.codes.model_dump(), "seed": cfg.seed}
    if _uses_sizing_rule(cfg):
        # the sizing rule's version (docs/studies/codebooks.md: 256 per level from 1,024 items
        # up) is in the key: codes sized by an earlier rule are stale, codes with explicit sizes not
        params["sizing_rule"] = 2
    if cfg.codes.method == "gaoq" or cfg.codes.params.get("balanced") is True:
        # balanced k-means 2: warm start + change tolerance (src/sidkit/tokenizers/kmeans.py);
        # in the key only where it runs, so that every other cached codes stage stays valid
        params["balanced_kmeans"] = 2
    # version 2: summary.json counts semantic collisions; version 3: tokenizers store
    # the catalogue's item -> SID table (docs/encoding.md)
    return Stage("codes", fn, params, inputs=("embeddings", "split"), version=3)


def _diagnostics_stage(cfg: ExperimentConfig) -> Stage:
    from .diagnostics import diagnose
    from .diagnostics.report import write_report
    from .tokenizers import Tokenizer

    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        emb = Embeddings.load(inp["embeddings"])
        codes = Codes.load(inp["codes"] / "codes")
        tok = Tokenizer.load(inp["codes"] / "tokenizer")
        if "hourglass" in codes.params:
            # remedied codes no longer match what the tokenizer encodes/decodes: diagnose
            # them from the codes and embeddings alone (prefix-mean fidelity, no re-encoding)
            tok = None
        pairs = training_pairs(inp["split"], emb.item_ids)
        res = diagnose(codes, emb.vectors, tok, pairs, scales=cfg.diagnostics.perturbation_scales,
                       random_state=cfg.seed)
        if cfg.diagnostics.report:
            rec = read_json(inp["recommender"] / "metrics.json") if "recommender" in inp else None
            write_report({cfg.codes.method: res}, out, title=f"sidkit diagnostics: {cfg.name}",
                         recommender=rec)
        else:
            write_json(out / "report.json", res)
        return headline(res)

    rec_input = ("recommender",) if cfg.recommenders() else ()  # metrics in the report
    return Stage("diagnostics", fn, cfg.diagnostics.model_dump(),
                 inputs=("embeddings", "split", "codes") + rec_input,
                 version=6)  # 3: semantic collisions; 4, 5: member-distribution overlap (5: trees);
    # 6: summary rel_mse is the decoder's only, rel_mse_prefix_mean beside it


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """The few diagnostics numbers worth a line in a summary (None where not computed)."""
    out: dict[str, Any] = {"hourglass": res.get("hourglass")}
    fid = res.get("fidelity") or {}
    # two reconstructions of the full semantic SID, never mixed in one figure: the
    # tokenizer's own decoder (None where it cannot decode these codes, e.g. codes edited by
    # an hourglass remedy) and the mean embedding of the items sharing the SID (any codes)
    dec, pm = fid.get("levels") or [], fid.get("prefix_mean") or []
    out["rel_mse"] = dec[-1]["rel_mse"] if dec and dec[-1] else None
    out["rel_mse_prefix_mean"] = pm[-1]["rel_mse"] if pm and pm[-1] else None
    ov = res.get("overlap") or {}
    if ov.get("sid"):
        out["overlap_scales"] = ov["scales"]
        out["sid_k_eff"] = ov["sid"]["K_eff"]
        if (ov.get("member") or {}).get("sid"):   # member-distribution model
            out["sid_k_eff_member"] = ov["member"]["sid"]["K_eff"]
    mc = res.get("monte_carlo") or {}
    runs = [r for r in mc.get("runs", []) if isinstance(r.get("scale"), (int, float))]
    out["sid_change_rate"] = {str(r["scale"]): r["sid_change_rate"] for r in runs}
    sm = res.get("soft_matching") or {}
    out["soft_matching_auc"] = sm.get("auc")
    return out


# --- recommender stage: when the config names recommenders --------------------------
def _recommender_entries(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    return [{"label": label, "model": m.fingerprint_dict(),
             "train": t.fingerprint_dict(), "seeds": list(t.seeds) or [cfg.seed]}
            for label, m, t in cfg.recommenders()]


def _recommender_stage(cfg: ExperimentConfig) -> Stage:
    """RUN/recommender/: models/<label>/seed-<s>/, metrics.json, metrics.md (see sidkit.recommender_stage)."""
    from .recommender_stage import recommender_inputs, recommender_stage_fn

    # version 2: several models (models/<label>/seed-<s>)
    return Stage("recommender", recommender_stage_fn(cfg), {"models": _recommender_entries(cfg)},
                 inputs=recommender_inputs(cfg), version=2)


def recommender_stage(cfg: ExperimentConfig, root: str | Path, *, force: bool = False,
                      announce: Callable[[str], None] | None = None) -> Stage:
    """The recommender stage of ``cfg`` for the run ``root``, keeping the models the run
    already holds: a run's trained models are user data.

    - a model of the run that ``cfg`` does not name is **kept** (copied into the new
      stage folder with its records), never deleted;
    - a model ``cfg`` names with the same config, seeds and inputs is **reused**, not
      retrained (unless ``force``);
    - a model ``cfg`` names under a label the run holds with *another* config is
      **replaced only with** ``force``, and ``announce`` says so; without it this raises
      a :class:`ConfigError` naming the label, what differs and the fix (another label,
      another run folder, or ``--force``);
    - a model with the same config whose inputs changed (the run's split or codes were
      recomputed from another ``[data]`` / ``[codes]``) is retrained, and announced.

    A kept model that no longer fits the run (its split changed, or the stage folder
    was damaged) cannot be carried over: an error, or with ``force`` dropped and
    announced.
    """
    from .recommender_stage import recommender_inputs, recommender_stage_fn, uses_run_codes
    from .stages import is_stage_meta, read_meta, verify_outputs

    root = Path(root)
    say = announce or (lambda msg: None)
    base = _recommender_stage(cfg)
    target = root / "recommender"
    meta = read_meta(target)
    if not is_stage_meta(meta, "recommender") or not isinstance((meta.get("params") or {}).get("models"), list):
        return base
    old = {e["label"]: e for e in meta["params"]["models"]}
    new = {e["label"]: e for e in base.params["models"]}
    if not old:
        return base
    old_inputs = meta.get("inputs") or {}
    names = list(dict.fromkeys(list(base.inputs) + [n for n in old_inputs if n in ("split", "codes")]))
    cur_inputs = {}
    for n in names:
        m = read_meta(root / n)
        cur_inputs[n] = m.get("output_hash") if is_stage_meta(m, n) else None
    damaged = verify_outputs(target, meta)
    split_same = old_inputs.get("split") == cur_inputs.get("split")
    configs = {label: m for label, m, _ in cfg.recommenders()}

    def inputs_same(label: str) -> bool:
        if not split_same:
            return False
        if uses_run_codes(configs[label]):
            return old_inputs.get("codes") == cur_inputs.get("codes")
        return True

    carry, problems = [], []
    for label in old:
        if label in new:
            continue
        if damaged or not split_same:
            why = (f"RUN/recommender is damaged ({damaged})" if damaged
                   else "the run's split changed since it was trained")
            if force:
                say(f"dropping model {label!r}: {why}, so it cannot be kept")
            else:
                problems.append(f"model {label!r}, which this config does not name, cannot be kept: {why}")
        else:
            carry.append(label)
    for label, e in new.items():
        if label not in old:
            continue
        if old[label] != e:                       # another config under the same label
            if force:
                say(f"replacing model {label!r}: it was trained with {_what_differs(old[label], e)} (--force)")
            else:
                problems.append(f"model {label!r} in {target} was trained with {_what_differs(old[label], e)}; "
                                "training this config would replace it")
        elif damaged:
            say(f"retraining model {label!r}: RUN/recommender is damaged ({damaged})")
        elif not inputs_same(label):              # the run's split or codes changed under it
            say(f"retraining model {label!r}: the run's {'split' if not split_same else 'codes'} changed "
                "since it was trained")
        elif force:
            say(f"retraining model {label!r} (--force)")
        else:
            carry.append(label)
    if problems:
        raise ConfigError("; ".join(problems),
                          "give the new model another label ([model] label = \"...\"), train into another "
                          "--out folder, or pass --force to replace (or drop) it")
    order = [label for label in old if label in new or label in carry] + [label for label in new if label not in old]
    entries = [new[label] if label in new and label not in carry else old[label] for label in order]
    to_train = [label for label in new if label not in carry]
    if not carry:
        return base
    sub = cfg.model_copy(update={"model": None, "models": [configs[label].model_copy(update={"label": label})
                                                          for label in to_train]})
    inputs = tuple(dict.fromkeys(list(recommender_inputs(sub)) +
                                 [n for n in old_inputs if n in ("split", "codes") and cur_inputs.get(n)]))
    if "split" not in inputs:
        inputs = ("split",) + inputs
    return Stage("recommender", recommender_stage_fn(sub, carry_from=target, carry=carry, order=order),
                 {"models": entries}, inputs=inputs, version=2)


def _what_differs(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in ("model", "train", "seeds") if old.get(k) != new.get(k)]
    parts = []
    for k in keys:
        if isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
            diff = sorted(x for x in set(old[k]) | set(new[k]) if old[k].get(x) != new[k].get(x))
            parts.append(f"other {k} settings ({', '.join(diff[:4])})")
        else:
            parts.append(f"other {k} ({old.get(k)} -> {new.get(k)})")
    return " and ".join(parts) or "another config"


def input_stages(cfg: ExperimentConfig, *, codes: bool = True) -> list[Stage]:
    """The stages a recommender stage reads: data and split, and with ``codes`` items,
    embeddings and codes (a SID model on the run's own codes)."""
    stages = [_data_stage(cfg), _split_stage(cfg)]
    return stages + [_items_stage(cfg), _embeddings_stage(cfg), _codes_stage(cfg)] if codes else stages


def build_stages(cfg: ExperimentConfig) -> list[Stage]:
    stages = [_data_stage(cfg), _split_stage(cfg), _items_stage(cfg), _embeddings_stage(cfg),
              _codes_stage(cfg), _diagnostics_stage(cfg)]
    if cfg.recommenders():  # before diagnostics, whose report then shows the metrics
        stages.insert(-1, _recommender_stage(cfg))
    return stages
# --- end recommender stage --------------------------------------------------------------


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


@dataclass
class PipelineResult:
    out: Path
    stages: list[StageResult]

    def summary(self, name: str) -> dict[str, Any]:
        return next(s.summary for s in self.stages if s.name == name)


def _config_paths(cfg: ExperimentConfig) -> list[tuple[str, Path]]:
    """The files and folders a config reads, by config key."""
    d, e = cfg.data, cfg.embed
    paths = [("[data] dataset", d.dataset), ("[data] source", d.source), ("[data] items", d.items),
             ("[embed] embeddings_file", e.embeddings_file),
             ("[embed] model", None if e.model == "default" else e.model)]
    return [(k, Path(v).expanduser()) for k, v in paths if v]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def validate_models(cfg: ExperimentConfig) -> None:
    """Every recommender's parameters (e.g. ``hidden`` divisible by ``n_heads``), checked
    before the first stage runs rather than when its training starts; the error names
    the model's label."""
    from .recommender_stage import make_model

    for label, m, _ in cfg.recommenders():
        model = make_model(m)
        check = getattr(model, "_validate_params", None)
        if check is None:
            continue
        try:
            check()
        except SidkitError as err:
            raise ConfigError(f"model {label!r}: {err.problem}", err.fix) from None


def validate_run(cfg: ExperimentConfig, out: str | Path) -> None:
    """Every check that can fail before a stage runs: tokenizer and parameters, device,
    config inputs inside stage folders, and stage paths sidkit did not write."""
    from .utils import resolve_device

    out = Path(out)
    try:
        dev = resolve_device(cfg.device)
    except SidkitError as err:
        raise ConfigError(err.problem, "set device (or --device) to auto or cpu"
                          if "CUDA" in err.problem else
                          "set device (or --device) to auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {cfg.device!r} is not supported",
                          "set device (or --device) to auto, cpu or cuda")
    make_tokenizer(cfg)._check_params()  # unknown tokenizer, bad parameter or value
    validate_models(cfg)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"run directory {out} exists and is not a folder",
                            "choose another --out")
    names = [s.name for s in build_stages(cfg)]
    for name in names:
        for key, path in _config_paths(cfg):
            if _inside(path, out / name):
                raise ConfigError(
                    f"{key} {path} lies inside the run directory's stage folder {out / name}, "
                    "which sidkit replaces when the stage reruns",
                    "move it outside the run directory (or choose another --out)")
    for name in names:
        check_replaceable(out / name, name)


def run_pipeline(cfg: ExperimentConfig, out: str | Path, *, force: bool = False,
                 on_stage: Callable[[StageResult], None] | None = None,
                 stop_before: str | None = None) -> PipelineResult:
    """Run every stage of ``cfg`` into ``out``; returns each stage's result.

    Checks everything it can first (:func:`validate_run`) so that a bad config fails
    before any stage runs, and removes the temporary folders of killed runs.  A cached
    stage whose files changed since they were written reruns (``StageResult.reason``
    says why), and so does every stage after it.  SIGTERM during the run removes the
    temporary folder of the running stage and exits with code 143.  ``stop_before``
    names a stage: only the stages before it run (the experiment runner uses it to
    compute the tokenizer-independent stages once before running cells in parallel).
    """
    out = Path(out)
    validate_run(cfg, out)
    stages = build_stages(cfg)
    clean_stale_tmp(out, [s.name for s in stages])
    if stop_before is not None:
        names = [s.name for s in stages]
        if stop_before not in names:
            raise ValueError(f"stop_before={stop_before!r} is not a stage of this run ({names})")
        stages = stages[:names.index(stop_before)]
    results = []
    rerun_from: str | None = None
    with sigterm_as_exit():
        for stage in stages:
            if stage.name == "recommender":   # keeps (or refuses to replace) the run's models
                stage = recommender_stage(cfg, out, force=force, announce=_stderr)
            r = run_stage(stage, out, force=force or rerun_from is not None)
            if rerun_from is not None and r.reason is None:
                r.reason = f"upstream stage {rerun_from!r} was rerun"
            if r.reason is not None and rerun_from is None:
                rerun_from = stage.name
            results.append(r)
            if on_stage is not None:
                on_stage(r)
    return PipelineResult(out, results)
