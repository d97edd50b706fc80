"""``load_dataset``: one entry point that recognises a data set by name or by its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from .amazon import is_amazon_file, load_amazon
from .containers import Dataset
from .fetch import FETCHABLE, fetch_ml100k
from .movielens import load_grouplens_100k, load_grouplens_dat, load_movielens_csv, load_recbole
from .sequences import SEQUENCE_SUFFIXES, find_sequence_file, is_sequence_file, load_sequences
from .tabular import TABLE_SUFFIXES, load_table

# names users may try that cannot be fetched: where to get them
NOT_FETCHABLE = {
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip (ratings.dat, movies.dat)",
    "ml-20m": "https://files.grouplens.org/datasets/movielens/ml-20m.zip (ratings.csv, movies.csv)",
    "amazon-beauty": "reviews_Beauty_5.json.gz + meta_Beauty.json.gz (Amazon 2014, McAuley lab)",
    "amazon-sports": "reviews_Sports_and_Outdoors_5.json.gz + meta_Sports_and_Outdoors.json.gz",
    "amazon-toys": "reviews_Toys_and_Games_5.json.gz + meta_Toys_and_Games.json.gz",
}

FORMATS = (
    "GroupLens u.data/u.item, ratings.dat/movies.dat, ratings.csv/movies.csv, RecBole *.inter/*.item, "
    "Amazon reviews_*.json.gz/meta_*.json.gz or 2023 *.jsonl, sequence files (USER ITEM ITEM ... per line, "
    "*.txt or *.txt.gz, with items.jsonl(.gz)), or a CSV/TSV/Parquet file with columns"
)
# what ``format=`` / ``[data] format`` may name: detect_format's answers
FORMAT_NAMES = ("sequences", "table", "amazon", "recbole", "grouplens-100k", "movielens-dat", "movielens-csv")


def known_datasets() -> list[str]:
    return list(FETCHABLE) + list(NOT_FETCHABLE)


def detect_format(path: Path) -> str:
    """One of grouplens-100k, movielens-dat, movielens-csv, recbole, sequences, amazon, table.

    A ``.txt`` / ``.txt.gz`` file whose first line holds no comma is a sequence file
    (:mod:`sidkit.data.sequences`), with a comma a CSV table; a directory holding
    ``user_sequence.txt(.gz)``, or one sequence file beside ``items.jsonl(.gz)``, is
    ``sequences``."""
    path = Path(path)
    if path.is_dir():
        if (path / "u.data").is_file():
            return "grouplens-100k"
        if (path / "ratings.dat").is_file():
            return "movielens-dat"
        if (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
            return "movielens-csv"
        if list(path.glob("*.inter")):
            return "recbole"
        if find_sequence_file(path) is not None:
            return "sequences"
        if any(is_amazon_file(p) and not p.name.startswith("meta_") for p in path.iterdir()):
            return "amazon"
        tables = [p for p in path.iterdir() if p.name.lower().endswith(TABLE_SUFFIXES)]
        if len(tables) == 1:
            return "sequences" if is_sequence_file(tables[0]) else "table"
        raise DataError(
            f"cannot tell the data format of {path}: files found: {sorted(p.name for p in path.iterdir())[:20]}",
            f"give a directory or file in one of these formats: {FORMATS}")
    name = path.name
    if name == "u.data":
        return "grouplens-100k"
    if name == "ratings.dat":
        return "movielens-dat"
    if path.suffix == ".inter":
        return "recbole"
    if is_amazon_file(path):
        if name.startswith("meta_"):
            raise DataError(f"{path} is an Amazon meta file, not reviews",
                            "pass the reviews file (reviews_*.json.gz or *.jsonl); its meta file is found next to it")
        return "amazon"
    if name.lower().endswith(SEQUENCE_SUFFIXES):
        return "sequences" if is_sequence_file(path) else "table"
    if name.lower().endswith(TABLE_SUFFIXES):
        return "table"
    raise DataError(f"unknown file type {name!r}", f"give a file in one of these formats: {FORMATS}")


def load_dataset(name_or_path: str | Path, **kw: Any) -> Dataset:
    """Load a data set by name (``"ml-100k"``, fetched and cached) or from a path.

    Keywords: ``cache_dir`` and ``source`` (for ml-100k, see :func:`fetch_ml100k`),
    ``columns``/``sep``/``time_unit`` (CSV/Parquet tables), ``meta`` (Amazon meta file),
    ``items``/``item_id`` (the item table of a sequence file, :func:`load_sequences`),
    ``format`` (one of ``FORMAT_NAMES``: skip the detection of :func:`detect_format`),
    ``name`` (the data set's name).
    """
    name = kw.pop("name", None)
    path = Path(name_or_path).expanduser()
    key = str(name_or_path).lower()
    if key in FETCHABLE and isinstance(name_or_path, str) and "/" not in name_or_path:  # "./ml-100k" is a path
        directory = fetch_ml100k(cache_dir=kw.pop("cache_dir", None), source=kw.pop("source", None))
        _no_more(kw, "ml-100k")
        ds = _load_path(directory, name=name or "ml-100k")
        ds.name = ds.interactions.name = name or "ml-100k"
        if ds.items is not None:
            ds.items.name = ds.name
        return ds
    if not path.exists():
        if key in NOT_FETCHABLE:
            raise DataError(f"data set {key!r} cannot be fetched by sidkit",
                            f"download {NOT_FETCHABLE[key]} and pass its path")
        raise DataError(
            f"unknown data set {str(name_or_path)!r}: not a known name and no such file or directory",
            f"use one of {known_datasets()} (only {list(FETCHABLE)} is fetched automatically) or a path")
    kw.pop("cache_dir", None)
    if kw.pop("source", None) is not None:
        raise DataError("source= only applies to the ml-100k name", "pass the path itself instead")
    fmt = kw.pop("format", None)
    if fmt is not None and fmt not in FORMAT_NAMES:
        raise DataError(f"unknown data format {fmt!r}", f"use one of {list(FORMAT_NAMES)}, or leave it out "
                                                         "to detect it from the files")
    return _load_path(path, name=name, fmt=fmt, **kw)


def _no_more(kw: dict, what: str) -> None:
    if kw:
        fix = "drop them"
        if "columns" in kw:
            fix = ("a column mapping (columns=, or [data] columns in a run config) only applies "
                   "to a CSV/TSV/Parquet interactions file: drop it")
        raise DataError(f"unexpected option(s) {sorted(kw)} for {what}", fix)


def _load_path(path: Path, name: str | None = None, fmt: str | None = None, **kw: Any) -> Dataset:
    table_opts = sorted(k for k in ("columns", "sep", "time_unit") if k in kw)
    if fmt is None:
        fmt = detect_format(path)
        if fmt == "sequences" and table_opts:   # a .txt table read with sep= / columns=, as before
            fmt = "table"
    if fmt == "sequences":
        opts = {k: kw.pop(k) for k in ("items", "item_id") if k in kw}
        if table_opts:
            raise DataError(f"{path} is a sequence file (one line per user: USER ITEM ITEM ...): "
                            f"{table_opts} do not apply to it",
                            "drop them; if it is a table of interactions, one per line, give it as "
                            ".csv/.tsv or set format = \"table\" ([data] format in a run config)")
        _no_more(kw, "a sequence file")
        return load_sequences(path, name=name, **opts)
    if fmt == "table":
        if path.is_dir():
            table = next((p for p in sorted(path.iterdir()) if p.name.lower().endswith(TABLE_SUFFIXES)), None)
            if table is None:
                raise DataError(f"no CSV/TSV/Parquet file in {path}", "pass the table file itself")
            path = table
        opts = {k: kw.pop(k) for k in ("columns", "sep", "time_unit") if k in kw}
        _no_more(kw, f"a {fmt} file")
        inter = load_table(path, name=name, **opts)
        return Dataset(inter, None, name=inter.name)
    if fmt == "amazon":
        opts = {k: kw.pop(k) for k in ("meta", "with_meta") if k in kw}
        _no_more(kw, "Amazon reviews")
        return load_amazon(path, name=name, **opts)
    _no_more(kw, f"{fmt} files")
    directory = path if path.is_dir() else path.parent
    if fmt == "grouplens-100k":
        return load_grouplens_100k(directory, name=name or "ml-100k")
    if fmt == "movielens-dat":
        return load_grouplens_dat(directory, name=name)
    if fmt == "movielens-csv":
        return load_movielens_csv(directory, name=name)
    return load_recbole(path, name=name)
