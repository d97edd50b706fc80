"""New items for a fitted generative SID model, without retraining.

A Semantic-ID model's weights do not depend on the catalogue: its vocabulary is SID
tokens, and an item is recommendable as soon as its SID is in the model's trie.
:func:`add_items` therefore extends a fitted :class:`~sidkit.models.causal_sid.SIDRecommender`
(causal SID, TIGER) with new items and their SIDs (from ``tokenizer.encode_new``, or
given codes):

- the catalogue stays **sorted as strings** (docs/evaluation.md: the catalogue index of
  an item is its position in that order), so new ids are merged in and the SID table
  (``tokens_``) is re-ordered with them; ``catalogue_hash_`` becomes the hash of the
  merged ids, i.e. that of a :class:`~sidkit.eval.SequenceData` over the same items, so
  an extended model evaluates on (and only on) data with that catalogue;
- the result is a **new model object** sharing the (unchanged) network with the input
  model, which is never modified; on any error nothing is changed;
- the extended model saves and loads like any other (``model.json`` +
  ``weights.safetensors``: the merged ids and SIDs).

SIDs must fit the model's vocabulary: every token below the model's codebook size of
its level.  ``encode_new`` numbers a new item's disambiguation token (the last level of
codes with ``collision_rule`` ``"extra_level"`` / ``"by_construction"``)
``count + rank`` (docs/encoding.md), which can exceed the codebook size the model was
trained with, and the model cannot emit a token it has no embedding for.  With
``renumber=True`` (the default for such codes) a new SID whose last token is out of
range, or that another item already holds, gets the smallest free last token under its
prefix instead (the disambiguation token carries no content: ``decode`` ignores it);
when every last token under that prefix is taken, it is a DataError.  The SIDs the
model finally holds are returned by :func:`item_sids`.

Bad input is one :class:`~sidkit.errors.DataError` naming the problem: no ids, more
than :data:`MAX_ADD_ITEMS` ids, an empty id, an id with a control character, a
duplicate id, an id already in the catalogue, codes of the wrong shape or levels,
a token out of range, or a SID held by another item.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..utils import CONTROL_CHARS, control_char, index_of
from .sid_tokens import sid_keys

#: most items one call may add (HTTP ``POST /items`` and ``sidkit add-items`` use it too)
MAX_ADD_ITEMS = 10_000

RENUMBER_RULES = ("extra_level", "by_construction")


def check_new_ids(item_ids: Any, catalogue: Sequence[str] | np.ndarray | None = None,
                  *, max_items: int = MAX_ADD_ITEMS) -> list[str]:
    """The new item ids as a list of str, or one DataError naming the first problem.

    ``catalogue``: the ids the model already holds (a new id must not be one of them).
    """
    if isinstance(item_ids, (str, bytes)):
        raise DataError("item_ids must be a sequence of ids, got a single string",
                        "pass a list, e.g. ['i101', 'i102']")
    ids = [i if isinstance(i, str) else str(i) for i in np.asarray(item_ids, dtype=object).ravel().tolist()]
    if not ids:
        raise DataError("no items to add (the list of ids is empty)", "pass at least one new item id")
    if len(ids) > max_items:
        raise DataError(f"{len(ids)} items in one batch; at most {max_items} may be added at once",
                        f"split the new items into batches of at most {max_items}")
    # one pass in C for the usual batch; the loops below name the first problem
    fine = all(i.strip() for i in ids) and CONTROL_CHARS.search("".join(ids)) is None and len(set(ids)) == len(ids)
    for n, i in enumerate([] if fine else ids):
        if i == "" or i.strip() == "":
            raise DataError(f"item id #{n} is empty ({i!r})", "give every new item a non-empty id")
        bad = control_char(i)
        if bad is not None:
            pos, ch = bad
            raise DataError(f"item id #{n} ({i!r}) holds the control character U+{ord(ch):04X} at position "
                            f"{pos}; ids are matched exactly and never hold control characters",
                            "remove control characters (tabs, newlines, NUL, ...) from the ids")
    seen: dict[str, int] = {}
    for n, i in enumerate([] if fine else ids):
        if i in seen:
            raise DataError(f"item id {i!r} appears twice in the new items (#{seen[i]} and #{n})",
                            "add each new item once")
        seen[i] = n
    if catalogue is not None:
        hit = np.flatnonzero(index_of(ids, catalogue) >= 0).tolist()
        if hit:
            shown = [ids[n] for n in hit[:5]]
            raise DataError(f"{len(hit)} new item id(s) are already in the model's catalogue of "
                            f"{len(catalogue)} items, e.g. {shown}",
                            "drop items the model already has (an item keeps its SID; to change it, retrain)")
    return ids


def _as_arrays(codes: Any, ids: list[str], W: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(n, W) codes, (n,) lengths, collision rule of the new items' codes (rows in ``ids`` order)."""
    from ..types import Codes

    n = len(ids)
    rule = "none"
    if isinstance(codes, Codes):
        rule = codes.collision_rule
        arr, lengths = np.asarray(codes.codes, np.int64), np.asarray(codes.lengths, np.int64)
        if codes.item_ids is not None:
            have = np.asarray(codes.item_ids).astype(str)
            if len(have) != n or sorted(have.tolist()) != sorted(ids):
                raise DataError(f"the codes name {len(have)} items that are not the {n} new ids "
                                f"(e.g. codes: {have[:3].tolist()}, ids: {ids[:3]})",
                                "pass the Codes of exactly the new items (tokenizer.encode_new of their embeddings)")
            pos = {s: r for r, s in enumerate(have.tolist())}
            rows = np.asarray([pos[i] for i in ids], np.int64)
            arr, lengths = arr[rows], lengths[rows]
    else:
        try:
            arr = np.asarray(codes)
        except (TypeError, ValueError) as e:
            raise DataError(f"codes must be a Codes artifact or an (items, levels) integer array ({e})",
                            "pass Codes from the run's tokenizer (tokenizer.encode_new) or an integer array") from None
        if arr.ndim == 1 and W == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise DataError(f"codes must be an (items, levels) integer array, got shape {arr.shape} "
                            f"dtype {arr.dtype}", "pass tokenizer.encode_new(X) or an int array")
        arr = arr.astype(np.int64)
        lengths = np.full(arr.shape[0], arr.shape[1], np.int64)
    if arr.shape[0] != n:
        raise DataError(f"{arr.shape[0]} SIDs for {n} new item ids", "give one SID per new item")
    if arr.shape[1] != W:
        raise DataError(f"the new SIDs have {arr.shape[1]} levels but the model's SIDs have {W}",
                        "encode the new items with the tokenizer the model's SIDs came from")
    return arr, lengths, rule


