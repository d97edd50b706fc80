"""Recommenders in the harness: popularity, SASRec, the training loop, save/load, bad input."""

import numpy as np
import pandas as pd
import pytest

from sidkit.data import Interactions, leave_one_out
from sidkit.errors import ArtifactError, DataError, NotFittedError
from sidkit.eval import SequenceData, evaluate
from sidkit.models import Popularity, Recommender, SASRec

from _training import StopTraining, stop_after_epoch, without_times

TINY = {"hidden": 16, "n_blocks": 1, "n_heads": 1, "max_len": 8, "dropout": 0.0}


def _split(seqs):
    rows = [(u, it, t) for u, s in seqs.items() for t, it in enumerate(s)]
    return leave_one_out(Interactions(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])))


def cyclic_data(n_items=24, n_users=48, length=14):
    """User u walks the cycle i00 -> i01 -> ... from item u % n_items: the next item is
    always the successor of the last one."""
    ids = [f"i{k:02d}" for k in range(n_items)]
    return SequenceData.from_split(_split({f"u{u:02d}": [ids[(u + t) % n_items] for t in range(length)]
                                           for u in range(n_users)}))


# ------------------------------------------------------------------ popularity
def test_popularity_exact_on_a_toy_split():
    split = _split({"a": ["x", "y", "z", "w"], "b": ["y", "x", "z", "v"], "c": ["y", "w", "v"]})
    data = SequenceData.from_split(split)        # catalogue v, w, x, y, z
    pop = Popularity().fit(data)
    # training items: a: x y; b: y x; c: y  -> counts v0 w0 x2 y3 z0 (valid/test never counted)
    np.testing.assert_array_equal(pop.counts_, [0, 0, 2, 3, 0])
    assert pop.recommend(np.zeros((1, 3), int), 5).tolist() == [[3, 2, 0, 1, 4]]   # ties: lower index
    res = evaluate(pop, data, "test", ks=(1, 2, 5), mrr_k=5, coverage_k=2, return_ranks=True)
    # test targets: a -> w (rank 3), b -> v (rank 2), c -> v (rank 2)
    np.testing.assert_array_equal(res["ranks"], [3, 2, 2])
    assert res["recall@1"] == 0 and res["recall@5"] == 1
    assert res["ndcg@5"] == pytest.approx((1 / np.log2(5) + 2 / np.log2(4)) / 3)
    assert res["mrr@5"] == pytest.approx((1 / 4 + 2 / 3) / 3)
    assert res["coverage@2"] == pytest.approx(2 / 5)
    # masking seen items from the ranking y x v w z: a saw x y z -> v w (w: rank 1);
    # b saw y x z -> v w (v: 0); c saw y w -> x v z (v: 1)
    masked = evaluate(pop, data, "test", ks=(1, 2), mrr_k=2, coverage_k=2, mask_seen=True, return_ranks=True)
    np.testing.assert_array_equal(masked["ranks"], [1, 0, 1])


def test_identical_rankings_are_deterministic():
    data = cyclic_data()

    class Constant(Popularity):
        name = "constant-test"

        def fit(self, data, **_):
            super().fit(data)
            self.counts_ = np.zeros_like(self.counts_)
            return self

    m = Constant().fit(data)
    a = evaluate(m, data, "test", return_ranks=True)
    b = evaluate(m, data, "test", return_ranks=True, batch_size=5)
    # every score equal: the rank of a target is its catalogue index
    np.testing.assert_array_equal(a["ranks"], data.eval_inputs("test", 8)["targets"])
    np.testing.assert_array_equal(a["ranks"], b["ranks"])
    assert {k: v for k, v in a.items() if k not in ("seconds", "ranks")} == \
        {k: v for k, v in b.items() if k not in ("seconds", "ranks")}
    assert a["coverage@10"] == pytest.approx(10 / 24)


# ----------------------------------------------------------------------- SASRec
def test_sasrec_learns_a_deterministic_pattern():
    data = cyclic_data()
    m = SASRec(**TINY).fit(data, train={"epochs": 20, "lr": 1e-2, "warmup_steps": 5, "batch_size": 32,
                                        "eval_every": 5}, seed=0, device="cpu")
    losses = [h["loss"] for h in m.history_]
    assert losses[-1] < 0.2 * losses[0]                      # training lowers the loss
    for role in ("valid", "test"):
        assert evaluate(m, data, role, ks=(1, 5))["recall@1"] == 1.0


def test_training_lowers_the_loss_in_a_few_epochs():
    m = SASRec(**TINY).fit(cyclic_data(), train={"epochs": 4, "lr": 5e-3, "warmup_steps": 0, "batch_size": 8},
                           seed=1, device="cpu")
    losses = [h["loss"] for h in m.history_]
    assert losses[-1] < losses[0]
    assert m.best_epoch_ == max(range(1, 5), key=lambda e: m.history_[e - 1]["valid"]["ndcg@10"])


