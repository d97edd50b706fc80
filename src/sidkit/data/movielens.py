"""MovieLens loaders: GroupLens ``u.data``/``u.item`` (100K), ``ratings.dat``/``movies.dat``
(1M, 10M), ``ratings.csv``/``movies.csv`` (20M, 25M, latest) and RecBole atomic files
(``*.inter``/``*.item``, as shipped in the ``recbole`` wheel).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ._readers import read_delimited, to_numeric
from .containers import Dataset, Interactions, ItemTable

MOVIELENS_TEMPLATE = "Title: {title}. Year: {year}. Genres: {genres}."
MOVIELENS_TEXT_FIELDS = ["title", "year", "genres"]
MOVIELENS_CATEGORICAL_FIELDS = ["genres", "decade"]

# u.genre of ml-100k (used when the file is absent)
GROUPLENS_100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]

_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")


def _split_title(title: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995)."""
    m = _YEAR_IN_TITLE.search(title)
    if not m:
        return title.strip(), None
    return title[: m.start()].strip(), int(m.group(1))


def _movie_table(ids, titles, years, genres, name: str, source: str) -> ItemTable:
    year = pd.array([None if y is None or pd.isna(y) else int(y) for y in years], dtype="Int64")
    decade = [None if pd.isna(y) else f"{int(y) // 10 * 10}s" for y in year]
    df = pd.DataFrame({"item_id": list(ids), "title": list(titles), "year": year,
                       "genres": [[x for x in g if x not in ("unknown", "(no genres listed)")] for g in genres],
                       "decade": decade})
    df["title"] = df["title"].map(lambda t: t if t and t.lower() not in ("unknown", "unkonwn") else None)
    return ItemTable(df, text_fields=MOVIELENS_TEXT_FIELDS,
                     categorical_fields=MOVIELENS_CATEGORICAL_FIELDS, name=name, source=source,
                     template=MOVIELENS_TEMPLATE)


def _ratings_frame(df: pd.DataFrame, path: Path, name: str) -> Interactions:
    inter = pd.DataFrame({
        "user_id": df.iloc[:, 0].str.strip(),
        "item_id": df.iloc[:, 1].str.strip(),
        "rating": to_numeric(df.iloc[:, 2], "rating", path, kind="float"),
        "timestamp": to_numeric(df.iloc[:, 3], "timestamp", path),
    })
    return Interactions(inter, name=name, source=str(path))


# ------------------------------------------------------------------- GroupLens 100K
def load_grouplens_100k(directory: str | Path, name: str = "ml-100k") -> Dataset:
    """``u.data`` (user, item, rating, timestamp; tab-separated) and ``u.item``
    (pipe-separated, latin-1, 19 genre one-hot columns)."""
    directory = Path(directory)
    data = directory / "u.data"
    if not data.exists():
        raise DataError(f"no u.data in {directory}", "point to the extracted ml-100k directory")
    df = read_delimited(data, "\t", header=False, latin1=True, expect="GroupLens u.data: user<TAB>item<TAB>rating<TAB>timestamp",
                        min_cols=4)
    inter = _ratings_frame(df, data, name)
    items = None
    item_path = directory / "u.item"
    if item_path.exists():
        genre_names = GROUPLENS_100K_GENRES
        gpath = directory / "u.genre"
        if gpath.exists():
            g = read_delimited(gpath, "|", header=False, latin1=True, expect="GroupLens u.genre: name|index", min_cols=2)
            g = g[g.iloc[:, 0].str.strip() != ""]
            genre_names = [n for n, _ in sorted(zip(g.iloc[:, 0], g.iloc[:, 1].astype(int)), key=lambda t: t[1])]
        ncols = 5 + len(genre_names)
        it = read_delimited(item_path, "|", header=False, latin1=True,
                            expect=f"GroupLens u.item: id|title|release date|video date|url|{len(genre_names)} genre flags",
                            min_cols=ncols)
        flags = it.iloc[:, 5:ncols].to_numpy() == "1"
        genres = [[genre_names[j] for j in np.flatnonzero(row) if genre_names[j] != "unknown"] for row in flags]
        titles, years = [], []
        for title, date in zip(it.iloc[:, 1], it.iloc[:, 2]):
            t, y = _split_title(title)
            m = re.search(r"(\d{4})\s*$", date or "")
            titles.append(t)
            years.append(int(m.group(1)) if m else y)
        items = _movie_table(it.iloc[:, 0].str.strip(), titles, years, genres, name, str(item_path))
    return Dataset(inter, items, name=name)


