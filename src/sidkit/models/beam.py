"""Beam search over Semantic IDs, constrained by the trie of valid SIDs.

One decoder for every generative model.  The model is two functions:

``step(tokens, state) -> (log_probs, state)``
    ``tokens`` (R, t) long: the SID tokens emitted so far by each row (``t = 0`` at the
    first step); returns (R, V) log-probabilities of the next token and the new state.
``reorder(state, parents) -> state``
    ``parents`` (R',) long: row ``r`` of the next step continues row ``parents[r]`` of
    this one -- index-select every per-row cache (K/V of decoded tokens) with it.

Rows are user-major: at step 0 there is **one row per user** (``R = B``: the history is
encoded once per user, not once per beam), and after each step ``reorder`` maps to
``R' = B * beam`` rows, row ``b * beam + j`` being beam ``j`` of user ``b`` (so
``parents[r] // (R // B) == r // beam`` always: a parent is always of the same user).
A model should keep what depends only on the user's history (its encoded K/V) with
``B`` rows and reach it with :func:`beam_users` (``rows // beam``) instead of copying
it per beam -- copying it made evaluation 10x slower.

Per step the candidates are the trie children of each beam's node (a padded per-level
child table, :meth:`~sidkit.models.trie.SIDTrie.level_table`): only ``beam x C`` log-probs
are gathered and ranked, every beam is extended in one batched ``topk`` (a per-row
top-``beam`` first, then the user's top-``beam``); no per-beam Python code.  A beam that
reached an item's last token (variable-length SIDs: after ``END``) is carried along
with a forced ``PAD`` at log-prob 0.  When fewer valid continuations than ``beam``
exist, the rest are ``-inf`` beams that are never returned.  ``constrained=False`` runs
the same code over the whole vocabulary (for benchmarks and the invalid-output rate):
outputs that map to no item come back as item -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from .sid_tokens import EOS, PAD

StepFn = Callable[[Any, Any], tuple[Any, Any]]


@dataclass
class BeamResult:
    """Ranked items of each user, best first.

    ``items`` (B, k) int64 catalogue indices (-1: no item; only -inf beams when
    constrained), ``scores`` (B, k) summed log-probabilities (-inf for no item),
    ``sids`` (B, k, W) the emitted tokens (``PAD`` after the end of a SID).
    """

    items: np.ndarray
    scores: np.ndarray
    sids: np.ndarray

    def invalid_rate(self) -> float:
        """Share of finite-score outputs that map to no item (always 0 when constrained)."""
        fin = np.isfinite(self.scores)
        return float(((self.items < 0) & fin).sum() / max(int(fin.sum()), 1))


def by_groups(groups, n_users: int, search, exclude=None) -> BeamResult:
    """One :class:`BeamResult` of ``n_users`` users searched in length groups:
    ``groups`` as from ``TorchRecommender.length_groups`` (``[(rows, width), ...]``, every
    user once; ``rows`` None: all users, in order), ``search(rows, width, exclude_rows)``
    the BeamResult of one group (its rows of ``exclude``, a numpy or torch (B, N) mask).
    A user's beam search is independent of the other users', so the result is the one
    of a single search over every user."""
    if len(groups) == 1 and groups[0][0] is None:
        return search(None, groups[0][1], exclude)
    parts = []
    for rows, w in groups:
        ex = exclude
        if ex is not None:
            import torch

            ex = ex[torch.as_tensor(rows, device=ex.device)] if hasattr(ex, "detach") else ex[rows]
        parts.append((rows, search(rows, w, ex)))
    first = parts[0][1]
    out = BeamResult(np.empty((n_users,) + first.items.shape[1:], first.items.dtype),
                     np.empty((n_users,) + first.scores.shape[1:], first.scores.dtype),
                     np.empty((n_users,) + first.sids.shape[1:], first.sids.dtype))
    for rows, res in parts:
        out.items[rows], out.scores[rows], out.sids[rows] = res.items, res.scores, res.sids
    return out


def beam_users(n_rows: int, n_users: int, device=None):
    """(n_rows,) user of each user-major row (``rows // beam``), for shared history caches."""
    import torch

    if n_users <= 0 or n_rows % n_users:
        raise DataError(f"{n_rows} rows cannot be split evenly over {n_users} users",
                        "pass the beam search's own rows (users x beam), not a subset")
    return torch.arange(n_rows, device=device) // (n_rows // n_users)


def _check_args(beam, k, n_users, n_items, constrained):
    if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) or beam < 1:
        raise DataError(f"beam width must be an integer >= 1, got {beam!r}", "use e.g. beam=20 (the default)")
    if k is None:                                     # all the beams, but not more than the items
        k = min(int(beam), n_items) if constrained else int(beam)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"k must be an integer >= 1, got {k!r}", "ask for e.g. k=10 items")
    if constrained and k > n_items:
        raise DataError(f"k={k} is more than the {n_items} items that have a SID",
                        f"ask for at most {n_items} items")
    if k > beam:
        raise DataError(f"k={k} is more than the beam width {beam}: beam search returns at most beam items",
                        f"use beam >= {k}")
    if n_users < 0:
        raise DataError(f"n_users must be >= 0, got {n_users}", "pass the number of histories being decoded")
    return int(beam), int(k)


