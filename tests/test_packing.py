"""Padding is never computed (issue 24): SASRec and the causal SID model run each batch
as length groups trimmed to their real histories.  The trimmed path gives the same
scores, beam lists, losses and gradients as the padded one (up to float rounding) on
data with mixed history lengths; training stays deterministic and resumes exactly."""

import numpy as np
import pandas as pd
import pytest
import torch

from sidkit.config import TrainConfig
from sidkit.data import Interactions, leave_one_out
from sidkit.eval import SequenceData, evaluate
from sidkit.eval.sequences import length_groups, real_spans
from sidkit.models import CausalSID, SASRec
from sidkit.types import Codes

from _training import StopTraining, stop_after_epoch, without_times

N_ITEMS = 30


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def small_groups(monkeypatch):
    """Tiny batches: a low fixed cost per group, so that the batches really split into
    several trimmed groups (the default cost model keeps batches this small in one group,
    trimmed to its widest row)."""
    from sidkit.models.torch_base import TorchRecommender

    monkeypatch.setattr(TorchRecommender, "group_overhead", 2.0)
    monkeypatch.setattr(CausalSID, "beam_group_overhead", 2.0)


def mixed_data(n_users=60, n_items=N_ITEMS, seed=0):
    """Users walk the item cycle (next item = successor) with histories of 4 to 30 items:
    short and long rows in every batch."""
    rng = np.random.default_rng(seed)
    ids = [f"i{k:02d}" for k in range(n_items)]
    rows = []
    for u in range(n_users):
        start, length = int(rng.integers(n_items)), int(rng.integers(4, 31))
        rows += [(f"u{u:02d}", ids[(start + t) % n_items], t) for t in range(length)]
    return SequenceData.from_split(leave_one_out(Interactions(pd.DataFrame(
        rows, columns=["user_id", "item_id", "timestamp"]))))