# ------------------------------------------------------------------ ratings.dat (1M)
def load_grouplens_dat(directory: str | Path, name: str | None = None) -> Dataset:
    """``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
    (``MovieID::Title (Year)::Genre|Genre``), ``::``-separated, latin-1 safe."""
    directory = Path(directory)
    name = name or directory.name
    rpath = directory / "ratings.dat"
    df = read_delimited(rpath, "::", header=False, latin1=True, expect="MovieLens ratings.dat: user::item::rating::timestamp",
                        min_cols=4)
    inter = _ratings_frame(df, rpath, name)
    items = None
    mpath = directory / "movies.dat"
    if mpath.exists():
        mv = read_delimited(mpath, "::", header=False, latin1=True, expect="MovieLens movies.dat: id::title::genres", min_cols=3)
        items = _movies_with_genre_string(mv.iloc[:, 0], mv.iloc[:, 1], mv.iloc[:, 2], name, mpath)
    return Dataset(inter, items, name=name)


def _movies_with_genre_string(ids, titles, genre_strings, name, path) -> ItemTable:
    ts, ys, gs = [], [], []
    for title, g in zip(titles, genre_strings):
        t, y = _split_title(title)
        ts.append(t)
        ys.append(y)
        gs.append([x for x in g.split("|") if x and x != "(no genres listed)"])
    return _movie_table(ids.str.strip(), ts, ys, gs, name, str(path))


def load_movielens_csv(directory: str | Path, name: str | None = None) -> Dataset:
    """``ratings.csv`` (userId,movieId,rating,timestamp) and ``movies.csv`` (20M/25M/latest)."""
    directory = Path(directory)
    name = name or directory.name
    rpath = directory / "ratings.csv"
    try:
        df = pd.read_csv(rpath, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{rpath} is not a MovieLens ratings.csv: {e}",
                        "give userId,movieId,rating,timestamp") from e
    need = ["userId", "movieId", "rating", "timestamp"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{rpath} lacks the column(s) {missing}; columns found: {list(df.columns)}",
                        "give a MovieLens ratings.csv (userId,movieId,rating,timestamp) or use load_table with a column mapping")
    inter = _ratings_frame(df[need], rpath, name)
    items = None
    mpath = directory / "movies.csv"
    if mpath.exists():
        mv = pd.read_csv(mpath, dtype=str, keep_default_na=False, encoding_errors="replace")
        if not {"movieId", "title", "genres"} <= set(mv.columns):
            raise DataError(f"{mpath} lacks movieId/title/genres; columns found: {list(mv.columns)}",
                            "give a MovieLens movies.csv")
        items = _movies_with_genre_string(mv["movieId"], mv["title"], mv["genres"], name, mpath)
    return Dataset(inter, items, name=name)


# ---------------------------------------------------------------- RecBole atomic files
_RECBOLE_INTER = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "rating": "rating"}
_RECBOLE_ITEM = {"movie_title": "title", "title": "title", "release_year": "year", "year": "year",
                 "class": "genres", "genre": "genres", "genres": "genres", "categories": "categories",
                 "price": "price", "brand": "brand", "store": "brand"}


