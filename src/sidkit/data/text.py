"""Item text from a template over the item fields.

A template is a ``str.format`` string such as
``"Title: {title}. Brand: {brand}. Categories: {categories}. Price: {price}."``.
A missing value (None, NaN, empty string or empty list) drops its whole segment: the
literal text before the placeholder (from the previous segment's end) and the
punctuation right after it, so a missing brand gives
``"Title: Lipstick. Categories: Beauty, Makeup. Price: 9.99."`` and never "nan".
Lists are joined with ", "; whole-number floats print without ".0".
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

import numpy as np

from ..errors import DataError
from .containers import ItemTable, _is_missing

_SPACES = re.compile(r"\s+")


def _value_text(v: Any, spec: str, conversion: str | None) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(str(x) for x in v if not _is_missing(x))
    if conversion == "r":
        v = repr(v)
    elif conversion == "s":
        v = str(v)
    elif conversion == "a":
        v = ascii(v)
    if spec:
        return format(v, spec)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() and math.isfinite(f) else f"{f:.2f}".rstrip("0").rstrip(".")
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def _segments(template: str) -> list[tuple[str, list[tuple[str, str, str | None]], str]]:
    """Split a template into (prefix, [(field, spec, conversion)], suffix) segments."""
    parsed = list(string.Formatter().parse(template))
    segs: list[list] = []
    pending_prefix = ""
    for literal, field, spec, conv in parsed:
        if segs:
            # leading non-space characters of this literal close the previous segment
            m = re.match(r"\S*", literal)
            segs[-1][2] += m.group(0)
            literal = literal[m.end():]
        pending_prefix += literal
        if field is None:
            continue
        segs.append([pending_prefix, [(field, spec or "", conv)], ""])
        pending_prefix = ""
    if pending_prefix:
        segs.append([pending_prefix, [], ""])
    return [tuple(s) for s in segs]  # type: ignore[misc]


def default_template(items: ItemTable) -> str:
    if items.template:
        return items.template
    return " ".join(f"{f.replace('_', ' ').capitalize()}: {{{f}}}." for f in items.text_fields
                    or items.fields)


def item_texts(items: ItemTable, template: str | None = None) -> list[str]:
    """One text per row of ``items`` (in its order), rendered from ``template``.

    The default is the table's own template (MovieLens: "Title: {title}. Year: {year}.
    Genres: {genres}."; Amazon: "Title: {title}. Brand: {brand}. Categories:
    {categories}. Price: {price}.") or "Field: {field}." for each text field.
    """
    template = template if template is not None else default_template(items)
    try:
        segs = _segments(template)
    except ValueError as e:
        raise DataError(f"bad text template {template!r}: {e}",
                        "use str.format placeholders like {title}; write literal braces as {{ }}") from e
    available = items.fields
    used = [f for _, fs, _ in segs for f, _, _ in fs]
    for f in used:
        if f == "" or f.isdigit():
            raise DataError(f"template {template!r} has a positional placeholder",
                            f"name a field, one of {available}")
        if f not in available:
            raise DataError(f"template field {f!r} is not an item field; available fields: {available}",
                            "use one of those names in the template")
    cols = {f: items.df[f].tolist() for f in set(used)}
    out = []
    for i in range(len(items)):
        parts = []
        for prefix, fields, suffix in segs:
            if not fields:
                parts.append(prefix)
                continue
            rendered = []
            for f, spec, conv in fields:
                v = cols[f][i]
                if _is_missing(v):
                    break
                try:
                    text = _value_text(v, spec, conv)
                except (ValueError, TypeError) as e:
                    raise DataError(f"cannot format field {f!r} value {v!r} with spec {spec!r}: {e}",
                                    "fix the format spec in the template") from e
                if not text.strip():
                    break
                rendered.append(text)
            else:
                parts.append(prefix + "".join(rendered) + suffix)
        out.append(_SPACES.sub(" ", "".join(parts)).strip())
    return out