def beam_search(step: StepFn, state: Any, sid_tokens, n_users: int, *, beam: int = 20, k: int | None = None,
                reorder: Callable[[Any, Any], Any] | None = None, constrained: bool = True,
                device=None, exclude=None, uniform_last: bool = False) -> BeamResult:
    """Top-``k`` items of ``n_users`` users by beam search of width ``beam``.

    ``sid_tokens``: the :class:`~sidkit.models.sid_tokens.SIDTokens` the model was trained
    on; ``step``/``reorder``/row layout: see the module docstring (``reorder=None``: the
    state holds no per-row caches).  ``k`` defaults to ``beam`` (constrained: at most
    the number of items) and may not exceed it.  ``device``: where the first step's
    (empty) token tensor lives (default CPU); later tensors follow the log-probs.
    Scores are summed in float32 (float64 if the model returns float64).
    With ``beam`` at least the number of valid SIDs the result is exact (every SID
    ranked by its summed log-probability); narrower beams are approximate.

    ``exclude``: optional (n_users, n_items) boolean mask (numpy or torch) of items a
    user must not get (e.g. the items of their history).  They are removed *inside* the
    search: a trie node all of whose items are excluded for the user is never expanded
    (:meth:`~sidkit.models.trie.SIDTrie.exhausted_keys`), so the beam is spent on the
    remaining items and the user gets ``k`` of them whenever at least ``k`` remain
    below the prefixes the beam keeps (``-1`` only when fewer remain).  Needs
    ``constrained=True``.

    ``uniform_last``: at the last level every valid child of a beam's node gets the same
    log-probability, ``-log(number of children)``, instead of the model's: for a last level
    that only disambiguates items sharing their semantic tokens, so that an item added
    after training (whose disambiguation token the model never saw as a target) competes
    on its semantic tokens alone. Needs ``constrained=True``.
    """
    import torch

    if uniform_last and not constrained:
        raise DataError("uniform_last scores the trie's children of a node, so it needs the trie",
                        "use constrained=True")
    beam, k = _check_args(beam, k, n_users, sid_tokens.n_items, constrained)
    W, V = sid_tokens.n_levels, sid_tokens.vocab_size
    B = int(n_users)
    if B == 0:
        return BeamResult(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros((0, k, W), np.int64))
    trie = sid_tokens.trie
    ex_keys_np = _exclusion_keys(trie, exclude, B, constrained)
    ex_keys = None
    cur = 1                                               # beams per user so far
    toks = None
    scores = nodes = done = None
    for t in range(W):
        R = B * cur
        inp = toks.reshape(R, t) if toks is not None else None
        if inp is None:
            inp = torch.zeros((R, 0), dtype=torch.long, device=device)
        logp, state = step(inp, state)
        if not isinstance(logp, torch.Tensor) or logp.shape != (R, V):
            raise DataError(f"the model's step returned log-probs of shape "
                            f"{tuple(getattr(logp, 'shape', ()))}, expected ({R}, {V}) (rows, vocabulary)",
                            "return one row of log-probabilities over the SID vocabulary per input row")
        if logp.dtype not in (torch.float32, torch.float64):
            logp = logp.float()
        if scores is None:
            device = logp.device
            scores = torch.zeros((B, 1), dtype=logp.dtype, device=device)
            nodes = torch.zeros((B, 1), dtype=torch.long, device=device)
            done = torch.zeros((B, 1), dtype=torch.bool, device=device)
            toks = torch.zeros((B, 1, 0), dtype=torch.long, device=device)
        flat_nodes, flat_done = nodes.reshape(R), done.reshape(R)
        if constrained:
            if ex_keys is None and ex_keys_np is not None and ex_keys_np.size:
                ex_keys = torch.as_tensor(ex_keys_np, device=device)
            cand_tok, cand_node, cand_lp = _trie_candidates(trie, t, logp, flat_nodes, cur, ex_keys,
                                                            uniform_last and t == W - 1)
        else:
            cand_tok = cand_node = None
            cand_lp = logp
        C = cand_lp.shape[1]
        if bool(flat_done.any()):                        # finished SIDs: one PAD candidate at log-prob 0
            cand_tok, cand_node, cand_lp = _finished_candidates(flat_done, flat_nodes, cand_tok, cand_node, cand_lp)
        kk = min(beam, C)
        n_new = min(beam, cur * kk)
        val, idx, col = _top_beams(scores.reshape(R, 1) + cand_lp, B, cur, beam)
        j = idx // kk                                      # parent beam within the user
        parent = j + (torch.arange(B, device=device) * cur)[:, None]          # global row
        if constrained:
            within = j * C + col
            new_tok = cand_tok.reshape(B, cur * C).gather(1, within)
            new_node = cand_node.reshape(B, cur * C).gather(1, within)
        else:
            new_tok = col.masked_fill(flat_done[parent], PAD)
            new_node = torch.zeros_like(col)
        if constrained:
            new_done = trie_terminal(trie, device)[new_node.clamp(min=0)]
        else:                                              # END exists only with variable-length SIDs
            new_done = flat_done[parent] | (new_tok == EOS)
            if sid_tokens.end_token is not None:
                new_done |= new_tok == sid_tokens.end_token
        dead = torch.isinf(val) & (val < 0)
        new_tok = new_tok.masked_fill(dead, PAD)
        new_node = new_node.masked_fill(dead, 0)
        new_done = new_done | dead
        if n_new < beam:                                   # pad with -inf beams
            val, parent, new_tok, new_node, new_done = _pad_beams(beam, val, parent, new_tok, new_node, new_done)
        toks = torch.cat([toks.reshape(R, t).index_select(0, parent.reshape(-1)).reshape(B, beam, t),
                          new_tok[:, :, None]], 2)
        scores, nodes, done, cur = val, new_node, new_done, beam
        if t == W - 1 or bool(done.all()):
            break
        if reorder is not None:
            state = reorder(state, parent.reshape(-1))
    return _result(sid_tokens, toks, scores, nodes, k, constrained)


