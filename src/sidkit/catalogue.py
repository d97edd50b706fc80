"""Items added to a trained run without retraining (``sidkit add-items``; docs/cold_start.md).

The pipeline's stage directories (``RUN/codes``, ``RUN/recommender``, ...) are never
touched: their ``meta.json`` hashes stay valid and ``sidkit run`` keeps its cache.  The
additions live beside them, in versions that are written whole and then published by
one atomic rename of a pointer file::

    RUN/catalogue/CURRENT              the name of the current version, e.g. "v-000002"
    RUN/catalogue/v-000002/added.json  every item added so far: ids, texts, collision rule
    RUN/catalogue/v-000002/added.safetensors   their codes (the tokenizer's SIDs), lengths, embeddings
    RUN/catalogue/v-000002/tokenizer/  the run's tokenizer after ``encode_new`` of them

Each version is cumulative (it holds every item added so far).  An update writes the
next version in a temporary directory ``.v-XXXXXX.<pid>.tmp``, renames it to
``v-XXXXXX`` and then replaces ``CURRENT`` (``os.replace``): a crash before that
rename leaves the previous version current and complete (the stray directory is
removed by the next update); after it, the new version is complete.  Readers read
``CURRENT`` once and then only the immutable version it names, so they see the old or
the new catalogue, never a mixture.

A run's generative SID models (``causal_sid``, ``tiger``; not the ID-only ablation, and
only those trained on the run's own codes) take the added items through
:func:`sidkit.models.catalogue.add_items` when loaded with :func:`load_run_model`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ArtifactError, DataError
from .io import SCHEMA_VERSION, read_json, write_json, write_text

SID_MODEL_TYPES = ("causal_sid", "tiger")
_VERSION = re.compile(r"^v-(\d{6})$")


@dataclass(frozen=True)
class Additions:
    """Every item added to a run so far (one version of ``RUN/catalogue``)."""

    version: str
    path: Path
    item_ids: list[str]
    codes: np.ndarray          # (n, L) the tokenizer's SIDs (encode_new)
    lengths: np.ndarray        # (n,)
    embeddings: np.ndarray     # (n, d) float32
    texts: list[str | None]
    collision_rule: str

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def catalogue_dir(run: str | Path) -> Path:
    return Path(run) / "catalogue"


def current_additions(run: str | Path) -> Additions | None:
    """The current additions of ``run`` (None when nothing was added)."""
    from .io import load_safetensors

    root = catalogue_dir(run)
    ptr = root / "CURRENT"
    if not ptr.is_file():
        return None
    name = ptr.read_text(encoding="utf-8").strip()
    if not _VERSION.match(name):
        raise ArtifactError(f"{ptr} names no catalogue version ({name[:40]!r})",
                            f"restore {root} from a copy, or remove it to drop the added items")
    vdir = root / name
    fix = f"restore {root} from a copy, or remove it to drop the added items"
    meta = read_json(vdir / "added.json")
    if not isinstance(meta, dict) or meta.get("artifact") != "CatalogueAdditions":
        raise ArtifactError(f"{vdir / 'added.json'} is not a catalogue addition record", fix)
    arr = load_safetensors(vdir / "added.safetensors", fix, names=("codes", "lengths", "embeddings"))
    ids = [str(i) for i in meta["item_ids"]]
    if not (len(ids) == len(arr["codes"]) == len(arr["lengths"]) == len(arr["embeddings"])):
        raise ArtifactError(f"{vdir} holds arrays that do not match its {len(ids)} item ids", fix)
    return Additions(name, vdir, ids, arr["codes"].astype(np.int64), arr["lengths"].astype(np.int64),
                     arr["embeddings"].astype(np.float32), list(meta.get("texts") or [None] * len(ids)),
                     str(meta.get("collision_rule", "none")))


def run_tokenizer(run: str | Path, additions: Additions | None = None):
    """The run's tokenizer, with the added items in its catalogue (the latest version's)."""
    from .tokenizers import Tokenizer

    add = current_additions(run) if additions is None else additions
    path = add.path / "tokenizer" if add is not None else Path(run) / "codes" / "tokenizer"
    if not path.exists():
        raise ArtifactError(f"the run has no tokenizer ({path} is missing)",
                            "add items to a run written by sidkit run (its codes stage saves the tokenizer)")
    return Tokenizer.load(path)


def embedding_dim(tokenizer) -> int | None:
    d = getattr(tokenizer, "n_features_in_", None)
    if d is None and hasattr(tokenizer, "_dim"):
        d = tokenizer._dim()
    return None if d is None else int(d)


def sid_models(run: str | Path) -> list[tuple[str, int, Path]]:
    """``(label, seed, directory)`` of every saved generative SID model of the run trained
    on the run's own codes (the models added items reach)."""
    run = Path(run)
    mpath = run / "recommender" / "metrics.json"
    if not mpath.is_file():
        return []
    doc = read_json(mpath)
    out = []
    for rec in doc.get("records") or []:
        label = rec.get("label")
        kind = (((doc.get("models") or {}).get(label) or {}).get("model") or {})
        if kind.get("type") not in SID_MODEL_TYPES or kind.get("id_only") or rec.get("tokenizer") is None:
            continue
        d = run / "recommender" / "models" / str(label) / f"seed-{int(rec.get('seed', 0))}"
        if (d / "model.json").is_file():
            out.append((str(label), int(rec.get("seed", 0)), d))
    return out