def _train_cfg(epochs):
    return {"epochs": epochs, "lr": 5e-3, "warmup_steps": 3, "batch_size": 8, "patience": 10}


def test_interrupt_and_resume_equals_an_uninterrupted_run(tmp_path):
    data = cyclic_data(n_users=24)
    full = SASRec(**{**TINY, "dropout": 0.3}).fit(data, train=_train_cfg(3), seed=3, device="cpu")

    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        SASRec(**{**TINY, "dropout": 0.3}).fit(data, train=_train_cfg(3), seed=3, device="cpu",
                                               checkpoint_dir=ck, callbacks=[stop_after_epoch(1)])
    assert (ck / "state.json").is_file()
    resumed = SASRec(**{**TINY, "dropout": 0.3}).fit(data, train=_train_cfg(3), seed=3, device="cpu",
                                                     checkpoint_dir=ck)
    a, b = full._state(), resumed._state()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert without_times(full.history_) == without_times(resumed.history_)
    assert evaluate(full, data, "test")["ndcg@10"] == evaluate(resumed, data, "test")["ndcg@10"]

    # a checkpoint written for another config is refused with a clear error
    with pytest.raises(ArtifactError, match="another model config"):
        SASRec(**{**TINY, "hidden": 8}).fit(data, train=_train_cfg(3), seed=3, device="cpu", checkpoint_dir=ck)


def test_train_seconds_of_a_resumed_run_count_the_epochs_before_the_resume(tmp_path):
    from sidkit.config import SASRecConfig, TrainConfig
    from sidkit.recommender_stage import fit_one, train_seconds

    data = cyclic_data(n_users=24)

    ck = tmp_path / "ck"
    with pytest.raises(StopTraining):
        SASRec(**TINY).fit(data, train=_train_cfg(3), seed=0, device="cpu", checkpoint_dir=ck,
                           callbacks=[stop_after_epoch(2)])
    model, rec = fit_one(SASRecConfig(type="sasrec", **TINY), TrainConfig(**_train_cfg(3)), data, 0, "cpu", ck)
    hist = model.history_
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert all(h["valid_seconds"] > 0 for h in hist)          # every epoch validated (eval_every = 1)
    assert rec["train_seconds"] == train_seconds(hist) == pytest.approx(
        sum(h["seconds"] + h["valid_seconds"] for h in hist))
    assert rec["train_seconds"] > hist[0]["seconds"] + hist[1]["seconds"]   # the first process's epochs count


def test_bf16_precision_trains_under_autocast_with_float32_weights(tmp_path):
    import torch

    from sidkit.config import TrainConfig

    data = cyclic_data(n_users=24)
    a = SASRec(**TINY).fit(data, train=_train_cfg(2), seed=0, device="cpu", checkpoint_dir=tmp_path / "ck")
    b = SASRec(**TINY).fit(data, train={**_train_cfg(2), "precision": "bf16"}, seed=0, device="cpu")
    la, lb = [h["loss"] for h in a.history_], [h["loss"] for h in b.history_]
    assert la != lb                                   # the forward pass ran in bfloat16 ...
    np.testing.assert_allclose(lb, la, rtol=0.05)     # ... and learned the same thing
    assert lb[-1] < lb[0]
    assert all(p.dtype == torch.float32 for p in b.module_.parameters())
    assert b.train_config_["precision"] == "bf16"
    # a float32 checkpoint is not resumed in bfloat16; fingerprints of float32 runs are those of
    # runs made before the key existed (it is left out at its default)
    with pytest.raises(ArtifactError, match="another model config"):
        SASRec(**TINY).fit(data, train={**_train_cfg(2), "precision": "bf16"}, seed=0, device="cpu",
                           checkpoint_dir=tmp_path / "ck")
    assert "precision" not in TrainConfig().fingerprint_dict()
    assert TrainConfig(precision="bf16").fingerprint_dict()["precision"] == "bf16"


def test_a_stopped_run_is_extended_by_a_larger_patience(tmp_path):
    data = cyclic_data(n_users=24)
    cfg = {"epochs": 6, "lr": 1e-4, "warmup_steps": 0, "batch_size": 16, "patience": 1}
    a = SASRec(**TINY).fit(data, train=cfg, seed=0, device="cpu", checkpoint_dir=tmp_path / "ck")
    ref = SASRec(**TINY).fit(data, train={**cfg, "patience": 3}, seed=0, device="cpu")
    b = SASRec(**TINY).fit(data, train={**cfg, "patience": 3}, seed=0, device="cpu", checkpoint_dir=tmp_path / "ck")
    assert len(a.history_) <= len(b.history_) == len(ref.history_)
    assert [r["loss"] for r in b.history_] == [r["loss"] for r in ref.history_]