def _trie_candidates(trie, t: int, logp, nodes, cur: int, ex_keys, uniform: bool):
    """Each row's candidates at level ``t``: the trie children of its node, as (R, C) tokens,
    child nodes (-1: none) and log-probs (-inf where there is no child, or the child's
    items are all excluded for the row's user: ``ex_keys``); ``uniform``: every child of a
    node gets ``-log(children)``."""
    import torch

    ninf = torch.tensor(float("-inf"), dtype=logp.dtype, device=logp.device)
    tab_tok, tab_node = trie.level_table(t, logp.device)
    lo, n_d = int(trie.depth_start[t]), int(trie.depth_start[t + 1] - trie.depth_start[t])
    local = (nodes - lo).clamp(0, n_d - 1)
    cand_tok, cand_node = tab_tok[local], tab_node[local]
    cand_lp = logp.gather(1, cand_tok.clamp(min=0)).masked_fill(cand_tok < 0, ninf)
    if uniform:
        n_child = (cand_tok >= 0).sum(1, keepdim=True).clamp(min=1).to(logp.dtype)
        cand_lp = torch.where(cand_tok >= 0, -torch.log(n_child), ninf)
    if ex_keys is not None:
        user = torch.arange(nodes.shape[0], device=logp.device) // cur
        key = user[:, None] * trie.n_nodes + cand_node.clamp(min=0)
        pos = torch.searchsorted(ex_keys, key).clamp(max=ex_keys.numel() - 1)
        cand_lp = cand_lp.masked_fill((ex_keys[pos] == key) & (cand_node >= 0), ninf)
    return cand_tok, cand_node, cand_lp


