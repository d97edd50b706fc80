"""TIGER (T5 encoder-decoder over SIDs): overfits a cyclic toy set, full-width beam equals
the brute-force ranking, KV-cached steps equal teacher forcing, valid distinct items,
save/load, exact resume, per-epoch target sampling, parameter checks."""

import numpy as np
import pytest
import torch
from test_causal_sid import N_ITEMS, cyclic_data, one_thread, toy_codes  # noqa: F401 (autouse fixture)
from test_pipeline import toy  # noqa: F401  (fixture: the pipeline's synthetic data set)
from _training import StopTraining, stop_after_epoch, without_times

from sidkit.config import TrainConfig
from sidkit.errors import ArtifactError, ConfigError, DataError
from sidkit.eval import evaluate
from sidkit.models import TIGER, Recommender
from sidkit.models.sid_tokens import BOS, PAD, TIGER_USER_BUCKETS
from sidkit.models.tiger import _Decoder, _enc_mask
from sidkit.types import Codes

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_kv": 16, "d_ff": 128, "dropout": 0.0, "max_len": 6,
        "targets_per_user": 0, "beam": 20}
TRAIN = TrainConfig(epochs=40, patience=40, lr=5e-3, warmup_steps=0, batch_size=32, eval_every=10)


@pytest.fixture(scope="module")
def fitted(one_thread):
    data = cyclic_data()
    model = TIGER(**TINY).fit(data, codes=toy_codes(), train=TRAIN, seed=0, device="cpu", progress=False)
    return data, model


def random_model(data, codes, **params):
    """An untrained TIGER (random weights) ready to decode."""
    m = TIGER(**{**TINY, "n_layers": 2, "dropout": 0.1, **params})
    m._set_catalogue(data)
    m.tokens_ = m._resolve_tokens(data, codes)
    m.device_ = torch.device("cpu")
    torch.manual_seed(1)
    m.module_ = m.build_module(data.n_items).eval()
    return m


def brute_force(model, hist, users):
    """(B, N) teacher-forced summed log-prob of every item's SID (no cache, HF forward)."""
    tok = model.tokens_
    N, W = tok.item_tokens.shape
    enc = torch.as_tensor(model.encoder_tokens(hist, users))
    dec_in = torch.as_tensor(np.hstack([np.full((N, 1), BOS), tok.item_tokens[:, :-1]]))
    tgt = torch.as_tensor(tok.item_tokens)
    real = torch.as_tensor(np.arange(W)[None, :] < tok.n_tokens[:, None])
    out = []
    with torch.no_grad():
        for b in range(len(hist)):
            lp = model.module_.log_probs(enc[b:b + 1].expand(N, -1), dec_in)
            out.append((lp.gather(2, tgt[:, :, None])[..., 0] * real).sum(1).numpy())
    return np.stack(out)


def test_overfits_cyclic_toy_set_to_recall_at_1(fitted):
    data, model = fitted
    for role in ("valid", "test"):
        res = evaluate(model, data, role, ks=(1, 5, 10))
        assert res["recall@1"] == 1.0, (role, res)
        assert res["invalid_rate"] == 0.0
    assert model.history_[-1]["loss"] < 0.05
    assert model.tokens_.user_buckets == TIGER_USER_BUCKETS


@pytest.mark.parametrize("variable, user_tokens", [(False, True), (True, True), (False, False)])
def test_full_width_beam_is_the_brute_force_ranking(variable, user_tokens):
    """Beam >= number of valid SIDs: exactly every item, ranked by its teacher-forced
    summed log-prob (same order, scores within 1e-5), under a random model."""
    data = cyclic_data()
    model = random_model(data, toy_codes(variable=variable), user_tokens=user_tokens)
    assert model.tokens_.user_buckets == (TIGER_USER_BUCKETS if user_tokens else 0)
    inp = data.eval_inputs("test", model.max_len)
    hist, users = inp["history"][:5], inp["users"][:5]
    res = model.decode(hist, N_ITEMS, users=users, beam=N_ITEMS)
    brute = brute_force(model, hist, users)
    for b in range(len(hist)):
        order = np.argsort(-brute[b], kind="stable")
        assert res.items[b].tolist() == order.tolist()
        np.testing.assert_allclose(res.scores[b], brute[b][order], atol=1e-5, rtol=0)
    assert np.ptp(brute, 1).min() > 0.1         # a real ranking, not a uniform model


