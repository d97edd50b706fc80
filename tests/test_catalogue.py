"""New items without retraining (issue 25): ``sidkit.models.catalogue.add_items``.

A tiny causal SID model is trained on clustered users (user u only ever interacts with
items of cluster ``u % 5``; SID = (cluster, slot)); items of slot 5 are never seen.
Added afterwards with their content SID (their cluster), the model recommends them to
the users of their cluster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sidkit.config import TrainConfig
from sidkit.data import Interactions, leave_one_out
from sidkit.errors import ArtifactError, DataError
from sidkit.eval import SequenceData
from sidkit.models import CausalSID, Recommender
from sidkit.models.catalogue import MAX_ADD_ITEMS, add_items, check_new_ids, item_sids
from sidkit.types import Codes

N_CLUSTERS, WARM_SLOTS = 5, 5
TINY = {"hidden": 32, "n_layers": 1, "n_heads": 2, "max_len": 6, "dropout": 0.0, "beam": 10}
TRAIN = TrainConfig(epochs=15, patience=15, lr=1e-2, warmup_steps=0, batch_size=32, eval_every=5)


def warm_slots(c):
    """Slots of cluster c's warm items: 0..5 but c (the new item's slot, so every slot token
    is trained, never after prefix c)."""
    return [j for j in range(WARM_SLOTS + 1) if j != c]


def warm_id(c, j):
    return f"w{c}{warm_slots(c)[j]}"


def new_id(c):
    return f"n{c}"


def clustered_data(n_users=50, length=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        c = u % N_CLUSTERS
        for t in range(length):
            rows.append((f"u{u:02d}", warm_id(c, int(rng.integers(WARM_SLOTS))), t))
    return SequenceData.from_split(leave_one_out(Interactions(pd.DataFrame(
        rows, columns=["user_id", "item_id", "timestamp"]))))


def warm_codes():
    ids = [warm_id(c, j) for c in range(N_CLUSTERS) for j in range(WARM_SLOTS)]
    codes = np.array([[c, warm_slots(c)[j]] for c in range(N_CLUSTERS) for j in range(WARM_SLOTS)])
    return Codes(codes, (N_CLUSTERS, WARM_SLOTS + 1), collision_rule="extra_level", item_ids=np.array(ids))


@pytest.fixture(scope="module")
def fitted():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    data = clustered_data()
    torch.manual_seed(0)
    model = CausalSID(**TINY).fit(data, codes=warm_codes(), train=TRAIN, seed=0, device="cpu", progress=False)
    yield data, model
    torch.set_num_threads(old)


def _new_codes(last=None, rule="extra_level"):
    ids = [new_id(c) for c in range(N_CLUSTERS)]
    lasts = list(range(N_CLUSTERS)) if last is None else [last] * N_CLUSTERS
    return ids, Codes(np.array([[c, t] for c, t in enumerate(lasts)]), (N_CLUSTERS, max(max(lasts) + 1, 6)),
                      collision_rule=rule, item_ids=np.array(ids))


def _cluster_histories(model, c, n=3):
    ids = [warm_id(c, j) for j in range(n)]
    pos = np.searchsorted(model.item_ids_, ids)
    return np.asarray(pos + 1)[None, :]


def _top_excluding_cluster(model, c, k=1):
    """Top-k for a history of cluster c with every warm item of cluster c excluded."""
    hist = _cluster_histories(model, c)
    ex = np.zeros((1, model.n_items), bool)
    ex[0, np.searchsorted(model.item_ids_, [warm_id(c, j) for j in range(WARM_SLOTS)])] = True
    return [str(model.item_ids_[i]) for i in model.recommend(hist, k, exclude=ex)[0]]


def test_added_items_are_recommended_for_matching_content(fitted):
    data, model = fitted
    ids, codes = _new_codes()
    before_ids = model.item_ids_.copy()
    new = add_items(model, ids, codes)
    # the input model is untouched
    assert np.array_equal(model.item_ids_, before_ids) and model.n_items == N_CLUSTERS * WARM_SLOTS
    assert new.n_items == N_CLUSTERS * (WARM_SLOTS + 1)
    assert list(new.item_ids_) == sorted(new.item_ids_.tolist())
    assert new.module_ is model.module_                        # no retraining, shared weights
    for c in range(N_CLUSTERS):
        assert _top_excluding_cluster(new, c) == [new_id(c)], c
    # the warm items keep their SIDs
    warm = [warm_id(c, j) for c in range(N_CLUSTERS) for j in range(WARM_SLOTS)]
    assert np.array_equal(item_sids(new, warm), item_sids(model, warm))
    assert item_sids(new, [new_id(2)]).tolist() == [[2, 2]]


def test_catalogue_hash_matches_data_with_the_merged_catalogue(fitted):
    data, model = fitted
    ids, codes = _new_codes()
    new = add_items(model, ids, codes)
    merged = SequenceData(new.item_ids_.copy(), data.users, data.tokens, data.offsets, data.roles, data.kind)
    new.check_catalogue(merged)
    with pytest.raises(ArtifactError):
        new.check_catalogue(data)
    with pytest.raises(ArtifactError):
        model.check_catalogue(merged)


def test_save_load_round_trip(fitted, tmp_path):
    _, model = fitted
    ids, codes = _new_codes()
    new = add_items(model, ids[:4], codes.codes[:4])
    new.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.item_ids_.tolist() == new.item_ids_.tolist()
    assert back.catalogue_hash_ == new.catalogue_hash_
    assert np.array_equal(back.tokens_.codes.codes, new.tokens_.codes.codes)
    hist = np.vstack([_cluster_histories(new, c) for c in range(N_CLUSTERS)])
    assert np.array_equal(back.recommend(hist, 8), new.recommend(hist, 8))
    # and it takes more items after loading
    more = add_items(back, [ids[4]], np.array([[4, 9]]), renumber=True)
    assert item_sids(more, [ids[4]]).tolist() == [[4, 4]]
    assert _top_excluding_cluster(more, 4) == [ids[4]]


def test_out_of_range_disambiguation_token_is_renumbered(fitted):
    _, model = fitted
    ids, codes = _new_codes(last=9)                     # encode_new's count + rank beyond the codebook
    new = add_items(model, ids, codes)
    assert item_sids(new, ids).tolist() == [[c, c] for c in range(N_CLUSTERS)]
    # a second batch in the same cluster: no free last token left
    with pytest.raises(DataError, match="taken"):
        add_items(new, ["n0b"], Codes(np.array([[0, 7]]), (N_CLUSTERS, 8), collision_rule="extra_level"))
    # collision with a warm SID is moved to the free slot
    new2 = add_items(model, ["x"], Codes(np.array([[1, 0]]), (N_CLUSTERS, 6), collision_rule="extra_level"))
    assert item_sids(new2, ["x"]).tolist() == [[1, 1]]


def test_without_renumbering_collisions_and_range_are_errors(fitted):
    _, model = fitted
    with pytest.raises(DataError, match="already holds"):
        add_items(model, ["x"], np.array([[1, 0]]))
    with pytest.raises(DataError, match="outside the model's codebook"):
        add_items(model, ["x"], np.array([[1, 9]]))
    with pytest.raises(DataError, match="outside the model's codebook"):
        add_items(model, ["x"], np.array([[7, 0]]), renumber=True)       # only the last level is renumbered
    with pytest.raises(DataError, match="3 levels but the model.s SIDs have 2"):
        add_items(model, ["x"], np.array([[1, 0, 0]]))
    with pytest.raises(DataError, match="2 SIDs for 1"):
        add_items(model, ["x"], np.array([[1, 5], [2, 5]]))


@pytest.mark.parametrize("ids, match", [
    ([], "empty"),
    (["a", "a"], "twice"),
    (["w01"], "already in the model's catalogue"),
    (["ok", ""], "empty"),
    (["a\x00b"], "control character U\\+0000"),
    (["a\nb"], "control character U\\+000A"),
    ("abc", "single string"),
])
def test_bad_ids_are_one_data_error_and_change_nothing(fitted, ids, match):
    _, model = fitted
    before = (model.item_ids_.copy(), model.tokens_.codes.codes.copy(), model.catalogue_hash_)
    n = max(len(ids), 1) if not isinstance(ids, str) else 1
    with pytest.raises(DataError, match=match):
        add_items(model, ids, np.tile(np.array([[0, 5]]), (n, 1)))
    assert np.array_equal(model.item_ids_, before[0]) and np.array_equal(model.tokens_.codes.codes, before[1])
    assert model.catalogue_hash_ == before[2]


def test_batch_size_limit():
    with pytest.raises(DataError, match=f"at most {MAX_ADD_ITEMS}"):
        check_new_ids([f"x{i}" for i in range(MAX_ADD_ITEMS + 1)])
    assert len(check_new_ids([f"x{i}" for i in range(MAX_ADD_ITEMS)])) == MAX_ADD_ITEMS


def test_id_models_and_id_only_are_refused(fitted):
    from sidkit.models.popularity import Popularity

    data, _ = fitted
    pop = Popularity().fit(data)
    with pytest.raises(DataError, match="only generative SID models"):
        add_items(pop, ["x"], np.array([[0, 5]]))


def test_tiger_takes_new_items_and_keeps_its_user_tokens(tmp_path):
    from sidkit.models import TIGER

    data = clustered_data(n_users=10, length=5)
    m = TIGER(d_model=16, n_layers=1, n_heads=2, d_kv=8, d_ff=32, dropout=0.0, max_len=4, beam=10)
    m._set_catalogue(data)
    m.tokens_ = m._resolve_tokens(data, warm_codes())
    m.device_ = torch.device("cpu")
    torch.manual_seed(0)
    m.module_ = m.build_module(data.n_items).eval()
    ids, codes = _new_codes()
    new = add_items(m, ids, codes)
    assert new.tokens_.user_buckets == m.tokens_.user_buckets and new.tokens_.vocab_size == m.tokens_.vocab_size
    ex = np.ones((1, new.n_items), bool)
    j = int(np.searchsorted(new.item_ids_, ids[3]))
    ex[0, j] = False
    top = new.recommend(_cluster_histories(new, 3), 1, users=["u03"], exclude=ex)
    assert top.tolist() == [[j]]
    new.save(tmp_path / "t")
    assert Recommender.load(tmp_path / "t").item_ids_.tolist() == new.item_ids_.tolist()


def test_uniform_last_removes_the_new_items_handicap_of_an_untrained_last_token(fitted):
    """An added item's disambiguation token was never a target after its prefix: the model
    ranks it below every warm item of its cluster. Decoded with ``uniform_last`` it scores
    exactly like them (one in six of the cluster's probability)."""
    from sidkit.config import CausalSIDConfig
    from sidkit.errors import ConfigError

    _, model = fitted
    ids, codes = _new_codes()
    new = add_items(model, ids, codes)
    plain = {c: new.decode(_cluster_histories(new, c), 6) for c in range(N_CLUSTERS)}
    new.uniform_last = True
    try:
        for c in range(N_CLUSTERS):
            res = new.decode(_cluster_histories(new, c), 6)
            top = [str(new.item_ids_[i]) for i in res.items[0]]
            assert new_id(c) in top and all(t.startswith(("w" + str(c), "n" + str(c))) for t in top), (c, top)
            np.testing.assert_allclose(res.scores[0], res.scores[0, 0], rtol=0, atol=1e-5)   # all alike
            p = plain[c]
            was = float(p.scores[0][list(p.items[0]).index(list(new.item_ids_).index(new_id(c)))])
            assert was < float(p.scores[0].max()) - 1.0 and float(res.scores[0, 0]) > was
    finally:
        new.uniform_last = False
    with pytest.raises(ConfigError, match="ID-only model's one level is its last"):
        CausalSID(**TINY, id_only=True, uniform_last=True).fit(clustered_data(), train=TRAIN)
    semantic = Codes(warm_codes().codes, warm_codes().codebook_sizes, item_ids=warm_codes().item_ids)
    with pytest.raises(ConfigError, match="last level is semantic"):
        CausalSID(**TINY, uniform_last=True).fit(clustered_data(), codes=semantic, train=TRAIN)
    assert "uniform_last" not in CausalSIDConfig().fingerprint_dict()


def _assign_reference(old_codes, old_len, new, new_len, bad_last, sizes):
    """The rule of add_items as a plain loop: keep a valid last token no SID holds yet,
    then move the others, in order, to the smallest free one (-1: none free)."""
    taken = {}
    for c, ln in zip(old_codes.tolist(), old_len.tolist()):
        taken.setdefault((ln, tuple(c[:ln - 1])), set()).add(c[ln - 1])
    out, pending = new.copy(), []
    for r in range(len(out)):
        ln = int(new_len[r])
        s = taken.setdefault((ln, tuple(out[r, :ln - 1].tolist())), set())
        if not bad_last[r] and int(out[r, ln - 1]) not in s:
            s.add(int(out[r, ln - 1]))
        else:
            pending.append(r)
    for r in pending:
        ln = int(new_len[r])
        s = taken[(ln, tuple(out[r, :ln - 1].tolist()))]
        free = next((t for t in range(int(sizes[ln - 1])) if t not in s), None)
        out[r, ln - 1] = -1 if free is None else free
        if free is not None:
            s.add(free)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_last_token_assignment_equals_the_plain_loop(seed):
    """Random catalogues with crowded prefixes, repeated and out-of-range new SIDs and
    mixed lengths; the second half of the seeds with SIDs too wide for int64 keys."""
    from sidkit.models.catalogue import _assign_last_tokens
    from sidkit.models.sid_tokens import sid_keys

    rng = np.random.default_rng(seed)
    sizes = np.array([3, 2, 5]) if seed < 3 else np.array([2 ** 30, 2 ** 30, 5])
    W = len(sizes)
    low = np.array([3, 2, 5])
    pool = np.array([[a, b, c] for a in range(3) for b in range(2) for c in range(5)])
    old = pool[rng.permutation(len(pool))[:20]]
    old_len = np.full(len(old), W)
    short = rng.random(len(old)) < 0.2                         # a few shorter SIDs ([a, b], -1)
    old_len[short] = 2
    old[short, 2] = -1
    _, keep = np.unique(np.c_[old_len, old], axis=0, return_index=True)
    old, old_len = old[np.sort(keep)], old_len[np.sort(keep)]
    new = rng.integers(0, low, size=(40, W))
    new_len = np.where(rng.random(40) < 0.2, 2, W)
    new[new_len == 2, 2] = -1
    bad = rng.random(40) < 0.1
    new[bad, np.where(new_len[bad] == 2, 1, 2)] = 99 if seed % 2 else -1
    bad_last = bad.copy()
    assert (sid_keys(old, old_len, sizes) is None) == (seed >= 3)
    got = _assign_last_tokens(old, old_len, new, new_len, bad_last, sizes)
    want = _assign_reference(old, old_len, new, new_len, bad_last, sizes)
    np.testing.assert_array_equal(got, want)
