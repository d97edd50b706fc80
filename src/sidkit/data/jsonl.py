"""Item tables in JSON Lines (one product record per line: ``item_id``, text fields, lists
such as ``categories``), and the product text template."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..errors import DataError
from ._readers import dataset_name, iter_records
from .containers import ItemTable

PRODUCT_FIELDS = ("title", "brand", "categories")
PRODUCT_TEMPLATE = "Title: {title}. Brand: {brand}. Categories: {categories}."


def _clean_value(v: Any, unescape: bool) -> Any:
    if isinstance(v, str):
        s = (html.unescape(v) if unescape else v).strip()
        return s or None
    if isinstance(v, (list, tuple)):
        out = [_clean_value(x, unescape) for x in v]
        return [x for x in out if x is not None]
    return v


def load_item_jsonl(path: str | Path, *, item_id: str = "item_id", text_fields: Sequence[str] | None = None,
                    categorical_fields: Sequence[str] | None = None, template: str | None = None,
                    category_levels: int = 3, unescape_html: bool = True,
                    name: str | None = None) -> ItemTable:
    """An item table from JSON Lines (``.jsonl`` / ``.json``, plain or ``.gz``).

    One object per line, with ``item_id`` (or the key ``item_id=`` names; a number
    becomes its text, ``1`` -> ``"1"``) and any fields.  Lists stay lists
    (``categories``); a missing key, ``null`` or an empty string is a missing value.
    With ``unescape_html`` (default) HTML entities in text values are decoded
    (``L&#39;Oreal`` -> ``L'Oreal``, ``&amp;`` -> ``&``), so text and FAMAE fields see
    one spelling.

    When ``categories`` is a list (a category path, most general first) and the table has
    no ``cat1`` column, its first ``category_levels`` levels become ``cat1``, ``cat2``, ...
    (missing where the path is shorter), the fields FAMAE uses by default for Amazon data.

    Defaults: ``text_fields`` every field but the id and the derived levels;
    ``categorical_fields`` ``brand`` and ``cat1``... when present; ``template`` the
    product template (``PRODUCT_TEMPLATE`` over the present ``title`` / ``brand`` /
    ``categories``) when there is a ``title``, else one "Field: value." per text field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no item table {path}", "check the path")
    rows: list[dict] = []
    ids: dict[str, int] = {}
    for n, rec in enumerate(iter_records(path), 1):
        iid = rec.get(item_id)
        if iid is None or (isinstance(iid, str) and not iid.strip()) or isinstance(iid, (list, dict)):
            found = "no" if item_id not in rec else f"an empty or invalid ({iid!r})"
            raise DataError(f"record {n} of {path} has {found} {item_id!r}; keys found: {sorted(rec)}",
                            f"give every item an {item_id!r}, or name the id key (item_id='<your key>')")
        iid = str(int(iid)) if isinstance(iid, float) and iid.is_integer() else str(iid)
        if iid in ids:
            raise DataError(f"item {iid!r} has two records in {path} (records {ids[iid]} and {n})",
                            "keep one record per item")
        ids[iid] = n
        row = {k: _clean_value(v, unescape_html) for k, v in rec.items() if k != item_id}
        row["item_id"] = iid
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no items", "give one JSON object per line, each with an item_id")
    df = pd.DataFrame.from_records(rows)
    df = df[["item_id"] + [c for c in df.columns if c != "item_id"]]
    derived: list[str] = []
    cats = df["categories"] if "categories" in df.columns else None
    if (category_levels > 0 and cats is not None and "cat1" not in df.columns
            and cats.map(lambda v: isinstance(v, list)).any()):
        for k in range(1, category_levels + 1):
            col = f"cat{k}"
            df[col] = cats.map(lambda v, k=k: v[k - 1] if isinstance(v, list) and len(v) >= k else None)
            derived.append(col)
    for c in df.columns:   # text and list columns as Python objects, missing values as None
        if not pd.api.types.is_numeric_dtype(df[c]):
            col = df[c].astype(object)
            df[c] = col.where(col.notna(), None)
    fields = [c for c in df.columns if c != "item_id"]
    if text_fields is None:
        text_fields = [c for c in fields if c not in derived]
    if categorical_fields is None:
        categorical_fields = [c for c in fields if c == "brand" or (c.startswith("cat") and c[3:].isdigit())]
    if template is None and "title" in df.columns:
        template = product_template([f for f in PRODUCT_FIELDS if f in df.columns])
    return ItemTable(df, text_fields=list(text_fields), categorical_fields=list(categorical_fields),
                     name=name or dataset_name(path), source=str(path), template=template)


def product_template(fields: Sequence[str] = PRODUCT_FIELDS) -> str:
    """The product text template over ``fields`` (a subset of title, brand, categories):
    ``"Title: {title}. Brand: {brand}. Categories: {categories}."``.  A missing value drops
    its segment (see :func:`sidkit.data.item_texts`): no dangling "Brand:" label."""
    labels = {"title": "Title", "brand": "Brand", "categories": "Categories"}
    bad = [f for f in fields if f not in labels]
    if bad:
        raise DataError(f"product_template takes {list(labels)}, not {bad}",
                        "write your own template string for other fields")
    return " ".join(f"{labels[f]}: {{{f}}}." for f in fields)
