"""Sequence files (P5 / S3-Rec / GRAM): one line per user, items in time order (item tables in JSON Lines: jsonl.py).

A sequence file holds one line per user, the user id first and then the user's items
in time order, oldest first::

    A1YJEY40YUW4SE B004756YJA B004ZT0SSG B0020YLEYK 7806397051 B002WLWX82
    1 1 2 3 4 5 6 7

Ids are read as written, as text: string ids (Amazon ASINs, P5 / GRAM) and S3-Rec's
integer ids load the same way (``007`` stays ``007``).  There are no timestamps: the
position in the line is the time order, so an item's timestamp is its position
(0, 1, 2, ... per user), tie-free.  Ids are separated by spaces (a file that separates
them by tabs reads too); runs of the separator, leading and trailing whitespace and
Windows line ends are ignored.  A file is rejected, with the line number, when:

- a line is blank (blank lines after the last user are ignored);
- a line holds a user and no items;
- a line is *ragged*: it does not split into ids the way the file does -- it mixes
  tabs and spaces where the first line uses one of them, or it holds a ``,``, ``;`` or
  ``|`` (a line of a delimited file, or items joined by another separator);
- a user has two lines (a table of interactions, one per line, fails here too);
- the first line is a header (``user_id item_id ...``): sequence files have none.

The item table is JSON Lines (``.jsonl`` / ``.json``, plain or ``.gz``): one object per
item with ``item_id`` and any fields; a list value (``categories``) stays a list, a
missing key or ``null`` is a missing value.  See :func:`load_item_jsonl`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ._readers import SEQUENCE_SUFFIXES, dataset_name, open_bytes, read_text
from .tabular import load_item_table
from .containers import Dataset, Interactions, ItemTable

# the item table found next to a sequence file in a data directory
ITEM_FILE_NAMES = ("items.jsonl.gz", "items.jsonl")
# the P5 / GRAM name of a sequence file
SEQUENCE_FILE_NAMES = ("user_sequence.txt", "user_sequence.txt.gz")
_DELIMITERS = ",;|"
_HEADER_WORDS = {"user", "user_id", "userid", "uid", "users", "reviewerid", "item_id", "item"}
FORMAT_HELP = ("a sequence file has one line per user: USER ITEM ITEM ..., ids separated by "
               "spaces, items oldest first")


def _first_line(path: Path) -> str | None:
    """The first non-blank line of ``path`` (at most 64 kB of it), None if there is none."""
    with open_bytes(path) as f:
        for _ in range(1000):
            raw = f.readline(65536)
            if not raw:
                return None
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                return line
    return None


def is_sequence_file(path: str | Path) -> bool:
    """Whether ``path`` reads as a sequence file: a ``.txt`` / ``.txt.gz`` file whose first
    line holds no comma (a CSV table saved as ``.txt`` stays a table; so does any ``.txt``
    given to :func:`~sidkit.data.load_dataset` with ``sep=`` or ``columns=``)."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(SEQUENCE_SUFFIXES) or not path.is_file():
        return False
    try:
        line = _first_line(path)
    except (OSError, EOFError):
        return name.endswith(".gz")  # an unreadable .gz: the sequence reader names the problem
    if line is None:
        return name.endswith(".gz")
    return "," not in line


def find_sequence_file(directory: Path) -> Path | None:
    """The sequence file of a data directory: ``user_sequence.txt(.gz)``, or the one
    ``.txt`` / ``.txt.gz`` sequence file beside an ``items.jsonl(.gz)`` item table."""
    for n in SEQUENCE_FILE_NAMES:
        if (directory / n).is_file():
            return directory / n
    if find_item_file(directory) is None:
        return None
    cands = [p for p in sorted(directory.iterdir()) if is_sequence_file(p)]
    return cands[0] if len(cands) == 1 else None


def find_item_file(directory: Path) -> Path | None:
    for n in ITEM_FILE_NAMES:
        if (directory / n).is_file():
            return directory / n
    return None


# -------------------------------------------------------------------------- reading
def _ragged(path: Path, lineno: int, line: str, why: str) -> DataError:
    return DataError(f"line {lineno} of {path} is ragged: {why}: {line[:80]!r}",
                     f"{FORMAT_HELP}; fix that line (for a table of interactions, one per line, "
                     "use a .csv/.tsv file with a header, or format = \"table\")")