def add_items(model, item_ids: Sequence[str], codes: Any, *, renumber: bool | None = None,
              max_items: int = MAX_ADD_ITEMS):
    """A copy of the fitted SID ``model`` that also recommends ``item_ids`` with SIDs ``codes``.

    ``codes``: a :class:`~sidkit.types.Codes` (rows in ``item_ids`` order, or named by its
    ``item_ids``), e.g. ``tokenizer.encode_new(X_new)``, or an (n, levels) int array.
    ``renumber``: move a new SID whose last token is beyond the model's codebook, or held
    by another item, to the smallest free last token under its prefix (default: True for
    codes whose last level disambiguates, False otherwise).  The input model is not
    changed; see the module docstring for the errors.
    """
    from .generative import SIDRecommender
    from .sid_tokens import SIDTokens
    from ..types import Codes

    if not isinstance(model, SIDRecommender):
        raise DataError(f"only generative SID models can take new items without retraining, got "
                        f"{type(model).__name__}",
                        "ID models (SASRec, popularity) learn one embedding per item: retrain them")
    model._check_fitted()
    if not hasattr(model, "tokens_"):
        raise DataError("the model holds no SIDs", "fit it with codes first")
    if getattr(model, "id_only", False):
        raise DataError("the ID-only ablation names items by catalogue index and cannot take new items",
                        "use a causal SID or TIGER model with Semantic IDs")
    old_ids = np.asarray(model.item_ids_, dtype=str)
    ids = check_new_ids(item_ids, old_ids, max_items=max_items)
    tok = model.tokens_
    W = tok.n_levels
    sizes = np.asarray(tok.codebook_sizes, np.int64)
    arr, lengths, rule = _as_arrays(codes, ids, W)
    if renumber is None:
        renumber = rule in RENUMBER_RULES
    n = len(ids)
    if (lengths < 1).any() or (lengths > W).any():
        raise DataError(f"SID lengths must lie in 1..{W}",
                        "give each new SID's number of tokens, between 1 and the model's number of levels")
    live = np.arange(W)[None, :] < lengths[:, None]
    if not tok.variable_length and not live.all():
        raise DataError("the model's SIDs all have the same length; the new SIDs must too",
                        "encode the new items with the run's own tokenizer (sidkit add-items), which gives full-length SIDs")
    # every level but the last: within the model's codebooks
    bad = live & ((arr < 0) | (arr >= sizes[None, :]))
    last = lengths - 1
    fixable = np.zeros_like(bad)
    if renumber:
        fixable[np.arange(n), last] = True
    hard = bad & ~fixable
    if hard.any():
        r, lv = map(int, np.argwhere(hard)[0])
        raise DataError(f"new item {ids[r]!r}: token {int(arr[r, lv])} at level {lv} is outside the model's "
                        f"codebook 0..{int(sizes[lv]) - 1}",
                        "encode the new items with the run's fitted tokenizer (the model cannot emit tokens "
                        "it was not trained with)")
    arr = np.where(live, arr, 0)
    # assign final last tokens: keep valid, non-colliding ones; renumber the others (in order)
    old_codes = np.asarray(tok.codes.codes, np.int64)
    old_len = np.asarray(tok.codes.lengths, np.int64)
    out = _assign_last_tokens(old_codes, old_len, arr, lengths, bad[np.arange(n), lengths - 1], sizes)
    pending = np.flatnonzero((out != arr).any(1) | bad[np.arange(n), lengths - 1])
    if len(pending) and not renumber:
        r = int(pending[0])
        ln = int(lengths[r])
        raise DataError(f"new item {ids[r]!r} gets SID {arr[r, :ln].tolist()}, which another item already "
                        "holds", "encode the new items with tokenizer.encode_new (it gives new items free "
                        "SIDs), or pass renumber=True to move it to a free last token")
    full = np.flatnonzero(out[np.arange(n), lengths - 1] < 0)
    if len(full):
        r = int(full[0])
        ln = int(lengths[r])
        raise DataError(f"new item {ids[r]!r}: every one of the {int(sizes[ln - 1])} last tokens under SID prefix "
                        f"{out[r, :ln - 1].tolist()} is taken, so the model has no free SID for it",
                        "retrain with a larger last (disambiguation) codebook, or add fewer items with "
                        "this prefix")
    # merged, sorted catalogue
    all_ids = np.concatenate([old_ids, np.asarray(ids, dtype=str)])
    all_codes = np.vstack([old_codes, out])
    all_len = np.concatenate([old_len, lengths])
    order = np.argsort(all_ids, kind="stable")
    merged = all_ids[order]
    new_codes = Codes(all_codes[order], tuple(int(k) for k in sizes), lengths=all_len[order], item_ids=merged)
    new_tokens = SIDTokens(new_codes, user_buckets=tok.user_buckets)      # checks collisions again
    if new_tokens.vocab_size != tok.vocab_size:                           # pragma: no cover - sizes unchanged
        raise DataError("the extended SIDs would change the model's vocabulary",
                        "encode the new items with the tokenizer the model was trained on")
    from ..io import hash_obj

    new = copy.copy(model)
    new.item_ids_ = merged
    new.catalogue_hash_ = hash_obj(merged.tolist())
    new.tokens_ = new_tokens
    return new


