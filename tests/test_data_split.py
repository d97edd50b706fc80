"""Processing: k-core, chronological order, dedup, leave-one-out and temporal splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import re

import pytest

from sidkit.data import (Interactions, dedup, kcore, leave_one_out, make_split, preprocess,
                         sort_chronologically, temporal_split)
from sidkit.data import truncate_history
from sidkit.errors import DataError


def _random_inter(seed=0, n_users=40, n_items=30, n=600, ts_range=50) -> Interactions:
    rng = np.random.default_rng(seed)
    return Interactions(pd.DataFrame({
        "user_id": rng.integers(0, n_users, n).astype(str),
        "item_id": rng.zipf(1.5, n).clip(max=n_items).astype(str),
        "timestamp": rng.integers(0, ts_range, n),  # many ties
        "rating": rng.integers(1, 6, n).astype(float),
    }), name="rand")


def _inter(rows) -> Interactions:
    return Interactions(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), name="t")


# ---------------------------------------------------------------------------- k-core
@pytest.mark.parametrize("uk,ik", [(3, 3), (5, 2), (2, 5), (4, 0)])
def test_kcore_property(uk, ik):
    inter = _random_inter()
    out = kcore(inter, user_k=uk, item_k=ik)
    df = out.df
    assert len(df) > 0
    assert df.groupby("user_id").size().min() >= uk
    if ik:
        assert df.groupby("item_id").size().min() >= ik
    # idempotent, and the rows are a subset of the input, in the input's order
    assert len(kcore(out, user_k=uk, item_k=ik)) == len(out)
    rows = list(map(tuple, inter.df.values.tolist()))
    kept = list(map(tuple, df.values.tolist()))
    it = iter(rows)
    assert all(r in it for r in kept)
    # maximal: the (unique) k-core found by a naive one-row-set-at-a-time loop is the same
    naive = rows
    while True:
        uc = pd.Series([r[0] for r in naive]).value_counts()
        ic = pd.Series([r[1] for r in naive]).value_counts()
        nxt = [r for r in naive if uc[r[0]] >= uk and (ik == 0 or ic[r[1]] >= ik)]
        if len(nxt) == len(naive):
            break
        naive = nxt
    assert kept == naive


def test_kcore_iterates():
    # item c has 2 interactions, but dropping user 3 (1 interaction) ... chains
    rows = [("1", "a", 1), ("1", "b", 2), ("2", "a", 3), ("2", "b", 4), ("3", "c", 5), ("1", "c", 6)]
    out = kcore(_inter(rows), k=2)
    # user 3 has 1 interaction -> dropped; then item c has 1 -> dropped; users 1, 2 keep a, b
    assert sorted(map(tuple, out.df[["user_id", "item_id"]].values.tolist())) == \
        [("1", "a"), ("1", "b"), ("2", "a"), ("2", "b")]


def test_kcore_empty_raises():
    with pytest.raises(DataError) as e:
        kcore(_random_inter(), k=1000)
    msg = str(e.value)
    assert "user_k=1000" in msg
    # the suggested thresholds are the largest that keep data
    t = int(re.search(r"fix: use user_k=(\d+), item_k=\1 or lower", msg).group(1))
    assert (e.value.max_user_k, e.value.max_item_k) == (t, t)
    assert len(kcore(_random_inter(), k=t)) > 0
    with pytest.raises(DataError):
        kcore(_random_inter(), k=t + 1)


def test_kcore_one_side_suggests_the_largest_count():
    rows = [("1", "a", 1), ("1", "b", 2), ("1", "c", 3), ("2", "a", 4), ("2", "b", 5)]
    with pytest.raises(DataError, match=r"fix: use user_k=3 or lower") as e:
        kcore(_inter(rows), user_k=4)
    assert e.value.max_user_k == 3 and len(kcore(_inter(rows), user_k=3)) == 3
    with pytest.raises(DataError, match=r"use item_k=2 or lower"):
        kcore(_inter(rows), user_k=0, item_k=5)


# ---------------------------------------------------------------------- chronology
def test_stable_tie_break():
    rows = [("u", "x", 5), ("u", "y", 3), ("u", "z", 5), ("u", "w", 5), ("v", "x", 1), ("u", "q", 3)]
    out = sort_chronologically(_inter(rows)).df
    assert out[out.user_id == "u"]["item_id"].tolist() == ["y", "q", "x", "z", "w"]
    split = leave_one_out(_inter(rows))
    u = split.df[split.df.user_id == "u"].sort_values("position")
    assert u["item_id"].tolist() == ["y", "q", "x", "z", "w"]
    assert u["role"].tolist() == ["train", "train", "train", "valid", "test"]


def test_dedup():
    rows = [("u", "a", 3), ("u", "b", 1), ("u", "a", 2), ("v", "a", 9), ("u", "a", 2)]
    first = dedup(_inter(rows)).df
    assert first.values.tolist() == [["u", "b", 1], ["u", "a", 2], ["v", "a", 9]]
    last = dedup(_inter(rows), keep="last").df
    assert last.values.tolist() == [["u", "a", 3], ["u", "b", 1], ["v", "a", 9]]
    with pytest.raises(DataError, match="keep must be"):
        dedup(_inter(rows), keep="middle")
    assert len(preprocess(_inter(rows), dedup_pairs=True)) == 3


# ---------------------------------------------------------------------------- splits
def test_leave_one_out_invariants():
    inter = kcore(_random_inter(seed=1), user_k=3)
    split = leave_one_out(inter)
    df = split.df
    assert len(df) == len(inter)
    for u, g in df.groupby("user_id"):
        g = g.sort_values("position")
        assert g["position"].tolist() == list(range(len(g)))
        assert g["timestamp"].is_monotonic_increasing
        assert g["role"].tolist() == ["train"] * (len(g) - 2) + ["valid", "test"]
        test, valid = g.iloc[-1], g.iloc[-2]
        # test is chronologically last, valid second-last
        assert test["timestamp"] == g["timestamp"].max()
        assert valid["timestamp"] <= test["timestamp"]
        assert (g.iloc[:-2]["timestamp"] <= valid["timestamp"]).all()
    # the held-out rows are exactly one per user each
    assert (split.test.groupby("user_id").size() == 1).all()
    assert (split.valid.groupby("user_id").size() == 1).all()


def test_leave_one_out_no_target_leak_with_dedup():
    inter = dedup(kcore(_random_inter(seed=2), user_k=3))
    inter = kcore(inter, user_k=3)
    split = leave_one_out(inter)
    train = split.train.groupby("user_id")["item_id"].apply(set)
    for _, row in pd.concat([split.valid, split.test]).iterrows():
        assert row["item_id"] not in train[row["user_id"]]


def test_leave_one_out_short_users():
    rows = [("a", "x", 1), ("b", "x", 1), ("b", "y", 2)]
    split = leave_one_out(_inter(rows))
    assert split.df.sort_values(["user_id", "position"])["role"].tolist() == ["train", "train", "test"]


def test_examples_and_truncation():
    rows = [("u", f"i{k}", k) for k in range(10)]
    split = leave_one_out(_inter(rows))
    test = split.examples("test", max_len=3)
    assert test.iloc[0]["history"] == ["i6", "i7", "i8"] and test.iloc[0]["target"] == "i9"
    valid = split.examples("valid")
    assert valid.iloc[0]["history"] == [f"i{k}" for k in range(8)] and valid.iloc[0]["target"] == "i8"
    assert split.sequences()["u"] == [f"i{k}" for k in range(8)]
    assert truncate_history([1, 2, 3], 5) == [1, 2, 3]
    assert truncate_history([1, 2, 3], 2) == [2, 3]
    assert truncate_history((1, 2, 3), None) == [1, 2, 3]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="max_len"):
            truncate_history([1, 2], bad)
    with pytest.raises(DataError, match="'valid' or 'test'"):
        split.examples("train")


def test_temporal_split_invariants():
    inter = _random_inter(seed=3, ts_range=1000)
    split = temporal_split(inter, test_fraction=0.2, valid_fraction=0.1)
    df = split.df
    t_test, t_valid = split.params["t_test"], split.params["t_valid"]
    assert df[df.role == "train"]["timestamp"].max() < t_valid <= t_test
    assert df[df.role == "test"]["timestamp"].min() >= t_test
    assert df[df.role == "valid"]["timestamp"].between(t_valid, t_test - 1).all()
    assert abs((df.role == "test").mean() - 0.2) < 0.05
    # examples only use earlier interactions as history
    ex = split.examples("test", max_len=5)
    assert len(ex) > 0 and all(0 < len(h) <= 5 for h in ex["history"])
    assert len(ex) == ((df.role == "test") & (df.position > 0)).sum()  # first-ever items have no history
    seqs = {u: g.sort_values("position")["item_id"].tolist() for u, g in df.groupby("user_id")}
    for _, row in ex.iterrows():
        seq = seqs[row["user_id"]]
        assert seq[row["position"]] == row["target"]
        assert row["history"] == seq[: row["position"]][-5:]  # everything earlier, nothing later
    vex = split.examples("valid")
    test_pos = df[df.role == "test"].set_index(["user_id", "position"]).index
    for _, row in vex.iterrows():  # a valid example never sees test interactions
        hist_len = len(row["history"])
        assert hist_len == row["position"] - sum((row["user_id"], p) in test_pos for p in range(row["position"]))
    no_valid = temporal_split(inter, test_fraction=0.1, valid_fraction=0.0)
    assert (no_valid.df.role != "valid").all()
    assert make_split(inter, "temporal", test_fraction=0.1).kind == "temporal"
    with pytest.raises(DataError, match="leave no training data"):
        temporal_split(inter, test_fraction=0.6, valid_fraction=0.5)
    with pytest.raises(DataError, match="unknown split kind"):
        make_split(inter, "random")


def test_interactions_validation():
    with pytest.raises(DataError, match=r"lack the column\(s\) \['timestamp'\].*columns found"):
        Interactions(pd.DataFrame({"user_id": [1], "item_id": [2]}))
    with pytest.raises(DataError, match="must be numeric"):
        Interactions(pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": ["yesterday"]}))
    with pytest.raises(DataError, match="missing values"):
        Interactions(pd.DataFrame({"user_id": [1, None], "item_id": [2, 3], "timestamp": [1, 2]}))
    with pytest.raises(DataError, match="empty"):
        leave_one_out(Interactions(pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []})))
    inter = Interactions(pd.DataFrame({"user_id": [1.0, 2.0], "item_id": [3, 4], "timestamp": [1.7, 2.2]}))
    assert inter.df["user_id"].tolist() == ["1", "2"] and inter.df["timestamp"].tolist() == [1, 2]
