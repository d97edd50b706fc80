"""Experiment grids: data set x embedding x tokenizer x model x seeds, one results table.

A grid file (TOML, unknown keys rejected)::

    name = "tokenizers-ml100k"
    out = "runs/experiments/tokenizers-ml100k"   # default: runs/experiments/<name>

    [base]                      # any key of an experiment config, applied to every cell
    seed = 0
    [base.diagnostics]
    perturbation_scales = [0.1, 0.25, 0.5, 1.0]

    [grid]
    seeds = [0, 1, 2]           # the recommenders' seeds ([train] seeds of every cell)

    [[grid.datasets]]           # partial [data] tables (+ label)
    dataset = "ml-100k"
    [[grid.embeddings]]         # partial [embed] tables (+ label)
    label = "text"
    [[grid.tokenizers]]         # partial [codes] tables (+ label)
    method = "rqkmeans"
    [[grid.tokenizers]]
    method = "rqvae"
    [[grid.models]]             # model tables, exactly like [[models]]
    type = "causal_sid"

Each (data set, embedding, tokenizer) cell is one ordinary run directory
``OUT/runs/<dataset>__<embedding>__<tokenizer>/`` run by :func:`sidkit.pipeline.run_pipeline`
with the config ``[base]`` + the cell's tables + ``models`` + ``[train] seeds``, so every
stage is cached by its parameters and input hashes, and an interrupted grid resumes
(finished cells and stages are skipped; training resumes from its epoch checkpoints).
Stages that do not depend on the tokenizer (data, split, items, embeddings) are copied
(hard links where possible) from another cell of the grid whose stage has the same key,
instead of being recomputed.

Results: ``OUT/results.{csv,md,json,png}``, one row per (data set, embedding, tokenizer,
model) -- or per cell when the grid has no models -- with the test metrics (mean and
sample std over seeds), the validation NDCG@10 that decides, diagnostics and times.
``results.md`` marks, per data set, the row with the highest validation NDCG@10
(:func:`chosen_rows`, :func:`sidkit.selection.select_best`); test figures are shown
beside it and never choose (docs/evaluation.md, "Choosing on validation").  Published figures of a data set
(``[[grid.datasets.reference]]`` tables, :class:`ReferenceRow`) follow its rows, marked
by their ``reference`` (source) column.
"""

from __future__ import annotations

import copy
import csv
import fnmatch
import functools
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import ExperimentConfig, _fix_hint, _format_errors, config_from_dict
from .errors import ConfigError, DataError, SidkitError
from .io import read_json, write_bytes, write_json, write_text

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
AXES = ("datasets", "embeddings", "tokenizers", "models")
SECTION = {"datasets": "data", "embeddings": "embed", "tokenizers": "codes"}
MAIN_METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


# ------------------------------------------------------------------ config
class _GridAxes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    datasets: list[dict[str, Any]] = Field(default_factory=list)
    embeddings: list[dict[str, Any]] = Field(default_factory=list)
    tokenizers: list[dict[str, Any]] = Field(default_factory=list)
    models: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list, description="runs left out of the cross product: "
                               "patterns (* ?) on EMBEDDING__TOKENIZER or the run id")
    share_id_models: bool = Field(False, description="train the models that read no SIDs (popularity, "
                                  "SASRec, ID-only) once per data set, in its first run, not once per run")