def apply_additions(model, additions: Additions | None):
    """``model`` with the run's added items (a new object), or ``model`` itself when there
    are none or it is no SID model."""
    from .models.catalogue import add_items
    from .models.generative import SIDRecommender

    if additions is None or not isinstance(model, SIDRecommender) or getattr(model, "id_only", False):
        return model
    return add_items(model, additions.item_ids, _codes(additions), max_items=max(additions.n_items, 1))


def _codes(add: Additions):
    from .types import Codes

    L = add.codes.shape[1]
    sizes = tuple(int(max(add.codes[:, lv].max(initial=0) + 1, 1)) for lv in range(L))
    return Codes(add.codes, sizes, lengths=add.lengths, collision_rule=add.collision_rule,
                 item_ids=np.asarray(add.item_ids))


def load_run_model(run: str | Path, label: str, seed: int):
    """The run's saved model ``label``/``seed`` with the items added to the run."""
    from .models import Recommender

    model = Recommender.load(Path(run) / "recommender" / "models" / label / f"seed-{seed}")
    return apply_additions(model, current_additions(run))


# ------------------------------------------------------------------ inputs
def check_embeddings(X: Any, n: int, dim: int | None) -> np.ndarray:
    """(n, dim) float32 embeddings of the new items, or one DataError."""
    try:
        arr = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"the embeddings are not a numeric array ({e})", "pass an (items, dim) float array") from None
    if arr.ndim != 2:
        raise DataError(f"the embeddings must be a 2-D (items, dim) array, got shape {arr.shape}",
                        "pass one row per new item")
    if arr.shape[0] != n:
        raise DataError(f"{arr.shape[0]} embedding rows for {n} new item ids", "give one embedding per new item")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"the embeddings have {arr.shape[1]} dimensions but this run's embeddings have {dim}",
                        "embed the new items with the run's embedding model")
    bad = ~np.isfinite(arr).all(1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} embedding row(s) hold NaN or infinite values, e.g. row "
                        f"{int(np.flatnonzero(bad)[0])}", "pass finite embeddings")
    return arr


def check_texts(texts: Sequence[Any], n: int) -> list[str]:
    texts = list(texts)
    if len(texts) != n:
        raise DataError(f"{len(texts)} texts for {n} new item ids", "give one text per new item")
    for k, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"the text of new item #{k} is empty ({t!r})", "give every new item a non-empty text")
    return texts


def embed_texts(run: str | Path, texts: Sequence[str], device: str = "cpu") -> np.ndarray:
    """The run's text embeddings of ``texts`` (the text model of ``RUN/embeddings``)."""
    from .embed import TextEmbedder

    run = Path(run)
    p = run / "embeddings" / "embeddings.json"
    emb = read_json(p) if p.is_file() else {}
    if emb.get("source") != "text":
        raise DataError(f"the run's items were not embedded from text (source: {emb.get('source')!r}), so new "
                        "items cannot be embedded from their text",
                        "pass precomputed embeddings of the new items (--embeddings X.npy)")
    meta = emb.get("meta") or {}
    te = TextEmbedder(meta.get("model", "default"), normalize=bool(meta.get("normalize", True)), device=device,
                      cache=False, show_progress=False)
    return np.asarray(te.embed(list(texts)), np.float32)


# ------------------------------------------------------------------ updates
def _clean_stale(root: Path, keep: str | None) -> None:
    if not root.is_dir():
        return
    for p in root.iterdir():
        if (p.name.startswith(".v-") and p.name.endswith(".tmp")) or (_VERSION.match(p.name) and p.name != keep):
            shutil.rmtree(p, ignore_errors=True)


def _next_version(root: Path) -> str:
    nums = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else []) if (m := _VERSION.match(p.name))]
    return f"v-{max(nums, default=0) + 1:06d}"


