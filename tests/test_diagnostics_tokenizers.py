"""Fast diagnostics of HKM, GAOQ, RQ-VAE and DRQ on a small clustered toy: values,
not only "no collisions" (the ML-100K runs of these are in the slow suite)."""

from collections import Counter

import numpy as np
import pytest

from sidkit.diagnostics import diagnose
from sidkit.diagnostics.prefix import collisions
from sidkit.diagnostics.usage import semantic_codes
from sidkit.tokenizers import DRQ, GAOQ, RQVAE, HierarchicalKMeans


def _toy(n=600, d=16, k=8, seed=0):
    """8 well separated, equally likely clusters."""
    c = np.random.default_rng(0).normal(size=(k, d)).astype(np.float32) * 3.0
    rs = np.random.default_rng(seed)
    return (c[rs.integers(0, k, n)] + 0.5 * rs.normal(size=(n, d))).astype(np.float32)


NET = dict(hidden_sizes=(32,), latent_dim=8, epochs=12, lr=5e-3, batch_size=64, device="cpu")
MAKERS = {
    "hkm": lambda: HierarchicalKMeans(codebook_sizes=[8, 4, 4], random_state=0),
    "gaoq": lambda: GAOQ(branching=[8, 5], device="cpu"),
    "rqvae": lambda: RQVAE(codebook_sizes=[8, 8, 8], **NET),
    "drq": lambda: DRQ(codebook_sizes=[8, 8, 8], **NET),
}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def diagnosed(request):
    X = _toy()
    tok = MAKERS[request.param]()
    codes = tok.fit_encode(X)
    return request.param, X, tok, codes, diagnose(codes, X, tok, monte_carlo=False)


def test_usage_and_perplexity(diagnosed):
    name, X, tok, codes, rep = diagnosed
    sem = rep["meta"]["semantic_levels"]
    assert sem == (2 if name == "gaoq" else 3)
    first = rep["usage"][0]
    assert first["K"] == 8 and first["used"] == 8
    assert 7.0 <= first["perplexity"] <= 8.0  # the 8 equally likely clusters
    for u in rep["usage"][:sem]:
        assert u["used"] >= u["K"] // 2 and 0.5 * u["used"] <= u["perplexity"] <= u["used"]
        assert u["n"] == len(X)
        counts = np.bincount(codes.codes[:, u["level"] - 1], minlength=u["K"])
        assert u["max_count"] == counts.max() and u["used"] == (counts > 0).sum()


def test_fidelity_improves_with_every_level(diagnosed):
    name, X, tok, codes, rep = diagnosed
    fid = rep["fidelity"]
    rel = [lv["rel_mse"] for lv in fid["levels"]]
    assert len(rel) == rep["meta"]["semantic_levels"] and all(r is not None for r in rel)
    assert all(b < a for a, b in zip(rel, rel[1:])), rel
    assert 0.0 < rel[-1] < 0.1 and rel[0] < 0.3
    # the full-SID value is what decode gives
    Xh = tok.decode(codes)
    want = float(((Xh.astype(np.float64) - X) ** 2).sum() / (X.astype(np.float64) ** 2).sum())
    assert rel[-1] == pytest.approx(want, rel=1e-4)


def test_semantic_collisions_counted(diagnosed):
    name, X, tok, codes, rep = diagnosed
    # final SIDs: one item each (disambiguation token / GAOQ's leaf enumeration)
    assert rep["collisions"]["rate"] == 0.0 and rep["collisions"]["largest_group"] == 1
    sem = semantic_codes(codes)
    got = collisions(sem)
    groups = Counter(map(tuple, sem.codes.tolist()))
    assert got["n_unique"] == len(groups)
    assert got["largest_group"] == max(groups.values())
    assert got["share_in_collision"] == pytest.approx(
        sum(v for v in groups.values() if v > 1) / len(X))
    assert got["n_groups"] == sum(v > 1 for v in groups.values())
    assert got["largest_group"] > 1  # 600 items on these sizes must share semantic SIDs
    # the disambiguation token numbers each semantic group 0..size-1
    last = codes.codes[:, -1]
    for key, size in list(groups.items())[:20]:
        rows = (sem.codes == np.array(key)).all(1)
        assert sorted(last[rows]) == list(range(size))


def test_round_trip_encode_lookup_same_item(diagnosed):
    name, X, tok, codes, rep = diagnosed
    np.testing.assert_array_equal(codes.lookup(codes.codes), np.arange(len(X)))
    rows = np.arange(0, len(X), 20)
    again = np.concatenate([tok.encode(X[i:i + 1]).codes for i in rows])
    np.testing.assert_array_equal(codes.lookup(again), rows)