class GridConfig(BaseModel):
    """A grid file: ``name``, ``out``, ``[base]`` (any experiment-config keys) and ``[grid]`` axes."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    out: str | None = None
    publish: str | None = Field(None, description="also write the table to PATH.md (between sidkit's markers, "
                                "keeping the text around them) and PATH.json, e.g. \"docs/results_beauty\"")
    base: dict[str, Any] = Field(default_factory=dict)
    grid: _GridAxes = Field(default_factory=_GridAxes)


class ReferenceRow(BaseModel):
    """A published result shown beside a data set's rows: ``[[grid.datasets.reference]]``.

    ``metrics`` are test figures under our metric names (fractions, not percent); the
    row is labelled with ``model`` and ``source`` and never mixed into our means.
    """
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(..., min_length=1, description="the model column, e.g. \"TIGER\"")
    source: str = Field(..., min_length=1, description="where the figures come from (paper, table)")
    metrics: dict[str, float] = Field(..., description="test metrics, e.g. {\"ndcg@10\" = 0.0384}")
    note: str = Field("", description="protocol differences, shown under the table")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: dict[str, float]) -> dict[str, float]:
        from .eval.metrics import metric_names

        known = metric_names()
        unknown = sorted(set(v) - set(known))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; use {known} (HR@k is recall@k)")
        if not v:
            raise ValueError(f"give at least one metric of {known}")
        bad = {k: x for k, x in v.items() if not 0.0 <= x <= 1.0}
        if bad:
            raise ValueError(f"metric values must be fractions in [0, 1] (0.0384, not 3.84%): {bad}")
        return v


class _References(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reference: list[ReferenceRow] = Field(default_factory=list)


@dataclass
class Cell:
    """One run of the grid: a (data set, embedding, tokenizer) combination."""
    dataset: str
    embedding: str
    tokenizer: str
    cfg: ExperimentConfig
    dir: Path
    model_labels: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.dataset}__{self.embedding}__{self.tokenizer}"

    def reads_sids(self, label: str) -> bool:
        """Whether the model ``label`` reads this run's Semantic IDs (its embedding and
        tokenizer matter to it)."""
        from .recommender_stage import uses_run_codes

        return any(lb == label and uses_run_codes(m) for lb, m, _ in self.cfg.recommenders())


@dataclass
class Grid:
    config: GridConfig
    origin: str
    out: Path
    cells: list[Cell]
    references: dict[str, list[ReferenceRow]] = field(default_factory=dict)   # dataset label -> rows


def _sanitize(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"
    return s if s[0].isalnum() else "x" + s


def _default_label(axis: str, entry: dict[str, Any], base: dict[str, Any]) -> str:
    if axis == "datasets":
        ds = str(entry.get("dataset", (base.get("data") or {}).get("dataset", "ml-100k")))
        p = Path(ds)
        return _sanitize(p.stem if p.suffix else p.name)
    if axis == "embeddings":
        merged = {**(base.get("embed") or {}), **entry}
        if merged.get("method") not in (None, "text"):
            return _sanitize(str(merged["method"]))
        if merged.get("embeddings_file"):
            return _sanitize("file-" + Path(str(merged["embeddings_file"])).stem)
        model = merged.get("model", "default")
        return "text" if model == "default" else _sanitize("text-" + Path(str(model)).name)
    if axis == "tokenizers":
        return _sanitize(str({**(base.get("codes") or {}), **entry}.get("method", "rqkmeans")))
    return _sanitize(str(entry.get("label") or entry.get("type", "model")))


def _labelled(axis: str, entries: list[dict[str, Any]], base: dict[str, Any], origin: str) -> list[tuple[str, dict]]:
    out = []
    for i, entry in enumerate(entries):
        entry = dict(entry)
        label = entry.pop("label", None) if axis != "models" else entry.get("label")
        if label is not None and (not isinstance(label, str) or not LABEL.match(label)):
            raise ConfigError(f"{origin}: [grid] {axis}[{i}] label {label!r} is not a valid name",
                              "use letters, digits, '_', '.' and '-' (it names a folder and a table row)")
        out.append((label or _default_label(axis, entry, base), entry))
    labels = [lb for lb, _ in out]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        raise ConfigError(f"{origin}: two [grid] {axis} entries share the label {dup[0]!r}",
                          f"give each [[grid.{axis}]] entry its own label = \"...\"")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top; tables merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_grid(data: dict[str, Any], origin: str = "<dict>", out: str | Path | None = None) -> Grid:
    """Validate a grid document and build every cell's config (ConfigError before anything runs)."""
    try:
        gc = GridConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin), _fix_hint(e, "docs/experiments.md")) from None
    base, g = gc.base, gc.grid
    if g.models and (base.get("model") or base.get("models")):
        raise ConfigError(f"{origin}: models are given both in [base] and in [grid] models",
                          "list the models once, as [[grid.models]] entries")
    if g.seeds and ((base.get("train") or {}).get("seeds")):
        raise ConfigError(f"{origin}: seeds are given both in [base] train and in [grid] seeds",
                          "give them once, as [grid] seeds = [0, 1, 2]")
    datasets = [{k: v for k, v in e.items() if k not in ("reference", "references")} for e in g.datasets]
    axes = {a: _labelled(a, datasets if a == "datasets" else getattr(g, a), base, origin)
            or [(_default_label(a, {}, base), {})] for a in ("datasets", "embeddings", "tokenizers")}
    references = {}
    for (label, _), entry in zip(axes["datasets"], g.datasets):
        rows = _reference_files(entry.get("references"), origin, label) + list(entry.get("reference") or [])
        if "reference" in entry and not isinstance(entry["reference"], list):
            rows = entry["reference"]                   # let the model say what is wrong with it
        if rows or "reference" in entry:
            try:
                references[label] = _References.model_validate({"reference": rows}).reference
            except ValidationError as e:
                raise ConfigError(_format_errors(e, f"{origin} [[grid.datasets]] {label!r}"),
                                  "a reference row has model, source, metrics = { \"ndcg@10\" = 0.0384, ... } "
                                  "and note; see docs/experiments.md") from None
    models = []
    for label, m in _labelled("models", g.models, base, origin):
        m = dict(m)
        pats = m.pop("runs", None)
        if pats is not None and (isinstance(pats, str) or not all(isinstance(p, str) for p in pats)):
            raise ConfigError(f"{origin}: [grid] model {label!r}: runs must be a list of patterns",
                              "e.g. runs = [\"text__rqkmeans-256x3\"] (EMBEDDING__TOKENIZER, * and ? allowed)")
        models.append((label, m, pats))
    root = Path(out if out is not None else gc.out or f"runs/experiments/{gc.name}")
    from .recommender_stage import uses_run_codes

    cells, matched, seen_datasets = [], set(), set()
    for dl, de in axes["datasets"]:
        for el, ee in axes["embeddings"]:
            for tl, te in axes["tokenizers"]:
                hit = [p for p in g.exclude if _matches([p], dl, el, tl)]
                if hit:
                    matched.update(hit)
                    continue
                over: dict[str, Any] = {"data": de, "embed": ee, "codes": te}
                doc = _merge(base, over)
                here = [m for _, m, pats in models if pats is None or _matches(pats, dl, el, tl)]
                if here:
                    doc["models"] = here
                if g.seeds:
                    doc.setdefault("train", {})["seeds"] = list(g.seeds)
                cell_id = f"{dl}__{el}__{tl}"
                doc.setdefault("name", f"{gc.name}/{cell_id}")
                cfg = config_from_dict(doc, f"{origin} (cell {cell_id}: [grid] datasets {dl!r}, "
                                            f"embeddings {el!r}, tokenizers {tl!r})")
                if g.share_id_models and dl in seen_datasets and cfg.models:
                    # the data set's first run trains the models that read no SIDs
                    cfg = cfg.model_copy(update={"models": [m for m in cfg.models if uses_run_codes(m)]})
                seen_datasets.add(dl)
                cells.append(Cell(dl, el, tl, cfg, root / "runs" / cell_id,
                                  [lb for lb, _, _ in cfg.recommenders()]))
    if not cells:
        raise ConfigError(f"{origin}: [grid] exclude leaves no run", "exclude fewer combinations")
    for label, _, pats in models:
        for p in pats or []:
            if not any(_matches([p], c.dataset, c.embedding, c.tokenizer) for c in cells):
                raise ConfigError(f"{origin}: [grid] model {label!r}: runs pattern {p!r} matches no run",
                                  "patterns match EMBEDDING__TOKENIZER or DATASET__EMBEDDING__TOKENIZER labels")
    unused = [p for p in g.exclude if p not in matched]
    if unused:
        raise ConfigError(f"{origin}: [grid] exclude pattern {unused[0]!r} matches no run",
                          "patterns match EMBEDDING__TOKENIZER or DATASET__EMBEDDING__TOKENIZER labels, "
                          "e.g. \"text__gaoq\" or \"*__gaoq\"")
    ids = [c.id for c in cells]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{origin}: two runs of the grid would share the folder {dup[0]!r} "
                          "(labels that contain '__')", "give the axis entries labels without '__'")
    return Grid(gc, origin, root, cells, references)


def _matches(patterns: list[str], dataset: str, embedding: str, tokenizer: str) -> bool:
    """Whether a run matches one of ``patterns`` (``*`` ``?``) on EMBEDDING__TOKENIZER or its id."""
    return any(fnmatch.fnmatchcase(f"{embedding}__{tokenizer}", p)
               or fnmatch.fnmatchcase(f"{dataset}__{embedding}__{tokenizer}", p) for p in patterns)


def _reference_files(spec: Any, origin: str, label: str) -> list[dict[str, Any]]:
    """The rows of ``references = "FILE.toml:TABLE"`` (or a list of them) on a data set
    entry: published figures kept in one file (``configs/published/``) that several grids
    read.  ``FILE`` is relative to the grid file's folder."""
    if spec is None:
        return []
    from .config import read_toml

    specs = [spec] if isinstance(spec, str) else spec
    if not isinstance(specs, list) or not all(isinstance(x, str) and ":" in x for x in specs):
        raise ConfigError(f"{origin} [[grid.datasets]] {label!r}: references = {spec!r} is not "
                          "\"FILE.toml:TABLE\" or a list of them",
                          'write e.g. references = "../published/amazon_2014.toml:beauty"')
    base = Path(origin).parent if Path(origin).suffix == ".toml" else Path(".")
    rows: list[dict[str, Any]] = []
    for x in specs:
        file, table = x.rsplit(":", 1)
        path = (base / file) if not Path(file).is_absolute() else Path(file)
        doc = read_toml(path, "published-results file", "fix the references path (relative to the grid file)")
        if not isinstance(doc.get(table), list):
            raise ConfigError(f"{path} has no table [[{table}]] (tables: {sorted(doc)})",
                              f"name one of them in references = \"{file}:<table>\"")
        rows += doc[table]
    return rows


