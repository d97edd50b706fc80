"""Data set statistics: counts, density and sequence-length quantiles."""

from __future__ import annotations

from typing import Any

import numpy as np

from .containers import Interactions


def repeated_pairs(interactions: Interactions) -> int:
    """Interactions beyond the first of their (user, item) pair (0: every pair is unique)."""
    df = interactions.df
    return int(len(df) - len(df.drop_duplicates(["user_id", "item_id"])))


def dataset_info(interactions: Interactions) -> dict[str, Any]:
    """``users``, ``items``, ``interactions``, ``density`` = interactions / (users * items),
    per-user sequence length ``seq_len_{min,median,mean,p90,max}``, the time span and the
    rating range (when there are ratings)."""
    df = interactions.df
    n_users, n_items, n = interactions.n_users, interactions.n_items, len(df)
    info: dict[str, Any] = {
        "name": interactions.name,
        "users": n_users,
        "items": n_items,
        "interactions": n,
        "density": (n / (n_users * n_items)) if n_users and n_items else 0.0,
    }
    if n:
        lengths = df.groupby("user_id", sort=False).size().to_numpy()
        item_pop = df.groupby("item_id", sort=False).size().to_numpy()
        info.update({
            "seq_len_min": int(lengths.min()),
            "seq_len_median": float(np.median(lengths)),
            "seq_len_mean": float(lengths.mean()),
            "seq_len_p90": float(np.quantile(lengths, 0.9)),
            "seq_len_max": int(lengths.max()),
            "item_count_min": int(item_pop.min()),
            "item_count_median": float(np.median(item_pop)),
            "item_count_max": int(item_pop.max()),
            "repeated_pairs": repeated_pairs(interactions),
            "time_min": int(df["timestamp"].min()),
            "time_max": int(df["timestamp"].max()),
            "time_unit": interactions.time_unit,
        })
        if interactions.has_rating and df["rating"].notna().any():
            info["rating_min"] = float(df["rating"].min())
            info["rating_max"] = float(df["rating"].max())
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.3e}"
        return f"{v:,.2f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v):,}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def _repeats_note(info: dict[str, Any]) -> str:
    """How ``[data] repeats`` treated the source's repeated pairs (pipeline summaries)."""
    rule, n = info.get("repeats"), info.get("repeated_pairs_source")
    if rule is None or n is None:
        return ""
    if rule == "keep":
        return " (kept: [data] repeats = \"keep\")"
    return f" ({_fmt(n)} in the source; only the {rule} of each pair kept: [data] repeats = \"{rule}\")"


def format_info(info: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> str:
    """A two-column text table of :func:`dataset_info` (plus ``extra`` (label, value) rows)."""
    rows = [("data set", info.get("name") or "-"),
            ("users", _fmt(info["users"])), ("items", _fmt(info["items"])),
            ("interactions", _fmt(info["interactions"])), ("density", f"{info['density']:.4%}")]
    if "seq_len_min" in info:
        rows += [
            ("seq. length min / median / p90 / max",
             " / ".join(_fmt(info[k]) for k in ("seq_len_min", "seq_len_median", "seq_len_p90", "seq_len_max"))),
            ("seq. length mean", f"{info['seq_len_mean']:.1f}"),
            ("interactions per item min / median / max",
             " / ".join(_fmt(info[k]) for k in ("item_count_min", "item_count_median", "item_count_max"))),
            ("repeated (user, item) pairs", _fmt(info["repeated_pairs"]) + _repeats_note(info)),
            (f"time span ({info['time_unit']})", f"{info['time_min']} .. {info['time_max']}"),
        ]
    if "rating_min" in info:
        rows.append(("ratings", f"{_fmt(info['rating_min'])} .. {_fmt(info['rating_max'])}"))
    rows += list(extra or [])
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