def three_level_codes(n_items=N_ITEMS):
    i = np.arange(n_items)
    return Codes(np.stack([i // 9, (i // 3) % 3, i % 3], 1), (4, 3, 3),
                 item_ids=np.array([f"i{k:02d}" for k in i]))


def test_kv_cached_steps_equal_teacher_forcing():
    """Every decoding step's full distribution (several beams per user, reordered
    between steps) equals the teacher-forced log-probs of the same prefix."""
    data = cyclic_data()
    model = random_model(data, three_level_codes())
    inp = data.eval_inputs("valid", model.max_len)
    hist, users = inp["history"][:3], inp["users"][:3]
    enc = torch.as_tensor(model.encoder_tokens(hist, users))
    B, J, W = len(hist), 4, model.tokens_.n_levels
    rs = np.random.default_rng(0)
    items = rs.integers(0, N_ITEMS, size=(B, J))
    sids = torch.as_tensor(model.tokens_.item_tokens[items])                  # (B, J, W)
    with torch.no_grad():
        dec = _Decoder(model.module_.t5, enc, _enc_mask(enc))
        lp0, state = dec.step(torch.zeros((B, 0), dtype=torch.long), {})
        state = dec.reorder(state, torch.arange(B).repeat_interleave(J))
        steps = [lp0.repeat_interleave(J, 0)]
        for t in range(1, W):
            lp, state = dec.step(sids.reshape(B * J, W)[:, :t], state)
            steps.append(lp)
        dec_in = torch.cat([torch.full((B * J, 1), BOS), sids.reshape(B * J, W)[:, :-1]], 1)
        tf = model.module_.log_probs(enc.repeat_interleave(J, 0), dec_in)     # (B*J, W, V)
    for t in range(W):
        np.testing.assert_allclose(steps[t].numpy(), tf[:, t].numpy(), atol=1e-5, rtol=0)
    # a reorder that swaps the beams of each user gives the swapped rows
    with torch.no_grad():
        dec = _Decoder(model.module_.t5, enc, _enc_mask(enc))
        _, state = dec.step(torch.zeros((B, 0), dtype=torch.long), {})
        state = dec.reorder(state, torch.arange(B).repeat_interleave(J))
        _, state = dec.step(sids.reshape(B * J, W)[:, :1], state)
        perm = (torch.arange(B)[:, None] * J + torch.arange(J).flip(0)[None, :]).reshape(-1)
        state = dec.reorder(state, perm)
        lp2, _ = dec.step(sids.reshape(B * J, W)[perm][:, :2], state)
    np.testing.assert_allclose(lp2.numpy(), tf[perm, 2].numpy(), atol=1e-5, rtol=0)
    assert not np.allclose(lp2.numpy(), tf[:, 2].numpy(), atol=1e-3)      # the swap mattered


def test_recommend_distinct_valid_items_and_user_tokens(fitted):
    data, model = fitted
    inp = data.eval_inputs("test", model.max_len)
    hist, users = inp["history"], inp["users"]
    for k in (1, 7, N_ITEMS):
        top = model.recommend(hist, k, users=users)
        assert top.shape == (len(hist), k)
        assert (top >= 0).all() and (top < N_ITEMS).all()
        assert all(len(set(r)) == k for r in top.tolist())
    top = model.recommend(hist[:3], N_ITEMS + 4, users=users[:3])
    assert (np.sort(top[:, :N_ITEMS], 1) == np.arange(N_ITEMS)).all() and (top[:, N_ITEMS:] == -1).all()
    # the user token opens the encoder input, right before the history's first SID token
    enc = model.encoder_tokens(hist[:2], users[:2])
    W = model.tokens_.n_levels
    assert enc.shape == (2, 1 + model.max_len * W)
    np.testing.assert_array_equal(enc[:, 0], model.tokens_.user_tokens(users[:2]))   # histories are full
    assert (model.encoder_tokens(hist[:2])[:, 0] == PAD).all()                        # no users: no token
    with pytest.raises(DataError, match="one id per history row"):
        model.recommend(hist[:3], 5, users=users[:2])
    with pytest.raises(DataError, match="k must be"):
        model.recommend(hist, 0)
    with pytest.raises(NotImplementedError, match="TIGER generates items"):
        model.scores(hist)


def test_save_load_round_trip(fitted, tmp_path):
    data, model = fitted
    model.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert isinstance(back, TIGER) and back.get_params() == model.get_params()
    np.testing.assert_array_equal(back.tokens_.item_tokens, model.tokens_.item_tokens)
    assert back.tokens_.vocab_size == model.tokens_.vocab_size
    inp = data.eval_inputs("test", model.max_len)
    np.testing.assert_array_equal(back.recommend(inp["history"], 20, users=inp["users"]),
                                  model.recommend(inp["history"], 20, users=inp["users"]))
    assert evaluate(back, data, "test", ks=(1, 10))["recall@1"] == 1.0


def test_interrupt_and_resume_equals_an_uninterrupted_run(tmp_path):
    data = cyclic_data(n_users=16)
    params = {**TINY, "dropout": 0.3, "targets_per_user": 3}
    kw = dict(codes=toy_codes(), train=TrainConfig(epochs=3, lr=5e-3, warmup_steps=3, batch_size=8),
              seed=3, device="cpu", progress=False)
    full = TIGER(**params).fit(data, **kw)
    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        TIGER(**params).fit(data, checkpoint_dir=ck, callbacks=[stop_after_epoch(1)], **kw)
    resumed = TIGER(**params).fit(data, checkpoint_dir=ck, **kw)
    a, b = full._state(), resumed._state()
    assert a.keys() == b.keys() and "t5.shared.weight" in a and "t5.lm_head.weight" not in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert without_times(full.history_) == without_times(resumed.history_) and len(full.history_) == 3


def test_resume_with_other_codes_is_refused(tmp_path):
    data = cyclic_data(n_users=12)
    kw = dict(train=TrainConfig(epochs=2, lr=5e-3, warmup_steps=2, batch_size=8), seed=0, device="cpu",
              progress=False)
    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        TIGER(**TINY).fit(data, codes=toy_codes(), checkpoint_dir=ck, callbacks=[stop_after_epoch(1)], **kw)
    c = toy_codes()
    other = Codes(c.codes[:, ::-1].copy(), (6, 6), item_ids=c.item_ids)
    with pytest.raises(ArtifactError, match="another model config"):
        TIGER(**TINY).fit(data, codes=other, checkpoint_dir=ck, **kw)
    assert len(TIGER(**TINY).fit(data, codes=toy_codes(), checkpoint_dir=ck, **kw).history_) == 2


def test_epoch_indices_cover_every_target_and_are_deterministic():
    data = cyclic_data(n_users=6, length=13)            # 11 training items: 10 targets per user
    m = TIGER(**{**TINY, "targets_per_user": 4})
    m.tokens_ = m._resolve_tokens(data, toy_codes())
    enc, y = m.train_arrays(data)
    n = len(enc)
    assert n == 6 * 10 and m._rows_per_user.tolist() == [10] * 6
    # every row's target is the item after its history's last item (cyclic walk, items 0..17)
    W = m.tokens_.n_levels
    last = m.tokens_.items_of(enc[:, -W:])
    np.testing.assert_array_equal(m.tokens_.items_of(np.where(y < 0, PAD, y)), last + 1)
    is_user = enc >= m.tokens_.user_offset
    assert (is_user.sum(1) == 1).all()                              # one user token per row, first
    assert (is_user.argmax(1) == (enc != PAD).argmax(1)).all()

    def epochs(seed, count, gen_seed=1):
        m.seed_ = seed
        g = torch.Generator().manual_seed(gen_seed)
        return [m.epoch_indices(n, g, e).numpy() for e in range(count)]

    ep = epochs(0, 6)
    user = np.repeat(np.arange(6), 10)
    for e, rows in enumerate(ep):
        assert len(rows) == 6 * 4 and np.bincount(user[rows], minlength=6).tolist() == [4] * 6
        if e % 3 != 2:
            assert len(set(rows.tolist())) == 24           # no repeats within a block
    for p in (0, 1):                                        # each pass (3 epochs) covers every row
        assert set(np.concatenate(ep[3 * p:3 * p + 3]).tolist()) == set(range(n))
    for a, b in zip(ep, epochs(0, 6)):
        np.testing.assert_array_equal(a, b)                 # deterministic per seed
    other = epochs(1, 3)
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(ep, other))
    # 0 = every row, plain shuffle (the default of every model)
    m.targets_per_user = 0
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    np.testing.assert_array_equal(m.epoch_indices(n, g1, 0), torch.randperm(n, generator=g2))


@pytest.mark.parametrize("bad, match", [
    ({"n_heads": 0}, "n_heads must be"), ({"d_model": 12.5}, "d_model must be"), ({"n_layers": True}, "n_layers"),
    ({"max_len": -1}, "max_len must be"), ({"targets_per_user": -2}, "targets_per_user must be"),
    ({"targets_per_user": None}, "targets_per_user"), ({"beam": 0}, "beam must be"),
    ({"dropout": 1.0}, "dropout must lie"), ({"user_tokens": "yes"}, "user_tokens"), ({"d_kv": 0}, "d_kv"),
])
def test_bad_params_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        TIGER(**{**TINY, **bad}).fit(cyclic_data(n_users=4), codes=toy_codes(), device="cpu", progress=False)


def test_needs_codes_and_config_builds_the_model():
    from pathlib import Path

    from sidkit.config import load_config
    from sidkit.recommender_stage import make_model, uses_run_codes

    with pytest.raises(DataError, match="the TIGER model needs the Semantic IDs"):
        TIGER(**TINY).fit(cyclic_data(n_users=4), device="cpu", progress=False)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "tiger.toml")
    m = make_model(cfg.model)
    assert isinstance(m, TIGER) and m.codes is None and m.beam == 20 and uses_run_codes(cfg.model)
    assert m.get_params() == cfg.model.model_dump(exclude={"type", "label", "train"})
    assert (m.d_model, m.n_layers, m.n_heads, m.d_kv, m.d_ff, m.max_len) == (128, 4, 6, 64, 1024, 20)