def plan_additions(run: str | Path, item_ids: Sequence[str], *, embeddings: Any = None,
                   texts: Sequence[str] | None = None, device: str = "cpu", max_items: int | None = None,
                   models: dict | None = None):
    """Check and encode new items for ``run`` without writing anything.

    Returns ``(additions_before, new_ids, X, codes, tokenizer, texts, models)``: ``tokenizer`` a
    copy that has the new items in its catalogue, ``models`` ``{(label, seed): extended
    model}``.  ``embeddings`` or ``texts`` (embedded with the run's text model; with both,
    the embeddings are used and the texts recorded).  ``models``: ``{(label, seed): model
    with the run's current additions}`` to extend instead of loading the run's SID models
    (the server passes the one it serves).  One DataError (nothing written) on bad input.
    """
    from .models import Recommender
    from .models.catalogue import MAX_ADD_ITEMS, add_items, check_new_ids
    from .types import Codes

    run = Path(run)
    before = current_additions(run)
    tok = run_tokenizer(run, before)
    base = Codes.load(run / "codes" / "codes") if (run / "codes" / "codes.npz").is_file() else None
    have = [] if base is None or base.item_ids is None else np.asarray(base.item_ids).astype(str).tolist()
    have += before.item_ids if before is not None else []
    ids = check_new_ids(item_ids, have, max_items=max_items or MAX_ADD_ITEMS)
    if embeddings is None and texts is None:
        raise DataError("give the new items texts or embeddings", "pass texts=[...] or embeddings=array")
    if texts is not None:
        texts = check_texts(texts, len(ids))
        if embeddings is None:
            X = embed_texts(run, texts, device=device)
    X = check_embeddings(X if embeddings is None else embeddings, len(ids), embedding_dim(tok))
    tok = copy.deepcopy(tok)
    codes = tok.encode_new(X)
    codes = codes.replace(item_ids=np.asarray(ids)) if hasattr(codes, "replace") else codes
    if models is None:
        models = {(label, seed): apply_additions(Recommender.load(d), before) for label, seed, d in sid_models(run)}
    models = {key: add_items(m, ids, codes, max_items=max_items or MAX_ADD_ITEMS) for key, m in models.items()}
    return before, ids, X, codes, tok, texts, models


def add_items_to_run(run: str | Path, item_ids: Sequence[str], *, embeddings: Any = None,
                     texts: Sequence[str] | None = None, device: str = "cpu",
                     max_items: int | None = None, models: dict | None = None, return_state: bool = False):
    """Add new items to a saved run (see the module docstring); returns a summary with the
    SIDs every SID model gives them (with ``return_state``: ``(summary, models, tokenizer,
    additions)``, the extended models, the updated tokenizer and the new current
    additions).  Bad input: one DataError, nothing written."""
    run = Path(run)
    if not run.is_dir():
        raise ArtifactError(f"run directory {run} does not exist", "pass a directory written by sidkit run")
    with _locked(run):                                     # one writer at a time (CLI and server alike)
        return _add_items_locked(run, item_ids, embeddings=embeddings, texts=texts, device=device,
                                 max_items=max_items, models=models, return_state=return_state)


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive advisory lock (``flock``) on the directory itself for the block (no
    lock file: a refused update leaves the run exactly as it was)."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                                       # releases the lock


def _add_items_locked(run: Path, item_ids, *, embeddings, texts, device, max_items, models, return_state):
    from safetensors.numpy import save_file

    from .models.catalogue import sids_dict

    before, ids, X, codes, tok, texts, models = plan_additions(
        run, item_ids, embeddings=embeddings, texts=texts, device=device, max_items=max_items, models=models)
    root = catalogue_dir(run)
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root, before.version if before is not None else None)
    name = _next_version(root)
    tmp = root / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        W = codes.codes.shape[1]
        if before is not None and before.codes.shape[1] != W:
            raise ArtifactError(f"the run's earlier additions have {before.codes.shape[1]} levels, the new {W}",
                                "add items with the run's own tokenizer, whose SIDs have the levels of the earlier additions")
        all_ids = (before.item_ids if before else []) + ids
        all_codes = np.vstack(([before.codes] if before else []) + [np.asarray(codes.codes, np.int64)])
        all_len = np.concatenate(([before.lengths] if before else []) + [np.asarray(codes.lengths, np.int64)])
        all_X = np.vstack(([before.embeddings] if before else []) + [X])
        all_texts = (before.texts if before else []) + (list(texts) if texts is not None else [None] * len(ids))
        save_file({"codes": np.ascontiguousarray(all_codes), "lengths": np.ascontiguousarray(all_len),
                   "embeddings": np.ascontiguousarray(all_X, np.float32)}, str(tmp / "added.safetensors"))
        tok.save(tmp / "tokenizer")
        write_json(tmp / "added.json", {
            "artifact": "CatalogueAdditions", "schema_version": SCHEMA_VERSION, "version": name,
            "item_ids": all_ids, "texts": all_texts, "collision_rule": codes.collision_rule,
            "codebook_sizes": [int(k) for k in codes.codebook_sizes]})
        _fsync_tree(tmp)
        os.rename(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text(root / "CURRENT", name + "\n")                  # the commit point (os.replace)
    _clean_stale(root, name)
    summary = {"run": str(run), "version": name, "added": len(ids), "total_added": len(all_ids),
            "tokenizer_sids": {i: [int(t) for t in c[:n]] for i, c, n in
                               zip(ids, np.asarray(codes.codes).tolist(), np.asarray(codes.lengths).tolist())},
            "models": {f"{lb}/seed-{s}": sids_dict(m, ids) for (lb, s), m in models.items()}}
    if return_state:
        after = Additions(name, root / name, all_ids, all_codes, all_len, np.asarray(all_X, np.float32), all_texts,
                          codes.collision_rule)
        return summary, models, tok, after
    return summary


def _fsync_tree(d: Path) -> None:
    for p in sorted(d.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
