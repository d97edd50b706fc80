"""Catalogue-scale embedding and encoding on Ray Data (``sidkit encode-ray``).

Items are read from Parquet as a Ray Dataset, embedded (when they come as text) and
encoded to Semantic IDs with ``map_batches`` over a pool of actors that each load the
tokenizer (and the text model) once, and written to Parquet: the item id column and one
``sid_<l>`` int64 column per SID level.  Execution is streaming: no stage materialises
the catalogue, so memory stays bounded by the blocks in flight (see ``docs/scale.md``).

Result contract -- the same SIDs as the in-process encoder
(:func:`encode_in_process`, i.e. ``tokenizer.encode`` of the whole catalogue in item-id
order):

- a catalogue item (one the tokenizer was fitted on) gets its fit-time SID whatever the
  batch (``docs/encoding.md``), so pass 1 alone is exact for it;
- a *new* item (``--fit-sample``: every item outside the sample) gets its semantic
  tokens and the disambiguation token ``count + rank``, where ``rank`` numbers the new
  items under one semantic prefix.  Per batch that rank would be local, and two batches
  would hand out the same SID, so pass 1 marks new items with their ``count`` and pass 2
  ranks them over the whole catalogue, as an external hash group-by on Ray tasks: one
  task per chunk of pass 1's row groups copies its catalogue rows to the output and
  writes its new rows' small rows (id + tokens) into buckets by a hash of their semantic
  prefix; one task per bucket numbers its items in item-id order, one vectorised call per
  bucket.  Each task holds about ``rows_per_task`` rows, so pass 2's memory does not grow
  with the catalogue (a Ray Data sort did: ~3 GB in one worker at 30M new items).  New
  items under one prefix are numbered in item-id order, which is what the in-process
  encoder gives for a catalogue sorted by item id.

Output goes to a temporary directory next to ``output`` and is renamed onto it only when
every pass has finished: a failed run leaves no partial output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ArtifactError, ConfigError, DataError, SidkitError
from ..utils import GOLDEN64, mix64

SID_PREFIX = "sid_"
_NEW = "_sidkit_new"  # pass-1 column: the row is a new item (not in the fitted catalogue)
_BASE = "_sidkit_base"  # pass-1 column: catalogue items under the row's semantic prefix
SUMMARY_FILE = "_sidkit_encode.json"  # "_" prefix: Parquet readers skip it
# Pass 2 works on at most about this many rows per task (a chunk of pass 1's row groups, or
# one hash bucket of new items): ~50 bytes a row, so ~50 MB of table per task.
ROWS_PER_TASK = 1_000_000

__all__ = ["require_ray", "ray_session", "RayStartError", "tokenizer_dir", "encode_parquet", "fit_sample",
           "encode_in_process", "read_sids", "SID_PREFIX"]


# ---------------------------------------------------------------- ray session
class RayStartError(ConfigError):
    """Ray itself could not start (local) or be reached (``address``): ``ray.init``
    failed, after the retries of :func:`ray_session`.  Never raised for sidkit's own code."""


