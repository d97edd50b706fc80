"""Hourglass detection (the hourglass paper): a middle level whose tokens concentrate.

Rule: a level ``l`` with two neighbours (not the first or last level) is flagged
when its normalised entropy ``h_l = H_l / log2 K_l`` lies at least ``delta``
(default 0.1) below *both* neighbours: ``h_l <= min(h_{l-1}, h_{l+1}) - delta``.
Any level with ``h_l < low`` (default 0.5) is additionally reported as
concentrated.  Gini, std of counts, top-1% share and path sparsity are reported as
supporting evidence.
"""

from __future__ import annotations

from typing import Any, Sequence

DELTA = 0.1
LOW = 0.5


def detect_hourglass(usage: Sequence[dict[str, Any]], prefix: Sequence[dict[str, Any]] | None = None,
                     delta: float = DELTA, low: float = LOW) -> dict[str, Any]:
    """Per-level evidence, the flagged levels (1-based) and a plain-language verdict."""
    h = [float(u["norm_entropy"]) for u in usage]
    L = len(h)
    per_level = []
    flagged, concentrated = [], []
    for l in range(L):
        drop = None
        if 0 < l < L - 1:
            drop = min(h[l - 1], h[l + 1]) - h[l]
            if drop >= delta:
                flagged.append(l + 1)
        if h[l] < low:
            concentrated.append(l + 1)
        row = {
            "level": l + 1,
            "norm_entropy": h[l],
            "gini": float(usage[l]["gini"]),
            "std_counts": float(usage[l]["std_counts"]),
            "top1pct_share": float(usage[l]["top1pct_share"]),
            "drop_vs_neighbours": drop,
        }
        if prefix is not None:
            row["path_sparsity"] = float(prefix[l]["path_sparsity"])
        per_level.append(row)
    return {
        "delta": delta,
        "low": low,
        "levels": per_level,
        "flagged_levels": flagged,
        "concentrated_levels": concentrated,
        "detected": bool(flagged),
        "verdict": _verdict(per_level, flagged, concentrated, delta),
    }


def _verdict(rows: list[dict[str, Any]], flagged: list[int], concentrated: list[int],
             delta: float) -> str:
    ent = ", ".join(f"{r['norm_entropy']:.2f}" for r in rows)
    if not rows:
        return "No levels."
    if flagged:
        parts = []
        for lv in flagged:
            r, a, b = rows[lv - 1], rows[lv - 2], rows[lv]
            parts.append(
                f"Hourglass at level {lv}: its normalised entropy {r['norm_entropy']:.2f} is "
                f"{r['drop_vs_neighbours']:.2f} below its neighbours ({a['norm_entropy']:.2f} "
                f"and {b['norm_entropy']:.2f}); the top 1% of its codes hold "
                f"{100 * r['top1pct_share']:.0f}% of the items (Gini {r['gini']:.2f})."
            )
        return " ".join(parts) + (
            " Tokens of this level carry little information and make paths sparse; consider "
            "dropping the level or adaptive top-K removal (docs/diagnostics.md)."
        )
    msg = (f"No hourglass: no middle level's normalised entropy is {delta:.2f} or more below "
           f"both neighbours (per level: {ent}).")
    if concentrated:
        lv = ", ".join(str(c) for c in concentrated)
        msg += (f" Level(s) {lv} are concentrated anyway (normalised entropy below "
                f"{LOW:.1f}); codebook capacity is wasted there.")
    return msg
