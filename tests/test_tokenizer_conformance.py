"""One conformance battery run on EVERY registered tokenizer (SPEC 9, LensKit-style).

Add small, fast constructor parameters for a new tokenizer to ``SMALL_PARAMS``;
tokenizers without an entry run with their defaults.
"""

import json

import numpy as np
import pytest

import sidkit.tokenizers  # noqa: F401  (registers every tokenizer)
from sidkit.errors import DataError, NotFittedError
from sidkit.tokenizers import Tokenizer, available, get_tokenizer_class
from sidkit.types import PAD, Codes

SMALL_PARAMS: dict[str, dict] = {
    "vq": {"codebook_size": 8},
    "rqkmeans": {"codebook_sizes": [8, 8, 8]},
    "hkm": {"codebook_sizes": [4, 4, 4]},
    "rqvae": {"codebook_sizes": [8, 8, 8], "hidden_sizes": [64, 32], "latent_dim": 8,
              "epochs": 20, "batch_size": 128, "lr": 5e-3},
    "drq": {"codebook_sizes": [8, 8, 8], "hidden_sizes": [64], "latent_dim": 16, "epochs": 10,
            "batch_size": 128, "lr": 1e-2},
    "gaoq": {"branching": [4, 4]},
}

NAMES = available()


def make(name: str, **override) -> Tokenizer:
    cls = get_tokenizer_class(name)
    valid = set(cls._param_names())
    params = {k: v for k, v in SMALL_PARAMS.get(name, {}).items() if k in valid}
    if "random_state" in valid:
        params.setdefault("random_state", 0)
    if "device" in valid:
        params.setdefault("device", "cpu")
    params.update(override)
    return cls(**params)


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16)) * 3
    return (centers[rng.integers(10, size=400)] + rng.normal(size=(400, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(X):
    cache = {}

    def get(name):
        if name not in cache:
            tok = make(name)
            cache[name] = (tok, tok.fit_encode(X))
        return cache[name]

    return get


def check_valid(codes: Codes, n: int):
    assert isinstance(codes, Codes)
    assert codes.n_items == n and codes.codes.dtype == np.int64
    valid = np.arange(codes.n_levels)[None, :] < codes.lengths[:, None]
    ks = np.asarray(codes.codebook_sizes)[None, :]
    assert np.all(~valid | ((codes.codes >= 0) & (codes.codes < ks)))
    assert np.all(valid | (codes.codes == PAD))


def test_registry_has_the_kmeans_family():
    assert {"vq", "rqkmeans", "hkm"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name, X, fitted):
    tok, codes = fitted(name)
    check_valid(codes, len(X))
    assert codes.method == name
    if codes.collision_rule in ("extra_level", "by_construction"):
        assert not codes.has_collisions()
    Xh = tok.decode(codes)
    assert Xh.shape == X.shape
    err = ((X - Xh) ** 2).sum(1).mean()
    baseline = ((X - X.mean(0)) ** 2).sum(1).mean()
    assert err < baseline
    # decode also accepts the raw code array
    np.testing.assert_allclose(tok.decode(codes.codes), Xh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_identical(name, X, fitted, tmp_path):
    tok, _ = fitted(name)
    before = tok.encode(X)
    tok.save(tmp_path / name)
    loaded = Tokenizer.load(tmp_path / name)
    assert type(loaded) is type(tok)
    assert loaded.get_params() == json.loads(json.dumps(tok.get_params()))  # tuples -> lists
    after = loaded.encode(X)
    assert np.array_equal(before.codes, after.codes)
    assert np.array_equal(before.lengths, after.lengths)
    assert before.codebook_sizes == after.codebook_sizes
    np.testing.assert_allclose(loaded.decode(after), tok.decode(before), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_unseen_items(name, X, fitted):
    tok, _ = fitted(name)
    rng = np.random.default_rng(1)
    new = X[:25] + rng.normal(size=(25, X.shape[1])).astype(np.float32) * 0.5
    codes = tok.encode(new)
    check_valid(codes, 25)
    assert tok.decode(codes).shape == new.shape
    one = tok.encode(new[:1])
    check_valid(one, 1)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name, X, fitted):
    _, codes = fitted(name)
    again = make(name).fit_encode(X)
    assert np.array_equal(codes.codes, again.codes)


@pytest.mark.parametrize("name", NAMES)
def test_params_round_trip_and_not_fitted(name, X):
    tok = make(name)
    clone = type(tok)(**tok.get_params())
    assert clone.get_params() == tok.get_params()
    assert not tok.is_fitted
    with pytest.raises(NotFittedError):
        tok.encode(X)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name, X):
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        make(name).fit(bad)
    with pytest.raises(DataError, match="2-D"):
        make(name).fit(X[0])
    with pytest.raises(DataError, match="item"):
        make(name).fit(X[:2])  # fewer items than codewords
