"""SID token data: vocabulary layout, history <-> token stream round trips, user tokens, files, errors."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidkit.errors import ArtifactError, DataError
from sidkit.eval.sequences import pad_left
from sidkit.models.sid_tokens import BOS, END, EOS, PAD, SIDTokens, user_bucket
from sidkit.types import Codes


def _var_codes():
    return Codes(np.array([[0, -1, -1], [0, 1, -1], [1, 0, 2], [1, -1, -1], [1, 1, 0]]), (2, 2, 3),
                 lengths=np.array([1, 2, 3, 1, 3]), item_ids=np.array(["a", "b", "c", "d", "e"]))


def test_vocabulary_layout_with_user_tokens():
    sid = SIDTokens(Codes(np.array([[0, 2], [1, 0]]), (2, 3)), user_buckets=2000)
    assert (PAD, BOS, EOS) == (0, 1, 2) and sid.end_token is None
    np.testing.assert_array_equal(sid.level_offsets, [3, 5])
    assert sid.user_offset == 8 and sid.vocab_size == 2008
    np.testing.assert_array_equal(sid.level_of([0, 2, 3, 4, 5, 7, 8, 2007]), [-1, -1, 0, 0, 1, 1, -1, -1])
    ut = sid.user_tokens(["u1", "u2"])
    assert ((ut >= 8) & (ut < 2008)).all()


def test_history_tokens_exact_and_round_trip():
    sid = SIDTokens(_var_codes())
    # item tokens: 0:[4,3,0] 1:[4,7,3] 2:[5,6,10] 3:[5,3,0] 4:[5,7,8]
    hist = pad_left([[1, 3], [5, 4, 2], []], 4)          # catalogue index + 1
    stream = sid.history_tokens(hist)
    assert stream.shape == (3, 12)
    np.testing.assert_array_equal(stream[0, -5:], [4, END, 5, 6, 10])
    assert (stream[0, :-5] == PAD).all()
    np.testing.assert_array_equal(stream[1, -8:], [5, 7, 8, 5, END, 4, 7, END])
    assert (stream[2] == PAD).all()
    back = sid.stream_items(stream)
    np.testing.assert_array_equal(back, pad_left([[1, 3], [5, 4, 2], []], 3))
    # truncation keeps the newest tokens
    np.testing.assert_array_equal(sid.history_tokens(hist, max_len=4)[1], [END, 4, 7, END])


def test_round_trip_with_user_tokens_and_random_histories():
    rs = np.random.default_rng(0)
    sid = SIDTokens(_var_codes(), user_buckets=2000)
    seqs = [rs.integers(1, 6, size=rs.integers(0, 7)).tolist() for _ in range(50)]
    hist = pad_left(seqs, 6)
    users = [f"user{i}" for i in range(50)]
    stream = sid.history_tokens(hist, users=users)
    first = stream[np.arange(50), np.argmax(stream != PAD, axis=1)]      # first non-pad token = user token
    np.testing.assert_array_equal(first, sid.user_tokens(users))
    H = max(len(s) for s in seqs)
    np.testing.assert_array_equal(sid.stream_items(stream), pad_left(seqs, H))
    np.testing.assert_array_equal(sid.items_of(sid.sid_tokens(np.arange(5))), np.arange(5))


def test_user_bucket_is_stable_across_processes():
    ids = ["1", "42", "user-é", "943"]
    here = user_bucket(ids).tolist()
    code = ("import sys; from sidkit.models.sid_tokens import user_bucket; "
            "print(user_bucket(sys.argv[1:]).tolist())")
    outs = {subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout.strip() for seed in ("1", "2")}
    assert outs == {str(here)}
    assert all(0 <= b < 2000 for b in here)
    assert len(set(user_bucket([str(i) for i in range(1000)]).tolist())) > 700   # spread over buckets


def test_save_load_round_trip(tmp_path):
    sid = SIDTokens(_var_codes(), user_buckets=16)
    sid.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["sid_tokens.json", "sid_tokens.safetensors"]
    back = SIDTokens.load(tmp_path / "tok")
    np.testing.assert_array_equal(back.item_tokens, sid.item_tokens)
    assert back.vocab_size == sid.vocab_size and back.user_buckets == 16
    np.testing.assert_array_equal(back.codes.item_ids, sid.codes.item_ids)
    with pytest.raises(ArtifactError, match="no SID token data"):
        SIDTokens.load(tmp_path / "nothing")


def test_from_codes_reorders_rows_to_the_catalogue():
    sid = SIDTokens.from_codes(_var_codes(), item_ids=["e", "a", "c"])
    np.testing.assert_array_equal(sid.item_tokens[:, 0], [5, 4, 5])
    np.testing.assert_array_equal(sid.codes.item_ids, ["e", "a", "c"])
    with pytest.raises(DataError, match=r"have no SID.*'zz'"):
        SIDTokens.from_codes(_var_codes(), item_ids=["a", "zz"])


def test_collision_error_names_the_sid_and_items():
    codes = Codes(np.array([[0, 1], [1, 1], [0, 1], [1, 0]]), (2, 2))
    with pytest.raises(DataError, match=r"SID \[0, 1\] is shared by items \[0, 2\]"):
        SIDTokens(codes)
    # same tokens at different lengths are no collision (END separates them)
    SIDTokens(Codes(np.array([[0, -1], [0, 1]]), (2, 2), lengths=np.array([1, 2])))


def test_unknown_items_are_errors():
    sid = SIDTokens(_var_codes())
    with pytest.raises(DataError, match=r"history tokens hold values outside 0..5"):
        sid.history_tokens(np.array([[0, 6]]))
    with pytest.raises(DataError, match=r"item indices hold values outside 0..4"):
        sid.sid_tokens([0, -1])
    with pytest.raises(DataError, match="2-D integer"):
        sid.history_tokens(np.array([1, 2]))
    with pytest.raises(DataError, match="maps to no item"):
        sid.stream_items(np.array([[4, 6, 10]]))                  # (0, 0, 2) is no SID
    with pytest.raises(DataError, match="ends inside a SID"):
        sid.stream_items(np.array([[5, 6, 10, 4]]))
    with pytest.raises(DataError, match="no user tokens"):
        sid.user_tokens(["u"])


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 10_000),
       variable=st.booleans(), max_len=st.integers(1, 6), users=st.booleans())
def test_property_history_stream_round_trip(sizes, seed, variable, max_len, users):
    rs = np.random.default_rng(seed)
    L = len(sizes)
    raw = np.stack([rs.integers(0, k, size=60) for k in sizes], 1)
    lengths = rs.integers(1, L + 1, size=60) if variable else np.full(60, L)
    raw = np.where(np.arange(L)[None, :] < lengths[:, None], raw, -1)
    _, first = np.unique(np.c_[raw, lengths], axis=0, return_index=True)
    codes = Codes(raw[first], tuple(sizes), lengths=lengths[first])
    sid = SIDTokens(codes, user_buckets=7 if users else 0)
    seqs = [rs.integers(1, sid.n_items + 1, size=rs.integers(0, max_len + 1)).tolist() for _ in range(8)]
    hist = pad_left(seqs, max_len)
    stream = sid.history_tokens(hist, users=[f"u{i}" for i in range(8)] if users else None)
    assert stream.shape == (8, max_len * L + users)
    H = max(max(len(q) for q in seqs), 1)
    np.testing.assert_array_equal(sid.stream_items(stream), pad_left(seqs, H))
    np.testing.assert_array_equal(sid.items_of(sid.item_tokens), np.arange(sid.n_items))
