"""Ranking metrics and sequence building: exact values on hand-made cases."""

import math

import numpy as np
import pandas as pd
import pytest

from sidkit.data import Interactions, leave_one_out
from sidkit.errors import DataError
from sidkit.eval import (SequenceData, coverage_at_k, evaluate, mrr_at_k, ndcg_at_k, pad_left, ranking_metrics,
                         ranks_from_lists, ranks_from_scores, recall_at_k, topk_from_scores)


def test_metrics_exact_on_hand_made_ranks():
    ranks = np.array([0, 1, 4, 9, 25, -1])  # -1: not in the list
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 6)
    assert recall_at_k(ranks, 5) == pytest.approx(3 / 6)
    assert recall_at_k(ranks, 10) == pytest.approx(4 / 6)
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6)
    assert mrr_at_k(ranks, 20) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 6)
    m = ranking_metrics(ranks, None, 30)
    assert set(m) == {"recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@20"}
    assert m["recall@20"] == pytest.approx(4 / 6)


def test_ranks_from_scores_ties_go_to_the_lower_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1],
                       [0.5, 0.9, 0.5, 0.5, 0.1],
                       [1.0, 1.0, 1.0, 1.0, 1.0]])
    # row 0: target 2 ties with items 0 and 3; item 1 is higher, item 0 ties with a lower index
    np.testing.assert_array_equal(ranks_from_scores(scores, [2, 3, 4]), [2, 3, 4])
    np.testing.assert_array_equal(topk_from_scores(scores, 3), [[1, 0, 2], [1, 0, 2], [0, 1, 2]])
    # exclusion removes items before the target from the count, never the target itself
    ex = np.zeros_like(scores, dtype=bool)
    ex[0, [0, 1, 2]] = True
    assert ranks_from_scores(scores, [2, 3, 4], exclude=ex)[0] == 0
    np.testing.assert_array_equal(topk_from_scores(scores, 2, exclude=ex)[0], [3, 4])


def test_lists_shorter_than_k_and_invalid_slots():
    lists = np.array([[3, -1, 1], [2, 2, 0], [-1, -1, -1]])
    np.testing.assert_array_equal(ranks_from_lists(lists, [1, 2, 5]), [2, 0, -1])
    # k beyond the list length: a miss stays a miss, hits keep their rank
    assert recall_at_k(ranks_from_lists(lists, [1, 2, 5]), 50) == pytest.approx(2 / 3)
    assert coverage_at_k(lists, 10, 2) == pytest.approx(2 / 10)   # items 3 and 2
    assert coverage_at_k(lists, 10, 10) == pytest.approx(4 / 10)  # 3, 1, 2, 0


def test_bad_k_and_bad_targets():
    with pytest.raises(DataError, match="larger than the catalogue"):
        topk_from_scores(np.zeros((2, 4)), 5)
    with pytest.raises(DataError, match="positive integer"):
        recall_at_k(np.zeros(3, int), 0)
    with pytest.raises(DataError, match="target indices"):
        ranks_from_scores(np.zeros((1, 4)), [4])


def test_pad_left_truncates_and_pads():
    out = pad_left([[1, 2, 3], [4], []], 2)
    np.testing.assert_array_equal(out, [[2, 3], [0, 4], [0, 0]])
    np.testing.assert_array_equal(pad_left((np.array([1, 2, 3, 4]), np.array([3, 1, 0])), 4),
                                  [[0, 1, 2, 3], [0, 0, 0, 4], [0, 0, 0, 0]])