def load_grid(path: str | Path, out: str | Path | None = None) -> Grid:
    from .config import read_toml

    path = Path(path)
    data = read_toml(path, "experiment file", "pass the path of a grid .toml file")
    return parse_grid(data, str(path), out)


def validate_grid(grid: Grid) -> None:
    """Every check of :func:`sidkit.pipeline.validate_run`, for every cell, before any runs."""
    from .pipeline import validate_run

    if grid.out.exists() and not grid.out.is_dir():
        raise ConfigError(f"experiment output {grid.out} exists and is not a folder", "choose another --out")
    published_files(grid)   # a publish target sidkit did not write is refused before anything runs
    for cell in grid.cells:
        try:
            validate_run(cell.cfg, cell.dir)
        except SidkitError as e:
            raise type(e)(f"cell {cell.id}: {e.problem}", e.fix) from None


def check_datasets(grid: Grid) -> None:
    """Every data set of the grid is a fetchable name or an existing path: one DataError
    naming all missing ones, before anything runs (a grid would otherwise run hours of
    cells and stop at the first data set whose files were never put in place)."""
    from .data.fetch import FETCHABLE
    from .data.load import NOT_FETCHABLE

    missing: dict[str, str] = {}
    for cell in grid.cells:
        ds = cell.cfg.data.dataset
        if (ds.lower() in FETCHABLE and "/" not in ds) or Path(ds).expanduser().exists():
            continue
        missing.setdefault(cell.dataset, ds)
    if missing:
        hints = [f"{ds!r}: {NOT_FETCHABLE[ds.lower()]}" for ds in missing.values() if ds.lower() in NOT_FETCHABLE]
        raise DataError(f"{grid.origin}: data set file(s) not found (relative paths are relative to the working "
                        f"directory {Path.cwd()}): " + ", ".join(f"{lb} = {ds!r}" for lb, ds in missing.items()),
                        "put the files there"
                        + (f" ({'; '.join(hints)})" if hints else "")
                        + ", change their [[grid.datasets]] dataset paths, or remove those entries "
                        "(Amazon: docs/studies/amazon.md)")


# ------------------------------------------------------------- stage plan
@dataclass
class StagePlan:
    name: str
    status: str            # "cached" | "shared" | "runs"
    detail: str = ""       # why it runs, or the cell it is copied from
    source: Path | None = None


def _shareable(cfg: ExperimentConfig) -> list:
    """The stages before ``codes``: they do not depend on the tokenizer."""
    from .pipeline import build_stages

    stages = build_stages(cfg)
    names = [s.name for s in stages]
    return stages[:names.index("codes")] if "codes" in names else []


def plan_cell(cell: Cell, others: list[Path],
              pending: dict[tuple[str, str], str] | None = None) -> list[StagePlan]:
    """What running ``cell`` would do per stage: cached, copied from another cell, or run.

    ``pending`` maps (stage, key) of stages that earlier cells of a dry run will compute
    to that cell's id; this cell's own stages that will run are added to it.  A stage
    that runs gets the placeholder output hash ``pending:<key>``, so later stages (and
    later cells) can still tell what they would share.
    """
    from .pipeline import build_stages
    from .stages import is_stage_meta, read_meta, stage_key, verify_outputs

    shareable = {s.name for s in _shareable(cell.cfg)}
    plan: list[StagePlan] = []
    hashes: dict[str, str] = {}
    for stage in build_stages(cell.cfg):
        key = stage_key(stage, {i: hashes[i] for i in stage.inputs})
        upstream = any(hashes[i].startswith("pending:") for i in stage.inputs)
        meta = read_meta(cell.dir / stage.name)
        why = "an upstream stage runs" if upstream else "not computed yet"
        if not upstream and meta is not None and is_stage_meta(meta, stage.name):
            if meta.get("key") == key:
                bad = verify_outputs(cell.dir / stage.name, meta)
                if bad is None:
                    hashes[stage.name] = meta["output_hash"]
                    plan.append(StagePlan(stage.name, "cached"))
                    continue
                why = bad
            else:
                why = "its parameters or inputs changed"
        hashes[stage.name] = f"pending:{key}"
        if stage.name in shareable:
            if pending is not None and (stage.name, key) in pending:
                plan.append(StagePlan(stage.name, "shared", f"{pending[stage.name, key]}, once it ran"))
                continue
            donor = None if upstream else next(
                (o for o in others if is_stage_meta(m := read_meta(o / stage.name), stage.name)
                 and m.get("key") == key and verify_outputs(o / stage.name, m) is None), None)
            if donor is not None:
                hashes[stage.name] = read_meta(donor / stage.name)["output_hash"]
                plan.append(StagePlan(stage.name, "shared", donor.name, donor / stage.name))
                continue
            if pending is not None:
                pending[stage.name, key] = cell.id
        plan.append(StagePlan(stage.name, "runs", why))
    return plan


def _copy_stage(src: Path, target: Path) -> None:
    """Copy a finished stage folder (hard links where possible), atomically."""
    from .io import replace_dir
    from .stages import check_replaceable, read_meta, verify_outputs

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    check_replaceable(target, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=root))
    try:
        def link(s: str, d: str) -> None:
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)

        shutil.rmtree(tmp)
        shutil.copytree(src, tmp, copy_function=link)
        meta = read_meta(tmp)
        if meta is None or verify_outputs(tmp, meta) is not None:  # changed while copying
            shutil.rmtree(tmp, ignore_errors=True)
            return
        replace_dir(tmp, target, prefix=f".{target.name}.{os.getpid()}-")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------- run
@dataclass
class ExperimentResult:
    grid: Grid
    rows: list[dict[str, Any]]
    stages: dict[str, list]          # cell id -> StageResults of this invocation
    files: dict[str, Path]