def test_save_load_round_trip_and_catalogue_check(tmp_path):
    data = cyclic_data()
    m = SASRec(**TINY).fit(data, train=_train_cfg(2), seed=0, device="cpu")
    m.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert isinstance(back, SASRec) and back.get_params() == m.get_params()
    h = data.eval_inputs("test", 8)["history"]
    np.testing.assert_allclose(np.asarray(back.score(h)), np.asarray(m.score(h)), rtol=1e-6, atol=1e-6)
    assert back.best_epoch_ == m.best_epoch_
    pop = Popularity().fit(data)
    pop.save(tmp_path / "p")
    np.testing.assert_array_equal(Recommender.load(tmp_path / "p").counts_, pop.counts_)

    other = cyclic_data(n_items=25)
    with pytest.raises(ArtifactError, match="another catalogue"):
        evaluate(back, other, "test")


def test_bad_inputs(tmp_path):
    data = cyclic_data()
    pop = Popularity()
    with pytest.raises(NotFittedError):
        pop.recommend(np.zeros((1, 2), int), 3)
    pop.fit(data)
    with pytest.raises(DataError, match="not in the model's catalogue"):
        pop.recommend_ids([["i00", "nope"]], 3)
    assert pop.recommend_ids([["i00", "i01"]], 2) == [["i00", "i01"]]   # every count ties: lower index first
    with pytest.raises(DataError, match="larger than the catalogue"):
        evaluate(pop, data, "test", ks=(5, 25))
    with pytest.raises(DataError, match="tokens must lie"):
        pop.score(np.array([[0, 99]]))
    with pytest.raises(ArtifactError, match="no saved recommender"):
        Recommender.load(tmp_path)
    # weights that do not match the saved parameters
    m = SASRec(**TINY).fit(data, train=_train_cfg(1), seed=0, device="cpu")
    m.save(tmp_path / "m")
    import json
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["params"]["hidden"] = 32
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not match"):
        Recommender.load(tmp_path / "m")
    # a split without validation/test examples
    one = SequenceData.from_split(_split({"a": ["x"], "b": ["y"]}))
    with pytest.raises(DataError, match="no test examples"):
        evaluate(Popularity().fit(one), one, "test", ks=(1,), mrr_k=1, coverage_k=1)


def _fixed_order_lists(order, exclude, n, k):
    """Every user's list is ``order`` without their excluded items, -1 padded to k."""
    out = np.full((n, k), -1, np.int64)
    for b in range(n):
        keep = [i for i in order if exclude is None or not exclude[b, i]][:k]
        out[b, :len(keep)] = keep
    return out


def test_generative_interface_lists_invalid_rate_and_masking():
    """A model that returns top-k lists (as SID decoders do): ranks from the lists, the
    invalid-output rate from the -1 slots; with mask_seen the model gets the seen items
    as ``exclude`` (never the target) and must honour it."""
    split = _split({"a": ["x", "y", "z", "w"], "b": ["y", "x", "z", "v"]})
    data = SequenceData.from_split(split)          # catalogue v0 w1 x2 y3 z4

    class Lists(Popularity):
        name = "lists-test"
        scores_all_items = False

        def recommend(self, history, k):
            # every user: y, <invalid>, w, v, x
            return np.tile(np.array([3, -1, 1, 0, 2]), (len(history), 1))

    m = Lists().fit(data)
    res = evaluate(m, data, "test", ks=(1, 3), mrr_k=5, coverage_k=2, return_ranks=True)
    np.testing.assert_array_equal(res["ranks"], [2, 3])            # a -> w at 2, b -> v at 3
    assert res["invalid_rate"] == pytest.approx(1 / 5)
    assert res["recall@3"] == pytest.approx(1 / 2) and res["coverage@2"] == pytest.approx(1 / 5)
    # a list with holes is not a fair masked list: a model without exclude= is refused
    with pytest.raises(DataError, match="exclude"):
        evaluate(m, data, "test", ks=(1, 3), mrr_k=5, coverage_k=2, mask_seen=True)

    seen_args = []

    class Masking(Lists):
        def recommend(self, history, k, exclude=None):
            seen_args.append(exclude.copy())
            return _fixed_order_lists([3, 1, 0, 2, 4], exclude, len(history), k)   # y w v x z

    m2 = Masking().fit(data)
    masked = evaluate(m2, data, "test", ks=(1, 3), mrr_k=5, coverage_k=2, mask_seen=True, return_ranks=True)
    # a saw x y z (target w), b saw y x z (target v): both get w v first
    np.testing.assert_array_equal(seen_args[-1], [[False, False, True, True, True],
                                                  [False, False, True, True, True]])
    np.testing.assert_array_equal(masked["ranks"], [0, 1])

    class Cheating(Lists):
        def recommend(self, history, k, exclude=None):
            return np.tile(np.array([3, 1]), (len(history), 1))   # y is seen by both

    with pytest.raises(DataError, match="excluded"):
        evaluate(Cheating().fit(data), data, "test", ks=(1,), mrr_k=2, coverage_k=2, mask_seen=True)


