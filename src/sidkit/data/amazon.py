"""Amazon review loaders: 2014 / 2018 (``reviews_*.json.gz`` / ``*_5.json.gz`` +
``meta_*.json.gz``) and 2023 (``*.jsonl[.gz]`` + ``meta_*.jsonl[.gz]``).

The version is detected from the first record:

- 2014/2018 reviews: ``reviewerID``, ``asin``, ``unixReviewTime`` (s), ``overall``.
- 2023 reviews: ``user_id``, ``parent_asin`` (the item), ``timestamp`` (ms), ``rating``.
- 2014 meta (Python-literal lines): ``asin``, ``title``, ``brand``, ``categories``
  (list of category paths), ``price``; 2018 meta (JSON): ``category`` (one path),
  ``main_cat``; 2023 meta: ``parent_asin``, ``title``, ``store``, ``categories``
  (one path), ``price``, ``main_category``.

The item table has ``title``, ``brand`` (the store for 2023), ``categories`` (the
first category path, a list), ``cat1``-``cat3`` (its first three levels), ``price``
(float, parsed from strings like "$12.99") and ``main_category``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..utils import progress
from ._readers import first_record, iter_records
from .containers import Dataset, Interactions, ItemTable

AMAZON_TEMPLATE = "Title: {title}. Brand: {brand}. Categories: {categories}. Price: {price}."
AMAZON_TEXT_FIELDS = ["title", "brand", "categories", "price"]
AMAZON_CATEGORICAL_FIELDS = ["brand", "cat1", "cat2", "cat3"]

_REVIEW_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")
_PARENT_ASIN = re.compile(r"""["']parent_asin["']\s*:\s*["']([^"']+)["']""")
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")
_PRICE = re.compile(r"([0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?)")


def _suffix(p: Path) -> str:
    name = p.name
    for s in sorted(_REVIEW_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return ""


def is_amazon_file(p: Path) -> bool:
    return _suffix(p) != ""


def detect_review_version(rec: dict[str, Any], path: Path) -> str:
    if {"reviewerID", "asin"} <= rec.keys():
        return "2014/2018"
    if "user_id" in rec and ("parent_asin" in rec or "asin" in rec):
        return "2023"
    raise DataError(
        f"{path} is not an Amazon reviews file: its first record has the keys {sorted(rec)}",
        "give reviews_*.json.gz (2014/2018: reviewerID, asin, unixReviewTime, overall) or a 2023 "
        "*.jsonl file (user_id, parent_asin, timestamp, rating); meta files go in meta_path",
    )


def parse_price(v: Any) -> float:
    """12.5 -> 12.5, "$1,299.00" -> 1299.0, "$10.99 - $20.00" -> 10.99, junk -> NaN."""
    if v is None:
        return float("nan")
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    s = str(v)
    if len(s) > 40 or "<" in s:  # 2018 meta sometimes holds HTML in price
        return float("nan")
    m = _PRICE.search(s)
    return float(m.group(1).replace(",", "")) if m else float("nan")


def _clean(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    s = html.unescape(str(v)).strip()
    return s or None


def _category_path(rec: dict[str, Any]) -> list[str]:
    cats = rec.get("categories")
    if cats is None:
        cats = rec.get("category")
    if not cats:
        return []
    if isinstance(cats, list) and cats and isinstance(cats[0], list):  # 2014: list of paths
        cats = cats[0]
    if isinstance(cats, str):
        cats = [cats]
    return [c for c in (_clean(x) for x in cats) if c]


def read_amazon_reviews(path: str | Path, name: str | None = None) -> Interactions:
    path = Path(path)
    rec0 = first_record(path)
    if rec0 is None:
        raise DataError(f"{path} holds no reviews", "check the file")
    version = detect_review_version(rec0, path)
    users, items, ts, ratings = [], [], [], []
    if version == "2014/2018":
        keys = ("reviewerID", "asin", "unixReviewTime", "overall")
    else:
        keys = ("user_id", "parent_asin", "timestamp", "rating")
    lineno = 0
    for rec in progress(iter_records(path), desc=f"reading {path.name}"):
        lineno += 1
        try:
            u = rec[keys[0]]
            i = (rec.get(keys[1]) or rec["asin"]) if version == "2023" else rec[keys[1]]
            t = rec[keys[2]]
        except KeyError as e:
            raise DataError(
                f"review {lineno} of {path} lacks the field {e.args[0]!r}; fields found: {sorted(rec)}",
                f"every {version} review needs {list(keys[:3])}",
            ) from e
        users.append(u)
        items.append(i)
        ts.append(t)
        ratings.append(rec.get(keys[3]))
    rating = pd.to_numeric(pd.Series(ratings, dtype=object), errors="coerce").astype(np.float64)
    timestamps = pd.to_numeric(pd.Series(ts, dtype=object), errors="coerce")
    if timestamps.isna().any():
        bad = ts[int(np.flatnonzero(timestamps.isna().to_numpy())[0])]
        raise DataError(f"{path} has a non-numeric timestamp {bad!r}",
                        "Amazon timestamps are unix seconds (2014/2018) or milliseconds (2023)")
    df = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": timestamps.astype(np.int64),
                       "rating": rating})
    return Interactions(df, name=name or _dataset_name(path), source=str(path),
                        time_unit="ms" if version == "2023" else "s")


def read_amazon_meta(path: str | Path, item_ids=None, name: str = "") -> ItemTable:
    """Item table from a meta file; only ``item_ids`` (when given) are kept."""
    path = Path(path)
    wanted = None if item_ids is None else {str(i) for i in item_ids}
    rows: dict[str, dict[str, Any]] = {}
    skip = None
    if wanted is not None:
        def skip(line: str) -> bool:  # don't parse (slow literal_eval) records of unwanted items
            m = _PARENT_ASIN.search(line) or _ASIN.search(line)
            return m is not None and m.group(1) not in wanted

    for lineno, rec in enumerate(progress(iter_records(path, skip), desc=f"reading {path.name}"), 1):
        iid = rec.get("parent_asin") or rec.get("asin")
        if iid is None:
            raise DataError(f"meta record {lineno} of {path} has no asin/parent_asin; fields found: {sorted(rec)}",
                            "give an Amazon meta_*.json(.gz) or meta_*.jsonl(.gz) file")
        iid = str(iid)
        if (wanted is not None and iid not in wanted) or iid in rows:
            continue
        path_ = _category_path(rec)
        rows[iid] = {
            "item_id": iid,
            "title": _clean(rec.get("title")),
            "brand": _clean(rec.get("brand") if rec.get("brand") else rec.get("store")),
            "categories": path_,
            "cat1": path_[0] if len(path_) > 0 else None,
            "cat2": path_[1] if len(path_) > 1 else None,
            "cat3": path_[2] if len(path_) > 2 else None,
            "price": parse_price(rec.get("price")),
            "main_category": _clean(rec.get("main_category") or rec.get("main_cat")),
        }
    cols = ["item_id", "title", "brand", "categories", "cat1", "cat2", "cat3", "price", "main_category"]
    df = pd.DataFrame(list(rows.values()), columns=cols)
    df["price"] = df["price"].astype(np.float64)
    return ItemTable(df, text_fields=AMAZON_TEXT_FIELDS, categorical_fields=AMAZON_CATEGORICAL_FIELDS,
                     name=name, source=str(path), template=AMAZON_TEMPLATE)


def _dataset_name(path: Path) -> str:
    stem = path.name[: -len(_suffix(path))] if _suffix(path) else path.stem
    return re.sub(r"^reviews_", "", stem)


def find_meta(reviews: Path) -> Path | None:
    """``reviews_Beauty_5.json.gz`` -> ``meta_Beauty.json.gz`` (and 2018/2023 names)."""
    stem = _dataset_name(reviews)
    bases = [stem, re.sub(r"_5$", "", stem)]
    for base in bases:
        for suf in _REVIEW_SUFFIXES:
            cand = reviews.parent / f"meta_{base}{suf}"
            if cand.exists():
                return cand
    metas = [p for p in reviews.parent.iterdir() if p.name.startswith("meta_") and is_amazon_file(p)]
    return metas[0] if len(metas) == 1 else None


def load_amazon(reviews: str | Path, meta: str | Path | None = None, name: str | None = None,
                with_meta: bool = True) -> Dataset:
    """Amazon reviews (2014, 2018 or 2023) and, when found, their meta data.

    ``reviews`` is a reviews file or a directory with exactly one reviews file;
    ``meta`` defaults to the matching ``meta_*`` file next to it.
    """
    reviews = Path(reviews)
    if reviews.is_dir():
        files = [p for p in sorted(reviews.iterdir()) if is_amazon_file(p) and not p.name.startswith("meta_")]
        if len(files) != 1:
            raise DataError(f"{reviews} holds {len(files)} Amazon review files ({[p.name for p in files]})",
                            "point to one reviews file, e.g. reviews_Beauty_5.json.gz")
        reviews = files[0]
    if not reviews.exists():
        raise DataError(f"no file {reviews}", "check the path")
    inter = read_amazon_reviews(reviews, name=name)
    items = None
    if with_meta:
        meta_path = Path(meta) if meta is not None else find_meta(reviews)
        if meta_path is not None:
            if not meta_path.exists():
                raise DataError(f"no meta file {meta_path}", "check the path or pass meta=None")
            items = read_amazon_meta(meta_path, item_ids=inter.items, name=inter.name)
    return Dataset(inter, items, name=inter.name)
