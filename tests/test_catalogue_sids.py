"""encode is batch-independent: catalogue items keep their catalogue SID whatever the
batch (alone, permuted, with float noise); new items get SIDs no catalogue item holds
(collisions.CatalogueIndex + catalogue_codes, used by every tokenizer)."""

import numpy as np
import pytest

from sidkit.tokenizers import GAOQ, DRQ, RQVAE, HierarchicalKMeans, RQKMeans
from sidkit.tokenizers.base import Tokenizer
from sidkit.tokenizers.collisions import MATCH_RTOL, CatalogueIndex, catalogue_codes
from sidkit.types import Codes


def _clustered(n=200, d=16, k=12, seed=0, noise=0.4):
    centers = np.random.default_rng(0).normal(size=(k, d)).astype(np.float32) * 2.0
    rs = np.random.default_rng(seed)
    return (centers[rs.integers(0, k, n)] + noise * rs.normal(size=(n, d))).astype(np.float32)


NET = dict(hidden_sizes=(32,), latent_dim=8, epochs=3, lr=5e-3, device="cpu")
MAKERS = {
    # small codebooks: many semantic collisions, so the disambiguation token matters
    "rqkmeans": lambda: RQKMeans(codebook_sizes=[4, 4], random_state=0),
    "rqkmeans-balanced": lambda: RQKMeans(codebook_sizes=[8, 4], balanced=True, random_state=0),
    "hkm": lambda: HierarchicalKMeans(codebook_sizes=[4, 3], random_state=0),
    "rqvae": lambda: RQVAE(codebook_sizes=[4, 4], **NET),
    "drq": lambda: DRQ(codebook_sizes=[4, 4], batch_size=64, **NET),
    "gaoq": lambda: GAOQ(device="cpu"),
}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def fitted(request):
    X = _clustered()
    tok = MAKERS[request.param]()
    fit_codes = tok.fit_encode(X)
    return request.param, X, tok, fit_codes


def test_catalogue_sids_whatever_the_batch(fitted):
    name, X, tok, fit_codes = fitted
    full = tok.encode(X).codes
    # the fit-time SIDs (balanced assignments included), all distinct
    np.testing.assert_array_equal(full, fit_codes.codes)
    assert len(np.unique(full, axis=0)) == len(X)
    assert len(np.unique(full[:, :-1], axis=0)) < len(X)  # semantic collisions exist
    # every item encoded alone
    alone = np.concatenate([tok.encode(X[i:i + 1]).codes for i in range(len(X))])
    np.testing.assert_array_equal(alone, full)
    # permuted batches and sub-batches
    perm = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_array_equal(tok.encode(X[perm]).codes, full[perm])
    np.testing.assert_array_equal(tok.encode(X[perm[:37]]).codes, full[perm[:37]])
    # float noise far below the catalogue's spread keeps every SID
    np.testing.assert_array_equal(tok.encode(X + np.float32(1e-6)).codes, full)
    jitter = np.random.default_rng(2).normal(size=X.shape).astype(np.float32) * 1e-5
    np.testing.assert_array_equal(tok.encode(X + jitter).codes, full)


def test_new_items_get_unused_sids(fitted):
    name, X, tok, fit_codes = fitted
    full = tok.encode(X).codes
    new = _clustered(n=60, seed=9)
    c_new = tok.encode(new)
    assert c_new.n_items == 60 and (c_new.codes >= 0).all()
    both = np.concatenate([full, c_new.codes])
    assert len(np.unique(both, axis=0)) == len(both)  # no clash with the catalogue or each other
    if name == "gaoq":
        assert c_new.params["n_unseen"] == 60 and c_new.collision_rule == "by_construction"
    else:
        assert c_new.collision_rule == "extra_level"
    # mixed with catalogue items: catalogue rows unchanged, new rows as alone
    mixed = tok.encode(np.concatenate([X[:10], new[:5]])).codes
    np.testing.assert_array_equal(mixed[:10], full[:10])
    # new items' extra token is beyond every catalogue token under the same prefix
    sem_cat = full[:, :-1]
    for row in c_new.codes[:10]:
        same = (sem_cat == row[:-1]).all(1)
        if same.any():
            assert row[-1] > full[same, -1].max()
    # encode does not record; encode_new does, and survives save/load
    np.testing.assert_array_equal(tok.encode(new).codes, c_new.codes)


def test_encode_new_records_items(tmp_path):
    X = _clustered()
    tok = RQKMeans(codebook_sizes=[4, 4], random_state=0).fit(X)
    new = _clustered(n=40, seed=5)
    a = tok.encode_new(new)
    np.testing.assert_array_equal(tok.encode(new).codes, a.codes)  # now catalogue items
    b = tok.encode(_clustered(n=40, seed=6))  # other new items avoid them too
    all_codes = np.concatenate([tok.encode(X).codes, a.codes, b.codes])
    assert len(np.unique(all_codes, axis=0)) == len(all_codes)
    tok.save(tmp_path / "t")
    again = Tokenizer.load(tmp_path / "t")
    np.testing.assert_array_equal(again.encode(new).codes, a.codes)
    np.testing.assert_array_equal(again.encode(X).codes, tok.encode(X).codes)


def test_exact_duplicates_keep_distinct_sids():
    X = _clustered(n=200)
    X[50] = X[7]
    X[51] = X[7]
    tok = RQKMeans(codebook_sizes=[4, 4], random_state=0)
    fit = tok.fit_encode(X).codes
    full = tok.encode(X).codes
    np.testing.assert_array_equal(full, fit)
    dup = fit[[7, 50, 51]]
    assert len(np.unique(dup, axis=0)) == 3
    # a duplicate alone gets one of the group's SIDs; repeats take them in turn
    one = tok.encode(X[50:51]).codes
    assert (one == dup).all(1).any()
    four = tok.encode(X[[7, 7, 7, 7]]).codes
    np.testing.assert_array_equal(four[:3], dup)
    np.testing.assert_array_equal(four[3], dup[0])


def test_catalogue_index_hand_made():
    # two routes, three items; item 2 far from item 1 on the same route
    X = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [4, 3, 0, 0]], np.float32)
    route = np.array([[0], [1], [1]])
    sids = np.array([[0, 0], [1, 0], [1, 1]])
    cat = CatalogueIndex().fit(X, route, sids, random_state=0)
    assert cat.prints_.shape == (3, 4) and cat.projection_.shape == (4, 4)
    np.testing.assert_allclose(cat.projection_.T @ cat.projection_, np.eye(4), atol=1e-6)
    spread = np.sqrt((cat.prints_.astype(np.float64) ** 2).sum(1).mean())
    assert cat.tol_[0] == pytest.approx(MATCH_RTOL * spread)
    tol = float(cat.tol_[0])
    q = np.array([X[2], X[1] + [0.5 * tol, 0, 0, 0], X[1] + [2 * tol, 0, 0, 0], X[0]], np.float32)
    # exact, within tolerance, outside tolerance, and a right row on the wrong route
    m = cat.match(q, np.array([[1], [1], [1], [1]]))
    np.testing.assert_array_equal(m, [2, 1, -1, -1])
    out, n_new = catalogue_codes(cat, Codes(np.array([[1], [1], [0]]), (2,)), q[[0, 2, 2]],
                                 disambiguate=True)
    # the new rows under route 1 get 2 and 3 (the catalogue holds 0 and 1)
    np.testing.assert_array_equal(out.codes, [[1, 1], [1, 2], [0, 1]])
    assert n_new == 2 and out.codebook_sizes[-1] == 3