def toy_codes(n_items=N_ITEMS, variable=False):
    """2-level SIDs (i // 6, i % 6) of items i00..; ``variable``: i05 gets the short SID
    (5,) (no other SID starts with 5), written with an END token."""
    i = np.arange(n_items)
    codes = np.stack([i // 6, i % 6], 1)
    lengths = None
    if variable:
        codes[5] = [5, -1]
        lengths = np.where(i == 5, 1, 2)
    return Codes(codes, (6, 6), lengths=lengths, item_ids=np.array([f"i{k:02d}" for k in i]))


def _grads(module):
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in module.named_parameters()}


def _both_paths(model, fn):
    """``fn()`` with the trimmed path, then with the padded one (``trim_padding = False``)."""
    model.trim_padding = True
    a = fn()
    model.trim_padding = False
    try:
        b = fn()
    finally:
        model.trim_padding = True
    return a, b


# ------------------------------------------------------------------ the grouping
def test_real_spans_numpy_and_torch():
    t = np.array([[0, 0, 3, 4], [0, 0, 0, 0], [5, 0, 0, 6], [0, 7, 0, 0]])
    assert real_spans(t).tolist() == [2, 0, 4, 3]
    assert real_spans(torch.as_tensor(t)).tolist() == [2, 0, 4, 3]
    assert real_spans(t > 0).tolist() == [2, 0, 4, 3]             # a boolean mask of real cells


def _brute_cost(spans, overhead, quadratic):
    """The least modelled cost over every split of the sorted distinct spans into runs."""
    vals = np.unique(spans)
    best = np.inf
    for mask in range(1 << (len(vals) - 1)):
        cost, lo = 0.0, 0
        for j in range(len(vals)):
            if j == len(vals) - 1 or mask >> j & 1:
                n = ((spans >= vals[lo]) & (spans <= vals[j])).sum()
                cost += overhead + n * (vals[j] + quadratic * vals[j] ** 2)
                lo = j + 1
        best = min(best, cost)
    return best


@pytest.mark.parametrize("overhead", [0.0, 3.0, 40.0, 1e9])
def test_length_groups_cover_every_row_once_at_least_its_span_and_minimise_the_cost(overhead):
    rng = np.random.default_rng(1)
    for _ in range(20):
        spans = rng.integers(0, 12, rng.integers(1, 40))
        groups = length_groups(spans, overhead=overhead, quadratic=0.05)
        rows = np.concatenate([r for r, _ in groups])
        assert sorted(rows.tolist()) == list(range(len(spans)))
        widths = [w for _, w in groups]
        assert widths == sorted(widths) and len(set(widths)) == len(widths)
        for r, w in groups:
            assert (np.maximum(spans[r], 1) <= w).all() and np.all(np.diff(r) > 0)
            assert w == max(1, spans[r].max())
        cost = sum(overhead + len(r) * (w + 0.05 * w ** 2) for r, w in groups)
        assert cost == pytest.approx(_brute_cost(np.maximum(spans, 1), overhead, 0.05))
    assert len(length_groups([5, 1, 5, 3], overhead=0.0)) == 3            # one group per distinct span
    assert length_groups([5, 1, 5, 3], overhead=float("inf"))[0][1] == 5  # one group, the widest row
    assert length_groups([], overhead=1.0) == []
    assert length_groups([0, 0], overhead=1.0)[0][1] == 1                 # all-pad rows keep a column


# ------------------------------------------------------------------ SASRec
SAS = {"hidden": 16, "n_blocks": 2, "n_heads": 2, "max_len": 12, "dropout": 0.0}


def _sasrec(data, **params):
    m = SASRec(**{**SAS, **params})
    m._set_catalogue(data)
    m.device_ = torch.device("cpu")
    torch.manual_seed(0)
    m.module_ = m.build_module(data.n_items)
    return m


def test_sasrec_batches_really_split_into_trimmed_groups():
    data = mixed_data()
    m = _sasrec(data)
    x, y = (torch.as_tensor(a) for a in m.train_arrays(data))
    groups = m.length_groups(x, y)
    assert len(groups) > 1 and min(w for _, w in groups) < x.shape[1]
    hist = data.eval_inputs("valid", m.max_len)["history"]
    assert len(m.length_groups(torch.as_tensor(hist))) > 1


def test_the_default_cost_model_trims_a_small_batch_to_its_widest_row():
    m = SASRec(max_len=12)
    hist = np.zeros((4, 12), np.int64)
    hist[0, -5:], hist[1, -2:] = 3, 4
    m.group_overhead = 200.0                      # the default, patched for the other tests
    assert m.length_groups(hist) == [(None, 5)]
    assert m.length_groups(torch.as_tensor(hist)) == [(None, 5)]
    m.trim_padding = False
    assert m.length_groups(hist) == [(None, 12)]


def test_sasrec_scores_equal_the_padded_path():
    data = mixed_data()
    m = _sasrec(data, dropout=0.3)
    for role in ("valid", "test"):
        hist = data.eval_inputs(role, m.max_len)["history"]
        a, b = _both_paths(m, lambda: m.score(hist))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        # longer histories than max_len and an all-pad row
        wide = np.hstack([np.zeros((len(hist), 5), np.int64), hist])
        wide[0] = 0
        a, b = _both_paths(m, lambda: m.score(wide))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        ra, rb = _both_paths(m, lambda: evaluate(m, data, role, return_ranks=True)["ranks"])
        np.testing.assert_array_equal(ra, rb)


@pytest.mark.parametrize("fused", [True, False])
def test_sasrec_loss_and_gradients_equal_the_padded_path(fused):
    data = mixed_data()
    m = _sasrec(data)
    m.fused_loss = fused
    x, y = (torch.as_tensor(a) for a in m.train_arrays(data))
    m.module_.train()

    def loss_and_grads():
        m.module_.zero_grad()
        loss = m.train_loss(m.module_, x, y)
        loss.backward()
        return loss.detach(), _grads(m.module_)

    (la, ga), (lb, gb) = _both_paths(m, loss_and_grads)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6, msg=k)


def test_sasrec_fused_loss_equals_cross_entropy():
    data = mixed_data()
    m = _sasrec(data)
    x, y = (torch.as_tensor(a) for a in m.train_arrays(data))
    m.module_.train()
    out = {}
    for fused in (True, False):
        m.fused_loss = fused
        m.module_.zero_grad()
        loss = m.train_loss(m.module_, x, y) * 3.0          # a scaled loss scales the gradients
        loss.backward()
        out[fused] = loss.detach(), _grads(m.module_)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    for k in out[True][1]:
        torch.testing.assert_close(out[True][1][k], out[False][1][k], rtol=1e-4, atol=1e-6, msg=k)


