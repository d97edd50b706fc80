"""Cold-start evaluation (issue 25): the split keeps cold items out of every training and
validation input, the tokenizer never sees them, SID models take them through
``encode_new`` + ``add_items``, ID models score 0 on them by construction, content kNN and
TIGER's epsilon knob."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sidkit.config import TrainConfig
from sidkit.data import Interactions, leave_one_out
from sidkit.errors import DataError
from sidkit.eval import SequenceData
from sidkit.cold_start import (ColdShare, WarmOnly, check_no_cold_inputs, choose_cold_items, cold_start_metrics,
                                    cold_start_split, warm_and_cold_codes)
from sidkit.models import CausalSID, ContentKNN, Popularity, Recommender
from sidkit.models.catalogue import add_items

N_CLUSTERS, PER_CLUSTER, DIM = 4, 8, 16


def clustered(n_users=80, length=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(N_CLUSTERS, DIM)) * 4
    ids = [f"c{c}i{j}" for c in range(N_CLUSTERS) for j in range(PER_CLUSTER)]
    X = np.repeat(centers, PER_CLUSTER, 0) + rng.normal(size=(len(ids), DIM)) * 0.3
    rows = []
    for u in range(n_users):
        c = u % N_CLUSTERS
        for t in range(length):
            rows.append((f"u{u:02d}", f"c{c}i{int(rng.integers(PER_CLUSTER))}", 100 * t + u))
    split = leave_one_out(Interactions(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])))
    return split, np.asarray(ids), X.astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    split, ids, X = clustered()
    cold = choose_cold_items(split, 0.2, seed=0)
    full, warm = cold_start_split(split, cold)
    return split, ids, X, cold, full, warm


def test_cold_items_never_appear_in_training_or_validation_inputs(setup):
    split, ids, X, cold, full, warm = setup
    assert len(cold) >= 1
    test_items = set(split.df.loc[split.df["role"] == "test", "item_id"])
    assert set(cold) <= test_items
    check_no_cold_inputs(full, cold)
    check_no_cold_inputs(warm, cold)
    with pytest.raises(AssertionError):                 # the original split has them in its inputs
        check_no_cold_inputs(split, cold)
    # every cold row left is a test target; the warm split holds none
    fdf = full.df[full.df["item_id"].isin(cold)]
    assert len(fdf) and (fdf["role"] == "test").all()
    assert not warm.df["item_id"].isin(cold).any()
    # catalogues: full = warm + cold
    fd, wd = SequenceData.from_split(full), SequenceData.from_split(warm)
    assert sorted(set(wd.item_ids) | set(cold)) == fd.item_ids.tolist()
    # the same draw for the same seed, another for another seed
    assert np.array_equal(cold, choose_cold_items(split, 0.2, seed=0))


def test_latest_rule_takes_the_items_that_first_appear_last():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "b", 4), ("u2", "a", 5), ("u2", "d", 9),
            ("u3", "a", 6), ("u3", "c", 7), ("u3", "b", 8)]
    split = leave_one_out(Interactions(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])))
    # test targets: c (u1, first seen at 3), d (u2, first seen at 9), b (u3, first seen at 2)
    assert choose_cold_items(split, 0.34, rule="latest").tolist() == ["d"]
    assert choose_cold_items(split, 0.67, rule="latest").tolist() == ["c", "d"]
    with pytest.raises(DataError, match="rule"):
        choose_cold_items(split, 0.3, rule="oldest")
    with pytest.raises(DataError, match="fraction"):
        choose_cold_items(split, 0.0)


def test_sid_model_recommends_cold_items_id_models_score_zero(setup):
    from sidkit.tokenizers import RQKMeans

    split, ids, X, cold, full, warm = setup
    tok = RQKMeans(codebook_sizes=[N_CLUSTERS, 4], resolve_collisions=True, random_state=0, device="cpu")
    warm_codes, cold_codes = warm_and_cold_codes(tok, ids, X, cold, headroom=4)
    assert set(warm_codes.item_ids) == set(ids) - set(cold)
    # the tokenizer never saw the cold items: their semantic tokens come from encode, and they are new
    assert set(map(str, cold_codes.item_ids)) == set(cold)
    wd, fd = SequenceData.from_split(warm), SequenceData.from_split(full)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train = TrainConfig(epochs=12, patience=12, lr=1e-2, warmup_steps=0, batch_size=32, eval_every=4)
        sid = CausalSID(hidden=32, n_layers=1, n_heads=2, max_len=6, dropout=0.0, beam=40).fit(
            wd, codes=warm_codes, train=train, seed=0, device="cpu", progress=False)
        ext = add_items(sid, cold_codes.item_ids, cold_codes)
        ext.check_catalogue(fd)
        res = cold_start_metrics(ext, fd, cold)
        assert res["n_cold"] >= 1 and res["n_warm"] >= 1
        # the SID model finds cold targets by their content SID (0.94 on this toy set)
        assert res["cold"]["recall@10"] > 0.5
        for part in ("cold", "warm", "all"):
            assert 0 <= res[part]["recall@10"] <= 1 and 0 <= res[part]["ndcg@10"] <= res[part]["recall@10"]
        # epsilon = 0: no cold item in any list, so 0 on cold targets
        capped = cold_start_metrics(ColdShare(ext, cold, epsilon=0.0, pool=40), fd, cold)
        assert capped["cold"]["recall@10"] == 0.0
        hist = fd.eval_inputs("test", 6)["history"]
        lists = ColdShare(ext, cold, epsilon=0.2, pool=40).recommend(hist, 10)
        is_cold = np.isin(ext.item_ids_[np.maximum(lists, 0)], cold) & (lists >= 0)
        assert (is_cold.sum(1) <= 2).all()
        lists1 = ColdShare(ext, cold, epsilon=1.0, pool=40).recommend(hist, 10)
        assert np.array_equal(lists1, ext.recommend(hist, 10))       # epsilon = 1: the model's own list
        # ID models trained on the warm split: exactly 0 on cold targets
        pop = WarmOnly(Popularity().fit(wd), fd)
        pres = cold_start_metrics(pop, fd, cold)
        assert pres["cold"]["recall@10"] == 0.0 and pres["cold"]["ndcg@10"] == 0.0
        assert pres["warm"]["recall@10"] > 0
        # content kNN knows every item's content: cold targets are found (clustered content)
        knn = ContentKNN(max_len=6).fit(fd, embeddings=X[np.searchsorted(ids, fd.item_ids)])
        kres = cold_start_metrics(knn, fd, cold)
        assert kres["cold"]["recall@10"] > 0
    finally:
        torch.set_num_threads(old)


def test_content_knn_scores_and_save_load(setup, tmp_path):
    split, ids, X, cold, full, warm = setup
    fd = SequenceData.from_split(full)
    from sidkit.types import Embeddings

    knn = ContentKNN(max_len=6).fit(fd, embeddings=Embeddings(X, ids))
    hist = np.array([[0, 0, 1], [0, 0, 0]])
    s = knn.score(hist)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    i0 = int(np.searchsorted(ids, fd.item_ids[0]))
    assert np.allclose(s[0], unit[np.searchsorted(ids, fd.item_ids)] @ unit[i0], atol=1e-5)
    assert (s[1] == 0).all()                              # an empty history scores every item 0
    knn.save(tmp_path / "knn")
    back = Recommender.load(tmp_path / "knn")
    assert np.allclose(back.score(hist), s)
    with pytest.raises(DataError, match="NaN"):
        ContentKNN().fit(fd, embeddings=np.full((fd.n_items, 3), np.nan, np.float32))


# ------------------------------------------------------------------ a trained run: API, CLI and HTTP
def _trained_run(root, setup):
    """A run directory (the layout sidkit serve / add-items read) holding a causal SID model
    trained on the warm split, the RQ-KMeans tokenizer fit on the warm items (with room in
    its last level), and no cold item anywhere."""
    from sidkit.io import write_json
    from sidkit.tokenizers import RQKMeans

    split, ids, X, cold, full, warm = setup
    is_cold = np.isin(ids, cold)
    tok = RQKMeans(codebook_sizes=[N_CLUSTERS, 4], resolve_collisions=True, random_state=0, device="cpu")
    codes = tok.fit_encode(X[~is_cold]).replace(item_ids=ids[~is_cold])
    sizes = list(codes.codebook_sizes)
    sizes[-1] += 4
    codes = codes.replace(codebook_sizes=tuple(sizes))
    run = root / "run"
    tok.save(run / "codes" / "tokenizer")
    codes.save(run / "codes" / "codes")
    write_json(run / "embeddings" / "embeddings.json", {"source": "file", "dim": DIM})
    wd = SequenceData.from_split(warm)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train = TrainConfig(epochs=12, patience=12, lr=1e-2, warmup_steps=0, batch_size=32, eval_every=4)
        m = CausalSID(hidden=32, n_layers=1, n_heads=2, max_len=6, dropout=0.0, beam=20).fit(
            wd, codes=codes, train=train, seed=0, device="cpu", progress=False)
    finally:
        torch.set_num_threads(old)
    m.save(run / "recommender" / "models" / "causal_sid" / "seed-0")
    write_json(run / "recommender" / "metrics.json", {
        "labels": ["causal_sid"], "models": {"causal_sid": {"model": {"type": "causal_sid"}}},
        "records": [{"label": "causal_sid", "seed": 0, "tokenizer": "rqkmeans", "valid": {"ndcg@10": 0.0}}],
        "summary": {}})
    return run


def _cluster_of(item):
    return int(item[1])


def test_a_trained_run_recommends_new_items_that_match_the_history_cli_and_http(setup, tmp_path):
    """New items (never seen, content = a cluster's) are added through the CLI and through
    HTTP; for a history of cluster c, the new items of cluster c rank first among the new
    items (full beam over the whole catalogue): the model places them by their content SID.
    (Ahead of warm items of other clusters they are not always: their last, disambiguation
    token is one the model rarely saw after that prefix -- see docs/cold_start.md.)"""
    from typer.testing import CliRunner

    from sidkit.catalogue import load_run_model
    from sidkit.cli import app

    split, ids, X, cold, full, warm = setup
    run = _trained_run(tmp_path, setup)
    rng = np.random.default_rng(7)
    centers = np.stack([X[[_cluster_of(i) == c for i in ids]].mean(0) for c in range(N_CLUSTERS)])
    # CLI: one new item per cluster, content near the cluster's centre
    new_ids = [f"new{c}a" for c in range(N_CLUSTERS)]
    np.save(tmp_path / "x.npy", (centers + 0.1 * rng.normal(size=centers.shape)).astype(np.float32))
    (tmp_path / "new.csv").write_text("item_id\n" + "\n".join(new_ids) + "\n")
    res = CliRunner().invoke(app, ["add-items", str(run), str(tmp_path / "new.csv"), "--embeddings",
                                   str(tmp_path / "x.npy")])
    assert res.exit_code == 0, res.output
    m = load_run_model(run, "causal_sid", 0)
    warm_ids = [i for i in ids if i not in set(cold)]
    m.beam = m.n_items
    for c in range(N_CLUSTERS):
        mine = [i for i in warm_ids if _cluster_of(i) == c]
        hist = np.searchsorted(m.item_ids_, (mine * 2)[-6:]) + 1          # a full max_len history
        ranking = [str(m.item_ids_[i]) for i in m.recommend(hist[None, :], m.n_items)[0]]
        assert [i for i in ranking if i in new_ids][0] == f"new{c}a", (c, ranking)
    # HTTP: a second item per cluster, then /recommend
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sidkit.serve import create_app

    more = [f"new{c}b" for c in range(N_CLUSTERS)]
    E = centers + 0.1 * rng.normal(size=centers.shape)
    with TestClient(create_app(run, device="cpu", text_model="off")) as client:
        r = client.post("/items", json={"items": [{"item_id": i, "embedding": e.tolist()} for i, e in zip(more, E)]})
        assert r.status_code == 200, r.text
        for c in range(N_CLUSTERS):
            mine = [i for i in warm_ids if _cluster_of(i) == c]
            r = client.post("/recommend", json={"history": (mine * 2)[-6:], "k": 100, "beam": 100})
            ranking = [it["item_id"] for it in r.json()["items"]]
            assert [i for i in ranking if i in new_ids + more][0] in (f"new{c}a", f"new{c}b"), (c, ranking)
            assert f"new{c}b" in ranking                          # added over HTTP: in the trie


def _run_one_seed(setup, **model_extra):
    """run_cold_start on the toy at one thread: a 1-layer model, 2 epochs, epsilon 0 and 1."""
    from sidkit.cold_start import run_cold_start

    split, ids, X, cold, full, warm = setup
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cold_start(split, ids, X, seed=1, fraction=0.2, codebook_sizes=(N_CLUSTERS, 4), headroom=4,
                              model_params={"hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 6, "beam": 20,
                                            **model_extra},
                              train=TrainConfig(epochs=2, patience=2, warmup_steps=0, batch_size=32),
                              epsilons=(0.0, 1.0), pool=20, baselines=() if model_extra else
                              ("content_knn", "popularity"))
    finally:
        torch.set_num_threads(old)


def test_run_cold_start_one_seed_end_to_end(setup):
    out = _run_one_seed(setup)
    models = [(r["model"], r["epsilon"]) for r in out["rows"]]
    assert models == [("causal_sid", 0.0), ("causal_sid", 1.0), ("causal_sid_uniform_last", 0.0),
                      ("causal_sid_uniform_last", 1.0), ("content_knn", None), ("popularity", None)]
    by = {m: r for m, r in zip(models, out["rows"])}
    assert by[("causal_sid", 0.0)]["cold"]["recall@10"] == 0.0
    assert by[("causal_sid_uniform_last", 0.0)]["cold"]["recall@10"] == 0.0
    assert by[("popularity", None)]["cold"]["recall@10"] == 0.0
    assert out["n_cold_items"] >= 1


def test_run_cold_start_with_the_dense_hybrid_adds_the_whole_catalogue_dense_ranking(setup):
    out = _run_one_seed(setup, dense=0.5, rerank=8)
    models = [(r["model"], r["epsilon"]) for r in out["rows"]]
    assert models == [(m, e) for m in ("causal_sid_dense", "causal_sid_dense_uniform_last", "causal_sid_dense_all")
                      for e in (0.0, 1.0)]
    by = {m: r for m, r in zip(models, out["rows"])}
    for m in ("causal_sid_dense", "causal_sid_dense_all"):       # epsilon 0: never a cold item
        assert by[(m, 0.0)]["cold"]["recall@10"] == 0.0
        assert by[(m, 0.0)]["n_cold"] == by[(m, 1.0)]["n_cold"] >= 1


def _cap_reference(share, cand, k):
    """The ε cap as first written: a Python loop per user (the definition)."""
    out = np.full((cand.shape[0], k), -1, np.int64)
    for b, row in enumerate(cand):
        row = row[row >= 0]
        cold = share.cold_[row]
        taken, n_cold, skipped = [], 0, []
        for it, c in zip(row.tolist(), cold.tolist()):
            if len(taken) == k:
                break
            if c and n_cold + 1 > share.allowed(len(taken) + 1):
                skipped.append(it)
                continue
            taken.append(it)
            n_cold += int(c)
            while skipped and len(taken) < k and n_cold + 1 <= share.allowed(len(taken) + 1):
                taken.append(skipped.pop(0))
                n_cold += 1
        out[b, :len(taken)] = taken
    return out


class _Lists:
    """A stand-in generative model returning fixed candidate lists; records what it was asked."""

    def __init__(self, cand, n_items, rerank=0, beam=20):
        self.cand, self.rerank, self.beam, self.asked = cand, rerank, beam, []
        self.item_ids_ = np.array([f"i{i}" for i in range(n_items)])
        self.catalogue_hash_ = "x"

    def recommend(self, history, k, **kw):
        self.asked.append((k, self.beam))
        return self.cand[:, :k]


def test_cold_share_cap_equals_the_per_user_loop_on_random_lists():
    rng = np.random.default_rng(3)
    for trial in range(60):
        n_items, B, P = 40, int(rng.integers(1, 25)), int(rng.integers(1, 30))
        cand = np.stack([rng.permutation(n_items)[:P] for _ in range(B)])
        cand[rng.random((B, P)) < 0.1] = -1                       # missing slots
        cold = [f"i{i}" for i in np.flatnonzero(rng.random(n_items) < rng.uniform(0.1, 0.9))]
        k = int(rng.integers(1, 25))
        eps = float(rng.choice([0.0, 0.1, 0.2, 0.35, 0.5, 0.9]))
        share = ColdShare(_Lists(cand, n_items), cold, epsilon=eps, k_cap=int(rng.integers(1, 12)), pool=P)
        np.testing.assert_array_equal(share._cap(cand, k), _cap_reference(share, cand, k),
                                      err_msg=f"trial {trial}: eps {eps}, k {k}, k_cap {share.k_cap}")


def test_cold_share_asks_a_reranking_model_for_its_own_candidate_budget():
    cand = np.tile(np.arange(60), (2, 1))
    plain = _Lists(cand, 60, rerank=0, beam=20)
    ColdShare(plain, ["i1"], epsilon=0.2, pool=50).recommend(np.zeros((2, 3), np.int64), 10)
    assert plain.asked == [(50, 50)]                 # a beam of the pool, as before
    rer = _Lists(cand, 60, rerank=20, beam=20)
    out = ColdShare(rer, ["i1"], epsilon=0.2, pool=50).recommend(np.zeros((2, 3), np.int64), 10)
    assert rer.asked == [(20, 20)]                   # the model's own 20 candidates, its own beam
    assert rer.beam == 20 and out.shape == (2, 10)
    dense_all = _Lists(cand, 60, rerank="all", beam=20)
    ColdShare(dense_all, ["i1"], epsilon=0.2, pool=50).recommend(np.zeros((2, 3), np.int64), 10)
    assert dense_all.asked == [(50, 50)]             # the whole-catalogue ranking: a deeper list of it