def run_experiment(grid: Grid | str | Path, out: str | Path | None = None, *, jobs: int = 1,
                   threads: int | None = None, only: list[str] | None = None,
                   on_cell: Callable[[int, Cell, list[StagePlan]], None] | None = None,
                   on_stage: Callable[[Cell, Any], None] | None = None,
                   on_training: Callable[[Cell, str, int, dict[str, Any] | None], None] | None = None
                   ) -> ExperimentResult:
    """Run every cell of a grid (cached stages are skipped), then write the results table.

    Every cell's config is validated first; the table (``OUT/results.*``) is rewritten
    after each finished cell, with the rows of the cells finished so far.

    ``jobs > 1`` runs that many cells at once, each in its own process with
    ``torch.get_num_threads() // jobs`` threads (at least 1): the stages that do not
    depend on the tokenizer (data, split, items, embeddings) are computed once first,
    in this process, then copied to every cell that shares them.  Small models train
    faster as one single-threaded process per core than as one process using every
    core.  With ``jobs > 1``, ``on_cell`` is called when a cell starts and ``on_stage``
    for each of its stages when it has finished (in this process).  A cell's trainings
    (each torch model and seed) are jobs of their own then, so that a run with many rows
    keeps every worker busy; ``on_training(cell, label, seed, record)`` is called when one
    starts (``record`` None) and when it ends (the record of
    :func:`sidkit.recommender_stage.fit_one`: epochs, best epoch, why it stopped).

    ``threads``: torch threads of each job (default: ``torch.get_num_threads() // jobs``,
    at least 1), so that jobs x threads does not exceed the cores: oversubscribed cores
    run several times slower, not a little.

    ``only`` names the cells to run (a cell id such as ``ml-100k__text__rqkmeans``, or a
    label of one of its axes such as ``rqkmeans``); the table then also lists every
    other cell whose stages are all computed already (nothing of theirs runs).
    """
    from .pipeline import run_pipeline

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a whole number >= 1, got {jobs!r}",
                          "use jobs=1 (one cell at a time) or the number of cells to run at once")
    if not isinstance(grid, Grid):
        grid = load_grid(grid, out)
    validate_grid(grid)
    check_datasets(grid)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a whole number >= 1, got {threads!r}",
                          "use e.g. threads=1 per job on a CPU with as many cores as jobs")
    cells, finished = _select(grid, only)
    if jobs > 1 and (len(cells) > 1 or (cells and len(_training_units(cells[0])) > 1)):
        return _run_parallel(grid, cells, finished, jobs, on_cell, on_stage, threads, on_training)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    index = {c.id: i for i, c in enumerate(grid.cells)}
    done: dict[str, list] = {}
    files: dict[str, Path] = {}
    for cell in cells:
        i = index[cell.id]
        plan = _prepare_cell(grid, cell)
        if on_cell is not None:
            on_cell(i, cell, plan)
        res = run_pipeline(cell.cfg, cell.dir,
                           on_stage=(lambda r, c=cell: on_stage(c, r)) if on_stage is not None else None)
        done[cell.id] = res.stages
        finished.append(cell)
        finished.sort(key=lambda c: index[c.id])
        files = write_results(grid, finished)
    rows = collect_rows(grid, finished)
    return ExperimentResult(grid, rows, done, files)


def _select(grid: Grid, only: list[str] | None) -> tuple[list[Cell], list[Cell]]:
    """(the cells to run, the other cells already complete) for ``only``."""
    if only is None:
        return list(grid.cells), []
    names = [n.strip() for n in only if n.strip()]
    labels = lambda c: {c.id, c.dataset, c.embedding, c.tokenizer}  # noqa: E731
    unknown = [n for n in names if not any(n in labels(c) for c in grid.cells)]
    if unknown or not names:
        raise ConfigError(f"--only {', '.join(unknown) or '(nothing)'} names no run of the grid",
                          "name runs by id or by a data set / embedding / tokenizer label: "
                          + ", ".join(c.id for c in grid.cells))
    chosen = [c for c in grid.cells if set(names) & labels(c)]
    complete = [c for c in grid.cells if c not in chosen and c.dir.is_dir()
                and all(p.status == "cached" for p in plan_cell(c, []))]
    return chosen, complete


def _prepare_cell(grid: Grid, cell: Cell) -> list[StagePlan]:
    """Plan ``cell`` and copy in the stages another cell already computed."""
    others = [c.dir for c in grid.cells if c is not cell and c.dir.is_dir()]
    plan = plan_cell(cell, others)
    for p in plan:
        if p.status == "shared" and p.source is not None:
            _copy_stage(p.source, cell.dir / p.name)
    return plan


def _init_worker(threads: int) -> None:
    os.environ["SIDKIT_NO_PROGRESS"] = "1"      # bars of parallel cells would interleave
    import torch

    torch.set_num_threads(threads)


def _stop_when_signalled(job: Callable) -> Callable:
    """A worker's job: when the worker itself is signalled (Ctrl-C reaches the whole process
    group, ``kill -- -PGID`` too), the job's stage cleans its temporary folder and the worker
    process exits, rather than report the interruption as the job's result and take the
    next job from the pool's queue."""
    @functools.wraps(job)
    def run(*args):
        from .stages import Terminated

        try:
            return job(*args)
        except Terminated as e:
            os._exit(e.code if isinstance(e.code, int) else 143)
        except KeyboardInterrupt:
            os._exit(130)
    return run


@_stop_when_signalled
def _run_cell(cfg: ExperimentConfig, directory: Path) -> list:
    from .pipeline import run_pipeline

    return run_pipeline(cfg, directory).stages


@_stop_when_signalled
def _prep_cell(cfg: ExperimentConfig, directory: Path) -> list:
    from .pipeline import run_pipeline

    return run_pipeline(cfg, directory, stop_before="recommender").stages


@_stop_when_signalled
def _fit_unit(cfg: ExperimentConfig, directory: Path, label: str, seed: int) -> dict[str, Any]:
    from .recommender_stage import pretrain

    return pretrain(cfg, directory, label, seed)


@dataclass
class _Task:
    """One job of a parallel grid: a whole cell (``cell``), a cell's stages before its
    recommender (``prep``), one model and seed of its recommender stage (``fit``), or the
    cell once its trainings are done (``finish``: evaluates, writes, runs what follows)."""
    kind: str
    cell: Cell
    label: str | None = None
    seed: int | None = None


def _training_units(cell: Cell) -> list[tuple[str, int]]:
    """The trainings of ``cell`` to run as jobs of their own: every torch model and seed of
    its recommender stage, unless the cell has a recommender stage already (the stage then
    decides what it keeps and retrains, as one job)."""
    from .recommender_stage import trainable

    if not cell.cfg.recommenders() or (cell.dir / "recommender").exists():
        return []
    return trainable(cell.cfg)


def _stop_workers(pool, grace: float = 30.0) -> None:
    """SIGTERM to the pool's live workers (each removes its stage's temporary folder and
    exits), SIGKILL to any still alive after ``grace`` seconds, so that the pool's shutdown
    never waits on a worker that kept working."""
    import time

    procs = [p for p in list((getattr(pool, "_processes", None) or {}).values()) if p.is_alive()]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)