def require_ray():
    """Import ray (and ray.data) or raise a ConfigError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"Ray Data is not installed ({e})",
                          'pip install "sidkit[ray]" (ray[data]>=2.9)') from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Use the running Ray session, or start one (local, or connected to ``address``)
    and shut it down afterwards."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        kw["address"] = address
    else:  # a local Ray on a busy machine registers its workers slowly (default 60 s)
        os.environ.setdefault("RAY_worker_register_timeout_seconds", "300")
        if num_cpus:
            kw["num_cpus"] = int(num_cpus)
    where = f" at {address!r}" if address else ""
    fix = ("check --ray-address (e.g. ray://HEAD:10001 or HEAD:6379), or leave it out to run on "
           "this machine" if address else "check that Ray starts on this machine "
           "(`python -c 'import ray; ray.init()'`), or pass --ray-address of a running cluster")
    for attempt in range(3):
        try:
            ray.init(**kw)
            break
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayStartError(f"cannot start or reach Ray{where}: {e}", fix) from None
        except Exception as e:  # Ray's fixed 30 s wait for a local raylet, on a busy machine
            ray.shutdown()
            if address or "timed out during startup" not in str(e):
                raise
            if attempt == 2:
                raise RayStartError(f"cannot start Ray: its start-up timed out 3 times ({e})", fix) from e
    try:
        yield ray
    finally:
        ray.shutdown()


def _configure_data_context(ray) -> None:
    from ray.data import DataContext

    # unless the user set it: one Parquet footer reader per CPU
    os.environ.setdefault(FOOTER_ACTORS_ENV, str(_footer_actors(ray)))

    ctx = DataContext.get_current()
    if hasattr(ctx, "raise_original_map_exception"):  # a worker's DataError reaches the driver
        ctx.raise_original_map_exception = True
    if os.environ.get("SIDKIT_NO_PROGRESS", "0") == "1":
        ctx.enable_progress_bars = False
        with contextlib.suppress(AttributeError):
            ctx.print_on_execution_start = False


# Ray Data (2.60) reads Parquet footers on a pool of actors, 32 by default whatever the
# cluster's size; each is a Python process (~115 MB of PSS here), and on a 2-CPU machine
# more of them came up the more files a read listed: pass 2 (benchmarks/number_ray.py, ~600
# files for 10M new items) peaked at 4.3 GB, of which 3.4 GB were 30 footer readers.
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


def _footer_actors(ray) -> int:
    """Parquet footer readers: one per CPU of the cluster, at most Ray's default 32."""
    return max(1, min(32, int(ray.cluster_resources().get("CPU", 1))))


def _n_actors(ray, workers: int | None) -> int:
    """Encoding actors: ``workers``, else one per CPU of the cluster less one, so that
    the read and write tasks always find a CPU (a pool that takes every CPU deadlocks)."""
    if workers is not None:
        if int(workers) < 1:
            raise ConfigError(f"--workers {workers} must be at least 1", "pass --workers 1 or more")
        return int(workers)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus - 1)


