"""Generic CSV / TSV / Parquet loaders with a column mapping.

``columns`` maps sidkit's names to yours, e.g. ``{"user_id": "uid", "item_id": "iid",
"timestamp": "ts", "rating": "stars"}``; unmapped names default to themselves.
Timestamps may be numbers (unix time) or date strings (converted to unix seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import DataError
from .containers import INTERACTION_COLUMNS, Interactions, ItemTable
from ._readers import ITEM_JSONL_SUFFIXES
from .jsonl import load_item_jsonl

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".csv.gz", ".tsv.gz")


def read_table(path: str | Path, sep: str | None = None, text_columns: list[str] | None = None) -> pd.DataFrame:
    """A CSV/TSV (separator from the suffix unless given) or Parquet file.

    ``text_columns`` of a CSV/TSV are read as text, exactly as written: ids such as
    ``007`` or ``50<TAB>`` must not become the number 7 or 50 (another item's id)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no file {path}", "check the path")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if sep is None:
            sep = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
        dtype = {c: str for c in text_columns or []} or None
        try:
            return pd.read_csv(path, sep=sep, encoding="utf-8", dtype=dtype)
        except UnicodeDecodeError:
            from ._readers import warn_latin1

            warn_latin1(path)
            return pd.read_csv(path, sep=sep, encoding="latin-1", dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        kind = "Parquet" if name.endswith((".parquet", ".pq")) else f"delimited text (sep={sep!r})"
        raise DataError(f"{path} cannot be read as {kind}: {str(e).splitlines()[0] if str(e) else e!r}",
                        "give a CSV/TSV with a header row or a Parquet file (pass sep= for other separators)") from e


def _timestamps(col: pd.Series, path: Path, source_name: str) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        dt = col
    elif pd.api.types.is_numeric_dtype(col):
        if col.isna().any():
            raise DataError(f"timestamp column {source_name!r} of {path} has {int(col.isna().sum())} empty values",
                            "drop those rows")
        return np.floor(col.to_numpy(dtype=np.float64)).astype(np.int64)
    else:
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().all():
            return np.floor(num.to_numpy(dtype=np.float64)).astype(np.int64)
        try:
            dt = pd.to_datetime(col, utc=True, format="mixed")
        except (ValueError, TypeError) as e:
            raise DataError(
                f"timestamp column {source_name!r} of {path} is neither numbers nor dates (e.g. {col.iloc[0]!r})",
                "give unix times or ISO dates like 2020-01-31 12:00:00") from e
    if dt.isna().any():
        raise DataError(f"timestamp column {source_name!r} of {path} has {int(dt.isna().sum())} empty values",
                        "drop those rows")
    if getattr(dt.dt, "tz", None) is None:
        dt = dt.dt.tz_localize("UTC")
    return (dt.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[s]").astype(np.int64)).to_numpy()


def load_table(path: str | Path, columns: Mapping[str, str] | None = None, *, sep: str | None = None,
               name: str | None = None, time_unit: str = "s") -> Interactions:
    """Interactions from a CSV/TSV/Parquet file with a column mapping."""
    path = Path(path)
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(INTERACTION_COLUMNS))
    if unknown:
        raise DataError(f"unknown key(s) {unknown} in the column mapping",
                        f"map only {list(INTERACTION_COLUMNS)} to your column names")
    df = read_table(path, sep=sep, text_columns=[mapping.get(c, c) for c in ("user_id", "item_id")])
    found = list(df.columns)
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for std in INTERACTION_COLUMNS:
        src = mapping.get(std, std)
        if src not in df.columns:
            if std == "rating" and "rating" not in mapping:
                continue
            raise DataError(
                f"{path} has no column {src!r} for {std}; columns found: {found}",
                f"map it to one of {found}: columns={{'{std}': '<your column>'}} in Python, "
                f"or [data] columns = {{ {std} = \"<your column>\" }} in a run config",
            )
        col = df[src]
        if std == "timestamp":
            out[std] = _timestamps(col, path, src)
        elif std == "rating":
            vals = pd.to_numeric(col, errors="coerce")
            if vals.isna().any() and not col.isna().all():
                raise DataError(f"rating column {src!r} of {path} has non-numeric values",
                                "map ratings to numbers or leave rating out of the mapping")
            out[std] = vals.astype(np.float64)
        else:
            out[std] = col.to_numpy()
    return Interactions(out, name=name or path.name.split(".")[0], source=str(path), time_unit=time_unit)


def load_item_table(path: str | Path, *, item_id: str = "item_id", text_fields: list[str] | None = None,
                    categorical_fields: list[str] | None = None, template: str | None = None,
                    list_sep: str | None = None, list_fields: list[str] | None = None,
                    sep: str | None = None, name: str | None = None) -> ItemTable:
    """An item table from CSV/TSV/Parquet.  ``list_fields`` columns are split on
    ``list_sep`` (e.g. "Action|Comedy" with ``list_sep="|"``) into lists.

    A JSON Lines file (``.jsonl`` / ``.json``, plain or ``.gz``) is read by
    :func:`sidkit.data.load_item_jsonl` (its lists are lists already)."""
    path = Path(path)
    if path.name.lower().endswith(ITEM_JSONL_SUFFIXES):
        given = [k for k, v in (("list_sep", list_sep), ("list_fields", list_fields), ("sep", sep))
                 if v is not None]
        if given:
            raise DataError(f"{given} do not apply to the JSON Lines item table {path}",
                            "drop them: JSON values that are lists are read as lists")
        return load_item_jsonl(path, item_id=item_id, text_fields=text_fields,
                               categorical_fields=categorical_fields, template=template, name=name)
    df = read_table(path, sep=sep, text_columns=[item_id])
    if item_id not in df.columns:
        raise DataError(f"{path} has no item id column {item_id!r}; columns found: {list(df.columns)}",
                        "pass item_id='<your column>'")
    df = df.rename(columns={item_id: "item_id"})
    for f in list_fields or []:
        if f not in df.columns:
            raise DataError(f"list field {f!r} is not a column of {path}; columns found: {list(df.columns)}",
                            "name existing columns")
        if list_sep is None:
            raise DataError("list_fields given without list_sep", "pass list_sep='|' (or your separator)")
        df[f] = df[f].map(lambda v: [x.strip() for x in str(v).split(list_sep) if x.strip()]
                          if isinstance(v, str) else [])
    others = [c for c in df.columns if c != "item_id"]
    return ItemTable(df, text_fields=text_fields if text_fields is not None else others,
                     categorical_fields=categorical_fields or [], name=name or path.name.split(".")[0],
                     source=str(path), template=template)