def _assign_last_tokens(old_codes, old_len, new_codes, new_len, bad_last, sizes) -> np.ndarray:
    """The new SIDs with their last token kept where it is valid (``~bad_last``) and held
    by no catalogue SID nor an earlier new one, and otherwise the smallest free last token
    under the SID's prefix (new items in order); -1 as the last token where none is free.
    Vectorised over the catalogue: only the SIDs that move are visited one by one."""
    out = np.array(new_codes, np.int64, copy=True)
    n = len(out)
    rows = np.arange(n)
    last = new_len - 1
    k_old = sid_keys(old_codes, old_len, sizes)
    k_new = sid_keys(out, new_len, sizes)
    if k_old is None:                                # SIDs beyond 63 bits: row-wise keys
        allrows = np.vstack([np.c_[old_len, np.where(np.arange(old_codes.shape[1])[None] < old_len[:, None],
                                                       old_codes, -1)],
                             np.c_[new_len, np.where(np.arange(out.shape[1])[None] < new_len[:, None], out, -1)]])
        _, inv = np.unique(allrows, axis=0, return_inverse=True)
        inv = inv.ravel().astype(np.int64)
        k_old, k_new = inv[:len(old_codes)], inv[len(old_codes):]
        p_all = None
    else:
        p_all = np.concatenate([sid_keys(old_codes, old_len, sizes, last=False),
                                sid_keys(out, new_len, sizes, last=False)])
    old_sorted = np.sort(k_old)
    pos = np.minimum(np.searchsorted(old_sorted, k_new), max(len(old_sorted) - 1, 0))
    held = (old_sorted[pos] == k_new) if len(old_sorted) else np.zeros(n, bool)
    ok = ~bad_last & ~held
    first = np.zeros(n, bool)                         # the first valid new SID of each key keeps it
    cand = np.flatnonzero(ok)
    _, idx = np.unique(k_new[cand], return_index=True)
    first[cand[idx]] = True
    pending = np.flatnonzero(~first)
    if not len(pending):
        return out
    if p_all is None:                                 # prefixes as row ids too
        W = out.shape[1]
        cut = lambda c, ln: np.where(np.arange(W)[None] < (ln - 1)[:, None], c, -1)   # noqa: E731
        _, p_all = np.unique(np.vstack([np.c_[old_len, cut(old_codes, old_len)], np.c_[new_len, cut(out, new_len)]]),
                             axis=0, return_inverse=True)
        p_all = p_all.ravel()
    n_old = len(old_codes)
    last_all = np.concatenate([old_codes[np.arange(n_old), old_len - 1], out[rows, last]])
    live = np.concatenate([np.ones(n_old, bool), first])       # SIDs that hold their last token
    for r in pending.tolist():                       # the few SIDs that move
        ln, K = int(new_len[r]), int(sizes[int(new_len[r]) - 1])
        t = np.unique(last_all[live & (p_all == p_all[n_old + r])])
        t = t[(t >= 0) & (t < K)]                    # sorted: the first gap is the smallest free token
        gap = np.flatnonzero(t != np.arange(len(t)))
        free = int(gap[0]) if len(gap) else len(t)
        if free < K:
            out[r, ln - 1] = last_all[n_old + r] = free
            live[n_old + r] = True
        else:
            out[r, ln - 1] = -1
    return out


def item_sids(model, item_ids: Sequence[str]) -> np.ndarray:
    """(n, W) SIDs (level tokens, -1 beyond an item's length) the model holds for ``item_ids``."""
    ids = list(item_ids)
    pos = index_of(ids, model.item_ids_, presorted=True)     # the catalogue is sorted
    if (pos < 0).any():
        raise DataError(f"item(s) {[i for i, p in zip(ids, pos) if p < 0][:3]} are not in the model's catalogue",
                        "use ids of the model's catalogue (model.item_ids_), or add the items first")
    c = model.tokens_.codes
    arr = np.asarray(c.codes, np.int64)[pos].copy()
    ln = np.asarray(c.lengths, np.int64)[pos]
    arr[np.arange(arr.shape[1])[None, :] >= ln[:, None]] = -1
    return arr


def sids_dict(model, item_ids: Sequence[str]) -> dict[str, list[int]]:
    arr = item_sids(model, item_ids)
    return {i: [int(t) for t in row if t >= 0] for i, row in zip(item_ids, arr.tolist())}
