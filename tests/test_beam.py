"""Trie-constrained beam search: exact against brute force at full width, only valid SIDs,
no duplicates, unconstrained mode, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sidkit.errors import DataError
from sidkit.models.beam import beam_search, beam_users
from sidkit.models.sid_tokens import PAD, SIDTokens
from sidkit.types import Codes


class TinyModel:
    """A tiny random autoregressive model over SID tokens.

    Per user a history vector (kept once per user, reached with ``beam_users``), per
    row a running state that depends on every emitted token in order (so a wrong
    ``reorder`` changes the scores)."""

    def __init__(self, vocab_size, n_users, d=6, seed=0, scale=3.0):
        g = torch.Generator().manual_seed(seed)
        self.E = torch.randn(vocab_size, d, generator=g, dtype=torch.float64)
        self.U = torch.randn(n_users, d, generator=g, dtype=torch.float64)
        self.M = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
        self.O = scale * torch.randn(d, vocab_size, generator=g, dtype=torch.float64)
        self.n_users = n_users
        self.calls = []

    def start(self):
        return {"acc": torch.zeros(self.n_users, self.E.shape[1], dtype=torch.float64)}

    def _next(self, acc, users, tok):
        acc = acc if tok is None else torch.tanh(acc @ self.M + self.E[tok])
        return torch.log_softmax(torch.tanh(self.U[users] + acc) @ self.O, -1), acc

    def step(self, tokens, state):
        R, t = tokens.shape
        self.calls.append(R)
        users = beam_users(R, self.n_users)
        logp, acc = self._next(state["acc"], users, tokens[:, -1] if t else None)
        return logp, {"acc": acc}

    @staticmethod
    def reorder(state, parents):
        return {"acc": state["acc"][parents]}

    def brute_force(self, sid):
        """(B, N) summed log-prob of every item's SID, by teacher forcing one item at a time."""
        out = np.zeros((self.n_users, sid.n_items))
        for u in range(self.n_users):
            for i in range(sid.n_items):
                acc, tok, total = torch.zeros(self.E.shape[1], dtype=torch.float64), None, 0.0
                for pos in range(sid.n_tokens[i]):
                    logp, acc = self._next(acc, u, tok)
                    tok = int(sid.item_tokens[i, pos])
                    total += float(logp[tok])
                out[u, i] = total
        return out


def _random_codes(rs, sizes, n, variable):
    L = len(sizes)
    codes = np.stack([rs.integers(0, k, size=4 * n) for k in sizes], 1)
    lengths = rs.integers(1, L + 1, size=4 * n) if variable else np.full(4 * n, L)
    codes = np.where(np.arange(L)[None, :] < lengths[:, None], codes, -1)
    # unique SIDs (with their lengths)
    _, first = np.unique(np.c_[codes, lengths], axis=0, return_index=True)
    first = np.sort(first)[:n]
    return Codes(codes[first], sizes, lengths=lengths[first])