class _Jobs:
    """The job queue of a parallel grid (see :func:`_run_parallel`): which job comes next,
    and what a job's end makes ready."""

    def __init__(self, grid: Grid, cells: list[Cell], on_cell) -> None:
        self.grid, self.on_cell = grid, on_cell
        self.index = {c.id: i for i, c in enumerate(grid.cells)}
        self.to_start = list(cells)
        self.finishing: list[_Task] = []
        self.fits: list[tuple[tuple[int, int, int], _Task]] = []
        self.left: dict[str, int] = {}            # cell id -> trainings not done yet
        self.prepped: dict[str, list] = {}        # cell id -> its prep job's stage results

    def next(self) -> _Task | None:
        """Finishing a cell first, then starting the next cell, then the trainings by seed
        (every row's seed 0 first), run and model, the time-budgeted ones after all others."""
        if self.finishing:
            return self.finishing.pop(0)
        if self.to_start:
            cell = self.to_start.pop(0)
            plan = _prepare_cell(self.grid, cell)
            if self.on_cell is not None:
                self.on_cell(self.index[cell.id], cell, plan)
            return _Task("prep", cell) if _training_units(cell) else _Task("cell", cell)
        if self.fits:
            self.fits.sort(key=lambda kv: kv[0])
            return self.fits.pop(0)[1]
        return None

    def ended(self, task: _Task, result: Any) -> list | None:
        """Record a job's end; the cell's stage results when the cell is complete."""
        cell = task.cell
        if task.kind == "prep":
            self.prepped[cell.id] = result
            units = _training_units(cell)
            order = {lb: i for i, lb in enumerate(cell.model_labels)}
            # a time-budgeted training ([train] max_minutes: TIGER's row) takes its whole budget
            # whatever runs beside it: the trainings that run to convergence go first
            budgeted = {lb for lb, _, t in cell.cfg.recommenders() if getattr(t, "max_minutes", None)}
            self.left[cell.id] = len(units)
            self.fits.extend(((lb in budgeted, s, self.index[cell.id], order.get(lb, 0)), _Task("fit", cell, lb, s))
                             for lb, s in units)
            if not units:
                self.finishing.append(_Task("finish", cell))
        elif task.kind == "fit":
            self.left[cell.id] -= 1
            if self.left[cell.id] == 0:
                self.finishing.append(_Task("finish", cell))
        elif task.kind == "finish":       # the prep job ran the stages before the recommender
            before = self.prepped.pop(cell.id, [])
            names = {r.name for r in before}
            return before + [r for r in result if r.name not in names]
        else:
            return result
        return None


def _job_error(cell: Cell, exc: BaseException) -> BaseException:
    """A worker's error, naming the cell it failed in."""
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(exc, SidkitError):
        error = type(exc)(f"cell {cell.id}: {exc.problem}", exc.fix)
    elif isinstance(exc, BrokenProcessPool):
        error = SidkitError(f"cell {cell.id}: a worker process ended before its job did (it was signalled or "
                            "killed, e.g. out of memory)",
                            "run the same command again: it resumes from the last epoch checkpoints")
    else:
        return exc
    error.__cause__ = exc
    return error