def _fit_both(cls, data, params, train, **kw):
    out = []
    for trim in (True, False):
        m = cls(**params)
        m.trim_padding = trim
        if hasattr(m, "fused_loss"):
            m.fused_loss = trim
        out.append(m.fit(data, train=train, seed=0, device="cpu", progress=False, **kw))
    return out


def _assert_same_training(a, b, rtol=1e-4, atol=1e-5):
    """Equal losses, validation figures and weights up to float rounding.  The key bias
    of each attention layer is left out: it adds the same term to every score of a query,
    so its true gradient is 0 and AdamW's normalised step turns the rounding noise of
    that 0 into lr-sized moves, different in the two paths (they change no output)."""
    assert len(a.history_) == len(b.history_)
    for ha, hb in zip(a.history_, b.history_):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=rtol)
        if "valid" in ha:
            assert ha["valid"]["ndcg@10"] == pytest.approx(hb["valid"]["ndcg@10"], abs=1e-6)
    sa, sb = a._state(), b._state()
    D = a.hidden
    for k in sa:
        x, y = sa[k], sb[k]
        if k.endswith("qkv.bias"):
            x, y = np.r_[x[:D], x[2 * D:]], np.r_[y[:D], y[2 * D:]]
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=k)


def test_sasrec_training_without_dropout_equals_the_padded_path():
    data = mixed_data()
    a, b = _fit_both(SASRec, data, SAS, TrainConfig(epochs=3, lr=5e-3, warmup_steps=2, batch_size=16))
    _assert_same_training(a, b)


def test_sasrec_trimmed_training_is_deterministic_and_resumes_exactly(tmp_path):
    data = mixed_data(n_users=40)
    params = {**SAS, "dropout": 0.3}
    train = TrainConfig(epochs=3, lr=5e-3, warmup_steps=2, batch_size=8)
    full = SASRec(**params).fit(data, train=train, seed=3, device="cpu", progress=False)
    again = SASRec(**params).fit(data, train=train, seed=3, device="cpu", progress=False)
    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        SASRec(**params).fit(data, train=train, seed=3, device="cpu", progress=False, checkpoint_dir=ck,
                             callbacks=[stop_after_epoch(1)])
    resumed = SASRec(**params).fit(data, train=train, seed=3, device="cpu", progress=False, checkpoint_dir=ck)
    for other in (again, resumed):
        a, b = full._state(), other._state()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert without_times(full.history_) == without_times(other.history_)


# ------------------------------------------------------------------ causal SID
CAUSAL = {"hidden": 32, "n_layers": 2, "n_heads": 2, "max_len": 10, "dropout": 0.0, "beam": 12}


def _causal(data, variable=False, **params):
    from sidkit.models.sid_tokens import SIDTokens

    m = CausalSID(**{**CAUSAL, **params})
    m.tokens_ = SIDTokens.from_codes(toy_codes(variable=variable), item_ids=data.item_ids)
    m._set_catalogue(data)
    m.device_ = torch.device("cpu")
    torch.manual_seed(0)
    m.module_ = m.build_module(data.n_items)
    return m


def test_causal_batches_really_split_into_trimmed_groups():
    data = mixed_data()
    m = _causal(data)
    x, y = (torch.as_tensor(a) for a in m.train_arrays(data))
    assert len(m.length_groups(x, y >= 0)) > 1
    grid = m._history_grid(data.eval_inputs("valid", m.max_len)["history"])
    assert len(m.length_groups(grid, overhead=m.beam_group_overhead)) > 1


@pytest.mark.parametrize("variable", [False, True])
def test_causal_beam_lists_equal_the_padded_path(variable):
    data = mixed_data()
    m = _causal(data, variable=variable, dropout=0.3)
    m.beam_group_overhead = 0.0                  # as many groups as distinct lengths
    assert len(m.length_groups(m._history_grid(data.eval_inputs("test", m.max_len)["history"]),
                               overhead=0.0)) > 5
    for role in ("valid", "test"):
        inp = data.eval_inputs(role, m.max_len)
        hist = inp["history"]
        a, b = _both_paths(m, lambda: m.decode(hist, 10))
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.sids, b.sids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
        # with seen items excluded inside the beam (numpy and torch masks), and through evaluate
        ex = np.zeros((len(hist), data.n_items), bool)
        rows = np.repeat(np.arange(len(hist)), (hist > 0).sum(1))
        ex[rows, hist[hist > 0] - 1] = True
        for mask in (ex, torch.as_tensor(ex)):
            a, b = _both_paths(m, lambda: m.decode(hist, 10, exclude=mask))
            np.testing.assert_array_equal(a.items, b.items)
            assert not ex[np.arange(len(hist))[:, None], np.maximum(a.items, 0)][a.items >= 0].any()
        ra, rb = _both_paths(m, lambda: evaluate(m, data, role, mask_seen=True, return_ranks=True)["ranks"])
        np.testing.assert_array_equal(ra, rb)
    # an all-pad history and one short row
    odd = np.zeros((2, m.max_len), np.int64)
    odd[1, -1] = 4
    a, b = _both_paths(m, lambda: m.decode(odd, 10))
    np.testing.assert_array_equal(a.items, b.items)