def _toy_split(seqs):
    rows = [(u, it, t) for u, s in seqs.items() for t, it in enumerate(s)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return leave_one_out(Interactions(df))


def test_sequence_data_eval_inputs_follow_the_protocol():
    split = _toy_split({"a": ["x", "y", "z", "w", "v"], "b": ["z", "y", "x"]})
    data = SequenceData.from_split(split)
    assert data.item_ids.tolist() == ["v", "w", "x", "y", "z"]
    test = data.eval_inputs("test", max_len=3)
    valid = data.eval_inputs("valid", max_len=3)
    tok = dict(zip(data.item_ids, range(1, 6)))
    # user a: test target v, input up to and including the validation item w, last 3 kept
    np.testing.assert_array_equal(test["history"], [[tok["y"], tok["z"], tok["w"]], [0, tok["z"], tok["y"]]])
    np.testing.assert_array_equal(test["targets"], [0, 2])          # v, x
    np.testing.assert_array_equal(valid["history"], [[tok["x"], tok["y"], tok["z"]], [0, 0, tok["z"]]])
    np.testing.assert_array_equal(valid["targets"], [1, 3])         # w, y
    # the seen-item lists are the whole (untruncated) histories
    np.testing.assert_array_equal(test["seen_offsets"], [0, 4, 6])
    # same as Split.examples
    ex = split.examples("test", max_len=3)
    assert [data.item_ids[h[h > 0] - 1].tolist() for h in test["history"]] == ex["history"].tolist()


def test_windows_cover_every_training_target_once():
    split = _toy_split({"a": [f"i{k:02d}" for k in range(14)], "b": ["i00", "i01", "i02", "i03"]})
    data = SequenceData.from_split(split)
    for max_len, stride in [(5, None), (5, 2), (3, 1), (20, None)]:
        inp, tgt = data.windows(max_len, stride)
        assert inp.shape == tgt.shape and inp.shape[1] == max_len
        # user a trains on i00..i11 (12 items, 11 targets), user b on i00..i01 (1 target)
        got = np.sort(tgt[tgt > 0])
        np.testing.assert_array_equal(got, np.sort(np.r_[np.arange(2, 13), [2]]))
        # every target follows its input by one step, and never follows padding
        assert ((tgt == 0) | (inp > 0)).all()
        nxt = np.c_[inp[:, 1:], np.zeros(len(inp), int)]
        both = (tgt > 0) & (nxt > 0)
        np.testing.assert_array_equal(tgt[both], nxt[both])


def test_empty_split_is_an_error():
    from sidkit.data import Split

    empty = Split(pd.DataFrame({"user_id": [], "item_id": [], "timestamp": [], "position": [], "role": []}))
    with pytest.raises(DataError, match="empty"):
        SequenceData.from_split(empty)


# --------------------------------------------------------------------- no free ranks
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise_in_rank_and_topk(bad):
    scores = np.array([[0.3, 0.2, 0.1], [0.1, bad, 0.2]], np.float32)
    with pytest.raises(DataError, match="NaN|infinite"):
        ranks_from_scores(scores, [0, 1])
    with pytest.raises(DataError, match="NaN|infinite"):
        topk_from_scores(scores, 2)


def test_an_all_nan_model_is_an_error_naming_the_model_and_the_batch():
    import torch

    from sidkit.models import Popularity

    class NaNModel(Popularity):
        name = "nan-test"

        def scores(self, history):
            return torch.full((len(history), self.n_items), float("nan"))

    data = SequenceData.from_split(_toy_split({"a": ["x", "y", "z"], "b": ["y", "z", "x"]}))
    m = NaNModel().fit(data)
    with pytest.raises(DataError, match=r"NaNModel's scores for test examples 0\.\.1"):
        evaluate(m, data, "test", ks=(1,), mrr_k=1, coverage_k=1)


def test_pessimistic_tie_rule_counts_every_tied_item_ahead():
    scores = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.5, 2.0, 1.0, 3.0]])
    targets = [0, 2, 2]
    r, tied = ranks_from_scores(scores, targets, return_ties=True)
    np.testing.assert_array_equal(r, [0, 2, 2])
    np.testing.assert_array_equal(tied, [True, True, False])
    np.testing.assert_array_equal(ranks_from_scores(scores, targets, tie_break="pessimistic"), [2, 2, 2])
    # an excluded item neither ranks ahead nor counts as a tie
    ex = np.zeros_like(scores, bool)
    ex[0, [1, 2]] = True
    r, tied = ranks_from_scores(scores, targets, exclude=ex, tie_break="pessimistic", return_ties=True)
    assert r[0] == 0 and not tied[0]
    with pytest.raises(DataError, match="tie_break"):
        ranks_from_scores(scores, targets, tie_break="optimistic")