def _unwrap(e: BaseException) -> SidkitError | None:
    """The SidkitError a Ray task raised (Ray wraps it, e.g. ``RayTaskError(DataError)``)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, SidkitError) and hasattr(x, "problem"):
            cls = next(c for c in type(x).__mro__ if issubclass(c, SidkitError)
                       and c.__module__ == SidkitError.__module__)
            return cls(x.problem, x.fix)  # a plain sidkit error, not Ray's wrapper class
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return None


# ---------------------------------------------------------------- inputs
def tokenizer_dir(codes: str | os.PathLike) -> Path:
    """The saved tokenizer of ``codes``: a run's ``codes`` directory (holding
    ``tokenizer/``) or a tokenizer directory itself."""
    p = Path(codes)
    for cand in (p / "tokenizer", p):
        if (cand / "tokenizer.json").is_file():
            return cand
    raise ArtifactError(f"no saved tokenizer in {p} (expected {p / 'tokenizer' / 'tokenizer.json'})",
                        "pass a run's codes directory (RUN/codes, written by `sidkit run` or "
                        "`sidkit tokenize`), or fit one first with --fit-sample N")


def _read_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _load_tokenizer_files(files: dict[str, bytes]):
    """A Tokenizer from the bytes of its directory (workers need not see the driver's disk)."""
    from ..tokenizers.base import Tokenizer

    with tempfile.TemporaryDirectory(prefix="sidkit-tok-") as d:
        for name, data in files.items():
            Path(d, name).write_bytes(data)
        return Tokenizer.load(d)


def _n_features(tok) -> int:
    d = getattr(tok, "n_features_in_", None)
    return int(d) if d is not None else int(tok._dim())


def _is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def _input_schema(path: str | os.PathLike):
    import pyarrow.dataset as pads

    if not _is_remote(path) and not Path(path).exists():
        raise DataError(f"input {path} does not exist", "pass a Parquet file or a directory of them")
    try:
        return pads.dataset(str(path), format="parquet").schema
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet input
        raise DataError(f"input {path} is not readable as Parquet ({type(e).__name__}: {e})",
                        "pass a Parquet file or a directory of Parquet files") from None


def _check_columns(schema, path, id_column: str, column: str | None, text_column: str | None,
                   dim: int | None) -> None:
    """Clear errors for missing or mistyped columns, before any Ray work starts."""
    import pyarrow as pa

    names = list(schema.names)
    wanted = [(id_column, "--id-column")] + ([(text_column, "--text-column")] if text_column
                                             else [(column, "--column")])
    for name, flag in wanted:
        if name not in names:
            raise DataError(f"input {path} has no column {name!r} (columns: {', '.join(names)})",
                            f"pass the right {flag}")
    if text_column:
        t = schema.field(text_column).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise DataError(f"text column {text_column!r} of {path} has type {t}, not string",
                            "pass a string column with --text-column, or embeddings with --column")
        return
    t = schema.field(column).type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            or not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise DataError(f"embedding column {column!r} of {path} has type {t}, not a list of numbers",
                        "store one embedding per row as a list<float32> (or fixed_size_list) column")
    if dim is not None and pa.types.is_fixed_size_list(t) and t.list_size != dim:
        raise DataError(f"embedding column {column!r} of {path} has {t.list_size} dimensions but the "
                        f"tokenizer was fitted on {dim}",
                        "embed the items with the model the tokenizer was fitted on")


def batch_embeddings(tbl, column: str, id_column: str, dim: int | None = None) -> np.ndarray:
    """The ``(n, d)`` float32 matrix of a list column of a pyarrow Table (vectorised);
    a DataError names the first item whose embedding is null or of another length."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = tbl.column(column)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"item {tbl.column(id_column)[i].as_py()!r} has no embedding (null)",
                        "drop or re-embed the items with null embeddings")
    if pa.types.is_fixed_size_list(col.type):
        d = col.type.list_size
    else:
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        d = int(dim) if dim is not None else (int(lens[0]) if n else 0)
        bad = np.flatnonzero(lens != d)
        if bad.size:
            i = int(bad[0])
            raise DataError(f"item {tbl.column(id_column)[i].as_py()!r} has an embedding of "
                            f"{int(lens[i])} values but {d} are expected",
                            "embed every item with the model the tokenizer was fitted on")
    if dim is not None and d != dim:
        raise DataError(f"embedding column {column!r} has {d} dimensions but the tokenizer was "
                        f"fitted on {dim}", "embed the items with the model the tokenizer was fitted on")
    values = col.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(n, d), dtype=np.float32)


# ---------------------------------------------------------------- codes <-> tables
def _catalogue(tok):
    """The tokenizer's fitted catalogue (CatalogueIndex), or None."""
    from ..tokenizers.collisions import CatalogueIndex

    for owner in (tok, getattr(tok, "quantizer_", None)):  # DRQ keeps it on its RQ-KMeans
        if owner is not None and hasattr(owner, "catalogue_sids_"):
            return CatalogueIndex.from_owner(owner)
    return None


def new_item_base(tok, codes) -> tuple[np.ndarray, np.ndarray] | None:
    """For codes with a disambiguation token: (is_new, count) per row, where ``count`` is
    the number of catalogue items under the row's semantic prefix.  Catalogue items hold
    tokens ``0..count-1``; ``encode`` gives a new item ``count + rank in the batch``, so a
    token ``>= count`` marks a new item.  None when there is no such token."""
    if codes.collision_rule == "none":
        return None
    if codes.is_variable_length:
        raise DataError("variable-length SIDs cannot be encoded on Ray yet",
                        "encode in process (tokenizer.encode), or use fixed-length SIDs")
    cat = _catalogue(tok)
    if cat is None:
        raise DataError(f"tokenizer {tok.name!r} keeps no catalogue index",
                        "re-fit and re-save it with this version of sidkit")
    index = cat.prefix_counts()
    sem = codes.codes[:, :-1]
    gid = index._match(sem)
    base = np.where(gid >= 0, index.counts_[np.maximum(gid, 0)], 0).astype(np.int64)
    return codes.codes[:, -1] >= base, base


def _sid_columns(n_levels: int) -> list[str]:
    return [f"{SID_PREFIX}{l}" for l in range(n_levels)]


def _codes_table(ids, codes: np.ndarray, id_column: str, extra: dict[str, Any] | None = None):
    import pyarrow as pa

    cols = {id_column: ids}
    cols.update({c: pa.array(codes[:, l], pa.int64()) for l, c in enumerate(_sid_columns(codes.shape[1]))})
    cols.update(extra or {})
    return pa.table(cols)


class TextBatchEmbedder:
    """Embeds a text column with one sentence-transformers model per worker."""

    def __init__(self, model: str = "default", normalize: bool = True, batch_size: int = 64,
                 device: str = "cpu"):
        from ..embed.text import TextEmbedder

        self.embedder = TextEmbedder(model, batch_size, normalize, device, cache=False,
                                     show_progress=False)

    def embed(self, tbl, text_column: str, id_column: str) -> np.ndarray:
        col = tbl.column(text_column)
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"item {tbl.column(id_column)[i].as_py()!r} has no text (null)",
                            "fill or drop the items without text")
        return self.embedder.embed(col.to_pylist())


