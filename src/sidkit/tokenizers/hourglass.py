"""Hourglass remedies for residual-quantised SIDs (the hourglass paper; docs/diagnostics.md).

Residual quantisation tends to concentrate the middle level on a few hub tokens
("hourglass"/"sandglass": wide first and last levels, a narrow waist), which makes
paths sparse and token usage long-tailed.  Seed 002 proposes two remedies:

* :func:`drop_level` -- remove the concentrated level altogether;
* :func:`topk_removal` -- *adaptive top-K removal*: for items whose token at
  ``level`` is one of the ``K`` most frequent tokens of that level, omit that token
  (later tokens shift left), giving variable-length SIDs.

Both strip an existing disambiguation level, edit the semantic tokens and then
re-resolve collisions with a fresh extra level, so every item keeps exactly one
SID.  Length is part of a SID's identity (positions past an item's length are
``PAD`` in ``Codes.sid_keys``), so a shortened SID never equals a full-length one;
a generative model over variable-length SIDs needs an end-of-SID token, because a
shortened SID may be a prefix of a longer one.

Choice of K (``k=None``): with ``c_t`` the item count of token ``t`` at ``level``
(over the tokens that are used), ``K = #{t : c_t > max(mean(c) + 2 std(c), 2 mean(c))}``
-- the hub tokens that stand out of the count distribution (the ``2 mean`` floor
keeps sampling noise of a near-uniform level from being taken for hubs).
``K = 0`` (nothing removed) when no token stands out.  The chosen K is returned and recorded in
``Codes.params["hourglass"]``.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..types import PAD, Codes
from .collisions import resolve_collisions

__all__ = ["drop_level", "topk_removal", "choose_topk", "strip_extra_level"]


def strip_extra_level(codes: Codes) -> Codes:
    """The semantic part of ``codes``: removes the last token of every item when
    ``collision_rule == "extra_level"``; other codes are returned unchanged."""
    if codes.collision_rule != "extra_level":
        return codes
    return codes.semantic()


def _check_level(codes: Codes, level: int) -> int:
    L = codes.n_levels
    if not 0 <= int(level) < L:
        raise DataError(f"level {level} is out of range for codes with {L} semantic levels",
                        f"use a level in 0..{L - 1} (0 = first token)")
    return int(level)


def _remove_token(codes: Codes, level: int, mask: np.ndarray) -> Codes:
    """Remove the token at ``level`` for items in ``mask`` (shift later tokens left)."""
    n, L = codes.codes.shape
    mask = mask & (codes.lengths > level)
    arr = codes.codes.copy()
    if level < L - 1:
        arr[mask, level:L - 1] = codes.codes[mask, level + 1:]
    arr[mask, L - 1] = PAD
    lengths = codes.lengths - mask.astype(np.int64)
    if (lengths < 1).any():
        raise DataError(f"removing level {level} would leave an item without tokens",
                        "keep at least one level")
    sizes = list(codes.codebook_sizes)
    if mask.any():
        for j in range(level, L - 1):  # position j now also holds level j+1 tokens
            sizes[j] = max(sizes[j], sizes[j + 1])
    width = max(int(lengths.max()), 1)
    return Codes(arr[:, :width], tuple(sizes[:width]), lengths=lengths, method=codes.method,
                 params=codes.params, collision_rule="none", item_ids=codes.item_ids)


def drop_level(codes: Codes, level: int) -> Codes:
    """Remove semantic ``level`` from every SID and re-resolve collisions."""
    base = strip_extra_level(codes)
    level = _check_level(base, level)
    if base.n_levels < 2:
        raise DataError("cannot drop the only level of single-level codes",
                        'use hourglass_remedy = "none" or "topk" for single-level codes')
    out = _remove_token(base, level, np.ones(base.n_items, dtype=bool))
    out = out.replace(params={**base.params, "hourglass": {"remedy": "drop_level", "level": level}})
    return resolve_collisions(out)


def choose_topk(tokens: np.ndarray, n_codes: int | None = None) -> int:
    """K = number of tokens whose item count exceeds ``max(mean + 2 std, 2 mean)`` of
    the counts of the used tokens (0 when none stands out)."""
    tokens = np.asarray(tokens)
    tokens = tokens[tokens >= 0]
    if tokens.size == 0:
        return 0
    counts = np.bincount(tokens, minlength=n_codes or 0)
    used = counts[counts > 0].astype(np.float64)
    thr = max(used.mean() + 2.0 * used.std(), 2.0 * used.mean())
    return int((used > thr).sum())


def topk_removal(codes: Codes, level: int = 1, k: int | None = None) -> tuple[Codes, int]:
    """Adaptive top-K removal (the hourglass paper): omit the ``level`` token of items whose
    token there is among the ``k`` most frequent; returns ``(codes, k)``.

    ``k=None`` chooses K with :func:`choose_topk`.  Ties in frequency are broken by
    the smaller token id.  The result is variable-length and collision-free (a fresh
    extra level is appended).
    """
    base = strip_extra_level(codes)
    level = _check_level(base, level)
    tok = base.codes[:, level]
    valid = base.lengths > level
    counts = np.bincount(tok[valid], minlength=base.codebook_sizes[level])
    if k is None:
        k = choose_topk(tok[valid], base.codebook_sizes[level])
    k = int(k)
    if k < 0:
        raise DataError(f"k must be >= 0, got {k}", "use k=None to choose it from the counts")
    order = np.lexsort((np.arange(counts.size), -counts))  # most frequent first
    top = order[: min(k, int((counts > 0).sum()))]
    mask = valid & np.isin(tok, top)
    out = _remove_token(base, level, mask) if base.n_levels > 1 else base
    info = {"remedy": "topk_removal", "level": level, "k": k,
            "removed_tokens": [int(t) for t in top],
            "n_shortened": int(mask.sum()), "share_shortened": float(mask.mean()) if mask.size else 0.0}
    out = out.replace(params={**base.params, "hourglass": info})
    return resolve_collisions(out), k