def test_run_trains_tiger_on_its_own_codes_stage(toy):
    """`sidkit run` with [model] type = "tiger" and no codes path: the recommender stage
    reads RUN/codes, evaluates through the harness (users passed for the user token)."""
    import json

    from test_pipeline import _cfg

    from sidkit.pipeline import build_stages, run_pipeline

    model = {"type": "tiger", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_kv": 8, "d_ff": 32, "max_len": 4,
             "dropout": 0.0, "beam": 5, "targets_per_user": 2}
    cfg = _cfg(toy, model=model, train={"epochs": 1, "batch_size": 32, "warmup_steps": 1})
    assert [s for s in build_stages(cfg) if s.name == "recommender"][0].inputs == ("split", "codes")
    res = run_pipeline(cfg, toy / "run")
    assert all(r.status == "ran" for r in res.stages)
    doc = json.loads((toy / "run" / "recommender" / "metrics.json").read_text())
    assert doc["records"][0]["model"] == "tiger" and doc["records"][0]["test"]["invalid_rate"] == 0.0
    m = Recommender.load(toy / "run" / "recommender" / "models" / "tiger" / "seed-0")
    assert isinstance(m, TIGER) and m.tokens_.codes.codebook_sizes == Codes.load(
        toy / "run" / "codes" / "codes").codebook_sizes