class Encoder:
    """``map_batches`` callable: a pyarrow batch -> item ids and SID columns.

    The tokenizer (shipped as its files' bytes, so workers need not share the driver's
    disk) and the text model are loaded once per worker.  With ``mark_new`` the output
    also carries pass 1's new-item flag and per-prefix catalogue count.
    """

    def __init__(self, tokenizer_files: dict[str, bytes], id_column: str, column: str | None,
                 text_column: str | None, mark_new: bool, model: str = "default",
                 normalize: bool = True, embed_batch_size: int = 64, device: str = "cpu",
                 torch_threads: int | None = 1):
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        self.tok = _load_tokenizer_files(tokenizer_files)
        self.dim = _n_features(self.tok)
        self.id_column, self.column, self.text_column = id_column, column, text_column
        self.mark_new = mark_new
        self.n_levels = self.tok.encode(np.zeros((1, self.dim), np.float32)).n_levels
        self.text = (TextBatchEmbedder(model, normalize, embed_batch_size, device)
                     if text_column else None)

    def embeddings(self, tbl) -> np.ndarray:
        if self.text is not None:
            return self.text.embed(tbl, self.text_column, self.id_column)
        return batch_embeddings(tbl, self.column, self.id_column, self.dim)

    def __call__(self, tbl):
        import pyarrow as pa

        ids = tbl.column(self.id_column)
        n = len(ids)
        if n == 0:
            codes, new, base = np.zeros((0, self.n_levels), np.int64), np.zeros(0, bool), np.zeros(0, np.int64)
        else:
            X = self.embeddings(tbl)
            try:
                c = self.tok.encode(X)
            except DataError as e:
                raise DataError(f"in the batch starting at item {ids[0].as_py()!r}: {e.problem}",
                                e.fix) from None
            codes = c.codes
            flag = new_item_base(self.tok, c) if self.mark_new else None
            new, base = flag if flag is not None else (np.zeros(n, bool), np.zeros(n, np.int64))
        extra = {_NEW: pa.array(new), _BASE: pa.array(base, pa.int64())} if self.mark_new else None
        return _codes_table(ids, codes, self.id_column, extra)


def rank_new_items(tbl, id_column: str, n_levels: int):
    """Pass 2 on a table holding whole semantic-prefix groups of new items: the last
    token becomes ``count + rank`` with ranks in item-id order (one lexsort; ~45 bytes
    of scratch a row)."""
    import pyarrow as pa

    from ..tokenizers.collisions import run_ranks

    cols = _sid_columns(n_levels)
    n = tbl.num_rows
    keep = [id_column] + cols
    if n == 0:
        return tbl.select(keep)
    ids = tbl.column(id_column).to_numpy(zero_copy_only=False)
    by_id = np.empty(n, np.int64)  # the rank of each id (ids may be strings)
    by_id[np.argsort(ids, kind="stable")] = np.arange(n)
    sem = [tbl.column(c).to_numpy(zero_copy_only=False) for c in cols[:-1]]
    o = np.lexsort([by_id, *sem[::-1]])  # by prefix, then item id
    start = np.zeros(n, bool)
    start[0] = True
    for col in sem:  # a loop over levels, not items
        start[1:] |= col[o[1:]] != col[o[:-1]]
    rank = np.empty(n, np.int64)
    rank[o] = run_ranks(start)
    base = tbl.column(_BASE).to_numpy(zero_copy_only=False)
    out = tbl.select(keep)
    return out.set_column(out.schema.get_field_index(cols[-1]), cols[-1],
                          pa.array(base + rank, pa.int64()))