@pytest.mark.parametrize("variable", [False, True])
def test_full_width_beam_equals_brute_force(variable):
    rs = np.random.default_rng(1 if variable else 0)
    sid = SIDTokens(_random_codes(rs, (3, 4, 3), 20, variable), user_buckets=5)
    assert sid.variable_length == variable
    model = TinyModel(sid.vocab_size, n_users=4, seed=3)
    res = beam_search(model.step, model.start(), sid, 4, beam=sid.n_items, reorder=model.reorder)
    ref = model.brute_force(sid)
    order = np.argsort(-ref, axis=1, kind="stable")
    np.testing.assert_array_equal(res.items, order)
    np.testing.assert_allclose(res.scores, np.take_along_axis(ref, order, 1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(res.sids, sid.item_tokens[res.items])
    # step 0 runs once per user (history shared), later steps once per beam
    assert model.calls[0] == 4 and set(model.calls[1:]) == {4 * sid.n_items}
    # k < beam: the first k of the same ranking
    res5 = beam_search(model.step, model.start(), sid, 4, beam=sid.n_items, k=5, reorder=model.reorder)
    np.testing.assert_array_equal(res5.items, order[:, :5])


def test_wider_beam_than_items_pads_with_never_emitted_beams():
    sid = SIDTokens(Codes(np.array([[0, 1], [1, 0], [1, 2]]), (2, 3)))     # 2 prefixes, 3 items < beam 7
    model = TinyModel(sid.vocab_size, n_users=2, seed=1)
    res = beam_search(model.step, model.start(), sid, 2, beam=7, reorder=model.reorder)
    assert res.items.shape == (2, 3)                                        # k defaults to min(beam, items)
    ref = model.brute_force(sid)
    np.testing.assert_array_equal(res.items, np.argsort(-ref, 1))
    np.testing.assert_allclose(res.scores, -np.sort(-ref, 1), atol=1e-12)
    # unconstrained, k = beam: the outputs beyond the valid ones are -1 / -inf / PAD or invalid SIDs
    unc = beam_search(model.step, model.start(), sid, 2, beam=7, reorder=model.reorder, constrained=False)
    assert unc.items.shape == (2, 7) and np.isfinite(unc.scores).all()
    assert ((unc.items == -1) == (sid.items_of(unc.sids.reshape(-1, 2)).reshape(2, 7) == -1)).all()


def test_narrow_beam_keeps_the_top1_of_an_easy_model():
    rs = np.random.default_rng(5)
    sid = SIDTokens(_random_codes(rs, (4, 4, 4), 40, False))
    model = TinyModel(sid.vocab_size, n_users=3, seed=2, scale=8.0)
    ref = model.brute_force(sid)   # exhaustive: the score of every valid SID, per user
    top1 = ref.argmax(1)
    assert (np.sort(ref, 1)[:, -1] - np.sort(ref, 1)[:, -2] > 1e-6).all()   # a unique true top-1
    res = beam_search(model.step, model.start(), sid, 3, beam=10, k=3, reorder=model.reorder)
    # a beam of 10 (a quarter of the 40 items) still returns every user's true top-1 first
    np.testing.assert_array_equal(res.items[:, 0], top1)
    np.testing.assert_allclose(res.scores[:, 0], ref.max(1), rtol=0, atol=1e-12)
    full = beam_search(model.step, model.start(), sid, 3, beam=40, k=3, reorder=model.reorder)
    np.testing.assert_array_equal(full.items, np.argsort(-ref, 1)[:, :3])
    # every returned score is the exact score of the returned item
    np.testing.assert_allclose(res.scores, np.take_along_axis(ref, res.items, 1), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), n=st.integers(1, 30),
       variable=st.booleans(), beam=st.integers(1, 12), seed=st.integers(0, 10_000), n_users=st.integers(1, 3))
def test_property_every_output_is_a_valid_sid_and_no_item_twice(sizes, n, variable, beam, seed, n_users):
    rs = np.random.default_rng(seed)
    codes = _random_codes(rs, tuple(sizes), n, variable)
    sid = SIDTokens(codes)
    model = TinyModel(sid.vocab_size, n_users=n_users, seed=seed)
    res = beam_search(model.step, model.start(), sid, n_users, beam=beam, reorder=model.reorder)
    valid = res.items >= 0
    n_valid = min(beam, sid.n_items)
    assert (valid.sum(1) == n_valid).all()
    assert valid[:, :n_valid].all()
    items = res.items[valid]
    # every emitted SID is an item's SID, token for token (END and PAD included)
    np.testing.assert_array_equal(res.sids[valid], sid.item_tokens[items])
    np.testing.assert_array_equal(sid.trie.items_of(res.sids[valid]), items)
    for row in res.items:                                    # no item twice for one user
        r = row[row >= 0]
        assert len(np.unique(r)) == len(r)
    fin = res.scores[:, :n_valid]
    assert np.isfinite(fin).all() and (np.diff(fin, axis=1) <= 1e-12).all()
    assert res.invalid_rate() == 0.0


class MaskedModel(TinyModel):
    """The tiny model with the trie applied inside the model (invalid tokens -inf)."""

    def __init__(self, sid, *a, **kw):
        super().__init__(sid.vocab_size, *a, **kw)
        self.sid = sid

    def step(self, tokens, state):
        logp, state = super().step(tokens, state)
        node = self.sid.trie.walk(tokens.numpy()) if tokens.shape[1] else np.zeros(len(tokens), np.int64)
        done = self.sid.trie.item_of_node[np.maximum(node, 0)] >= 0
        allowed = self.sid.trie.allowed_mask(np.maximum(node, 0))
        allowed[done, PAD] = True
        return logp.masked_fill(~torch.as_tensor(allowed), float("-inf")), state


@pytest.mark.parametrize("variable", [False, True])
def test_unconstrained_mode_same_path(variable):
    rs = np.random.default_rng(7)
    sid = SIDTokens(_random_codes(rs, (3, 3, 2), 12, variable))
    # a model that enforces the trie itself: unconstrained decoding gives the constrained result
    m = MaskedModel(sid, n_users=3, seed=4)
    con = beam_search(m.step, m.start(), sid, 3, beam=6, reorder=m.reorder)
    unc = beam_search(m.step, m.start(), sid, 3, beam=6, reorder=m.reorder, constrained=False)
    np.testing.assert_array_equal(unc.items, con.items)
    np.testing.assert_allclose(unc.scores, con.scores, atol=1e-12)
    # a plain random model emits invalid SIDs without the trie, never with it
    t = TinyModel(sid.vocab_size, n_users=3, seed=4)
    unc = beam_search(t.step, t.start(), sid, 3, beam=6, reorder=t.reorder, constrained=False)
    con = beam_search(t.step, t.start(), sid, 3, beam=6, reorder=t.reorder)
    assert unc.invalid_rate() > 0 and con.invalid_rate() == 0
    assert (unc.scores[:, 0] >= con.scores[:, 0] - 1e-12).all()      # the constraint can only lower the best score
    ok = unc.items >= 0
    np.testing.assert_array_equal(sid.items_of(unc.sids[ok]), unc.items[ok])


def test_bad_input_errors():
    sid = SIDTokens(Codes(np.array([[0, 1], [1, 0], [1, 2]]), (2, 3)))
    m = TinyModel(sid.vocab_size, n_users=1)
    with pytest.raises(DataError, match="beam width must be an integer >= 1, got 0"):
        beam_search(m.step, m.start(), sid, 1, beam=0)
    with pytest.raises(DataError, match="k=4 is more than the 3 items"):
        beam_search(m.step, m.start(), sid, 1, beam=5, k=4)
    with pytest.raises(DataError, match="more than the beam width 2"):
        beam_search(m.step, m.start(), sid, 1, beam=2, k=3)
    with pytest.raises(DataError, match=r"shape \(1, 3\), expected \(1, 8\)"):
        beam_search(lambda tok, s: (torch.zeros(1, 3), s), None, sid, 1, beam=2)
    empty = beam_search(m.step, m.start(), sid, 0, beam=2)
    assert empty.items.shape == (0, 2)


def test_low_precision_log_probs_are_summed_in_float32():
    sid = SIDTokens(Codes(np.array([[0, 1], [1, 0], [1, 2]]), (2, 3)))
    m = TinyModel(sid.vocab_size, n_users=2, seed=1)
    res = beam_search(lambda tok, s: (lambda lp, st: (lp.to(torch.bfloat16), st))(*m.step(tok, s)),
                      m.start(), sid, 2, beam=3, reorder=m.reorder)
    assert res.scores.dtype == np.float32
    assert (np.sort(res.items, 1) == [0, 1, 2]).all()
    with pytest.raises(DataError, match="cannot be split evenly"):
        beam_users(7, 2)


def test_uniform_last_scores_every_child_of_a_node_alike_and_stays_exact():
    """Brute force with the last level's log-prob replaced by -log(children of the node)."""
    rs = np.random.default_rng(5)
    sid = SIDTokens(_random_codes(rs, (3, 4, 3), 24, False))
    model = TinyModel(sid.vocab_size, n_users=3, seed=7)
    res = beam_search(model.step, model.start(), sid, 3, beam=sid.n_items, reorder=model.reorder,
                      uniform_last=True)
    prefixes = [tuple(r) for r in sid.item_tokens[:, :-1]]
    n_child = np.array([prefixes.count(p) for p in prefixes])
    ref = np.zeros((3, sid.n_items))
    for u in range(3):
        for i in range(sid.n_items):
            acc, tok, total = torch.zeros(model.E.shape[1], dtype=torch.float64), None, 0.0
            for pos in range(sid.n_levels - 1):
                logp, acc = model._next(acc, u, tok)
                tok = int(sid.item_tokens[i, pos])
                total += float(logp[tok])
            ref[u, i] = total - np.log(n_child[i])
    np.testing.assert_allclose(np.sort(res.scores, 1)[:, ::-1], -np.sort(-ref, 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.scores, np.take_along_axis(ref, res.items, 1), rtol=0, atol=1e-12)
    with pytest.raises(DataError, match="needs the trie"):
        beam_search(model.step, model.start(), sid, 3, beam=4, constrained=False, uniform_last=True)