def read_sequences(path: str | Path, name: str | None = None) -> Interactions:
    """Interactions from a sequence file (plain or ``.gz``): one row per (user, item),
    in file order, ``timestamp`` = the item's position in its line (0-based).

    Raises :class:`~sidkit.errors.DataError` for blank, empty (a user without items),
    ragged and header lines and for a user with two lines (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no file {path}", "check the path")
    lines = read_text(path).split("\n")
    while lines and not lines[-1].strip():   # blank lines after the last user
        lines.pop()
    if not lines:
        raise DataError(f"{path} holds no users (the file is empty)", FORMAT_HELP)
    sep = "\t" if "\t" in lines[0].strip() else " "
    other = " " if sep == "\t" else "\t"
    seen: dict[str, int] = {}
    users: list[str] = []
    items: list[str] = []
    lengths: list[int] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            raise DataError(f"line {lineno} of {path} is blank",
                            f"delete the blank line(s): {FORMAT_HELP}")
        if other in line:
            raise _ragged(path, lineno, line, f"it separates ids by {other!r} where line 1 uses {sep!r}")
        bad = next((c for c in _DELIMITERS if c in line), None)
        if bad is not None:
            raise _ragged(path, lineno, line, f"it holds {bad!r}, which no id of this format holds")
        toks = [t for t in line.split(sep) if t]
        if lineno == 1 and toks[0].lower().split(":")[0] in _HEADER_WORDS:
            raise DataError(f"line 1 of {path} looks like a header ({line[:80]!r}); sequence files have none",
                            "delete the header line (for a table of interactions use a .csv/.tsv file, "
                            "or format = \"table\")")
        if len(toks) < 2:
            raise DataError(f"line {lineno} of {path} has the user {toks[0]!r} and no items",
                            f"delete the line or add the user's items: {FORMAT_HELP}")
        user = toks[0]
        if user in seen:
            raise DataError(
                f"user {user!r} has two lines in {path} (lines {seen[user]} and {lineno})",
                "give each user one line with all their items in time order (merge the lines); "
                "a table of interactions, one per line, is a .csv/.tsv file or format = \"table\"")
        seen[user] = lineno
        users.append(user)
        items.extend(toks[1:])
        lengths.append(len(toks) - 1)
    n = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(n) - n
    df = pd.DataFrame({
        "user_id": np.repeat(np.asarray(users, dtype=object), n),
        "item_id": np.asarray(items, dtype=object),
        "timestamp": np.arange(int(n.sum()), dtype=np.int64) - np.repeat(starts, n),
    })
    return Interactions(df, name=name or dataset_name(path), source=str(path), time_unit="s")


def match_items(interactions: Interactions, items: ItemTable) -> ItemTable:
    """The rows of ``items`` for the items of ``interactions``, in table order.

    Every item of the interactions must have a row (its fields may be null); rows of
    items that no interaction names are dropped, so the catalogue is the sequences'."""
    need = interactions.items
    have = pd.Index(items.items)
    missing = need[~need.isin(have)]
    if len(missing):
        src = items.source or "the item table"
        if len(missing) == len(need):
            raise DataError(
                f"no item of the sequences is in the item table {src} "
                f"(sequences: {list(need[:3])}, table: {list(have[:3])})",
                "give an item table with the same ids as the sequence file (S3-Rec integer ids "
                "and ASINs are different ids)")
        raise DataError(
            f"{len(missing)} item(s) of the sequences have no row in the item table {src}, "
            f"e.g. {list(missing[:5])}",
            'add a row for each (null fields are fine: {"item_id": "X"}) or remove them from the sequences')
    keep = items.df["item_id"].isin(set(need))
    return items if keep.all() else items._replace_df(items.df[keep.to_numpy()])


def load_sequences(path: str | Path, items: str | Path | ItemTable | None = None, *,
                   name: str | None = None, item_id: str = "item_id") -> Dataset:
    """A sequence file and, optionally, its item table.

    ``path`` is a sequence file or a directory holding one (``user_sequence.txt(.gz)``,
    or the one ``.txt(.gz)`` sequence file next to ``items.jsonl(.gz)``); in a directory
    ``items.jsonl(.gz)`` is the default item table.  ``items`` is a JSON Lines, CSV, TSV
    or Parquet item table (or an :class:`ItemTable`); its ``item_id`` column is
    ``item_id=``.  The item table must cover every item of the sequences, and keeps only
    those (:func:`match_items`).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        seq = find_sequence_file(path)
        if seq is None:
            raise DataError(f"{path} holds no sequence file",
                            "name it user_sequence.txt(.gz), or pass the file itself")
        if items is None:
            items = find_item_file(path)
        path = seq
    inter = read_sequences(path, name=name)
    table = None
    if items is not None:
        if isinstance(items, ItemTable):
            table = items
        else:
            table = load_item_table(Path(items).expanduser(), item_id=item_id, name=inter.name)
        table = match_items(inter, table)
    return Dataset(inter, table, name=inter.name)
