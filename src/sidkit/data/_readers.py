"""Low-level file reading shared by the loaders (gzip, encodings, JSON lines)."""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from ..errors import DataError


def open_bytes(path: Path):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def decode(data: bytes, path: Path | None = None, *, latin1: bool = False) -> str:
    """UTF-8 when valid, else Latin-1 (which decodes any byte).  ``latin1=True``: the
    format is documented as Latin-1 (GroupLens MovieLens files), read silently;
    otherwise the fallback is announced with an :class:`~sidkit.errors.EncodingWarning`
    naming ``path`` and the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not latin1:
            warn_latin1(path, e.start, data[e.start:e.start + 4])
        return data.decode("latin-1")


def warn_latin1(path, offset: int | None = None, sample: bytes = b"") -> None:
    import warnings

    from ..errors import EncodingWarning

    where = f" (byte {offset}: {sample!r})" if offset is not None else ""
    warnings.warn(f"{path or 'the input'} is not valid UTF-8{where}; it was read as Latin-1. "
                  "Re-save it as UTF-8 if names come out wrong.", EncodingWarning, stacklevel=3)


def read_text(path: Path, *, latin1: bool = False) -> str:
    try:
        with open_bytes(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}", "check that the file exists and is not truncated") from e
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return decode(data, path, latin1=latin1)


def read_delimited(path: Path, sep: str, *, header: bool, expect: str,
                   min_cols: int = 1, latin1: bool = False) -> pd.DataFrame:
    """A delimited text file as an all-string DataFrame (no quoting, no NA guessing);
    ``latin1``: see :func:`decode`."""
    text = read_text(path, latin1=latin1)
    if sep != "\t" and len(sep) > 1:  # '::' (MovieLens .dat): translate to a 1-char separator
        if "\x1f" in text:
            raise DataError(f"{path} contains control characters", "check the file")
        text = text.replace(sep, "\x1f")
        sep = "\x1f"
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, header=0 if header else None, dtype=str,
                         keep_default_na=False, quoting=csv.QUOTE_NONE, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise DataError(f"{path} is not in the expected format ({expect}): {str(e).splitlines()[0]}",
                        f"give a file in {expect} format") from e
    if df.shape[1] < min_cols:
        sample = text.splitlines()[0][:80] if text else "<empty file>"
        raise DataError(
            f"{path} is not in the expected format ({expect}): found {df.shape[1]} column(s) "
            f"separated by {sep!r}, first line {sample!r}",
            f"give a file in {expect} format",
        )
    return df


def to_numeric(col: pd.Series, name: str, path: Path, kind: str = "int") -> np.ndarray:
    """Parse a string column as numbers; a DataError names the column, file and a bad value."""
    vals = pd.to_numeric(col.replace("", np.nan) if col.dtype == object else col, errors="coerce")
    bad = vals.isna() & col.notna() & (col.astype(str).str.strip() != "")
    if bad.any():
        example = col[bad].iloc[0]
        raise DataError(f"column {name!r} of {path} has non-numeric values (e.g. {example!r})",
                        f"fix the file or map {name} to a numeric column")
    if kind == "int":
        if vals.isna().any():
            raise DataError(f"column {name!r} of {path} has {int(vals.isna().sum())} empty values",
                            "drop those rows")
        return np.floor(vals.to_numpy(dtype=np.float64)).astype(np.int64) \
            if pd.api.types.is_float_dtype(vals) else vals.to_numpy().astype(np.int64)
    return vals.to_numpy(dtype=np.float64)


def parse_record(line: str) -> Any:
    """One JSON line; falls back to a Python literal (Amazon 2014 meta files)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return ast.literal_eval(line)


def iter_records(path: Path, skip: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Records of a JSON-lines file (plain or .gz), one dict per non-empty line.

    ``skip(line)`` returning True drops a line before it is parsed (a cheap pre-filter).
    """
    try:
        f = open_bytes(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}", "check the path") from e
    with f:
        try:
            yield from _records(f, path, skip)
        except (OSError, EOFError) as e:
            raise DataError(f"cannot read {path}: {e}",
                            "check that the file is a valid (gzipped) JSON-lines file") from e


def _records(f, path: Path, skip: Callable[[str], bool] | None) -> Iterator[dict]:
    warned = False
    for lineno, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            if not warned:
                warn_latin1(f"{path} line {lineno}")
                warned = True
            line = raw.decode("latin-1").strip()
        if not line or (skip is not None and skip(line)):
            continue
        try:
            rec = parse_record(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise DataError(
                f"{path} line {lineno} is neither JSON nor a Python literal: {line[:80]!r}",
                "give a JSON-lines file (one record per line), e.g. reviews_*.json.gz",
            ) from e
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {lineno} is not a JSON object: {line[:80]!r}",
                            "give a JSON-lines file with one object per line")
        yield rec


def first_record(path: Path) -> dict | None:
    for rec in iter_records(path):
        return rec
    return None


SEQUENCE_SUFFIXES = (".txt", ".txt.gz")
ITEM_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
_GENERIC_STEMS = {"user_sequence", "user_sequences", "sequence", "sequences", "items", "item"}


def _stem(path: Path) -> str:
    name = path.name
    for suf in sorted(SEQUENCE_SUFFIXES + ITEM_JSONL_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name.split(".")[0]


def dataset_name(path: Path) -> str:
    """``Beauty.txt`` -> Beauty; ``amazon-beauty/user_sequence.txt.gz`` -> amazon-beauty."""
    stem = _stem(path)
    if stem.lower() in _GENERIC_STEMS and path.parent.name:
        return path.parent.resolve().name
    return stem