def _run_parallel(grid: Grid, cells: list[Cell], finished: list[Cell], jobs: int, on_cell,
                  on_stage, threads: int | None = None, on_training=None) -> ExperimentResult:
    """Run ``cells`` with ``jobs`` worker processes.  The unit of work is one model and seed
    where a cell trains several (a grid's first run trains most of its rows): a cell's
    stages before the recommender run as one job, then each of its trainings as a job of
    its own (into the epoch checkpoint the recommender stage resumes from), then the cell
    again, which finds every training done, evaluates and writes.  A cell without torch
    models runs as one job.  The order of the jobs: :meth:`_Jobs.next`."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    from .pipeline import run_pipeline
    from .stages import sigterm_as_exit

    done: dict[str, list] = {}
    # 1. the tokenizer-independent stages, once per distinct input, in this process
    for cell in cells:
        plan = _prepare_cell(grid, cell)
        shared = {s.name for s in _shareable(cell.cfg)}
        if shared and any(p.status == "runs" and p.name in shared for p in plan):
            res = run_pipeline(cell.cfg, cell.dir, stop_before="codes")
            done[cell.id] = list(res.stages)
    # 2. the jobs, ``jobs`` at a time, each in its own process
    threads = threads or max(1, torch.get_num_threads() // jobs)
    queue = _Jobs(grid, cells, on_cell)
    files: dict[str, Path] = {}
    error: BaseException | None = None
    workers = min(jobs, max(len(cells), sum(len(_training_units(c)) for c in cells)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))   # torch's pools do not survive fork
    running: dict = {}

    def submit(task: _Task):
        c = task.cell
        if task.kind == "fit":
            if on_training is not None:
                on_training(c, task.label, task.seed, None)
            return pool.submit(_fit_unit, c.cfg, c.dir, task.label, task.seed)
        return pool.submit(_prep_cell if task.kind == "prep" else _run_cell, c.cfg, c.dir)

    try:
        with sigterm_as_exit():     # SIGTERM, like Ctrl-C, stops the workers too
            while True:
                while error is None and len(running) < workers and (task := queue.next()) is not None:
                    running[submit(task)] = task
                if not running:
                    break
                ended, _ = wait(set(running), timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in ended:
                    task = running.pop(fut)
                    if fut.exception() is not None:
                        # no new job starts; the running ones end, then the first error is raised
                        error = error or _job_error(task.cell, fut.exception())
                        continue
                    if task.kind == "fit" and on_training is not None:
                        on_training(task.cell, task.label, task.seed, fut.result())
                    stages = queue.ended(task, fut.result())
                    if stages is None:
                        continue
                    cell = task.cell
                    done[cell.id] = done.get(cell.id, []) + stages
                    for r in done[cell.id] if on_stage is not None else ():
                        on_stage(cell, r)
                    finished.append(cell)
                    finished.sort(key=lambda c: queue.index[c.id])
                    files = write_results(grid, finished)
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM, a failing callback): stop the running jobs now
        # rather than wait for them (each training resumes from its last checkpoint); SIGTERM
        # lets a worker remove the temporary folder of the stage it was writing
        for fut in running:
            fut.cancel()
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if error is not None:
        raise error
    rows = collect_rows(grid, finished)
    return ExperimentResult(grid, rows, done, files)


# ----------------------------------------------------------------- progress
def progress(grid: Grid) -> list[dict[str, Any]]:
    """Where a (possibly running) grid stands, one row per run, model and seed, read from
    the runs' folders only: ``status`` is ``done`` (the run's recommender stage finished:
    its validation and test NDCG@10 are given), ``training`` / ``trained`` (an epoch
    checkpoint: epochs so far, best validation NDCG@10 and its epoch, median seconds per
    epoch and per validation; ``trained`` once patience, the epoch cap or the time budget
    ended it and the seed waits for its test evaluation) or ``waiting``."""
    import numpy as np

    rows: list[dict[str, Any]] = []
    for cell in grid.cells:
        metrics = cell.dir / "recommender" / "metrics.json"
        doc = read_json(metrics) if metrics.is_file() else None
        for label, _, train in cell.cfg.recommenders():
            for seed in list(train.seeds) or [cell.cfg.seed]:
                row: dict[str, Any] = {"run": cell.id, "model": label, "seed": seed, "status": "waiting"}
                rec = next((r for r in (doc or {}).get("records", [])
                            if r.get("label", r.get("model")) == label and r.get("seed") == seed), None)
                state_path = cell.dir / "checkpoints" / "recommender" / label / f"seed-{seed}" / "state.json"
                if rec is not None:
                    row.update(status="done", epochs=rec.get("epochs_run"), best_epoch=rec.get("best_epoch"),
                               valid_ndcg10=(rec.get("valid") or {}).get("ndcg@10"),
                               test_ndcg10=(rec.get("test") or {}).get("ndcg@10"), stop=rec.get("stop"))
                elif state_path.is_file():
                    try:
                        st = read_json(state_path)
                    except Exception:   # being rewritten right now: report it as waiting
                        rows.append(row)
                        continue
                    hist = st.get("history") or []
                    secs = [h["seconds"] for h in hist if "seconds" in h]
                    vsecs = [h["valid_seconds"] for h in hist if h.get("valid_seconds")]
                    done = bool(st.get("stopped")) or len(hist) >= train.epochs
                    row.update(status="trained" if done else "training", epochs=len(hist),
                               best_epoch=st.get("best_epoch") or None,
                               valid_ndcg10=st.get("best") if (st.get("best") or -1) >= 0 else None,
                               seconds_per_epoch=float(np.median(secs)) if secs else None,
                               seconds_per_validation=float(np.median(vsecs)) if vsecs else None)
                rows.append(row)
    return rows


def progress_markdown(rows: list[dict[str, Any]]) -> str:
    """:func:`progress` as a table."""
    f = _f
    lines = ["| run | model | seed | status | epochs | best epoch | valid ndcg@10 | test ndcg@10 | s/epoch | s/validation |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['model']} | {r['seed']} | {r['status']}"
                     f"{' (' + r['stop'] + ')' if r.get('stop') in ('cap', 'budget') else ''} | "
                     f"{f(r.get('epochs'), 'd')} | {f(r.get('best_epoch'), 'd')} | {f(r.get('valid_ndcg10'), '.4f')} | "
                     f"{f(r.get('test_ndcg10'), '.4f')} | {f(r.get('seconds_per_epoch'), '.1f')} | "
                     f"{f(r.get('seconds_per_validation'), '.1f')} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- results
def _stage_meta(run: Path, name: str) -> dict[str, Any]:
    p = run / name / "meta.json"
    return read_json(p) if p.is_file() else {}


def cell_diagnostics(cell: Cell) -> dict[str, Any]:
    """The diagnostics columns of a finished cell, from its codes and diagnostics stages."""
    codes = _stage_meta(cell.dir, "codes")
    s = codes.get("summary", {})
    head = _stage_meta(cell.dir, "diagnostics").get("summary", {})
    levels = list(s.get("levels") or [])
    if s.get("collision_rule", "none") != "none" and levels:
        levels = levels[:-1]   # the disambiguation level carries no geometry
    sem = s.get("semantic_collisions") or s.get("collisions") or {}
    k_eff = head.get("sid_k_eff") or []
    k_eff_member = head.get("sid_k_eff_member") or []
    scales = head.get("overlap_scales") or []
    row: dict[str, Any] = {
        "n_items": s.get("n_items"),
        "codebook_sizes": "x".join(str(k) for k in s.get("codebook_sizes", [])),
        "k_eff": k_eff[0] if k_eff else None,
        "k_eff_scale": scales[0] if scales else None,
        "k_eff_member": k_eff_member[0] if k_eff_member else None,
        "semantic_collision_rate": sem.get("rate"),
        "semantic_collision_share": sem.get("share_in_collision"),
        "rel_mse": head.get("rel_mse"),
        "rel_mse_prefix_mean": head.get("rel_mse_prefix_mean"),
        "soft_matching_auc": head.get("soft_matching_auc"),
        "tokenize_seconds": codes.get("seconds"),
    }
    for lv in levels:
        row[f"norm_entropy_l{lv.get('level')}"] = lv.get("norm_entropy")
    return row


def collect_rows(grid: Grid, cells: list[Cell]) -> list[dict[str, Any]]:
    """One row per (cell, model label) -- one per cell without models."""
    from .recommender_stage import summarise

    rows = []
    for cell in cells:
        diag = cell_diagnostics(cell)
        key = {"dataset": cell.dataset, "embedding": cell.embedding, "tokenizer": cell.tokenizer}
        run = cell.dir.relative_to(grid.out).as_posix() if cell.dir.is_relative_to(grid.out) else str(cell.dir)
        metrics_path = cell.dir / "recommender" / "metrics.json"
        if not cell.model_labels or not metrics_path.is_file():
            rows.append({**key, "model": "", "seeds": "", **diag, "run": run})
            continue
        doc = read_json(metrics_path)
        for label in doc["labels"]:
            recs = [r for r in doc["records"] if r.get("label", r.get("model")) == label]
            summ = summarise(recs)
            shared = getattr(getattr(grid.config, "grid", None), "share_id_models", False) and not cell.reads_sids(label)
            row: dict[str, Any] = {**key, "model": label,
                                   "seeds": " ".join(str(r["seed"]) for r in recs)}
            row["reads_sids"] = cell.reads_sids(label)
            if shared:   # trained once per data set: embedding and tokenizer do not apply
                row.update(embedding="", tokenizer="")
            for role in ("test", "valid"):
                for m, v in (summ.get(role) or {}).items():
                    row[f"{role}_{m}_mean"] = v["mean"]
                    row[f"{role}_{m}_std"] = v["std"]
            # the SID columns describe the run's codes, which a shared row does not read; the
            # catalogue size is the data set's
            row.update(diag if not shared else {"n_items": diag["n_items"]})
            stops = sorted({r["stop"] for r in recs if r.get("stop") in ("cap", "budget")})
            row["stop"] = "+".join(stops)   # "cap": a lower bound (rerun with more epochs); "budget": time-capped
            ts = summ.get("train_seconds") or {}
            row["train_seconds_mean"] = ts.get("mean")
            row["train_seconds_std"] = ts.get("std")
            bests = summ.get("best_epoch") or {}
            row["best_epoch_mean"] = bests.get("mean")
            row["run"] = run
            row["_records"] = [{"seed": r["seed"], "test": r.get("test"), "valid": r.get("valid"),
                                "train_seconds": r.get("train_seconds"), "best_epoch": r.get("best_epoch"),
                                "epochs_run": r.get("epochs_run"), "stop": r.get("stop")}
                               for r in recs]
            rows.append(row)
    return rows


def with_references(grid: Grid, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each data set's published reference rows after its own rows
    (for the data sets that have rows); a reference row's ``reference`` names its source."""
    out: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        out.append(r)
        if i + 1 == len(rows) or rows[i + 1]["dataset"] != r["dataset"]:
            for ref in grid.references.get(r["dataset"], []):
                row: dict[str, Any] = {"dataset": r["dataset"], "embedding": "", "tokenizer": "",
                                       "model": ref.model, "seeds": "", "reference": ref.source}
                for m, v in ref.metrics.items():
                    row[f"test_{m}_mean"], row[f"test_{m}_std"] = v, None
                out.append(row)
    return out


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    first = ["dataset", "embedding", "tokenizer", "model", "seeds"]
    first += ["reference"] * any(r.get("reference") for r in rows)
    metric_cols = [c for r in rows for c in r if c.startswith(("test_", "valid_"))]
    metric_cols = list(dict.fromkeys(sorted(metric_cols, key=lambda c: (not c.startswith("test_"), c))))
    diag = ["n_items", "codebook_sizes", "k_eff", "k_eff_scale", "k_eff_member"]
    ent = sorted({c for r in rows for c in r if c.startswith("norm_entropy_l")},
                 key=lambda c: int(c.rsplit("l", 1)[1]))
    rest = ["semantic_collision_rate", "semantic_collision_share", "rel_mse", "rel_mse_prefix_mean", "soft_matching_auc",
            "tokenize_seconds", "train_seconds_mean", "train_seconds_std", "best_epoch_mean"]
    rest += ["stop"] * any(r.get("stop") for r in rows) + ["run"]
    return first + metric_cols + diag + ent + rest