def test_topk_and_rank_agree_under_many_ties():
    rs = np.random.default_rng(0)
    scores = rs.integers(0, 4, size=(50, 30)).astype(np.float32)     # heavy ties
    targets = rs.integers(0, 30, size=50)
    ex = rs.random((50, 30)) < 0.2
    ranks = ranks_from_scores(scores, targets, exclude=ex)
    ex[np.arange(50), targets] = False                                 # the target is never excluded
    top = topk_from_scores(scores, 30, exclude=ex)
    for b in range(50):
        assert top[b, ranks[b]] == targets[b]


def test_popularity_on_sparse_counts_reports_ties_and_the_pessimistic_rule_is_lower():
    from sidkit.models import Popularity

    # five items seen once in training: every one ties with the others
    seqs = {f"u{u}": [f"i{u}", f"i{(u + 1) % 5}", f"i{(u + 2) % 5}"] for u in range(5)}
    data = SequenceData.from_split(_toy_split(seqs))
    m = Popularity().fit(data)
    idx = evaluate(m, data, "test", ks=(1, 2), mrr_k=2, coverage_k=2)
    pes = evaluate(m, data, "test", ks=(1, 2), mrr_k=2, coverage_k=2, tie_break="pessimistic")
    assert idx["tie_rate"] == pes["tie_rate"] == 1.0
    assert pes["tie_break"] == "pessimistic" and idx["tie_break"] == "index"
    assert pes["recall@1"] == 0.0 and idx["recall@1"] > 0.0          # the index rule flatters item i0


@pytest.mark.parametrize("n, k", [(30, 1), (30, 5), (200, 10), (1000, 20), (50, 40)])
def test_topk_equals_the_first_k_of_a_stable_sort(n, k):
    """The top-k path (topk + tie fill) returns exactly a stable sort's first k, ties and
    excluded (-inf) items included."""
    import torch

    rs = np.random.default_rng(n + k)
    scores = rs.integers(0, 5, size=(64, n)).astype(np.float32)        # many ties
    scores[:4] = 0.0                                                     # whole rows tied
    ex = rs.random((64, n)) < 0.3
    ex[4, :] = True                                                      # nothing left but excluded items
    ref = torch.sort(-torch.as_tensor(scores).masked_fill(torch.as_tensor(ex), float("-inf")), dim=1,
                     stable=True).indices[:, :k].numpy()
    np.testing.assert_array_equal(topk_from_scores(scores, k, exclude=ex), ref)
    np.testing.assert_array_equal(topk_from_scores(scores, k),
                                  torch.sort(-torch.as_tensor(scores), dim=1, stable=True).indices[:, :k].numpy())


@pytest.mark.parametrize("tie_break", ["index", "pessimistic"])
def test_ranks_from_scores_equal_a_plain_count_on_random_tied_scores(tie_break):
    """The counting shortcut (ties resolved only in tied rows) against the definition, on
    small integer scores (many ties, some rows without), with and without exclusions."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        B, N = int(rng.integers(1, 30)), int(rng.integers(2, 40))
        scores = rng.integers(0, int(rng.integers(2, 60)), (B, N)).astype(np.float32)
        targets = rng.integers(0, N, B)
        ex = rng.random((B, N)) < 0.3 if trial % 2 else None
        want = np.empty(B, np.int64)
        for b in range(B):
            s = scores[b].astype(np.float64).copy()
            if ex is not None:
                s[ex[b] & (np.arange(N) != targets[b])] = -np.inf
            st, others = s[targets[b]], np.arange(N) != targets[b]
            tied = others & (s == st)
            if tie_break == "index":
                tied &= np.arange(N) < targets[b]
            want[b] = int(((s > st) | tied).sum())
        got = ranks_from_scores(scores, targets, exclude=ex, tie_break=tie_break)
        np.testing.assert_array_equal(got, want)