def test_evaluate_passes_the_users_for_the_user_token():
    """The harness decodes with each example's user token (a random model ranks
    differently with and without it, so a harness that dropped the users would differ)."""
    from sidkit.eval.metrics import ranks_from_lists

    data = cyclic_data()
    model = random_model(data, toy_codes())
    inp = data.eval_inputs("test", model.max_len)
    ranks = evaluate(model, data, "test", ks=(1, 5, 10), return_ranks=True)["ranks"]
    with_users = ranks_from_lists(model.recommend(inp["history"], 20, users=inp["users"]), inp["targets"])
    without = ranks_from_lists(model.recommend(inp["history"], 20), inp["targets"])
    np.testing.assert_array_equal(ranks, with_users)
    assert (with_users != without).any()


def test_an_epoch_trains_on_targets_per_user_samples():
    """train_loop draws the epoch's rows from epoch_indices: with batch size 1, the
    warm-up learning rate of the last step counts the steps (12 users x 2 targets)."""
    data = cyclic_data(n_users=12, length=13)
    m = TIGER(**{**TINY, "targets_per_user": 2}).fit(
        data, codes=toy_codes(), train=TrainConfig(epochs=1, lr=1.0, warmup_steps=1000, batch_size=1),
        device="cpu", progress=False)
    assert round(m.history_[0]["lr"] * 1000) == 24


