"""One conformance battery run on EVERY registered tokenizer (SPEC 9, LensKit-style).

Add small, fast constructor parameters for a new tokenizer to ``SMALL_PARAMS``;
tokenizers without an entry run with their defaults.
"""

import json
import re

import numpy as np
import pytest

import sidkit.tokenizers  # noqa: F401  (registers every tokenizer)
from sidkit.errors import DataError, NotFittedError
from sidkit.tokenizers import Tokenizer, available, get_tokenizer_class
from sidkit.tokenizers.base import check_params
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
    params = dict(SMALL_PARAMS.get(name, {}))
    unknown = set(params) - valid
    assert not unknown, f"SMALL_PARAMS[{name!r}] has keys {name} does not accept: {sorted(unknown)}"
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
def test_damaged_state_fails_at_load_not_later(name, X, fitted, tmp_path):
    """Each saved tensor missing, or cut to half its rows: Tokenizer.load raises an
    ArtifactError, or the loaded tokenizer still encodes and decodes (the tensor was
    cut consistently) -- never an IndexError/RuntimeError at first use."""
    from safetensors.numpy import load_file, save_file

    from sidkit.errors import ArtifactError

    tok, _ = fitted(name)
    tok.save(tmp_path / "ok")
    state = load_file(str(tmp_path / "ok" / "state.safetensors"))
    n_errors = 0
    for a in tok._state_attrs:
        for how in ("drop", "half"):
            t = dict(state)
            if how == "drop":
                del t[a]
            elif t[a].ndim and t[a].shape[0] >= 2:
                t[a] = np.ascontiguousarray(t[a][: t[a].shape[0] // 2])
            else:
                continue
            d = tmp_path / f"{a}-{how}"
            d.mkdir()
            (d / "tokenizer.json").write_bytes((tmp_path / "ok" / "tokenizer.json").read_bytes())
            save_file(t, str(d / "state.safetensors"))
            try:
                loaded = Tokenizer.load(d)
            except ArtifactError as e:
                assert str(d) in str(e) and "fix:" in str(e), str(e)
                n_errors += 1
                continue
            assert how == "half", f"{a} missing but the tokenizer loaded"
            check_valid(loaded.encode(X[:50]), 50)
            assert loaded.decode(loaded.encode(X[:50])).shape == (50, X.shape[1])
    assert n_errors >= len(tok._state_attrs)  # at least every drop


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
def test_deterministic(name, X, fitted, tmp_path):
    from sidkit.stages import output_hash

    tok, codes = fitted(name)
    again_tok = make(name)
    again = again_tok.fit_encode(X)
    assert np.array_equal(codes.codes, again.codes)
    # a refit with the same seed saves byte-identical files (no timings in the saved
    # state), so the pipeline's codes stage keeps its output hash
    tok.save(tmp_path / "a")
    again_tok.save(tmp_path / "b")
    assert output_hash(tmp_path / "a") == output_hash(tmp_path / "b")
    saved = (tmp_path / "a" / "tokenizer.json").read_text()
    assert "seconds" not in saved


def test_every_parameter_has_a_constraint():
    for name in NAMES:
        cls = get_tokenizer_class(name)
        table = cls._parameter_constraints
        assert set(cls._param_names()) == set(table), name
        for k, v in cls().get_params().items():  # the defaults are valid
            check_params(cls, {k: v})


#: (parameter, bad value, text the error must contain); each applies to the tokenizers
#: that take the parameter
BAD_PARAMS = [
    ("n_iter", 0, "n_iter=0"), ("n_iter", -3, "n_iter=-3"), ("n_iter", 2.5, "n_iter=2.5"),
    ("n_init", 0, "n_init=0"), ("n_levels", -1, "n_levels=-1"), ("n_levels", 0, "n_levels=0"),
    ("codebook_sizes", [8, 1], "codebook_sizes=[8, 1]"), ("codebook_sizes", [], "codebook_sizes=[]"),
    ("codebook_sizes", ["8", "8"], "codebook_sizes=['8', '8']"),
    ("codebook_size", 1, "codebook_size=1"), ("branching", [4, 0], "branching=[4, 0]"),
    ("n_anchors", [1, 1], "n_anchors=[1, 1]"),
    ("epochs", 0, "epochs=0"), ("lr", 0.0, "lr=0.0"), ("lr", -1e-3, "lr=-0.001"),
    ("batch_size", 0, "batch_size=0"), ("latent_dim", 0, "latent_dim=0"),
    ("hidden_sizes", [64, 0], "hidden_sizes=[64, 0]"), ("temperature", 0, "temperature=0"),
    ("balance_tolerance", 1.0, "balance_tolerance=1.0"), ("balanced", "yes", "balanced='yes'"),
    ("max_points_per_centroid", 0, "max_points_per_centroid=0"),
    ("random_state", -1, "random_state=-1"), ("device", "quantum", "device='quantum'"),
    ("patience", -1, "patience=-1"), ("weight_decay", float("nan"), "weight_decay=nan"),
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_parameters(name, X):
    cls = get_tokenizer_class(name)
    params = set(cls._param_names())
    cases = [c for c in BAD_PARAMS if c[0] in params]
    assert len(cases) >= 5, f"{name}: too few bad-parameter cases apply"
    for k in sorted(params):  # every parameter rejects a value of the wrong kind
        cases.append((k, "bogus", f"{k}='bogus'"))
    for k, v, text in cases:
        tok = make(name, **{k: v})
        with pytest.raises(DataError, match=re.escape(text)):
            tok.fit(X)
        assert not tok.is_fitted


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if "codebook_sizes" in get_tokenizer_class(n)._param_names()])
def test_n_levels_must_match_codebook_sizes(name, X):
    with pytest.raises(DataError, match=r"codebook_sizes=\[8, 8\] has 2 entries but n_levels=3"):
        make(name, codebook_sizes=[8, 8], n_levels=3).fit(X)


@pytest.mark.parametrize("name", NAMES)
def test_huge_values_are_rejected_not_collapsed(name, X):
    """Squared distances of values ~1e20 overflow float32: a clear error naming the max
    abs value, not a tokenizer that silently puts everything on two codewords."""
    with pytest.raises(DataError, match=r"values up to 9\.27e\+20 (.|\n)*rescale"):
        make(name).fit(X * np.float32(1e20))


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