def _finished_candidates(done, nodes, cand_tok, cand_node, cand_lp):
    """Rows whose SID is complete (``done``) get one candidate, PAD at log-prob 0 (their
    node kept), so they stay in the beam with their score; ``cand_tok`` None: unconstrained."""
    import torch

    C = cand_lp.shape[1]
    first = torch.zeros(C, dtype=torch.bool, device=cand_lp.device)
    first[0] = True
    fin_lp = torch.where(first, torch.zeros((), dtype=cand_lp.dtype, device=cand_lp.device),
                         torch.tensor(float("-inf"), dtype=cand_lp.dtype, device=cand_lp.device))
    cand_lp = torch.where(done[:, None], fin_lp[None, :], cand_lp)
    if cand_tok is not None:
        cand_tok = torch.where(done[:, None], torch.where(first, PAD, -1)[None, :], cand_tok)
        cand_node = torch.where(done[:, None], nodes[:, None], cand_node)
    return cand_tok, cand_node, cand_lp


def _top_beams(total, B: int, cur: int, beam: int):
    """The best ``min(beam, cur * C)`` of each user's ``cur`` rows x ``C`` candidates (sorted):
    their scores, their index in the user's (row, candidate-within-the-row's-top) grid, and
    their candidate column.  With more candidates than the beam, each row's top ``beam``
    first (the user's best cannot lie outside them), then the user's."""
    C = total.shape[1]
    kk = min(beam, C)
    n_new = min(beam, cur * kk)
    if C > beam:
        row_val, row_idx = total.topk(kk, dim=1)
        val, idx = row_val.reshape(B, cur * kk).topk(n_new, dim=1)        # (B, n_new), sorted
        return val, idx, row_idx.reshape(B, cur * kk).gather(1, idx)
    val, idx = total.reshape(B, cur * C).topk(n_new, dim=1)
    return val, idx, idx % C


def _pad_beams(beam: int, val, parent, tok, node, done):
    """Fill each user's beams up to ``beam`` with finished -inf beams."""
    import torch

    B, pad = val.shape[0], beam - val.shape[1]
    dev = val.device
    return (torch.cat([val, torch.full((B, pad), float("-inf"), dtype=val.dtype, device=dev)], 1),
            torch.cat([parent, parent[:, :1].expand(B, pad)], 1),
            torch.cat([tok, torch.full((B, pad), PAD, dtype=torch.long, device=dev)], 1),
            torch.cat([node, torch.zeros((B, pad), dtype=torch.long, device=dev)], 1),
            torch.cat([done, torch.ones((B, pad), dtype=torch.bool, device=dev)], 1))


def _result(sid_tokens, toks, scores, nodes, k: int, constrained: bool) -> BeamResult:
    """The top ``k`` beams as items (-1 where a beam died), scores and SIDs (PAD-filled)."""
    import torch

    B, beam, t_out = toks.shape
    W = sid_tokens.n_levels
    if t_out < W:
        toks = torch.cat([toks, torch.full((B, beam, W - t_out), PAD, dtype=torch.long, device=toks.device)], 2)
    sc = scores[:, :k]
    alive = torch.isfinite(sc)
    sids = toks[:, :k].cpu().numpy()
    if constrained:
        items = torch.where(alive, sid_tokens.trie.node_items(toks.device)[nodes[:, :k]], -1).cpu().numpy()
    else:
        items = sid_tokens.items_of(sids.reshape(-1, W)).reshape(B, k)
        items = np.where(alive.cpu().numpy(), items, -1)
    return BeamResult(items.astype(np.int64), sc.detach().cpu().numpy(), sids)


def _exclusion_keys(trie, exclude, n_users: int, constrained: bool):
    """Sorted ``user * n_nodes + node`` keys of the nodes excluded per user (None: no mask)."""
    if exclude is None:
        return None
    if not constrained:
        raise DataError("exclude needs constrained decoding (the trie tells which tokens lead to which items)",
                        "pass constrained=True, or drop the excluded items from the output yourself")
    from .base import check_exclude

    rows, items = np.nonzero(check_exclude(exclude, n_users, trie.n_items))
    return trie.exhausted_keys(rows, items)


def trie_terminal(trie, device):
    """(n_nodes,) bool torch tensor: the node ends an item's SID."""
    key = ("terminal", str(device))
    if key not in trie._torch:
        trie._torch[key] = trie.node_items(device) >= 0
    return trie._torch[key]