def test_mask_seen_fills_every_list_with_unseen_items(fitted):
    """TIGER with mask_seen: the seen items leave inside the beam, the lists stay full."""
    data, model = fitted
    inp = data.eval_inputs("test", model.max_len)
    hist, users = inp["history"], inp["users"]
    seen = np.zeros((len(hist), N_ITEMS), bool)
    seen[np.repeat(np.arange(len(hist)), np.diff(inp["seen_offsets"])), inp["seen_flat"] - 1] = True
    k = N_ITEMS - int(seen.sum(1).max())
    top = model.recommend(hist, k, users=users, exclude=seen)
    assert (top >= 0).all() and all(len(set(r)) == k for r in top.tolist())
    assert not seen[np.arange(len(hist))[:, None], top].any()
    res = evaluate(model, data, "test", ks=(1, 5), mrr_k=5, coverage_k=5, mask_seen=True)
    assert res["invalid_rate"] == 0.0 and res["recall@1"] == 1.0


def test_inputs_trimmed_to_their_length_groups_give_the_padded_results():
    """Decoding and the training loss run the encoder on groups of similar input length,
    trimmed to their real part: the same beams, scores and loss as the padded inputs."""
    data = cyclic_data()
    model = random_model(data, toy_codes(), user_tokens=True)
    inp = data.eval_inputs("test", model.max_len)
    hist, users = inp["history"][:12].copy(), inp["users"][:12]
    for b in range(len(hist)):                       # lengths 0..5 items: several groups
        hist[b, :model.max_len - b % 6] = 0
    model.group_overhead = model.beam_group_overhead = 0.0
    assert len(model.length_groups(model.encoder_tokens(hist, users), overhead=0.0)) > 2
    trimmed = model.decode(hist, 10, users=users)
    model.trim_padding = False
    padded = model.decode(hist, 10, users=users)
    np.testing.assert_array_equal(trimmed.items, padded.items)
    np.testing.assert_allclose(trimmed.scores, padded.scores, atol=1e-5, rtol=0)
    enc = torch.as_tensor(model.encoder_tokens(hist, users))
    y = torch.as_tensor(model.tokens_.sid_tokens(inp["targets"][:12]))
    y[3:5, 1] = -100                                 # groups with fewer target tokens weigh less
    with torch.no_grad():
        full = model.train_loss(model.module_, enc, y)
        model.trim_padding = True
        grouped = model.train_loss(model.module_, enc, y)
    assert abs(float(full) - float(grouped)) < 1e-5
