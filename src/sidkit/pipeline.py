"""The default pipeline: data -> split -> items -> embeddings -> codes -> diagnostics.

Each stage reads the artifacts of the stages before it and writes one artifact
directory under the run directory (see :mod:`sidkit.stages`): unchanged stages are
skipped, ``force=True`` reruns everything.

Run layout::

    RUN/data/         interactions.parquet, items.parquet (+ JSON metadata)
    RUN/split/        split.parquet (+ JSON)
    RUN/items/        items.parquet, texts.json (the rendered item texts)
    RUN/embeddings/   embeddings.npy, embeddings.json
    RUN/codes/        codes.npz, codes.json, tokenizer/, summary.json
    RUN/diagnostics/  report.html, report.json, report.md
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import ExperimentConfig
from .errors import DataError
from .io import hash_file, load_npy, read_json, write_json
from .stages import Stage, StageResult, run_stage
from .types import Codes, Embeddings

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


def item_index(item_ids: np.ndarray, ids: Any) -> np.ndarray:
    """Row index of each id in ``item_ids`` (-1 when absent); vectorised."""
    item_ids = np.asarray(item_ids).astype(str)
    ids = np.asarray(ids).astype(str)
    order = np.argsort(item_ids, kind="stable")
    pos = np.searchsorted(item_ids[order], ids)
    pos_c = np.minimum(pos, len(order) - 1)
    found = item_ids[order][pos_c] == ids
    return np.where(found, order[pos_c], -1)


def training_pairs(split_dir: Path, item_ids: np.ndarray, window: int = 1) -> np.ndarray:
    """Co-engaged item pairs (row indices) from the training sequences of a split."""
    from .data import Split
    from .tokenizers import cooccurrence_pairs

    df = Split.load(split_dir).train.sort_values(["user_id", "position"], kind="stable")
    idx = item_index(item_ids, df["item_id"].to_numpy())
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
    """Per-level usage, perplexity and the collision rate of a Codes artifact."""
    from .diagnostics.prefix import collisions
    from .diagnostics.usage import usage

    levels = usage(codes, include_counts=False)
    return {"n_items": codes.n_items, "n_levels": codes.n_levels,
            "codebook_sizes": list(codes.codebook_sizes), "method": codes.method,
            "collision_rule": codes.collision_rule, "levels": levels,
            "collisions": collisions(codes)}


# ------------------------------------------------------------------ stages
def _data_stage(cfg: ExperimentConfig) -> Stage:
    from .data import dataset_info, load_dataset, preprocess

    d = cfg.data

    def fn(out: Path, _: dict[str, Path]) -> dict[str, Any]:
        kw = {"source": d.source} if d.source else {}
        ds = load_dataset(d.dataset, **kw)
        ds.interactions = preprocess(ds.interactions, user_k=d.user_core, item_k=d.item_core)
        ds.save(out)
        return dataset_info(ds.interactions)

    params = {"dataset": d.dataset, "user_core": d.user_core, "item_core": d.item_core,
              "source": _source_fingerprint(d.dataset, d.source)}
    return Stage("data", fn, params)


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

    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        if not (inp["data"] / "items.json").exists():
            raise DataError("the data set has no item table (titles, categories, ...), so there "
                            "is no item text to embed",
                            "give an item file with the data, or set [embed] embeddings_file")
        items = ItemTable.load(inp["data"])
        texts = item_texts(items, cfg.embed.template)
        items.save(out)
        write_json(out / "texts.json", {"item_ids": items.items.astype(str).tolist(),
                                        "texts": texts})
        return {"n_items": len(items), "example": texts[0] if texts else ""}

    return Stage("items", fn, {"template": cfg.embed.template}, inputs=("data",))


def _embeddings_stage(cfg: ExperimentConfig) -> Stage:
    from .embed import TextEmbedder
    from .embed.text import _model_fingerprint, resolve_model_dir

    e = cfg.embed

    def fn(out: Path, inp: dict[str, Path]) -> dict[str, Any]:
        t = read_json(inp["items"] / "texts.json")
        ids = np.asarray(t["item_ids"])
        if e.embeddings_file:
            path = Path(e.embeddings_file).expanduser()
            if not path.is_file() or path.suffix != ".npy":
                raise DataError(f"embeddings_file {path} is not an existing .npy file",
                                "save the (items, dim) float32 matrix with numpy.save")
            vec = load_npy(path)
            if vec.ndim != 2 or vec.shape[0] != len(ids):
                raise DataError(
                    f"embeddings_file {path} has shape {vec.shape}, expected ({len(ids)}, dim): "
                    "one row per item in item-table order", "re-export the embeddings")
            emb = Embeddings(vec, ids, source=f"file:{path.name}")
        else:
            emb_vec = TextEmbedder(e.model, e.batch_size, e.normalize, cfg.device).embed(t["texts"])
            emb = Embeddings(emb_vec, ids, source="text", meta={"model": e.model,
                                                                "normalize": e.normalize})
        emb.save(out)
        return {"n_items": len(emb), "dim": emb.dim, "source": emb.source}

    model_id = (hash_file(e.embeddings_file) if e.embeddings_file and Path(e.embeddings_file).is_file()
                else _model_fingerprint(resolve_model_dir(e.model)))
    return Stage("embeddings", fn, {"model": model_id, "normalize": e.normalize,
                                    "file": e.embeddings_file}, inputs=("items",))


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
    # version 2: tokenizers store the catalogue's item -> SID table (docs/encoding.md)
    return Stage("codes", fn, params, inputs=("embeddings", "split"), version=2)


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
            write_report({cfg.codes.method: res}, out, title=f"sidkit diagnostics: {cfg.name}")
        else:
            write_json(out / "report.json", res)
        return headline(res)

    return Stage("diagnostics", fn, cfg.diagnostics.model_dump(),
                 inputs=("embeddings", "split", "codes"), version=2)


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """The few diagnostics numbers worth a line in a summary (None where not computed)."""
    out: dict[str, Any] = {"hourglass": res.get("hourglass")}
    fid = res.get("fidelity") or {}
    levels = [lv for lv in (fid.get("levels") or []) if lv] or \
        [lv for lv in (fid.get("prefix_mean") or []) if lv]  # prefix means without a tokenizer
    out["rel_mse"] = levels[-1]["rel_mse"] if levels else None
    ov = res.get("overlap") or {}
    if ov.get("sid"):
        out["overlap_scales"] = ov["scales"]
        out["sid_k_eff"] = ov["sid"]["K_eff"]
    mc = res.get("monte_carlo") or {}
    runs = [r for r in mc.get("runs", []) if isinstance(r.get("scale"), (int, float))]
    out["sid_change_rate"] = {str(r["scale"]): r["sid_change_rate"] for r in runs}
    sm = res.get("soft_matching") or {}
    out["soft_matching_auc"] = sm.get("auc")
    return out


def build_stages(cfg: ExperimentConfig) -> list[Stage]:
    return [_data_stage(cfg), _split_stage(cfg), _items_stage(cfg), _embeddings_stage(cfg),
            _codes_stage(cfg), _diagnostics_stage(cfg)]


@dataclass
class PipelineResult:
    out: Path
    stages: list[StageResult]

    def summary(self, name: str) -> dict[str, Any]:
        return next(s.summary for s in self.stages if s.name == name)


def run_pipeline(cfg: ExperimentConfig, out: str | Path, *, force: bool = False,
                 on_stage: Callable[[StageResult], None] | None = None) -> PipelineResult:
    """Run every stage of ``cfg`` into ``out``; returns each stage's result."""
    out = Path(out)
    make_tokenizer(cfg)  # fail fast on an unknown tokenizer or parameter, before any stage
    results = []
    for stage in build_stages(cfg):
        r = run_stage(stage, out, force=force)
        results.append(r)
        if on_stage is not None:
            on_stage(r)
    return PipelineResult(out, results)
