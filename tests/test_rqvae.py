"""RQ-VAE (TIGER recipe): training, codebook usage, save/load, errors."""

import numpy as np
import pytest

from sidkit.errors import DataError
from sidkit.tokenizers.base import Tokenizer
from sidkit.tokenizers.rqvae import RQVAE


def _clustered(n=1200, d=24, k=16, seed=0):
    centers = np.random.default_rng(0).normal(size=(k, d)).astype(np.float32) * 2.0
    rs = np.random.default_rng(seed)  # new items from the same clusters
    return (centers[rs.integers(0, k, n)] + 0.3 * rs.normal(size=(n, d))).astype(np.float32)


SMALL = dict(codebook_sizes=[16, 16, 16], hidden_sizes=(64, 32), latent_dim=8, epochs=12,
             batch_size=200, lr=5e-3, device="cpu")


@pytest.fixture(scope="module")
def fitted():
    X = _clustered(n=800)
    return X, RQVAE(**SMALL).fit(X)


def test_loss_decreases_and_usage_floor(fitted):
    X, m = fitted
    h = m.history_
    assert h[-1]["recon"] < 0.7 * h[0]["recon"]
    assert h[-1]["loss"] < h[0]["loss"]
    # k-means init + dead-code reset keep most codewords alive on every level
    for u in m.usage_:
        assert u["usage"] >= 0.6, m.usage_
        assert u["perplexity"] > 4
    codes = m.encode(X)
    assert codes.codes.shape == (len(X), 4) and codes.method == "rqvae"
    assert codes.collision_rule == "extra_level" and not codes.has_collisions()
    raw = RQVAE(**{**SMALL, "resolve_collisions": False})
    raw.__dict__.update({k: v for k, v in m.__dict__.items() if k.endswith("_")})
    assert raw.encode(X).codes.shape == (len(X), 3)
    np.testing.assert_array_equal(raw.encode(X).codes, codes.codes[:, :3])


def test_decode_beats_mean_and_save_load(fitted, tmp_path):
    X, m = fitted
    Xh = m.decode(m.encode(X))
    assert Xh.shape == X.shape and Xh.dtype == np.float32
    assert ((Xh - X) ** 2).mean() < 0.5 * ((X - X.mean(0)) ** 2).mean()
    m.save(tmp_path / "t")
    m2 = Tokenizer.load(tmp_path / "t")
    np.testing.assert_array_equal(m2.encode(X).codes, m.encode(X).codes)
    np.testing.assert_allclose(m2.decode(m.encode(X)), Xh, atol=1e-5)
    assert m2.history_ == m.history_


def test_deterministic_and_unseen():
    X = _clustered(n=600)
    kw = {**SMALL, "epochs": 3}
    a, b = RQVAE(**kw).fit(X), RQVAE(**kw).fit(X)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    new = _clustered(n=50, seed=5)
    np.testing.assert_array_equal(a.encode(new).codes, b.encode(new).codes)


def test_resolve_collisions_and_early_stop():
    X = _clustered(n=600)
    m = RQVAE(**{**SMALL, "codebook_sizes": [4, 4], "epochs": 200, "patience": 2, "tol": 0.5}).fit(X)
    assert m.n_epochs_ < 200  # early stopping on the reconstruction loss
    c = m.encode(X)
    assert c.collision_rule == "extra_level" and not c.has_collisions()
    assert c.n_levels == 3
    assert m.decode(c).shape == X.shape
    # cold start: new items never collide with the catalogue
    new = m.encode_new(_clustered(n=30, seed=9))
    both = np.concatenate([c.codes, new.codes])
    assert len(np.unique(both, axis=0)) == len(both)


def test_default_sizes_and_errors():
    X = _clustered(n=300)
    m = RQVAE(hidden_sizes=(16,), latent_dim=4, epochs=1, device="cpu").fit(X)
    assert tuple(m.codebook_sizes_) == (80, 80, 80)     # the sizing rule: 300 / 4 -> a multiple of 8
    with pytest.raises(DataError, match="X has 5 items but the largest codebook has 16 codewords"):
        RQVAE(**SMALL).fit(X[:5])  # fewer items than codewords
    with pytest.raises(DataError, match=r"NaN or inf values in 100 row\(s\), first at row 0"):
        RQVAE(**SMALL).fit(np.full((100, 4), np.nan))
    with pytest.raises(DataError, match="X has 7 features but the tokenizer was fitted on 24"):
        m.encode(np.zeros((3, 7), np.float32))  # wrong dimension
    with pytest.raises(DataError, match="epochs=0 is invalid: must be an integer >= 1"):
        RQVAE(epochs=0).fit(X)
    with pytest.raises(DataError, match=r"token 10000 at level 0 is outside 0\.\.79"):
        m.decode(np.full((1, 3), 10_000))


def test_auto_batch_size_gives_small_catalogues_enough_steps():
    from sidkit.tokenizers.rqvae import auto_batch_size
    assert auto_batch_size(1682) == 105      # 16 steps an epoch, not 2
    assert auto_batch_size(500) == 64
    assert auto_batch_size(40) == 40         # never more than the items
    assert auto_batch_size(10**6) == 1024


@pytest.mark.parametrize("n, batch_size", [(1025, 1024), (16 * 1024 + 1, None)])
def test_dead_code_reset_never_makes_nan_codewords(n, batch_size):
    """N mod batch = 1: the last mini-batch holds one residual.  Resetting dead codes
    from it alone gave NaN codewords (std of one row) and one token per level."""
    X = _clustered(n=n, d=16, k=32, seed=1)
    m = RQVAE(codebook_sizes=[32, 32, 32], hidden_sizes=(32,), latent_dim=8, epochs=2,
              batch_size=batch_size, lr=5e-3, patience=0, device="cpu").fit(X)
    assert (batch_size or 1024) == 1024 and n % 1024 == 1
    assert np.isfinite(m.codebooks_).all() and np.isfinite(m.weights_).all()
    assert sum(h["dead_reset"] for h in m.history_) > 0  # the reset path ran
    for u in m.usage_:  # 32 clusters: every level keeps many codes in use
        assert u["perplexity"] > 8 and u["used"] >= 16, m.usage_


def test_dead_code_reset_spreads_over_many_items():
    """Dead codes are reset onto distinct residuals of many items, not onto the 2
    items of a small last mini-batch."""
    import torch

    from sidkit.tokenizers.rqvae import _reset_codewords

    gen = torch.Generator().manual_seed(0)
    pool = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    new = _reset_codewords(pool, 10, gen)
    assert torch.isfinite(new).all()
    # 10 distinct source rows (noise is 1% of the spread, rows are 2 apart)
    assert len(np.unique(np.round(new.numpy()[:, 0] / 2))) == 10
    one = _reset_codewords(pool[:1], 3, gen)  # a single row: finite, near that row
    assert torch.isfinite(one).all() and float((one - pool[:1]).abs().max()) < 1e-3


def test_dead_codes_go_where_the_level_quantizes_worst():
    """k-means++ seeding: rows already on a codeword (zero error) are never picked."""
    import torch

    from sidkit.tokenizers.rqvae import _reset_codewords

    gen = torch.Generator().manual_seed(0)
    pool = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    book = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    for _ in range(5):
        new = _reset_codewords(pool, 2, gen, codebook=book)
        far = {tuple(np.round(r).astype(int)) for r in new.numpy()}
        assert far == {(5, 5), (-5, 5)}
    # fewer rows with an error than dead codes: uniform over the pool, still finite
    new = _reset_codewords(pool[:3], 2, gen, codebook=book)
    assert torch.isfinite(new).all()
