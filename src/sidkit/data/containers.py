"""Data containers that carry their vocabularies: ``Interactions``, ``ItemTable``, ``Split``.

Each container saves to a directory as one Parquet file plus one JSON metadata file
(artifact name, schema version, row count, source), both written atomically; no
pickle anywhere.  Several containers can share one directory::

    <dir>/interactions.parquet  <dir>/interactions.json
    <dir>/items.parquet         <dir>/items.json
    <dir>/split.parquet         <dir>/split.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import ArtifactError, DataError
from ..io import REWRITE_FIX, SCHEMA_VERSION, atomic_path, read_json, write_json
from .history import check_max_len, history_spans

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")
REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ROLES = ("train", "valid", "test")


# ----------------------------------------------------------------------------- files
def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow")


def _write_meta(path: Path, artifact: str, n_rows: int, extra: dict[str, Any]) -> None:
    write_json(path, {"artifact": artifact, "schema_version": SCHEMA_VERSION,
                      "n_rows": int(n_rows), **extra})


def _read(directory: str | Path, stem: str, artifact: str) -> tuple[pd.DataFrame, dict]:
    directory = Path(directory)
    pq, meta_path = directory / f"{stem}.parquet", directory / f"{stem}.json"
    if not pq.exists() or not meta_path.exists():
        raise ArtifactError(
            f"no {artifact} artifact in {directory} (need {pq.name} and {meta_path.name})",
            f"point to the directory written by {artifact}.save",
        )
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_path} does not hold a JSON object", REWRITE_FIX)
    if meta.get("artifact") != artifact or meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{meta_path} is not a {artifact} artifact of schema version {SCHEMA_VERSION} "
            f"(found artifact={meta.get('artifact')!r}, schema_version={meta.get('schema_version')!r})",
            "re-create it with this version of sidkit",
        )
    try:
        df = pd.read_parquet(pq, engine="pyarrow")
    except Exception as e:  # pyarrow's ArrowInvalid / OSError on a damaged file
        raise ArtifactError(f"{pq} is not a readable parquet file ({type(e).__name__}: {e})",
                            REWRITE_FIX) from None
    if len(df) != meta.get("n_rows", len(df)):
        raise ArtifactError(
            f"{pq} has {len(df)} rows but its metadata says {meta['n_rows']}",
            "the artifact is corrupt; re-create it",
        )
    return df, meta


_CONTROL = r"[\x00-\x1f\x7f]"


def check_ids(col: pd.Series, what: str) -> None:
    """Ids are printable text: one with a control character (NUL, tab, newline, ...) is
    a DataError quoting it, never a second item that prints like the first ("50" and
    "50\\x00")."""
    uniq = pd.Series(pd.unique(col.to_numpy()), dtype=object)
    bad = uniq[uniq.str.contains(_CONTROL, regex=True)]
    if len(bad):
        raise DataError(f"{len(bad)} {what}(s) contain control characters, e.g. {bad.iloc[0]!r}",
                        "clean the ids in the source file (strip NUL bytes, tabs and line breaks)")


def _as_str(col: pd.Series) -> pd.Series:
    """Ids as Python-object strings (stable across pandas string-dtype changes)."""
    if pd.api.types.is_float_dtype(col) and col.notna().all() and (col % 1 == 0).all():
        col = col.astype(np.int64)  # 1.0 -> "1", not "1.0"
    return col.astype(str).astype(object)


def _vocabulary(df: pd.DataFrame, column: str) -> pd.Index:
    """The sorted distinct ids of ``df[column]`` (as str), named ``column``."""
    return pd.Index(np.sort(df[column].unique().astype(str)), name=column, dtype=object)


class _UserItemFrame:
    """``users``/``items`` vocabularies and ``len`` of a frame ``self.df`` with
    ``user_id`` and ``item_id`` columns (one row per interaction)."""

    @property
    def users(self) -> pd.Index:
        """Sorted user-id vocabulary."""
        return _vocabulary(self.df, "user_id")

    @property
    def items(self) -> pd.Index:
        """Sorted item-id vocabulary (for a :class:`Split`, every item of all roles:
        the catalogue to tokenize and rank)."""
        return _vocabulary(self.df, "item_id")

    def __len__(self) -> int:
        return len(self.df)


# ----------------------------------------------------------------------- Interactions
@dataclass(eq=False)
class Interactions(_UserItemFrame):
    """User-item interactions: ``user_id`` (str), ``item_id`` (str), ``timestamp``
    (int64) and optionally ``rating`` (float64).

    Row order is kept as loaded (it is the tie-break for equal timestamps).
    ``time_unit`` says what a timestamp counts ("s" or "ms").
    """

    df: pd.DataFrame
    name: str = ""
    source: str = ""
    time_unit: str = "s"

    def __post_init__(self) -> None:
        df = self.df
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"Interactions needs a pandas DataFrame, got {type(df).__name__}",
                            "build one with pd.DataFrame({'user_id': ..., 'item_id': ..., 'timestamp': ...})")
        missing = [c for c in REQUIRED_INTERACTION_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(
                f"interactions lack the column(s) {missing}; columns found: {list(df.columns)}",
                "rename your columns to user_id, item_id, timestamp (or pass a column mapping)",
            )
        cols = [c for c in INTERACTION_COLUMNS if c in df.columns]
        out = pd.DataFrame(index=pd.RangeIndex(len(df)))
        for c in ("user_id", "item_id"):
            vals = df[c].reset_index(drop=True)
            if vals.isna().any():
                raise DataError(f"column {c!r} has {int(vals.isna().sum())} missing values",
                                "drop the rows without a user or item id before loading")
            out[c] = _as_str(vals)
            check_ids(out[c], c)
        ts = df["timestamp"].reset_index(drop=True)
        if not pd.api.types.is_numeric_dtype(ts):
            raise DataError(f"column 'timestamp' must be numeric (unix time), got dtype {ts.dtype}",
                            "convert dates with pd.to_datetime(...).astype('int64') // 10**9")
        if ts.isna().any():
            raise DataError(f"column 'timestamp' has {int(ts.isna().sum())} missing values",
                            "drop or fill the rows without a timestamp")
        out["timestamp"] = np.floor(ts.to_numpy(dtype=np.float64)).astype(np.int64) \
            if pd.api.types.is_float_dtype(ts) else ts.to_numpy().astype(np.int64)
        if "rating" in cols:
            try:
                out["rating"] = df["rating"].reset_index(drop=True).astype(np.float64)
            except (TypeError, ValueError) as e:
                raise DataError(f"column 'rating' is not numeric: {e}",
                                "map ratings to numbers or drop the rating column") from e
        self.df = out
        if self.time_unit not in ("s", "ms"):
            raise DataError(f"unknown time_unit {self.time_unit!r}", "use 's' or 'ms'")

    # vocabularies ---------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return int(self.df["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.df["item_id"].nunique())

    @property
    def has_rating(self) -> bool:
        return "rating" in self.df.columns

    def __repr__(self) -> str:
        return (f"Interactions(name={self.name!r}, users={self.n_users}, items={self.n_items}, "
                f"interactions={len(self)})")

    def with_df(self, df: pd.DataFrame) -> "Interactions":
        """A copy holding ``df`` (same name, source and time unit)."""
        return Interactions(df, name=self.name, source=self.source, time_unit=self.time_unit)

    # files ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        _write_parquet(self.df, directory / "interactions.parquet")
        _write_meta(directory / "interactions.json", "Interactions", len(self.df),
                    {"name": self.name, "source": self.source, "time_unit": self.time_unit,
                     "n_users": self.n_users, "n_items": self.n_items})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Interactions":
        df, meta = _read(directory, "interactions", "Interactions")
        return cls(df, name=meta.get("name", ""), source=meta.get("source", ""),
                   time_unit=meta.get("time_unit", "s"))


# -------------------------------------------------------------------------- ItemTable
def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    if v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, str) and v.strip() == "":
        return True
    if isinstance(v, (list, tuple, np.ndarray)) and len(v) == 0:
        return True
    return False


@dataclass(eq=False)
class ItemTable:
    """Item side information: ``item_id`` (str) plus fields.

    ``text_fields`` name the columns that go into an item's text (see
    :func:`sidkit.data.item_texts`); ``categorical_fields`` name the columns usable as
    discrete item fields (FAMAE): MovieLens ``genres`` and ``decade``; Amazon
    ``brand`` (or store) and category levels ``cat1``-``cat3``.  List-valued columns
    (genres, categories) hold Python lists of strings.  ``template`` is the default
    text template for this table (``None``: one "Field: value." per text field).
    """

    df: pd.DataFrame
    text_fields: list[str] = field(default_factory=list)
    categorical_fields: list[str] = field(default_factory=list)
    name: str = ""
    source: str = ""
    template: str | None = None

    def __post_init__(self) -> None:
        df = self.df
        if "item_id" not in df.columns:
            raise DataError(f"item table lacks the column 'item_id'; columns found: {list(df.columns)}",
                            "rename the item id column to item_id")
        df = df.reset_index(drop=True).copy()
        if df["item_id"].isna().any():
            raise DataError("item table has rows without an item_id", "drop them before loading")
        df["item_id"] = _as_str(df["item_id"])
        check_ids(df["item_id"], "item table item_id")
        dup = df["item_id"].duplicated()
        if dup.any():
            raise DataError(
                f"item table has {int(dup.sum())} duplicated item ids (e.g. {df['item_id'][dup].iloc[0]!r})",
                "keep one row per item (df.drop_duplicates('item_id'))",
            )
        for kind, names in (("text", self.text_fields), ("categorical", self.categorical_fields)):
            bad = [c for c in names if c not in df.columns]
            if bad:
                raise DataError(f"{kind} field(s) {bad} are not columns of the item table; "
                                f"columns found: {list(df.columns)}",
                                f"name existing columns as {kind} fields")
        self.df = df
        self.text_fields = list(self.text_fields)
        self.categorical_fields = list(self.categorical_fields)

    @property
    def items(self) -> pd.Index:
        return pd.Index(self.df["item_id"].to_numpy(dtype=object), name="item_id", dtype=object)

    @property
    def fields(self) -> list[str]:
        return [c for c in self.df.columns if c != "item_id"]

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return (f"ItemTable(name={self.name!r}, items={len(self)}, text_fields={self.text_fields}, "
                f"categorical_fields={self.categorical_fields})")

    def _replace_df(self, df: pd.DataFrame) -> "ItemTable":
        return ItemTable(df, text_fields=self.text_fields, categorical_fields=self.categorical_fields,
                         name=self.name, source=self.source, template=self.template)

    def subset(self, item_ids: Iterable[str]) -> "ItemTable":
        """Rows for ``item_ids`` in that order; ids without side information get empty fields."""
        ids = pd.Index([str(i) for i in item_ids], dtype=object)
        df = self.df.set_index("item_id").reindex(ids)
        df.index.name = "item_id"
        return self._replace_df(df.reset_index())

    def categorical_codes(self, fields: list[str] | None = None) -> dict[str, tuple[np.ndarray, list[str]]]:
        """Integer codes per categorical field: ``{field: (codes, vocab)}``.

        ``codes[i]`` is 0 for a missing value and ``1 + vocab.index(value)`` otherwise;
        list values (genres) are one category, their sorted elements joined by ``|``.
        """
        out: dict[str, tuple[np.ndarray, list[str]]] = {}
        for f in fields if fields is not None else self.categorical_fields:
            if f not in self.df.columns:
                raise DataError(f"unknown field {f!r}; available: {self.fields}", "pick one of them")
            keys = [None if _is_missing(v) else
                    ("|".join(sorted(str(x) for x in v)) if isinstance(v, (list, tuple, np.ndarray)) else str(v))
                    for v in self.df[f].tolist()]
            vocab = sorted({k for k in keys if k is not None})
            index = {k: i + 1 for i, k in enumerate(vocab)}
            out[f] = (np.array([0 if k is None else index[k] for k in keys], dtype=np.int64), vocab)
        return out

    # files ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        df = self.df.copy()
        for c in df.columns:  # lists as lists (Parquet list<string>), never pickled objects
            if df[c].dtype == object and df[c].map(lambda v: isinstance(v, tuple)).any():
                df[c] = df[c].map(lambda v: list(v) if isinstance(v, tuple) else v)
        _write_parquet(df, directory / "items.parquet")
        _write_meta(directory / "items.json", "ItemTable", len(df),
                    {"name": self.name, "source": self.source, "text_fields": self.text_fields,
                     "categorical_fields": self.categorical_fields, "template": self.template})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ItemTable":
        df, meta = _read(directory, "items", "ItemTable")
        for c in df.columns:  # pyarrow gives numpy arrays for list columns
            if df[c].dtype == object:
                df[c] = df[c].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
        return cls(df, text_fields=meta.get("text_fields", []),
                   categorical_fields=meta.get("categorical_fields", []),
                   name=meta.get("name", ""), source=meta.get("source", ""),
                   template=meta.get("template"))


# ------------------------------------------------------------------------------ Split
@dataclass(eq=False)
class Split(_UserItemFrame):
    """Interactions with a role each, in per-user chronological order.

    ``df`` columns: ``user_id``, ``item_id``, ``timestamp``, ``position`` (0-based
    index in the user's chronological sequence) and ``role`` in {train, valid, test}.
    ``kind`` is "leave_one_out" or "temporal"; ``params`` records how it was made
    (for the temporal split the cut timestamps).
    """

    df: pd.DataFrame
    kind: str = "leave_one_out"
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        need = ("user_id", "item_id", "timestamp", "position", "role")
        missing = [c for c in need if c not in self.df.columns]
        if missing:
            raise DataError(f"split lacks the column(s) {missing}; columns found: {list(self.df.columns)}",
                            "build splits with leave_one_out() or temporal_split()")
        bad = set(self.df["role"].unique()) - set(ROLES)
        if bad:
            raise DataError(f"unknown role(s) {sorted(bad)} in split", f"use {ROLES}")
        if self.kind not in ("leave_one_out", "temporal"):
            raise DataError(f"unknown split kind {self.kind!r}", "use 'leave_one_out' or 'temporal'")
        df = self.df.reset_index(drop=True).copy()
        df["user_id"] = _as_str(df["user_id"])
        df["item_id"] = _as_str(df["item_id"])
        df["timestamp"] = df["timestamp"].astype(np.int64)
        df["position"] = df["position"].astype(np.int64)
        df["role"] = df["role"].astype(str).astype(object)
        self.df = df

    def __repr__(self) -> str:
        counts = self.df["role"].value_counts()
        return (f"Split(kind={self.kind!r}, users={self.df['user_id'].nunique()}, "
                + ", ".join(f"{r}={int(counts.get(r, 0))}" for r in ROLES) + ")")

    def role(self, role: str) -> pd.DataFrame:
        if role not in ROLES:
            raise DataError(f"unknown role {role!r}", f"use one of {ROLES}")
        return self.df[self.df["role"] == role]

    @property
    def train(self) -> pd.DataFrame:
        return self.role("train")

    @property
    def valid(self) -> pd.DataFrame:
        return self.role("valid")

    @property
    def test(self) -> pd.DataFrame:
        return self.role("test")

    def sequences(self, roles: Iterable[str] = ("train",)) -> dict[str, list[str]]:
        """Each user's chronological item sequence restricted to ``roles``."""
        roles = tuple(roles)
        for r in roles:
            if r not in ROLES:
                raise DataError(f"unknown role {r!r}", f"use one of {ROLES}")
        sub = self.df[self.df["role"].isin(roles)].sort_values(["user_id", "position"], kind="stable")
        return {u: g.tolist() for u, g in sub.groupby("user_id", sort=True)["item_id"]}

    def examples(self, role: str, max_len: int | None = None) -> pd.DataFrame:
        """Evaluation examples for ``role`` ("valid" or "test"), one row per target.

        Columns: ``user_id``, ``history`` (list of item ids, oldest first, truncated to
        the last ``max_len``), ``target`` (item id), ``timestamp`` and ``position`` (of
        the target in the user's sequence).
        The history is everything the user did before the target (train, then valid
        for a test target; for the temporal split also earlier targets of the same
        window).  Targets without any history are dropped.
        """
        if role not in ("valid", "test"):
            raise DataError(f"examples are built for 'valid' or 'test', not {role!r}",
                            "use split.sequences(('train',)) for training sequences")
        if self.kind == "leave_one_out":
            allowed = ("train",) if role == "valid" else ("train", "valid")
        else:
            allowed = ("train", "valid") if role == "valid" else ROLES
        check_max_len(max_len)
        df = self.df.sort_values(["user_id", "position"], kind="stable")
        user = df["user_id"].to_numpy()
        ok = df["role"].isin(allowed).to_numpy()
        new_user = np.r_[True, user[1:] != user[:-1]] if len(user) else np.zeros(0, bool)
        is_target, start, end = history_spans(new_user, ok, df["role"].to_numpy() == role)
        if max_len:
            start = np.maximum(start, end - max_len)
        hist_items = df["item_id"].to_numpy()[ok]
        rows = pd.DataFrame({
            "user_id": user[is_target],
            "history": [hist_items[a:b].tolist() for a, b in zip(start, end)],
            "target": df["item_id"].to_numpy()[is_target],
            "timestamp": df["timestamp"].to_numpy()[is_target],
            "position": df["position"].to_numpy()[is_target],
        })
        return rows.reset_index(drop=True)

    # files ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        _write_parquet(self.df, directory / "split.parquet")
        counts = self.df["role"].value_counts()
        _write_meta(directory / "split.json", "Split", len(self.df),
                    {"name": self.name, "source": self.source, "kind": self.kind, "params": self.params,
                     "counts": {r: int(counts.get(r, 0)) for r in ROLES}})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Split":
        df, meta = _read(directory, "split", "Split")
        return cls(df, kind=meta.get("kind", "leave_one_out"), params=meta.get("params", {}),
                   name=meta.get("name", ""), source=meta.get("source", ""))


@dataclass(eq=False)
class Dataset:
    """What a loader returns: interactions and (when the files have them) item side info."""

    interactions: Interactions
    items: ItemTable | None = None
    name: str = ""

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, {self.interactions!r}, items={self.items!r})"

    def save(self, directory: str | Path) -> Path:
        self.interactions.save(directory)
        if self.items is not None:
            self.items.save(directory)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "Dataset":
        directory = Path(directory)
        inter = Interactions.load(directory)
        items = ItemTable.load(directory) if (directory / "items.json").exists() else None
        return cls(inter, items, name=inter.name)
