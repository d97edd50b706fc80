"""The causal SID model: overfits a cyclic toy set, KV-cached decoding equals teacher
forcing, valid distinct items, save/load, wrong codes, ID-only variant."""

import numpy as np
import pandas as pd
import pytest
import torch

from sidkit.config import TrainConfig
from sidkit.data import Interactions, leave_one_out
from sidkit.errors import ArtifactError, DataError
from sidkit.eval import SequenceData, evaluate
from sidkit.models import CausalSID, Recommender
from sidkit.types import Codes

from _training import StopTraining, stop_after_epoch, without_times

N_ITEMS = 30
TINY = {"hidden": 32, "n_layers": 2, "n_heads": 2, "max_len": 6, "dropout": 0.0, "beam": 20}
TRAIN = TrainConfig(epochs=30, patience=30, lr=1e-2, warmup_steps=0, batch_size=32, eval_every=10)


def cyclic_data(n_items=N_ITEMS, n_users=40, length=12):
    """User u walks i00 -> i01 -> ... (cyclic) from item u % n_items."""
    ids = [f"i{k:02d}" for k in range(n_items)]
    rows = [(f"u{u:02d}", ids[(u + t) % n_items], t) for u in range(n_users) for t in range(length)]
    return SequenceData.from_split(leave_one_out(Interactions(pd.DataFrame(
        rows, columns=["user_id", "item_id", "timestamp"]))))