def test_a_repeated_target_is_never_masked_in_either_path():
    """User a's test item x is also in the history: with mask_seen, the score path and
    the list path both keep the target and mask the other seen items."""
    split = _split({"a": ["x", "y", "z", "x"], "b": ["y", "x", "z", "v"]})
    data = SequenceData.from_split(split)          # catalogue v0 x1 y2 z3

    class Lists(Popularity):
        name = "lists-test"
        scores_all_items = False

        def recommend(self, history, k, exclude=None):
            return _fixed_order_lists([2, 1, 3, 0], exclude, len(history), k)     # y x z v

    class Scores(Popularity):
        name = "scores-test"

        def scores(self, history):
            import torch
            return torch.tensor([[0.0, 2.0, 3.0, 1.0]]).expand(len(history), 4)   # y x z v

    for m in (Lists().fit(data), Scores().fit(data)):
        r = evaluate(m, data, "test", ks=(1, 2), mrr_k=2, coverage_k=2, mask_seen=True, return_ranks=True)
        # a: y and z masked, x (the target, seen) stays -> x first; b: y x z masked -> v first
        np.testing.assert_array_equal(r["ranks"], [0, 0])


def test_a_stop_signal_during_a_checkpoint_write_waits_for_it(tmp_path, monkeypatch):
    """SIGTERM arriving while a checkpoint is written is held until the write is done: the
    handler then runs, and the folder holds the whole new checkpoint and no temporary folder."""
    import os
    import signal

    import safetensors.torch
    import torch

    from sidkit.training import save_checkpoint

    class Stopped(Exception):
        pass

    def handler(signum, frame):
        raise Stopped()

    real = safetensors.torch.save_file
    calls = []

    def save_file(tensors, path):
        if not calls:
            os.kill(os.getpid(), signal.SIGTERM)        # arrives mid-write
        calls.append(path)
        real(tensors, path)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    old = signal.signal(signal.SIGTERM, handler)
    try:
        module = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(module.parameters())
        with pytest.raises(Stopped):
            save_checkpoint(tmp_path / "seed-0", module=module, best_state=None, opt=opt,
                            shuffle_gen=torch.Generator(), state={"epoch": 1})
    finally:
        signal.signal(signal.SIGTERM, old)
    assert len(calls) == 2                                  # weights and optimiser both written
    assert sorted(p.name for p in (tmp_path / "seed-0").iterdir()) == ["optim.safetensors", "state.json",
                                                                        "weights.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_record_says_why_training_stopped_and_a_time_budget_stops_it(tmp_path):
    from sidkit.config import SASRecConfig, TrainConfig
    from sidkit.recommender_stage import fit_one

    data = cyclic_data(n_users=24)
    cap = SASRec(**TINY).fit(data, train=_train_cfg(2), seed=0, device="cpu")
    assert len(cap.history_) == 2 and cap.stop_reason_ == "cap"        # patience 10 never ran out
    stalled = SASRec(**TINY).fit(data, train={**_train_cfg(30), "lr": 1e-7, "patience": 1}, seed=0, device="cpu")
    assert len(stalled.history_) < 30 and stalled.stop_reason_ == "patience"
    # a budget far below one epoch's time: the first epoch runs and is validated -- though
    # eval_every=3 would skip it: the epoch that uses up the budget always is -- then it stops
    ck = tmp_path / "ck"
    cfg = TrainConfig(**{**_train_cfg(30), "eval_every": 3, "max_minutes": 1e-9})
    model, rec = fit_one(SASRecConfig(type="sasrec", **TINY), cfg, data, 0, "cpu", ck)
    assert len(model.history_) == 1 and "valid" in model.history_[0]
    assert rec["stop"] == "budget" and model.best_epoch_ == 1
    # the budget is not part of the checkpoint's fingerprint: a larger one extends the same run
    longer = TrainConfig(**{**_train_cfg(3), "eval_every": 3, "max_minutes": 60})
    model, rec = fit_one(SASRecConfig(type="sasrec", **TINY), longer, data, 0, "cpu", ck)
    assert [h["epoch"] for h in model.history_] == [1, 2, 3] and rec["stop"] == "cap"
    assert "max_minutes" not in TrainConfig().fingerprint_dict()