@pytest.mark.parametrize("variable", [False, True])
def test_causal_loss_and_gradients_equal_the_padded_path(variable):
    data = mixed_data()
    m = _causal(data, variable=variable)
    x, y = (torch.as_tensor(a) for a in m.train_arrays(data))
    m.module_.train()

    def loss_and_grads():
        m.module_.zero_grad()
        loss = m.train_loss(m.module_, x, y)
        loss.backward()
        return loss.detach(), _grads(m.module_)

    (la, ga), (lb, gb) = _both_paths(m, loss_and_grads)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6, msg=k)


def test_causal_training_without_dropout_equals_the_padded_path():
    data = mixed_data()
    a, b = _fit_both(CausalSID, data, CAUSAL, TrainConfig(epochs=3, lr=5e-3, warmup_steps=2, batch_size=16),
                     codes=toy_codes())
    _assert_same_training(a, b)
    hist = data.eval_inputs("test", a.max_len)["history"]
    np.testing.assert_array_equal(a.recommend(hist, 10), b.recommend(hist, 10))


def test_causal_trimmed_training_is_deterministic_and_resumes_exactly(tmp_path):
    data = mixed_data(n_users=40)
    params = {**CAUSAL, "dropout": 0.3}
    kw = dict(codes=toy_codes(), train=TrainConfig(epochs=3, lr=5e-3, warmup_steps=2, batch_size=8),
              seed=3, device="cpu", progress=False)
    full = CausalSID(**params).fit(data, **kw)
    again = CausalSID(**params).fit(data, **kw)
    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        CausalSID(**params).fit(data, checkpoint_dir=ck, callbacks=[stop_after_epoch(1)], **kw)
    resumed = CausalSID(**params).fit(data, checkpoint_dir=ck, **kw)
    for other in (again, resumed):
        a, b = full._state(), other._state()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert without_times(full.history_) == without_times(other.history_)


# ------------------------------------------------------------------ with dropout
@pytest.mark.parametrize("cls", [SASRec, CausalSID])
def test_with_dropout_the_trimmed_path_trains_as_well_as_the_padded_one(cls):
    """The batches are the same in both paths, but dropout masks are drawn over the
    trimmed tensors, so a seed's random stream -- and its trajectory -- differs from the
    padded path's.  Over seeds, both paths reach the same validation NDCG@10 within the
    seed spread."""
    data = mixed_data(n_users=80, seed=1)
    params, kw = ({**SAS, "dropout": 0.3}, {}) if cls is SASRec else ({**CAUSAL, "dropout": 0.3},
                                                                       {"codes": toy_codes()})
    train = TrainConfig(epochs=4, lr=3e-3, warmup_steps=2, batch_size=16, eval_every=4)
    ndcg = {}
    for trim in (True, False):
        ndcg[trim] = []
        for seed in range(3):
            m = cls(**params)
            m.trim_padding = trim
            if hasattr(m, "fused_loss"):
                m.fused_loss = trim
            m.fit(data, train=train, seed=seed, device="cpu", progress=False, **kw)
            ndcg[trim].append(m.history_[-1]["valid"]["ndcg@10"])
    a, b = np.array(ndcg[True]), np.array(ndcg[False])
    assert not np.array_equal(a, b)                       # the random streams do differ
    spread = max(a.std(ddof=1), b.std(ddof=1))
    assert abs(a.mean() - b.mean()) <= 2 * spread + 0.02, (a, b)
    assert a.mean() > 0.3 and b.mean() > 0.3              # both learn the cycle