def toy_codes(n_items=N_ITEMS, variable=False):
    """2-level SIDs (i // 6, i % 6) of items i00..; rows deliberately in reverse order
    (the model must reorder them to the catalogue by item id)."""
    i = np.arange(n_items)[::-1]
    codes = np.stack([i // 6, i % 6], 1)
    lengths = None
    if variable:                       # item i05 gets the short SID (5,) (prefix 5 is free)
        keep = i != 5
        codes, i = codes[keep], i[keep]
        codes = np.vstack([codes, [[5, -1]]])       # i05 -> SID (5,) of length 1
        i = np.r_[i, 5]
        lengths = np.r_[np.full(len(i) - 1, 2), 1]
    return Codes(codes, (6, 6), lengths=lengths, item_ids=np.array([f"i{k:02d}" for k in i]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread (two threads on the shared 2-core machine were ~10x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def fitted(one_thread):
    data = cyclic_data()
    torch.manual_seed(0)
    model = CausalSID(**TINY).fit(data, codes=toy_codes(), train=TRAIN, seed=0, device="cpu", progress=False)
    return data, model


def test_overfits_cyclic_toy_set_to_recall_at_1(fitted):
    data, model = fitted
    for role in ("valid", "test"):
        res = evaluate(model, data, role, ks=(1, 5, 10))
        assert res["recall@1"] == 1.0, (role, res)
        assert res["invalid_rate"] == 0.0
    assert model.best_epoch_ >= 1 and model.history_[-1]["loss"] < 0.05


def test_recommend_distinct_valid_items(fitted):
    data, model = fitted
    hist = data.eval_inputs("test", model.max_len)["history"]
    for k in (1, 7, 20, N_ITEMS):
        top = model.recommend(hist, k)
        assert top.shape == (len(hist), k)
        assert (top >= 0).all() and (top < N_ITEMS).all()
        assert all(len(set(r)) == k for r in top.tolist())
    # more than the catalogue: every item once, then -1
    top = model.recommend(hist[:3], N_ITEMS + 4)
    assert (np.sort(top[:, :N_ITEMS], 1) == np.arange(N_ITEMS)).all() and (top[:, N_ITEMS:] == -1).all()
    # the next item of the cycle comes first, whatever the history length
    short = np.array([[0, 0, 0, 0, 0, 4], [0, 0, 0, 0, 28, 29]])     # tokens: last items i03, i28
    assert model.recommend(short, 1)[:, 0].tolist() == [4, 29]
    with pytest.raises(DataError, match="k must be"):
        model.recommend(hist, 0)


def test_kv_cached_beam_equals_teacher_forcing(fitted):
    """At full width (beam >= items) the beam scores are each item's summed log-prob
    under a plain forward pass of history grid + item tokens (no cache)."""
    data, model = fitted
    hist = np.vstack([data.eval_inputs("valid", model.max_len)["history"][:2],
                      [[0, 0, 0, 0, 0, 4], [0, 0, 0, 9, 3, 17]]])          # left padding is masked
    res = model.decode(hist, N_ITEMS, beam=N_ITEMS)
    module, tok = model.module_, model.tokens_
    grid = torch.as_tensor(model._history_grid(hist))
    with torch.no_grad():
        for b in range(len(hist)):
            seqs = torch.cat([grid[b].expand(N_ITEMS, -1), torch.as_tensor(tok.item_tokens[:, :-1])], 1)
            logp = torch.log_softmax(module.logits(module(seqs)[:, -tok.n_levels:]), -1)
            brute = logp.gather(2, torch.as_tensor(tok.item_tokens)[:, :, None]).sum((1, 2)).numpy()
            np.testing.assert_allclose(res.scores[b], brute[res.items[b]], rtol=1e-4, atol=1e-4)
            assert res.items[b].tolist() == np.argsort(-brute, kind="stable").tolist()


def test_save_load_round_trip(fitted, tmp_path):
    data, model = fitted
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]
    back = Recommender.load(tmp_path / "m")
    assert isinstance(back, CausalSID)
    np.testing.assert_array_equal(back.tokens_.item_tokens, model.tokens_.item_tokens)
    hist = data.eval_inputs("test", model.max_len)["history"]
    np.testing.assert_array_equal(back.recommend(hist, 20), model.recommend(hist, 20))
    assert evaluate(back, data, "test", ks=(1, 10))["recall@1"] == 1.0


def test_wrong_codes_are_clear_errors(tmp_path):
    data = cyclic_data()
    fit = dict(train=TrainConfig(epochs=1), device="cpu", progress=False)
    with pytest.raises(DataError, match="needs the Semantic IDs"):
        CausalSID(**TINY).fit(data, **fit)
    short = toy_codes(N_ITEMS - 2)                  # items i28, i29 have no SID
    with pytest.raises(DataError, match="2 catalogue item"):
        CausalSID(**TINY).fit(data, codes=short, **fit)
    other = Codes(np.stack([np.arange(N_ITEMS + 1) // 6, np.arange(N_ITEMS + 1) % 6], 1), (6, 6))
    with pytest.raises(DataError, match="no item ids"):
        CausalSID(**TINY).fit(data, codes=other, **fit)
    with pytest.raises(DataError, match="Codes artifact"):
        CausalSID(**TINY).fit(data, codes=np.zeros((N_ITEMS, 2), int), **fit)
    # a saved model used on another catalogue
    m = CausalSID(**TINY).fit(data, codes=toy_codes(), **fit)
    with pytest.raises(ArtifactError, match="another catalogue"):
        evaluate(m, cyclic_data(n_items=N_ITEMS + 1), "test")


def test_codes_from_a_path_and_variable_length_sids(tmp_path):
    data = cyclic_data()
    (tmp_path / "run" / "codes").mkdir(parents=True)
    toy_codes(variable=True).save(tmp_path / "run" / "codes" / "codes")      # as the codes stage writes it
    m = CausalSID(**{**TINY, "codes": str(tmp_path / "run" / "codes")}).fit(
        data, train=TrainConfig(epochs=2, warmup_steps=0), device="cpu", progress=False)
    assert m.tokens_.variable_length and m.tokens_.n_tokens[5] == 2     # SID (5,) + END
    hist = data.eval_inputs("test", m.max_len)["history"]
    top = m.recommend(hist, N_ITEMS)
    assert (np.sort(top, 1) == np.arange(N_ITEMS)).all()
    m.save(tmp_path / "m")
    np.testing.assert_array_equal(Recommender.load(tmp_path / "m").recommend(hist, 10), top[:, :10])


def test_id_only_variant_overfits():
    data = cyclic_data()
    m = CausalSID(**TINY, id_only=True).fit(data, train=TRAIN, seed=0, device="cpu", progress=False)
    assert m.tokens_.n_levels == 1 and m.tokens_.vocab_size == 3 + N_ITEMS
    assert evaluate(m, data, "test", ks=(1, 10))["recall@1"] == 1.0
    with pytest.raises(Exception, match="takes no codes"):
        CausalSID(id_only=True).fit(data, codes=toy_codes())


def test_config_builds_the_model():
    from pathlib import Path

    from sidkit.config import load_config
    from sidkit.recommender_stage import make_model

    cfg = load_config(Path(__file__).parents[1] / "configs" / "causal.toml")
    m = make_model(cfg.model)
    assert isinstance(m, CausalSID) and m.codes is None and m.beam == 20
    assert m.get_params() == {k: v for k, v in cfg.model.model_dump().items() if k not in ("type", "train", "label")}


def test_interrupt_and_resume_equals_an_uninterrupted_run(tmp_path):
    data = cyclic_data(n_users=24)
    params = {**TINY, "dropout": 0.3}
    kw = dict(codes=toy_codes(), train=TrainConfig(epochs=3, lr=5e-3, warmup_steps=3, batch_size=8),
              seed=3, device="cpu", progress=False)
    full = CausalSID(**params).fit(data, **kw)

    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        CausalSID(**params).fit(data, checkpoint_dir=ck, callbacks=[stop_after_epoch(1)], **kw)
    resumed = CausalSID(**params).fit(data, checkpoint_dir=ck, **kw)
    a, b = full._state(), resumed._state()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert without_times(full.history_) == without_times(resumed.history_) and len(full.history_) == 3
    hist = data.eval_inputs("test", full.max_len)["history"]
    np.testing.assert_array_equal(full.recommend(hist, 10), resumed.recommend(hist, 10))


def test_resume_with_other_codes_is_refused(tmp_path):
    """A checkpoint depends on the SIDs it was trained on: resuming it with other codes
    (same model and training config) is an error, not a silent mix."""
    data = cyclic_data(n_users=12)
    kw = dict(train=TrainConfig(epochs=2, lr=5e-3, warmup_steps=2, batch_size=8),
              seed=0, device="cpu", progress=False)

    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        CausalSID(**TINY).fit(data, codes=toy_codes(), checkpoint_dir=ck, callbacks=[stop_after_epoch(1)], **kw)
    c = toy_codes()
    other = Codes(c.codes[:, ::-1].copy(), (6, 6), item_ids=c.item_ids)   # same shape, other SIDs
    with pytest.raises(ArtifactError, match="another model config"):
        CausalSID(**TINY).fit(data, codes=other, checkpoint_dir=ck, **kw)
    resumed = CausalSID(**TINY).fit(data, codes=toy_codes(), checkpoint_dir=ck, **kw)
    assert len(resumed.history_) == 2


@pytest.mark.parametrize("hidden", [32, 128])
def test_untrained_model_is_near_uniform_and_does_not_echo_its_input(hidden):
    """Issue 10: the tied head over sqrt(hidden)-scaled input embeddings gave an
    untrained loss of ~10.5 nats (ln V ~ 4.5) and predicted the input token itself at
    every position.  At init the loss must be close to ln V and echoes rare."""
    data = cyclic_data()
    model = CausalSID(hidden=hidden, n_layers=2, n_heads=2, max_len=6, dropout=0.0)
    model.tokens_ = model._resolve_tokens(data, toy_codes())
    torch.manual_seed(0)
    module = model.build_module(data.n_items).eval()
    x, y = (torch.as_tensor(a) for a in model.train_arrays(data))
    with torch.no_grad():
        loss = float(model.train_loss(module, x, y))
        pred = module.logits(module(x)).argmax(-1)
    V = model.tokens_.vocab_size
    assert abs(loss - np.log(V)) < 1.5, (loss, np.log(V))
    real = x != 0
    echo = float((pred[real] == x[real]).float().mean())
    assert echo < 0.2, echo


def test_mask_seen_returns_full_lists_of_unseen_items(fitted):
    """A trained model with mask_seen: every user gets k valid items, none from their history,
    with the seen items removed inside the beam (not dropped from a fixed list)."""
    data, model = fitted
    inp = data.eval_inputs("test", model.max_len)
    hist = inp["history"]
    seen = np.zeros((len(hist), N_ITEMS), bool)
    rows = np.repeat(np.arange(len(hist)), np.diff(inp["seen_offsets"]))
    seen[rows, inp["seen_flat"] - 1] = True
    assert seen.sum(1).min() == seen.sum(1).max() == 11        # 11 of the 30 items seen by every user
    k = N_ITEMS - 11                                           # every unseen item
    top = model.recommend(hist, k, exclude=seen)
    assert (top >= 0).all() and all(len(set(r)) == k for r in top.tolist())
    assert not seen[np.arange(len(hist))[:, None], top].any()
    more = model.recommend(hist, k + 2, exclude=seen)           # beyond them: -1 slots only at the end
    np.testing.assert_array_equal(more[:, :k], top)
    assert (more[:, k:] == -1).all()
    # the plain beam would have spent slots on seen items: filtering it leaves holes
    plain = model.recommend(hist, k)
    assert seen[np.arange(len(hist))[:, None], plain].any()
    # through the harness: no invalid slots, and the target (never seen here) is still first
    res = evaluate(model, data, "test", ks=(1, 10), mrr_k=10, mask_seen=True)
    assert res["invalid_rate"] == 0.0 and res["recall@1"] == 1.0 and res["mask_seen"] is True


# ------------------------------------------------------------------ the dense hybrid
@pytest.fixture(scope="module")
def dense_fitted(one_thread):
    data = cyclic_data()
    model = CausalSID(**TINY, dense=1.0, rerank=12).fit(data, codes=toy_codes(), train=TRAIN, seed=0,
                                                        device="cpu", progress=False)
    return data, model


def test_dense_targets_sit_where_the_next_items_first_token_is_predicted():
    data = cyclic_data(n_users=3, length=6)
    m = CausalSID(**{**TINY, "max_len": 3}, dense=0.5)
    m.tokens_ = m._resolve_tokens(data, toy_codes())
    x, y, yi = m.train_arrays(data)
    W = m.tokens_.n_levels
    table = np.vstack([np.zeros((1, W), np.int64), m.tokens_.item_tokens])
    for row in range(len(x)):
        pos = np.flatnonzero(yi[row] >= 0)
        assert len(pos) and (pos % W == W - 1).all()              # the last slot of the item before
        for p in pos:                                             # the next token there is the item's first
            assert y[row, p] == table[yi[row, p] + 1, 0]
    plain = CausalSID(**{**TINY, "max_len": 3})
    plain.tokens_ = m.tokens_
    xp, yp = plain.train_arrays(data)                             # dense off: the two arrays of before
    np.testing.assert_array_equal(xp, x)
    np.testing.assert_array_equal(yp, y)


def test_the_dense_head_learns_the_next_item_and_rerank_orders_the_beam_by_it(dense_fitted):
    data, model = dense_fitted
    inp = data.eval_inputs("test", model.max_len)
    with torch.no_grad():
        state, _ = model.module_.prefill(torch.as_tensor(model._history_grid(inp["history"])))
        dense = model.dense_scores(state).numpy()
    assert (dense.argmax(1) == inp["targets"]).mean() == 1.0      # the dense head alone is right too
    # rerank: the beam's 12 candidates, ordered by their dense score, the best k returned
    top = model.recommend(inp["history"], 5)
    plain = CausalSID(**TINY, dense=1.0)
    plain.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    cands = plain.recommend(inp["history"], 12)
    rows = np.arange(len(cands))[:, None]
    expect = cands[rows, np.argsort(-dense[rows, cands], 1, kind="stable")][:, :5]
    np.testing.assert_array_equal(top, expect)
    assert evaluate(model, data, "test", ks=(1, 10))["recall@1"] == 1.0


def test_rerank_all_ranks_the_whole_catalogue_by_the_dense_score_new_items_included(dense_fitted):
    import copy

    from sidkit.models.catalogue import add_items

    data, model = dense_fitted
    full = copy.copy(model)
    full.rerank = "all"
    inp = data.eval_inputs("test", model.max_len)
    hist = inp["history"]
    with torch.no_grad():
        state, _ = model.module_.prefill(torch.as_tensor(model._history_grid(hist)))
        dense = model.dense_scores(state).numpy()
    np.testing.assert_array_equal(full.recommend(hist, 7), np.argsort(-dense, 1, kind="stable")[:, :7])
    res = full.decode(hist, 3)
    np.testing.assert_array_equal(res.sids, model.tokens_.item_tokens[res.items])
    # the excluded items never come back, and the list is still full
    seen = np.zeros((len(hist), model.n_items), bool)
    seen[np.arange(len(hist)), inp["targets"]] = True
    top = full.recommend(hist, model.n_items, exclude=seen)
    assert (top[:, :-1] >= 0).all() and (top[:, -1] == -1).all()
    assert not seen[np.arange(len(hist))[:, None], np.maximum(top, 0)][:, :-1].any()
    assert evaluate(full, data, "test", ks=(1, 10))["recall@1"] == 1.0
    # an item added after training: its vector sums its SID tokens, ranked with the others
    ext = add_items(full, ["new"], np.array([[5, 0]]))
    new = int(np.flatnonzero(ext.item_ids_ == "new")[0])
    with torch.no_grad():
        dense_ext = ext.dense_scores(torch.as_tensor(state)).numpy()
    np.testing.assert_allclose(dense_ext[:, new], state.numpy() @ ext.module_.dense_proj.weight.detach().numpy().T
                               @ ext.module_.tok.weight.detach().numpy()[ext.tokens_.item_tokens[new]].sum(0)
                               + (ext.module_.dense_proj.bias.detach().numpy()
                                  @ ext.module_.tok.weight.detach().numpy()[ext.tokens_.item_tokens[new]].sum(0)),
                               rtol=1e-4, atol=1e-4)
    got = ext.recommend(hist, ext.n_items)
    np.testing.assert_array_equal(got, np.argsort(-dense_ext, 1, kind="stable"))
    assert (got == new).any(1).all()


def test_a_dense_model_round_trips_and_bad_settings_are_named(dense_fitted, tmp_path):
    from sidkit.config import CausalSIDConfig
    from sidkit.errors import ConfigError

    data, model = dense_fitted
    model.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.dense == 1.0 and back.rerank == 12
    hist = data.eval_inputs("test", model.max_len)["history"]
    np.testing.assert_array_equal(back.recommend(hist, 10), model.recommend(hist, 10))
    with pytest.raises(ConfigError, match="dense=0 does not train"):
        CausalSID(**TINY, rerank=5).fit(data, codes=toy_codes(), train=TRAIN)
    with pytest.raises(ConfigError, match="dense must be a weight >= 0"):
        CausalSID(**TINY, dense=-1.0).fit(data, codes=toy_codes(), train=TRAIN)
    # the new keys stay out of fingerprints at their defaults (earlier runs stay cached)
    assert "dense" not in CausalSIDConfig().fingerprint_dict()
    assert CausalSIDConfig(dense=0.5, rerank=20).fingerprint_dict()["rerank"] == 20
    assert CausalSIDConfig(dense=0.5, rerank="all").rerank == "all"
    with pytest.raises(ConfigError, match='or "all"'):
        CausalSID(**TINY, dense=1.0, rerank="some").fit(data, codes=toy_codes(), train=TRAIN)


def test_dense_ids_add_one_vector_per_trained_item_and_none_for_added_items(one_thread, tmp_path):
    """dense_ids=True: an item's dense vector is its SID-token sum plus its own learned
    vector (zero at the start); an item added after training has only the SID-token sum;
    a model saved after the addition loads with its trained row count."""
    import copy

    from sidkit.config import CausalSIDConfig
    from sidkit.errors import ConfigError
    from sidkit.models.catalogue import add_items

    data = cyclic_data()
    untrained = CausalSID(**TINY, dense=1.0, dense_ids=True)
    untrained.tokens_ = untrained._resolve_tokens(data, toy_codes())
    module = untrained.build_module(data.n_items)
    assert module.dense_id.weight.shape == (data.n_items, TINY["hidden"])
    assert not module.dense_id.weight.detach().any()                 # starts from the SID-token sums
    model = CausalSID(**TINY, dense=1.0, dense_ids=True, rerank="all").fit(
        data, codes=toy_codes(), train=TRAIN, seed=0, device="cpu", progress=False)
    m = model.module_
    tok = m.tok.weight.detach().numpy()
    ids = m.dense_id.weight.detach().numpy()
    assert np.abs(ids).max() > 1e-3                                  # trained
    with torch.no_grad():
        vec = model.item_vectors().numpy()
    np.testing.assert_allclose(vec, tok[model.tokens_.item_tokens].sum(1) + ids, rtol=1e-5, atol=1e-6)
    assert evaluate(model, data, "test", ks=(1,))["recall@1"] == 1.0
    # an added item: its SID-token sum alone; the trained items keep their vectors
    ext = add_items(model, ["new"], np.array([[5, 0]]))
    new = int(np.flatnonzero(ext.item_ids_ == "new")[0])
    with torch.no_grad():
        vext = ext.item_vectors().numpy()
    np.testing.assert_allclose(vext[new], tok[ext.tokens_.item_tokens[new]].sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vext[:data.n_items], vec, rtol=1e-6, atol=1e-7)
    hist = data.eval_inputs("test", model.max_len)["history"]
    ext.save(tmp_path / "ext")
    back = Recommender.load(tmp_path / "ext")
    assert back.dense_ids and back.n_items == data.n_items + 1
    assert back.module_.dense_id.weight.shape[0] == data.n_items
    np.testing.assert_array_equal(back.recommend(hist, back.n_items), ext.recommend(hist, ext.n_items))
    assert not hasattr(back, "n_id_rows_")
    # a beam model with re-ranking reads the same vectors
    beam = copy.copy(model)
    beam.rerank = 12
    assert evaluate(beam, data, "test", ks=(1,))["recall@1"] == 1.0
    with pytest.raises(ConfigError, match="dense=0 does not train"):
        CausalSID(**TINY, dense_ids=True).fit(data, codes=toy_codes(), train=TRAIN)
    with pytest.raises(ConfigError, match="already an ID embedding"):
        CausalSID(**TINY, dense=1.0, dense_ids=True, id_only=True).fit(data, train=TRAIN)
    assert "dense_ids" not in CausalSIDConfig().fingerprint_dict()
    assert CausalSIDConfig(dense=0.5, dense_ids=True).fingerprint_dict()["dense_ids"] is True


def test_bf16_decoding_keeps_the_lists_of_a_confident_model_and_valid_sids(fitted, tmp_path):
    """precision="bf16" decodes under bfloat16 autocast: on the cyclic toy (a confident
    model) the same first item for every user with its score within bf16 rounding, top-5
    lists mostly the same, every output a distinct catalogue item; the setting survives
    save/load; fp32 decoding is untouched."""
    data, model = fitted
    hist = data.eval_inputs("test", model.max_len)["history"]
    ref = model.decode(hist, 10)
    model.precision = "bf16"
    try:
        res = model.decode(hist, 10)
        model.save(tmp_path / "m")
    finally:
        model.precision = "fp32"
    np.testing.assert_array_equal(res.items[:, 0], ref.items[:, 0])     # the confident first choice
    np.testing.assert_allclose(res.scores[:, 0], ref.scores[:, 0], atol=0.05)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(res.items[:, :5], ref.items[:, :5])])
    assert overlap >= 0.9                          # lower ranks: near ties (-9.28 vs -9.35) may swap
    assert ((res.items >= 0) & (res.items < N_ITEMS)).all()
    assert all(len(set(r)) == len(r) for r in res.items)
    assert not np.array_equal(res.scores, ref.scores)           # bf16 arithmetic did run
    back = Recommender.load(tmp_path / "m")
    assert back.precision == "bf16"
    np.testing.assert_array_equal(back.decode(hist, 10).items, res.items)
    np.testing.assert_array_equal(model.decode(hist, 10).items, ref.items)


def test_precision_must_be_fp32_or_bf16():
    from sidkit.config import CausalSIDConfig
    from sidkit.errors import ConfigError

    assert CausalSIDConfig(precision="bf16").precision == "bf16"
    assert "precision" not in CausalSIDConfig().fingerprint_dict()      # earlier runs stay cached
    with pytest.raises(ValueError, match="precision"):
        CausalSIDConfig(precision="fp16")
    with pytest.raises(ConfigError, match="precision must be 'fp32' or 'bf16'"):
        CausalSID(precision="half").fit(cyclic_data(), codes=toy_codes(), train=TrainConfig(epochs=1),
                                        device="cpu", progress=False)