def _recbole_header(df: pd.DataFrame, path: Path) -> dict[str, str]:
    """'item_id:token' -> {'item_id': 'token'}; a DataError when a header is untyped."""
    types = {}
    for col in df.columns:
        if ":" not in col:
            raise DataError(
                f"{path} is not a RecBole atomic file: header {col!r} has no type "
                f"(expected name:type, e.g. item_id:token); header found: {list(df.columns)}",
                "give a RecBole .inter/.item file or load it as a CSV with load_table")
        n, t = col.rsplit(":", 1)
        types[n] = t
    return types


def read_recbole(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A RecBole atomic file as strings with the header types stripped: (df, {name: type})."""
    path = Path(path)
    df = read_delimited(path, "\t", header=True, expect="RecBole atomic (tab-separated, name:type header)")
    types = _recbole_header(df, path)
    df.columns = list(types)
    return df, types


def load_recbole(path: str | Path, name: str | None = None) -> Dataset:
    """RecBole atomic ``<name>.inter`` (+ ``<name>.item`` next to it).

    ``path`` is the ``.inter`` file or a directory holding exactly one.  Token-sequence
    genre/category fields (``class:token_seq``) become lists; titles stay strings.
    """
    path = Path(path)
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            raise DataError(f"{path} holds {len(inters)} .inter files ({[p.name for p in inters]})",
                            "point to one .inter file")
        path = inters[0]
    name = name or path.stem
    df, types = read_recbole(path)
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"RecBole file {path} lacks the field(s) {missing}; fields found: {list(df.columns)}",
                        "a sequential data set needs user_id:token, item_id:token and timestamp:float")
    inter = pd.DataFrame({
        "user_id": df["user_id"], "item_id": df["item_id"],
        "timestamp": to_numeric(df["timestamp"], "timestamp", path),
    })
    if "rating" in df.columns:
        inter["rating"] = to_numeric(df["rating"], "rating", path, kind="float")
    interactions = Interactions(inter, name=name, source=str(path))
    item_path = path.with_suffix(".item")
    items = load_recbole_items(item_path, name=name) if item_path.exists() else None
    return Dataset(interactions, items, name=name)


def load_recbole_items(path: str | Path, name: str = "") -> ItemTable:
    path = Path(path)
    df, types = read_recbole(path)
    if "item_id" not in df.columns:
        raise DataError(f"RecBole item file {path} lacks item_id; fields found: {list(df.columns)}",
                        "give a .item file with an item_id:token column")
    out = pd.DataFrame({"item_id": df["item_id"]})
    std_types: dict[str, str] = {}
    for col in df.columns:
        if col == "item_id":
            continue
        std = _RECBOLE_ITEM.get(col, col)
        if std in out.columns:
            continue
        vals = df[col]
        t = std_types[std] = types[col]
        if std in ("genres", "categories") and t == "token_seq":
            out[std] = [[x for x in v.split(" ") if x] for v in vals]
        elif t == "float" or std == "price":
            out[std] = to_numeric(vals, col, path, kind="float")
        elif t == "float_seq":
            out[std] = [[float(x) for x in v.split(" ") if x] for v in vals]
        else:
            out[std] = vals.map(lambda v: v if v.strip() else None)
    if "year" in out.columns:
        out["year"] = pd.array([int(float(y)) if y is not None and re.fullmatch(r"\d{4}(\.0)?", str(y)) else None
                                for y in out["year"]], dtype="Int64")
    if {"title", "year", "genres"} <= set(out.columns):  # MovieLens-like
        return _movie_table(out["item_id"], out["title"].fillna(""), out["year"], out["genres"],
                            name, str(path))
    text = [c for c in ("title", "brand", "categories", "price") if c in out.columns] or \
        [c for c in out.columns if c != "item_id"]
    cats = [c for c in out.columns if c != "item_id" and std_types.get(c) == "token" and c != "title"]
    return ItemTable(out, text_fields=text, categorical_fields=cats, name=name, source=str(path))
