"""DRQ (seed 000): decoupled auto-encoder + RQ-KMeans, InfoNCE on co-engaged pairs."""

import numpy as np
import pytest

from sidkit.errors import DataError
from sidkit.tokenizers.base import Tokenizer
from sidkit.tokenizers.drq import DRQ, cooccurrence_pairs


def _clustered(n=1200, d=24, k=12, seed=0):
    centers = np.random.default_rng(0).normal(size=(k, d)).astype(np.float32) * 2.0
    rs = np.random.default_rng(seed)
    lab = rs.integers(0, k, n)
    return (centers[lab] + 0.3 * rs.normal(size=(n, d))).astype(np.float32), lab


SMALL = dict(codebook_sizes=[12, 8, 8], hidden_sizes=(64,), latent_dim=8, epochs=6,
             batch_size=256, lr=1e-2, device="cpu")


def test_cooccurrence_pairs():
    seqs = [np.array([0, 1, 2]), np.array([3]), np.array([4, 4, 5])]
    p = cooccurrence_pairs(seqs)
    assert p.tolist() == [[0, 1], [1, 2], [4, 5]]
    p2 = cooccurrence_pairs(seqs, window=2)
    assert sorted(map(tuple, p2.tolist())) == [(0, 1), (0, 2), (1, 2), (4, 5), (4, 5)]
    assert cooccurrence_pairs(seqs, window=2, unique=True).tolist() == [[0, 1], [0, 2], [1, 2], [4, 5]]
    flat = np.array([0, 1, 2, 3, 4, 4, 5])
    np.testing.assert_array_equal(cooccurrence_pairs(flat, lengths=[3, 1, 3]), p)
    assert cooccurrence_pairs([]).shape == (0, 2)
    with pytest.raises(DataError, match="window must be a positive integer, got 0"):
        cooccurrence_pairs(seqs, window=0)
    with pytest.raises(DataError, match="lengths sum to 4 but the flat sequence has 7 items"):
        cooccurrence_pairs(flat, lengths=[3, 1])


def test_decode_beats_mean_and_save_load(tmp_path):
    X, _ = _clustered()
    m = DRQ(**SMALL).fit(X)
    assert m.history_[-1]["recon"] < m.history_[0]["recon"]
    assert m.n_epochs_ == SMALL["epochs"]  # a decreasing loss never triggers early stopping
    c = m.encode(X)
    assert c.method == "drq" and c.collision_rule == "extra_level" and not c.has_collisions()
    Xh = m.decode(c)
    assert Xh.shape == X.shape
    assert ((Xh - X) ** 2).mean() < 0.5 * ((X - X.mean(0)) ** 2).mean()
    m.save(tmp_path / "d")
    m2 = Tokenizer.load(tmp_path / "d")
    new, _ = _clustered(n=40, seed=3)
    np.testing.assert_array_equal(m2.encode(new).codes, m.encode(new).codes)
    np.testing.assert_allclose(m2.decode(c), Xh, atol=1e-5)


def test_infonce_pulls_co_engaged_items_together():
    X, lab = _clustered(n=800)
    # behaviour links cluster 2j with cluster 2j+1, which content alone does not
    rs = np.random.default_rng(1)
    a = rs.integers(0, len(X), 4000)
    partner_cluster = lab[a] ^ 1
    pool = [np.flatnonzero(lab == k) for k in range(12)]
    b = np.array([rs.choice(pool[k]) for k in partner_cluster])
    pairs = np.stack([a, b], 1)
    kw = {**SMALL, "patience": 0}
    plain = DRQ(**kw).fit(X)
    beh = DRQ(**{**kw, "contrastive_weight": 1.0}).fit(X, pairs=pairs)

    def gap(m):
        Z = m.latent(X)
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
        co = (Z[a] * Z[b]).sum(1).mean()
        rnd = (Z[a] * Z[rs.permutation(b)]).sum(1).mean()
        return co, rnd

    co, rnd = gap(beh)
    co0, _ = gap(plain)
    assert co > rnd + 0.2
    assert co > co0 + 0.1
    assert beh.history_[-1]["infonce"] < beh.history_[0]["infonce"]


def test_balanced_deterministic_and_errors():
    X, _ = _clustered(n=600)
    kw = {**SMALL, "epochs": 3, "balanced": True}
    a = DRQ(**kw).fit_encode(X)
    b = DRQ(**kw).fit_encode(X)
    np.testing.assert_array_equal(a.codes, b.codes)
    sizes = np.bincount(a.codes[:, 0], minlength=12)
    assert sizes.max() <= np.ceil(1.1 * 600 / 12) and sizes.min() >= np.floor(0.9 * 600 / 12)
    m = DRQ(**kw)
    with pytest.raises(DataError, match=r"pairs reference rows outside 0\.\.599 \(min 0, max 600\)"):
        m.fit(X, pairs=np.array([[0, 600]]))
    with pytest.raises(DataError, match=r"pairs must be an \(M, 2\) .* got shape \(3,\)"):
        m.fit(X, pairs=np.array([0, 1, 2]))
    with pytest.raises(DataError, match=r"got 3-D shape \(600, 24, 1\)"):
        m.fit(X[:, :, None])
    with pytest.raises(DataError, match="temperature=0 is invalid: must be a number > 0"):
        DRQ(**{**kw, "temperature": 0}).fit(X)