def _csv_text(rows: list[dict[str, Any]], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in cols])
    return buf.getvalue()


def _pm(row: dict[str, Any], col: str, digits: int = 4) -> str:
    m, s = row.get(f"{col}_mean"), row.get(f"{col}_std")
    if m is None:
        return ""
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _f(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def chosen_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per data set, the grid row with the highest **validation** NDCG@10 (mean over its
    seeds; :func:`sidkit.selection.select_best`).  Published reference rows and rows without
    a validation figure take no part; test figures never choose."""
    from .selection import select_best

    out: dict[str, dict[str, Any]] = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        cands = [r for r in rows if r["dataset"] == ds and not r.get("reference")
                 and r.get("valid_ndcg@10_mean") is not None]
        if cands:
            out[ds] = cands[select_best(cands)]
    return out


def _markdown(grid: Grid, rows: list[dict[str, Any]], cols: list[str]) -> str:
    refs = [r for r in rows if r.get("reference")]
    ours = [r for r in rows if not r.get("reference")]
    n = {a: len({r[k] for r in ours if r[k]}) for a, k in   # a shared ID-model row has none
         (("datasets", "dataset"), ("embeddings", "embedding"), ("tokenizers", "tokenizer"))}
    seeds = sorted({s for r in ours for s in str(r.get("seeds", "")).split()}, key=int)
    done = len({r["run"] for r in ours})
    lines = [f"# Experiment {grid.config.name}", "",
             f"{done} of {len(grid.cells)} run(s) finished ({n['datasets']} data set(s) x {n['embeddings']} "
             f"embedding(s) x {n['tokenizers']} tokenizer(s)), seeds {', '.join(seeds) or '-'}; "
             f"{len(ours)} row(s). Test figures: mean ± sample std over seeds (full ranking, "
             "best-validation checkpoint; docs/evaluation.md). Diagnostics from each run's codes and "
             "diagnostics stages: K_eff at the first perturbation scale, H/log2K per semantic level, "
             "semantic collisions (tokens before the disambiguation token: collision rate / share of "
             "items in a collision), relative reconstruction MSE of the full semantic SID: by the "
             "tokenizer's decoder (-- where it cannot decode the codes, e.g. after an hourglass remedy) / by "
             "the mean embedding of the items sharing the SID. Tokenize s: the codes stage's time; "
             "train s: seconds per seed (mean ± std).", ""]
    ent = [c for c in cols if c.startswith("norm_entropy_l")]
    models = any(r["model"] for r in rows)   # a diagnostics-only grid has no metric columns
    metrics = list(MAIN_METRICS) if models else []
    chosen = chosen_rows(rows) if models else {}
    head = ["data set", "embedding", "tokenizer"] + \
           (["model", "seeds"] + [f"test {m}" for m in metrics] + ["valid ndcg@10 (decides)"]) * models + \
           ["K_eff", "H/log2K per level", "sem. collisions (rate / share)", "rel. MSE (decoder / prefix mean)", "tokenize s"] + \
           ["train s"] * models
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * (3 + 2 * models) + "---:|" * (len(head) - 3 - 2 * models)]
    for r in rows:
        cells = [r["dataset"], r["embedding"] or "-", r["tokenizer"] or "-"]
        if r.get("reference"):
            cells = [r["dataset"], "", "", f"{r['model']} (published)", ""]
            cells += [_f(r.get(f"test_{m}_mean"), ".4f") for m in metrics] + [""] * (len(head) - 5 - len(metrics))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        if models:
            is_chosen = chosen.get(r["dataset"]) is r
            valid = _pm(r, "valid_ndcg@10")
            stop = {"cap": " (at epoch cap)", "budget": " (time budget)"}
            mark = "".join(stop[x] for x in str(r.get("stop") or "").split("+") if x in stop)
            cells += [(r["model"] or "-") + mark + (" (chosen)" if is_chosen else ""), r.get("seeds") or "-"] + \
                [_pm(r, f"test_{m}") for m in metrics] + [f"**{valid}**" if is_chosen and valid else valid]
        cells += [_f(r.get("k_eff"), ".1f"),
                  " / ".join(_f(r.get(c), ".3f") for c in ent if r.get(c) is not None),
                  (f"{r['semantic_collision_rate']:.4f} / {r['semantic_collision_share']:.4f}"
                   if r.get("semantic_collision_rate") is not None else ""),
                  f"{_f(r.get('rel_mse'), '.4f') or '--'} / {_f(r.get('rel_mse_prefix_mean'), '.4f') or '--'}",
                  _f(r.get("tokenize_seconds"), ".2f")]
        if models:
            cells.append(_pm(r, "train_seconds", 1))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if models:
        lines += ["", "Choices are made on validation: the column *valid ndcg@10 (decides)* chooses and the "
                      "chosen row of each data set is marked *(chosen)*; the test columns are reported beside "
                      "it and never choose (docs/evaluation.md, 'Choosing on validation')."]
    for ds, r in chosen.items():
        lines += ["", f"Chosen on validation NDCG@10 ({ds}): {r['embedding']} / {r['tokenizer']} / {r['model']} "
                      f"(valid {_pm(r, 'valid_ndcg@10')}; its test NDCG@10, reported: {_pm(r, 'test_ndcg@10')})."]
    lines += _against_published(grid, ours) if models else []
    if any(r.get("stop") for r in ours):
        lines += ["", "*(at epoch cap)*: some seed of the row trained to its epoch cap before validation stopped "
                      "improving for `patience` evaluations, so the row may be a lower bound (rerun it with more epochs); *(time budget)*: "
                      "stopped by its `[train] max_minutes` budget."]
    if any(r["model"] and r["embedding"] == "" and not r.get("reads_sids") for r in ours):
        lines += ["", "Rows with embedding and tokenizer `-` read no Semantic IDs: they are trained once per data "
                      "set (`[grid] share_id_models`), in its first run."]
    if refs:
        lines += ["", "*(published)*: figures reported elsewhere, not computed here -- different code, tuning "
                  "and possibly protocol, so read them as orientation:"]
        for ds in dict.fromkeys(r["dataset"] for r in refs):
            for ref in grid.references.get(ds, []):
                lines.append(f"- {ds}, {ref.model}: {ref.source}" + (f" -- {ref.note}" if ref.note else ""))
    lines += ["", "Every column (all test and validation metrics, std, per-level entropy): `results.csv`; "
              "per-seed figures: `results.json`; plot: `results.png`.", ""]
    return "\n".join(lines)


def _against_published(grid: Grid, ours: list[dict[str, Any]]) -> list[str]:
    """Lines comparing, per data set with published rows, the best SID model and the best
    model without SIDs -- each chosen on validation -- with every published row (test)."""
    from .selection import select_best

    def fig(v: float) -> str:
        return f"{v:.4f}".replace("0.", ".", 1)

    lines: list[str] = []
    for ds, refs in grid.references.items():
        cands = [r for r in ours if r["dataset"] == ds and r.get("valid_ndcg@10_mean") is not None]
        kinds = [(name, [r for r in cands if bool(r.get("reads_sids")) == sid])
                 for name, sid in (("best SID model", True), ("best model without SIDs", False))]
        kinds = [(name, rs[select_best(rs)]) for name, rs in kinds if rs]
        if not kinds or not refs:
            continue
        if not lines:
            lines += ["", "Against the published rows (test; ours: mean ± std over seeds, each chosen on "
                          "validation among its kind; the difference in brackets, marked * where it exceeds "
                          "our seed std):"]
        for ref in refs:
            parts = []
            for name, r in kinds:
                where = "/".join(x for x in (r["embedding"], r["tokenizer"]) if x) or "-"
                vals = []
                for m in ("ndcg@10", "recall@10"):
                    pub, mean, std = ref.metrics.get(m), r.get(f"test_{m}_mean"), r.get(f"test_{m}_std") or 0.0
                    if pub is None or mean is None:
                        continue
                    d = mean - pub
                    vals.append(f"{m.replace('ndcg', 'N').replace('recall', 'R')} {fig(mean)} ± {fig(std)} "
                                f"({'+' if d >= 0 else '-'}{fig(abs(d))}{'*' if abs(d) > std else ''})")
                if vals:
                    parts.append(f"{name} ({where} {r['model']}): " + ", ".join(vals))
            pubs = ", ".join(f"{m.replace('ndcg', 'N').replace('recall', 'R')} {fig(ref.metrics[m])}"
                             for m in ("ndcg@10", "recall@10") if m in ref.metrics)
            if parts:
                lines.append(f"- {ds}, **{ref.model}** (published: {pubs}) -- " + "; ".join(parts))
    return lines


def _plot_png(rows: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_model = [r for r in rows if r.get("test_ndcg@10_mean") is not None]
    if with_model:
        vals = [r["test_ndcg@10_mean"] for r in with_model]
        errs = [r["test_ndcg@10_std"] or 0.0 for r in with_model]   # published rows: no spread
        names = [f"{r['dataset']}/{r['model']} (published)" if r.get("reference") else
                 f"{r['dataset']}/{r['embedding']}/{r['tokenizer']}/{r['model']}" for r in with_model]
        ylabel = "test NDCG@10 (mean ± std over seeds)"
    else:
        with_model = [r for r in rows if r.get("k_eff") is not None]
        vals = [r["k_eff"] for r in with_model]
        errs = [0.0] * len(vals)
        names = [f"{r['dataset']}/{r['embedding']}/{r['tokenizer']}" for r in with_model]
        ylabel = "K_eff (first perturbation scale)"
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(vals) + 2), 4.5))
    groups = list(dict.fromkeys(r.get("model") or "" for r in with_model))   # one colour per model
    palette = plt.get_cmap("tab10")
    colours = [palette(groups.index(r.get("model") or "") % 10) for r in with_model]
    ax.bar(range(len(vals)), vals, yerr=errs, capsize=4, color=colours)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


TABLE_BEGIN = "<!-- sidkit experiment {name}: table begin (rewritten by `sidkit experiment`; write outside the markers) -->"
TABLE_END = "<!-- sidkit experiment {name}: table end -->"


def published_files(grid: Grid) -> dict[str, Path]:
    """The ``publish`` targets of the grid (``PATH.md``, ``PATH.json``), checked: an
    existing ``.md`` must hold sidkit's table markers and an existing ``.json`` must be
    this grid's results, else a ConfigError (sidkit does not overwrite files it did not write)."""
    if not grid.config.publish:
        return {}
    base = Path(grid.config.publish)
    files = {"md": base.with_name(base.name + ".md"), "json": base.with_name(base.name + ".json")}
    name = grid.config.name
    md, js = files["md"], files["json"]
    if md.exists():
        text = md.read_text(encoding="utf-8", errors="replace") if md.is_file() else ""
        if TABLE_BEGIN.format(name=name) not in text or TABLE_END.format(name=name) not in text:
            raise ConfigError(f"publish target {md} exists and holds no table markers of experiment {name!r}: "
                              "sidkit did not write it and will not overwrite it",
                              f"choose another publish path, or put the two lines\n  {TABLE_BEGIN.format(name=name)}"
                              f"\n  {TABLE_END.format(name=name)}\ninto {md} where the table should go")
    if js.exists():
        try:
            doc = read_json(js)
        except Exception:
            doc = None
        if not (isinstance(doc, dict) and doc.get("name") == name and "rows" in doc and "columns" in doc):
            raise ConfigError(f"publish target {js} exists and is not the results of experiment {name!r}: "
                              "sidkit did not write it and will not overwrite it", "choose another publish path")
    return files


def _publish(grid: Grid, table_md: str, doc: dict[str, Any]) -> dict[str, Path]:
    files = published_files(grid)
    if not files:
        return {}
    begin, end = TABLE_BEGIN.format(name=grid.config.name), TABLE_END.format(name=grid.config.name)
    block = f"{begin}\n{table_md.rstrip()}\n{end}"
    md = files["md"]
    if md.exists():
        text = md.read_text(encoding="utf-8")
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = block + "\n"
    write_text(md, text)
    write_json(files["json"], doc)
    return {"published_md": md, "published_json": files["json"]}


def write_results(grid: Grid, cells: list[Cell]) -> dict[str, Path]:
    """Write ``OUT/results.{csv,md,json,png}`` from the finished ``cells``' run directories
    (and the grid's ``publish`` copies)."""
    rows = with_references(grid, collect_rows(grid, cells))
    cols = _columns(rows)
    out = grid.out
    files = {k: out / f"results.{k}" for k in ("csv", "md", "json", "png")}
    table_md = _markdown(grid, rows, cols)
    doc = {"name": grid.config.name, "origin": grid.origin, "columns": cols,
           "cells": [{"id": c.id, "dir": str(c.dir), "models": c.model_labels} for c in cells],
           "n_cells": len(grid.cells),
           "references": {ds: [r.model_dump() for r in refs] for ds, refs in grid.references.items()},
           "rows": [{**{c: r.get(c) for c in cols}, "per_seed": r.get("_records", [])} for r in rows]}
    write_text(files["csv"], _csv_text(rows, cols))
    write_text(files["md"], table_md)
    write_json(files["json"], doc)
    write_bytes(files["png"], _plot_png(rows, f"{grid.config.name}"))
    files.update(_publish(grid, table_md, doc))
    return files