def _only(tbl, new: bool, drop_flags: bool):
    import pyarrow.compute as pc

    mask = tbl.column(_NEW)
    out = tbl.filter(mask if new else pc.invert(mask))
    return out.drop_columns([_NEW, _BASE]) if drop_flags else out


# ---------------------------------------------------------------- the jobs
@contextlib.contextmanager
def _staging(output: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary directory next to ``output``; ``<tmp>/out`` replaces ``output`` on
    success; everything is removed on failure (no partial output)."""
    if output.exists() and not overwrite:
        raise DataError(f"output {output} already exists", "pass another --output, or --overwrite")
    if output.exists():
        _check_own_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(tmp / "out", output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_own_output(output: Path) -> None:
    """``--overwrite`` replaces only an earlier output of this command: a directory with
    its summary file and nothing but Parquet files beside it (never a user's folder)."""
    others = [] if output.is_dir() else [output.name]
    if output.is_dir():
        others = sorted(p.name for p in output.iterdir()
                        if p.name != SUMMARY_FILE and not (p.is_file() and p.suffix == ".parquet"))
    if others or not (output / SUMMARY_FILE).is_file():
        what = f"it holds {others[:5]}" if others else f"it has no {SUMMARY_FILE}"
        raise ArtifactError(f"output {output} was not written by `sidkit encode-ray` ({what}); "
                            "--overwrite only replaces an earlier encode-ray output",
                            "pass another --output, or move that folder away yourself")


def encode_parquet(codes: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike, *,
                   id_column: str = "item_id", column: str = "embedding",
                   text_column: str | None = None, model: str = "default",
                   normalize: bool = True, batch_size: int = 4096, workers: int | None = None,
                   ray_address: str | None = None, num_cpus: int | None = None,
                   device: str = "cpu", overwrite: bool = False,
                   rows_per_task: int = ROWS_PER_TASK) -> dict[str, Any]:
    """Encode every item of the Parquet ``input`` to SIDs with the tokenizer saved in
    ``codes``, on Ray Data; write ``output`` (a directory of Parquet files: ``id_column``
    and ``sid_0 .. sid_{L-1}``, plus a ``_sidkit_encode.json`` summary).

    ``rows_per_task`` bounds the rows one task of pass 2 (the numbering of new items)
    holds, about 50 bytes each: pass 2's memory follows it, not the catalogue's size.

    Returns the summary: ``n_items``, ``n_new`` (items outside the fitted catalogue),
    ``n_levels``, ``seconds`` per pass.  Problems with the arguments, the tokenizer or the
    input schema raise before Ray starts; a problem in a batch (a null or wrong-length
    embedding) raises the worker's DataError; neither leaves output behind.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1", "pass e.g. --batch-size 4096")
    if rows_per_task < 1:
        raise ConfigError(f"rows_per_task {rows_per_task} must be at least 1",
                          f"leave it at its default, {ROWS_PER_TASK:,}")
    from ..tokenizers.base import Tokenizer

    tdir = tokenizer_dir(codes)
    tok = Tokenizer.load(tdir)
    dim = _n_features(tok)
    schema = _input_schema(input)
    _check_columns(schema, input, id_column, None if text_column else column, text_column, dim)
    probe = tok.encode(np.zeros((1, dim), np.float32))
    mark_new = probe.collision_rule != "none"
    if mark_new and probe.is_variable_length:
        raise DataError("variable-length SIDs cannot be encoded on Ray yet",
                        "encode in process (tokenizer.encode), or use fixed-length SIDs")
    L = probe.n_levels
    output = Path(output)
    files = _read_files(tdir)
    summary: dict[str, Any] = {"input": str(input), "tokenizer": str(tdir), "method": tok.name,
                               "n_levels": L, "collision_rule": probe.collision_rule,
                               "id_column": id_column, "columns": [id_column, *_sid_columns(L)],
                               "source": f"text:{text_column}" if text_column else f"embedding:{column}"}
    with _staging(output, overwrite) as tmp, ray_session(ray_address, num_cpus) as ray:
        _configure_data_context(ray)
        n_act = _n_actors(ray, workers)
        summary["workers"] = n_act
        read_cols = [id_column, text_column or column]
        t0 = time.perf_counter()
        try:
            ds = ray.data.read_parquet(str(input)).select_columns(read_cols)
            enc = ds.map_batches(
                Encoder, batch_size=batch_size, batch_format="pyarrow",
                fn_constructor_kwargs=dict(tokenizer_files=files, id_column=id_column,
                                           column=column, text_column=text_column,
                                           mark_new=mark_new, model=model, normalize=normalize,
                                           device=device),
                compute=_actor_pool(ray, n_act), num_cpus=1)
            stage1 = tmp / ("stage1" if mark_new else "out")
            enc.write_parquet(str(stage1))
            summary["seconds_encode"] = time.perf_counter() - t0
            if mark_new:
                summary.update(_disambiguate(ray, stage1, tmp / "out", id_column, L,
                                                 rows_per_task))
            else:
                summary["n_items"] = _count_rows(stage1)
                summary["n_new"] = None
        except Exception as e:
            err = _unwrap(e)
            if err is not None:
                raise err from None
            raise
        if not (tmp / "out").exists():  # an empty input: write an empty table
            import pyarrow.parquet as pq

            (tmp / "out").mkdir()
            empty = _codes_table(np.zeros(0, np.int64), np.zeros((0, L), np.int64), id_column)
            pq.write_table(empty, tmp / "out" / "empty.parquet")
        summary["seconds"] = time.perf_counter() - t0
        (tmp / "out" / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _actor_pool(ray, n: int):
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=n)


def _count_rows(path: Path) -> int:
    import pyarrow.dataset as pads

    if not path.exists():
        return 0
    return int(pads.dataset(str(path), format="parquet").count_rows())


_BUCKETS = "buckets"


def _disambiguate(ray, stage1: Path, out: Path, id_column: str, L: int,
                  rows_per_task: int = ROWS_PER_TASK) -> dict[str, Any]:
    """Pass 2, an external hash group-by on Ray tasks whose memory does not grow with the
    catalogue (see module doc):

    1. *split*: one task per chunk of pass 1's row groups (about ``rows_per_task`` rows) copies
       its catalogue rows to the output as they are, and writes its new rows into
       ``P = ceil(n_new / rows_per_task)`` buckets by a hash of their semantic prefix, so
       all new items under one prefix land in one bucket;
    2. *rank*: one task per bucket numbers its items (:func:`rank_new_items`) and writes
       them to the output.

    Tasks write files with fixed names (a retried task overwrites its own files) and
    return only row counts; nothing goes through the object store.
    """
    import pyarrow.dataset as pads

    t0 = time.perf_counter()
    files = sorted(str(f) for f in stage1.rglob("*.parquet")) if stage1.exists() else []
    if not files:
        return {"n_items": 0, "n_new": 0, "seconds_disambiguate": 0.0}
    flags = pads.dataset(files, format="parquet")  # the flag column only, streamed
    n_items = int(flags.count_rows())
    n_new = int(flags.count_rows(filter=pads.field(_NEW)))
    n_buckets = max(1, -(-n_new // int(rows_per_task)))
    chunks = _row_group_chunks(flags, int(rows_per_task))
    out.mkdir(parents=True, exist_ok=True)
    buckets = stage1.parent / _BUCKETS
    split = ray.remote(num_cpus=1)(_split_chunk)
    ray.get([split.remote(c, i, str(out), str(buckets), n_buckets, id_column, L)
             for i, c in enumerate(chunks)])
    if n_new:
        rank = ray.remote(num_cpus=1)(_rank_bucket)
        done = ray.get([rank.remote(str(d), str(out), id_column, L)
                        for d in sorted(buckets.iterdir())])
        if sum(done) != n_new:  # a bucket lost or doubled rows: never write a wrong output
            raise RuntimeError(f"pass 2 ranked {sum(done)} new items, pass 1 marked {n_new}")
        shutil.rmtree(buckets, ignore_errors=True)
    return {"n_items": n_items, "n_new": n_new, "n_chunks": len(chunks),
            "n_buckets": n_buckets if n_new else 0, "seconds_disambiguate": time.perf_counter() - t0}


def _row_group_chunks(dataset, rows: int) -> list[list[tuple[str, list[int]]]]:
    """Pass 1's row groups in consecutive chunks of about ``rows`` rows (counts from the
    Parquet footers), as ``[(path, [row group, ...]), ...]``: a big file is split too."""
    chunks: list[dict[str, list[int]]] = [{}]
    acc = 0
    for frag in dataset.get_fragments():
        md = frag.metadata
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if chunks[-1] and acc + n > rows:
                chunks.append({})
                acc = 0
            chunks[-1].setdefault(frag.path, []).append(g)
            acc += n
    return [list(c.items()) for c in chunks if c]


def prefix_bucket(sem: np.ndarray, n_buckets: int) -> np.ndarray:
    """A bucket in ``[0, n_buckets)`` per row of semantic tokens ``sem`` (n, L-1), the
    same on every machine and run (no Python ``hash()``): SplitMix64 chained over the
    prefix, ``h = 0``, then for each token ``t``: ``h = mix64((h ^ t) + GOLDEN64)``
    (:func:`sidkit.utils.mix64`, all mod 2**64), and the bucket is ``h % n_buckets``;
    vectorised over rows (a loop over levels)."""
    sem = np.asarray(sem)
    h = np.zeros(len(sem), np.uint64)
    with np.errstate(over="ignore"):
        for l in range(sem.shape[1]):
            h = mix64((h ^ sem[:, l].astype(np.uint64)) + np.uint64(GOLDEN64))
    return (h % np.uint64(n_buckets)).astype(np.int64)


def _split_chunk(chunk: list[tuple[str, list[int]]], i: int, out: str, buckets: str,
                 n_buckets: int, id_column: str, L: int) -> int:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    tbl = pa.concat_tables([pq.ParquetFile(f).read_row_groups(g) for f, g in chunk])
    cat = _only(tbl, new=False, drop_flags=True)
    if cat.num_rows:
        pq.write_table(cat, f"{out}/catalogue-{i:06d}.parquet")
    new = _only(tbl, new=True, drop_flags=False)
    del tbl, cat
    if new.num_rows:
        cols = _sid_columns(L)[:-1]
        sem = np.stack([new.column(c).to_numpy(zero_copy_only=False) for c in cols], 1)
        new = new.append_column("_bucket", pa.array(prefix_bucket(sem, n_buckets)))
        pads.write_dataset(new, buckets, format="parquet",
                           partitioning=pads.partitioning(pa.schema([("_bucket", pa.int64())])),
                           basename_template=f"chunk-{i:06d}-{{i}}.parquet",
                           existing_data_behavior="overwrite_or_ignore")
    return int(new.num_rows)


def _rank_bucket(bucket: str, out: str, id_column: str, L: int) -> int:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    tbl = pads.dataset(bucket, format="parquet").to_table()
    ranked = rank_new_items(tbl, id_column, L)
    pq.write_table(ranked, f"{out}/new-{int(Path(bucket).name):06d}.parquet")
    return int(ranked.num_rows)


# ---------------------------------------------------------------- fit on a sample
def fit_sample(tokenizer, input: str | os.PathLike, codes: str | os.PathLike, n: int, *,
               id_column: str = "item_id", column: str = "embedding",
               text_column: str | None = None, model: str = "default", normalize: bool = True,
               seed: int = 0, batch_size: int = 4096, workers: int | None = None,
               ray_address: str | None = None, num_cpus: int | None = None,
               device: str = "cpu") -> dict[str, Any]:
    """Fit ``tokenizer`` (unfitted) on about ``n`` items sampled uniformly from ``input``
    (Ray Data ``random_sample``; texts embedded on the workers), then save it to
    ``codes/tokenizer`` (with ``codes/fit_sample.json``).  Only the sample
    (``n x d`` floats) is held in the driver."""
    if n < 1:
        raise ConfigError(f"--fit-sample {n} must be at least 1", "pass the number of items to fit on")
    codes = Path(codes)
    if (codes / "tokenizer").exists():
        raise DataError(f"{codes / 'tokenizer'} already exists",
                        "pass another --codes directory, or drop --fit-sample to reuse it")
    schema = _input_schema(input)
    _check_columns(schema, input, id_column, None if text_column else column, text_column, None)
    with ray_session(ray_address, num_cpus) as ray:
        _configure_data_context(ray)
        t0 = time.perf_counter()
        ds = ray.data.read_parquet(str(input)).select_columns([id_column, text_column or column])
        total = ds.count()
        if total == 0:
            raise DataError(f"input {input} has no rows", "pass a non-empty catalogue")
        if n < total:
            # oversample a little, then keep n (random_sample keeps each row with prob. f)
            frac = min(1.0, 1.1 * n / total + 20.0 / total)
            ds = ds.random_sample(frac, seed=seed)
        if text_column:
            ds = ds.map_batches(_EmbedOnly, batch_size=min(batch_size, 1024), batch_format="pyarrow",
                                fn_constructor_kwargs=dict(id_column=id_column, text_column=text_column,
                                                           model=model, normalize=normalize,
                                                           device=device),
                                compute=_actor_pool(ray, _n_actors(ray, workers)), num_cpus=1)
        ids, Xs = [], []
        try:
            for b in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
                ids.append(b.column(id_column).to_numpy(zero_copy_only=False))
                Xs.append(batch_embeddings(b, "embedding" if text_column else column, id_column))
        except Exception as e:
            err = _unwrap(e)
            if err is not None:
                raise err from None
            raise
        sample_seconds = time.perf_counter() - t0
    ids_all = np.concatenate(ids)
    X = np.concatenate(Xs)
    from ..utils import rng

    order = np.argsort(ids_all, kind="stable")  # independent of the block order
    order = order[np.sort(rng(seed).permutation(order.size)[:n])]
    X, ids_all = X[order], ids_all[order]
    t1 = time.perf_counter()
    tokenizer.fit(X)
    fit_seconds = time.perf_counter() - t1
    tokenizer.save(codes / "tokenizer")
    info = {"input": str(input), "n_total": int(total), "n_sample": int(X.shape[0]),
            "seed": int(seed), "method": tokenizer.name, "dim": int(X.shape[1]),
            "source": f"text:{text_column}" if text_column else f"embedding:{column}",
            "seconds_sample": sample_seconds, "seconds_fit": fit_seconds}
    (codes / "fit_sample.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


class _EmbedOnly:
    """``map_batches`` callable: texts -> (id, embedding) rows."""

    def __init__(self, id_column: str, text_column: str, model: str, normalize: bool, device: str):
        self.id_column, self.text_column = id_column, text_column
        self.text = TextBatchEmbedder(model, normalize, 64, device)

    def __call__(self, tbl):
        import pyarrow as pa

        X = self.text.embed(tbl, self.text_column, self.id_column)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
        return pa.table({self.id_column: tbl.column(self.id_column), "embedding": emb})


# ---------------------------------------------------------------- reference and reading
def encode_in_process(tok, ids: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The in-process reference: ``tok.encode`` of the whole catalogue in item-id order
    (new items under one prefix numbered in id order), returned in the order of ``ids``."""
    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    codes = tok.encode(np.asarray(X)[order]).codes
    out = np.empty_like(codes)
    out[order] = codes
    return out


def read_sids(path: str | os.PathLike, id_column: str = "item_id"):
    """The output of :func:`encode_parquet` as a DataFrame sorted by item id."""
    import pandas as pd

    df = pd.read_parquet(path)
    return df.sort_values(id_column, kind="stable").reset_index(drop=True)


def write_embeddings_parquet(path: str | os.PathLike, ids, X: np.ndarray, *,
                             column: str = "embedding", id_column: str = "item_id",
                             row_group_size: int = 65536, extra: dict[str, Any] | None = None) -> None:
    """Write items as Parquet (``id_column`` + a fixed_size_list<float32> ``column``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = np.ascontiguousarray(X, np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    tbl = pa.table({id_column: ids, column: emb, **(extra or {})})
    pq.write_table(tbl, str(path), row_group_size=row_group_size)
