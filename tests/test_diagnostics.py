"""Exact small-case tests of sidkit.diagnostics (formulas: docs/diagnostics.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sidkit.diagnostics import (
    analytic_overlap,
    auc_ties_half,
    bhattacharyya_kernel,
    collisions,
    compare_codes,
    data_codewords,
    detect_hourglass,
    diagnose,
    effective_capacity,
    entropy_bits,
    expected_overlap,
    fidelity,
    gini,
    overlap_from_confusion,
    overlap_from_labels,
    perturbation_overlap,
    prefix_structure,
    shared_prefix_length,
    sid_overlap,
    soft_matching,
    top_share,
    usage,
    usage_stats,
)
from sidkit.errors import DataError
from sidkit.types import Codes


class TinyRQ:
    """Stand-in residual quantizer (numpy, nearest codeword per level) with codebooks_."""

    def __init__(self, codebooks):
        self.codebooks_ = np.asarray(codebooks, dtype=np.float64)  # (L, K, d)

    @classmethod
    def fit(cls, X, K=8, L=2, iters=10, seed=0):
        g = np.random.default_rng(seed)
        R = np.asarray(X, dtype=np.float64).copy()
        cbs = []
        for _ in range(L):
            C = R[g.choice(len(R), K, replace=False)].copy()
            for _ in range(iters):
                a = ((R[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)
                for k in range(K):
                    if (a == k).any():
                        C[k] = R[a == k].mean(0)
            a = ((R[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)
            R = R - C[a]
            cbs.append(C)
        return cls(np.stack(cbs))

    def encode(self, X):
        R = np.asarray(X, dtype=np.float64).copy()
        out = []
        for C in self.codebooks_:
            d2 = (R * R).sum(1)[:, None] + (C * C).sum(1)[None] - 2 * R @ C.T
            a = d2.argmin(1)
            out.append(a)
            R = R - C[a]
        L, K, _ = self.codebooks_.shape
        return Codes(np.stack(out, 1), (K,) * L, method="tiny_rq")

    def decode(self, codes):
        c = codes.codes if isinstance(codes, Codes) else np.asarray(codes)
        return sum(self.codebooks_[l][c[:, l]] for l in range(c.shape[1]))


def C(arr, sizes, **kw):
    return Codes(np.asarray(arr, dtype=np.int64), tuple(sizes), **kw)


# ------------------------------------------------------------------ usage
def test_uniform_usage_entropy_gini():
    K = 8
    codes = C(np.repeat(np.arange(K), 5)[:, None], [K])
    u = usage(codes)[0]
    assert u["entropy_bits"] == pytest.approx(math.log2(K))
    assert u["norm_entropy"] == pytest.approx(1.0)
    assert u["perplexity"] == pytest.approx(K)
    assert u["gini"] == pytest.approx(0.0)
    assert u["std_counts"] == pytest.approx(0.0)
    assert u["used"] == K and u["counts"] == [5] * K
    assert u["inverse_simpson"] == pytest.approx(K)
    assert u["top1pct_share"] == pytest.approx(1 / K)


def test_single_code_gini_and_entropy():
    K = 10
    codes = C(np.full((7, 1), 3), [K])
    u = usage(codes)[0]
    assert u["gini"] == pytest.approx((K - 1) / K)
    assert u["entropy_bits"] == 0.0 and u["perplexity"] == 1.0 and u["used"] == 1
    assert u["top1pct_share"] == 1.0
    assert u["std_counts"] == pytest.approx(np.std([7] + [0] * 9))


def test_small_stats():
    assert gini([1, 3]) == pytest.approx(0.25)  # (2*1-3)*1+(2*2-3)*3 = 2 ; 2/(2*4)
    assert entropy_bits([1, 1, 2]) == pytest.approx(1.5)
    assert top_share(np.arange(200), 0.01) == pytest.approx((199 + 198) / np.arange(200).sum())
    s = usage_stats(np.zeros(4, dtype=int))
    assert s["entropy_bits"] == 0 and s["gini"] == 0


# ----------------------------------------------------------------- prefix
def test_conditional_entropy_fanout_sparsity():
    # level 1: parents 0 (4 items) and 1 (4 items); level 2: parent 0 -> {0,1} uniform,
    # parent 1 -> always 2.  H(c2|c1) = 0.5*1 + 0.5*0 = 0.5 bits.
    arr = [[0, 0], [0, 1], [0, 0], [0, 1], [1, 2], [1, 2], [1, 2], [1, 2]]
    p = prefix_structure(C(arr, [2, 4]))
    assert p[0]["cond_entropy_bits"] == pytest.approx(1.0)
    assert p[1]["cond_entropy_bits"] == pytest.approx(0.5)
    assert p[1]["norm_cond_entropy"] == pytest.approx(0.25)
    assert (p[1]["children_mean"], p[1]["children_min"], p[1]["children_max"]) == (1.5, 1, 2)
    assert p[1]["children_hist"] == [0, 1, 1]
    assert p[0]["n_parents"] == 1 and p[0]["children_mean"] == 2
    # depth 1: 2 prefixes of min(8, 2) -> 0; depth 2: 3 of min(8, 8) -> 5/8
    assert p[0]["path_sparsity"] == pytest.approx(0.0)
    assert p[1]["n_prefixes"] == 3
    assert p[1]["path_sparsity"] == pytest.approx(1 - 3 / 8)


def test_collisions():
    arr = [[0, 0], [0, 0], [0, 0], [1, 1], [1, 1], [2, 0]]
    c = collisions(C(arr, [3, 2]))
    assert c["n_unique"] == 3
    assert c["rate"] == pytest.approx(3 / 6)
    assert c["share_in_collision"] == pytest.approx(5 / 6)
    assert c["largest_group"] == 3 and c["n_groups"] == 2
    assert collisions(C([[0], [1]], [2]))["rate"] == 0


def test_variable_length_prefix_and_lcp():
    codes = C([[0, 1, 2], [0, 1, -1], [0, 2, 2]], [3, 3, 3], lengths=[3, 2, 3])
    assert shared_prefix_length(codes, [0, 0, 1], [1, 2, 1]).tolist() == [2, 1, 2]
    u = usage(codes)
    assert u[2]["n"] == 2  # the short SID does not count at level 3


def test_auc_and_soft_matching():
    assert auc_ties_half([2, 1], [1, 0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert auc_ties_half([1], [1]) == 0.5
    arr = [[0, 0], [0, 1], [1, 0], [1, 1]]
    codes = C(arr, [2, 2])
    pairs = np.array([[0, 1], [2, 3]])        # shared prefix 1, 1
    neg = np.array([[0, 2], [1, 3], [0, 1]])  # 0, 0, 1
    sm = soft_matching(codes, pairs, neg)
    assert sm["mean_shared_prefix_pairs"] == 1.0
    assert sm["mean_shared_prefix_random"] == pytest.approx(1 / 3)
    assert sm["auc"] == pytest.approx((1 + 1 + 0.5) * 2 / 6)
    assert sm["hist_pairs"] == [0, 2, 0]
    with pytest.raises(DataError):
        soft_matching(codes, np.array([[0, 9]]))
    rnd = soft_matching(codes, pairs)  # default random negatives
    assert rnd["n_random"] == 2


# ---------------------------------------------------------------- overlap
def test_keff_uniform_far_apart_is_K():
    K = 4
    E = np.eye(K) * 100.0
    assert effective_capacity(np.ones(K), E, sigma=1.0) == pytest.approx(K)
    assert expected_overlap(np.ones(K), E, sigma=0.0) == pytest.approx(1 / K)


def test_identical_codewords_halve_keff():
    E = np.zeros((2, 3))
    assert effective_capacity([1, 1], E, sigma=1.0) == pytest.approx(1.0)
    assert effective_capacity([1, 1], E, sigma=0.0) == pytest.approx(1.0)
    E4 = np.array([[0, 0], [0, 0], [50, 0], [50, 0]], dtype=float)  # two identical pairs
    assert effective_capacity(np.ones(4), E4, sigma=1.0) == pytest.approx(2.0)


def test_kernel_value():
    E = np.array([[0.0, 0.0], [2.0, 0.0]])
    k = bhattacharyya_kernel(E, 1.0)
    assert k[0, 1] == pytest.approx(math.exp(-4 / 8))
    pi = np.array([0.25, 0.75])
    o = 0.25**2 + 0.75**2 + 2 * 0.25 * 0.75 * math.exp(-0.5)
    assert expected_overlap(pi, E, 1.0) == pytest.approx(o)


def test_known_confusion_matrix():
    Cm = np.array([[0.8, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    pi = np.array([0.5, 0.25, 0.25])
    r = overlap_from_confusion(Cm, pi)
    col = pi @ np.sqrt(Cm)
    assert r["O_emp"] == pytest.approx(float(col @ col))
    # by hand: col = [.5*sqrt(.8), .5*sqrt(.2)+.25+.25*sqrt(.5), .25*sqrt(.5)]
    c0, c1, c2 = 0.5 * math.sqrt(0.8), 0.5 * math.sqrt(0.2) + 0.25 + 0.25 * math.sqrt(0.5), 0.25 * math.sqrt(0.5)
    assert r["O_emp"] == pytest.approx(c0**2 + c1**2 + c2**2)
    # pi^T C pi: pi'=[.4,.475,.125]; . pi = .2+.11875+.03125
    assert r["O_confusion"] == pytest.approx(0.35)
    # identity confusion -> inverse Simpson
    r = overlap_from_confusion(np.eye(3), pi)
    assert r["K_eff_emp"] == pytest.approx(1 / (pi**2).sum())
    assert r["K_eff_confusion"] == pytest.approx(1 / (pi**2).sum())
    # the label-based estimator reproduces the same matrix from samples
    a = np.array([0] * 10 + [1] * 5 + [2] * 5)
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [1] * 2 + [2] * 3)
    b[15:20] = [1, 1, 2, 2, 2]
    Ce = np.array([[0.8, 0.2, 0], [0, 1, 0], [0, 0.4, 0.6]])
    assert overlap_from_labels(a, b)["O_emp"] == pytest.approx(overlap_from_confusion(Ce, pi)["O_emp"])
    assert overlap_from_labels(a, b)["O_confusion"] == pytest.approx(
        overlap_from_confusion(Ce, pi)["O_confusion"])


def test_sid_overlap_exact_and_sampled():
    # 2 levels, K=2: codewords far apart -> O = sum pi_a^2 over distinct SIDs
    arr = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 25)
    codes = C(arr, [2, 2])
    cw = [np.array([[0.0], [100.0]]), np.array([[0.0], [100.0]])]
    r = sid_overlap(codes, cw, [1.0])
    assert r["exact"] and r["K_eff"][0] == pytest.approx(4.0)
    # identical level-2 codewords -> SIDs (a,0) and (a,1) merge -> K_eff = 2
    cw2 = [cw[0], np.zeros((2, 1))]
    assert sid_overlap(codes, cw2, [1.0])["K_eff"][0] == pytest.approx(2.0)
    # sampled estimator is unbiased-ish: all 100 items sampled -> exact value
    rs = sid_overlap(codes, cw, [1.0], max_exact=1, n_sample=100)
    assert not rs["exact"] and rs["K_eff"][0] == pytest.approx(4.0)


def test_analytic_overlap_scale_zero_is_simpson():
    arr = np.array([[0], [0], [0], [1]])
    codes = C(arr, [3])
    ov = analytic_overlap(codes, [np.array([[0.0], [1.0], [5.0]])], rms=1.0, scales=(0.0, 1e3))
    assert ov["levels"][0]["K_eff"][0] == pytest.approx(1 / (0.75**2 + 0.25**2))
    assert ov["levels"][0]["K_eff"][1] == pytest.approx(1.0, rel=1e-4)  # huge noise -> 1 code


# --------------------------------------------------------- tokenizer-based
@pytest.fixture(scope="module")
def blobs():
    g = np.random.default_rng(0)
    centers = g.normal(size=(6, 5)) * 5
    X = centers[g.integers(0, 6, 600)] + g.normal(size=(600, 5)) * 0.5
    return X.astype(np.float32)


def test_fidelity_with_codebooks(blobs):
    tok = TinyRQ.fit(blobs, K=6, L=2)
    codes = tok.encode(blobs)
    f = fidelity(codes, blobs, tok)
    assert f["source"] == "codebooks"
    r1, r2 = f["levels"][0]["rel_mse"], f["levels"][1]["rel_mse"]
    assert 0 < r2 < r1 < 1
    xh = tok.decode(codes)
    exact = ((blobs - xh) ** 2).sum() / (blobs.astype(float) ** 2).sum()
    assert r2 == pytest.approx(exact, rel=1e-5)
    assert f["levels"][1]["cosine"] > f["levels"][0]["cosine"] > 0.5
    # prefix-mean reconstruction is at least as good as the codewords (least squares)
    assert f["prefix_mean"][0]["rel_mse"] <= r1 * (1 + 1e-6)
    # prefix-mean identities against a brute-force reconstruction
    for l in range(2):
        keys = codes.prefix_keys(l + 1)
        _, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(-1)
        means = np.stack([blobs[inv == g].astype(float).mean(0) for g in range(inv.max() + 1)])
        pm = means[inv]
        X64 = blobs.astype(float)
        rel = ((X64 - pm) ** 2).sum() / (X64**2).sum()
        cos = ((X64 * pm).sum(1) / np.linalg.norm(X64, axis=1) / np.linalg.norm(pm, axis=1)).mean()
        assert f["prefix_mean"][l]["rel_mse"] == pytest.approx(rel, rel=1e-5)
        assert f["prefix_mean"][l]["cosine"] == pytest.approx(cos, rel=1e-6)

    class DecodeOnly:  # decodes SID prefixes (PAD -> no contribution)
        def decode(self, c):
            return sum(np.where(c.codes[:, l, None] >= 0, tok.codebooks_[l][c.codes[:, l]], 0.0)
                       for l in range(c.n_levels))

    g = fidelity(codes, blobs, DecodeOnly())
    assert g["source"] == "decode"
    assert g["levels"][0]["rel_mse"] == pytest.approx(r1, rel=1e-6)
    assert g["levels"][1]["rel_mse"] == pytest.approx(r2, rel=1e-6)

    class FullOnly:  # cannot decode a prefix
        def decode(self, c):
            if (c.codes < 0).any():
                raise ValueError("PAD")
            return tok.decode(c)

    g = fidelity(codes, blobs, FullOnly())
    assert g["levels"][0] is None and g["levels"][1]["rel_mse"] == pytest.approx(r2, rel=1e-6)
    h = fidelity(codes, blobs, reconstructions=[None, xh])
    assert h["levels"][1]["rel_mse"] == pytest.approx(r2, rel=1e-6)


def test_data_codewords_recover_residual_codebook():
    X = np.array([[0.0, 0], [0, 2], [10, 0], [10, 2]])
    codes = C([[0, 0], [0, 1], [1, 0], [1, 1]], [2, 2])
    cw = data_codewords(codes, X)
    np.testing.assert_allclose(cw[0], [[0, 1], [10, 1]])
    np.testing.assert_allclose(cw[1], [[0, -1], [0, 1]])


def test_perturbation_overlap(blobs):
    tok = TinyRQ.fit(blobs, K=6, L=2)
    mc = perturbation_overlap(tok, blobs, scales=(0.0, 0.05, 3.0), X2=blobs, random_state=1)
    r0, r1, r2 = mc["runs"]
    assert r0["flip_rate"] == [0.0, 0.0] and r0["sid_change_rate"] == 0.0
    assert r0["mean_shared_prefix"] == 2.0
    clean = tok.encode(blobs)
    pi = np.bincount(clean.codes[:, 0], minlength=6) / len(blobs)
    assert r0["levels"][0]["K_eff_emp"] == pytest.approx(1 / (pi**2).sum())
    assert r2["sid_change_rate"] > r1["sid_change_rate"]
    assert r2["levels"][0]["K_eff_emp"] < r0["levels"][0]["K_eff_emp"]
    assert mc["paired"]["sid_change_rate"] == 0.0
    sub = perturbation_overlap(tok, blobs, scales=(0.1,), n_sample=100)
    assert sub["n_sampled"] == 100


def test_compare_codes_hand_case():
    a = C([[0, 0], [0, 1], [1, 1], [1, 0]], [2, 2])
    b = C([[0, 0], [0, 0], [0, 1], [1, 0]], [2, 2])
    r = compare_codes(a, b)
    assert r["flip_rate"] == [0.25, 0.25]
    assert r["sid_change_rate"] == 0.5
    assert r["mean_shared_prefix"] == pytest.approx((2 + 1 + 0 + 2) / 4)


# --------------------------------------------------------------- hourglass
def _planted(n=4000, K=16, seed=0, middle_concentrated=True):
    g = np.random.default_rng(seed)
    c1 = g.integers(0, K, n)
    c3 = g.integers(0, K, n)
    if middle_concentrated:
        c2 = np.where(g.random(n) < 0.9, 0, g.integers(0, K, n))
    else:
        c2 = g.integers(0, K, n)
    return Codes(np.stack([c1, c2, c3], 1), (K, K, K))


def test_hourglass_planted_vs_uniform():
    res = diagnose(_planted(), monte_carlo=False)
    hg = res["hourglass"]
    assert hg["detected"] and hg["flagged_levels"] == [2]
    assert "level 2" in hg["verdict"] and "Hourglass" in hg["verdict"]
    assert hg["levels"][1]["gini"] > 0.8
    flat = detect_hourglass(usage(_planted(middle_concentrated=False)))
    assert not flat["detected"] and flat["verdict"].startswith("No hourglass")


# ---------------------------------------------------------------- diagnose
def test_diagnose_full_is_json(blobs):
    tok = TinyRQ.fit(blobs, K=6, L=2)
    codes = tok.encode(blobs)
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    res = diagnose(codes, blobs, tok, pairs, scales=(0.0, 0.1), n_mc=300)
    json.dumps(res, allow_nan=False)
    for key in ("meta", "usage", "prefix", "collisions", "fidelity", "overlap", "monte_carlo",
                "soft_matching", "hourglass", "codeword_map", "timing_s"):
        assert res[key] is not None, key
    assert res["overlap"]["codewords_source"] == "tokenizer"
    assert res["monte_carlo"]["n_sampled"] == 300
    # s = 0 analytic K_eff is the inverse Simpson index of each level
    for lv, u in zip(res["overlap"]["levels"], res["usage"]):
        assert lv["K_eff"][0] == pytest.approx(u["inverse_simpson"])
    only = diagnose(codes)
    assert only["fidelity"] is None and only["overlap"] is None and only["monte_carlo"] is None
    data = diagnose(codes, blobs)  # data-estimated codewords, no tokenizer
    assert data["overlap"]["codewords_source"] == "data" and data["monte_carlo"] is None
    with pytest.raises(DataError):
        diagnose(codes, blobs[:10])


def test_extra_level_is_left_out_of_geometry(blobs):
    tok = TinyRQ.fit(blobs, K=6, L=2)
    sem = tok.encode(blobs)
    extra = np.zeros(len(blobs), dtype=np.int64)
    order = np.lexsort(sem.codes.T[::-1])
    keys = sem.sid_keys()[order]
    run = np.concatenate([[0], np.cumsum(keys[1:] == keys[:-1])])
    start = np.maximum.accumulate(np.where(np.concatenate([[True], keys[1:] != keys[:-1]]), run, 0))
    extra[order] = run - start  # 0, 1, 2, ... inside each colliding group
    full = Codes(np.column_stack([sem.codes, extra]), (6, 6, int(extra.max()) + 1),
                 collision_rule="extra_level")
    assert not full.has_collisions()

    class WithExtra(TinyRQ):
        def encode(self, X):
            c = TinyRQ.encode(self, X)
            return Codes(np.column_stack([c.codes, np.zeros(len(X), np.int64)]),
                         c.codebook_sizes + (1,), collision_rule="extra_level")

        def decode(self, codes):
            return TinyRQ.decode(self, codes.replace(codes=codes.codes[:, :2],
                                                     codebook_sizes=codes.codebook_sizes[:2],
                                                     lengths=np.minimum(codes.lengths, 2)))

    t2 = WithExtra(tok.codebooks_)
    res = diagnose(full, blobs, t2, scales=(0.0, 0.1), n_mc=200)
    assert res["meta"]["semantic_levels"] == 2 and len(res["usage"]) == 3
    assert len(res["overlap"]["levels"]) == 2 and res["fidelity"]["source"] == "codebooks"
    assert len(res["monte_carlo"]["runs"][0]["flip_rate"]) == 2
    assert len(res["hourglass"]["levels"]) == 2
    assert res["collisions"]["rate"] == 0.0


def test_sid_overlap_sampled_estimator_matches_exact():
    g = np.random.default_rng(3)
    codes = C(np.stack([g.integers(0, 4, 800), g.integers(0, 5, 800)], 1), [4, 5])
    cw = [g.normal(size=(4, 3)), g.normal(size=(5, 3)) * 0.5]
    ex = sid_overlap(codes, cw, [0.0, 0.3, 1.0])
    full = sid_overlap(codes, cw, [0.0, 0.3, 1.0], max_exact=1, n_sample=800)
    np.testing.assert_allclose(full["O"], ex["O"], rtol=1e-9)
    sub = sid_overlap(codes, cw, [0.0, 0.3, 1.0], max_exact=1, n_sample=400, random_state=1)
    assert sub["O"][0] == pytest.approx(ex["O"][0])  # identical-SID part is exact
    np.testing.assert_allclose(sub["O"], ex["O"], rtol=0.1)


# semantic SIDs (0,0) x3, (0,1), (1,1) x2; the last level is TIGER's counter
_DISAMBIG = Codes(np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [1, 1, 0], [1, 1, 1]]),
                  (2, 2, 3), method="toy", collision_rule="extra_level")
_SEM = {"n_items": 6, "n_unique": 3, "rate": 0.5, "share_in_collision": 5 / 6,
        "largest_group": 3, "n_groups": 2}
_FINAL = {"n_items": 6, "n_unique": 6, "rate": 0.0, "share_in_collision": 0.0,
          "largest_group": 1, "n_groups": 0}


def test_semantic_collisions_count_before_the_disambiguation_token(tmp_path):
    from sidkit.cli import collision_lines
    from sidkit.diagnostics import write_report
    from sidkit.pipeline import sid_summary

    res = diagnose(_DISAMBIG)
    assert res["semantic_collisions"] == _SEM and res["collisions"] == _FINAL
    s = sid_summary(_DISAMBIG)
    assert s["semantic_collisions"] == _SEM and s["collisions"] == _FINAL
    lines = collision_lines(s)
    assert lines[0] == ("semantic collisions (before the disambiguation token): rate 0.5000, "
                        "items sharing their semantic SID 0.8333 (83.3%), largest group 3, "
                        "3 distinct semantic SIDs")
    assert lines[1] == "final SIDs (extra_level): collision rate 0.0000, largest group 1"
    md = write_report({"toy": res}, tmp_path)["md"].read_text()
    assert "| toy | semantic (before the disambiguation token) | 6 | 3 | 0.5 | 0.8333 | 3 | 2 | extra_level |" in md
    assert "| toy | final SID | 6 | 6 | 0 | 0 | 1 | 0 | extra_level |" in md
    # without a disambiguation token the semantic SIDs are the SIDs
    plain = _DISAMBIG.semantic()
    assert diagnose(plain)["semantic_collisions"] == diagnose(plain)["collisions"] == _SEM
    assert collision_lines(sid_summary(plain))[0].startswith(
        "semantic collisions (no disambiguation token): rate 0.5000, items sharing their SID 0.8333")


# ------------------------------------------------ member-distribution overlap (issue 11)
def test_member_overlap_two_point_cells_exact():
    """Members of code 0 all at -1, of code 1 all at +1 (codewords +-1): every member is
    1 from the plane at 0, so C_01 = C_10 = p = Phi(-1/sigma) and, with pi = (1/2, 1/2),
    O = 1/2 (1 + 2 sqrt(p (1 - p))), the model flip rate is p."""
    from scipy.special import ndtr

    X = np.array([[-1.0], [-1.0], [1.0], [1.0]])
    codes = C([[0], [0], [1], [1]], [2])
    E = [np.array([[-1.0], [1.0]])]
    ov = analytic_overlap(codes, E, rms=1.0, scales=(0.0, 0.5, 2.0), X=X, source="explicit")
    mem = ov["member"]["levels"][0]
    assert mem["O"][0] == pytest.approx(0.5)              # sigma = 0: inverse Simpson
    for i, s in enumerate((0.5, 2.0), start=1):
        p = float(ndtr(-1.0 / s))
        assert mem["flip_rate"][i] == pytest.approx(p)
        assert mem["O"][i] == pytest.approx(0.5 * (1 + 2 * math.sqrt(p * (1 - p))))
    # one level: the whole-SID figure is the level's
    assert ov["member"]["sid"]["O"] == pytest.approx(mem["O"])


def test_member_overlap_sees_spread_that_the_codeword_kernel_does_not():
    """Same codewords and usage, members near the boundary vs at the codewords: the
    codeword kernel gives the same O, the member model a larger O for the spread cells."""
    E = [np.array([[-1.0, 0.0], [1.0, 0.0]])]
    codes = C([[0], [0], [1], [1]], [2])
    tight = np.array([[-1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    loose = np.array([[-0.1, 0.0], [-1.9, 0.0], [0.1, 0.0], [1.9, 0.0]])   # same means
    a = analytic_overlap(codes, E, rms=1.0, scales=(0.2,), X=tight, source="explicit")
    b = analytic_overlap(codes, E, rms=1.0, scales=(0.2,), X=loose, source="explicit")
    assert a["levels"][0]["O"] == pytest.approx(b["levels"][0]["O"])
    assert b["member"]["levels"][0]["O"][0] > a["member"]["levels"][0]["O"][0] + 0.3
    # members at 0.1 from the plane: p ~ Phi(-0.5) for half of them
    assert b["member"]["levels"][0]["flip_rate"][0] > 0.1


def test_member_overlap_grows_with_scale_and_tracks_monte_carlo(blobs):
    tok = TinyRQ.fit(blobs, K=6, L=2)
    codes = tok.encode(blobs)
    scales = (0.0, 0.1, 0.3, 1.0)
    res = diagnose(codes, blobs, tok, scales=scales)
    mem = res["overlap"]["member"]
    pi = np.bincount(codes.codes[:, 0], minlength=6) / len(blobs)
    assert mem["levels"][0]["O"][0] == pytest.approx((pi**2).sum())
    for lv in mem["levels"]:
        assert np.all(np.diff(lv["O"]) > 0) and np.all(np.diff(lv["flip_rate"]) > 0)
    assert np.all(np.diff(mem["sid"]["O"]) > 0)
    # level 1 is plain nearest-codeword assignment: at small and moderate scales the
    # analytic flip rate is the Monte-Carlo one up to sampling noise; at large scales
    # the pairwise (two-cell) approximation counts a crossing of several planes more
    # than once and overestimates
    mc = [r["flip_rate"][0] for r in res["monte_carlo"]["runs"]]
    model = mem["levels"][0]["flip_rate"]
    for i in (1, 2):
        assert model[i] == pytest.approx(mc[i], abs=0.01 + 0.25 * mc[i])
    assert model[3] >= mc[3]


def test_member_overlap_prefix_conditional_levels():
    """A 2 x 2 tree whose second parent lists its children in the other order: as a
    shared codebook, level-2 tokens 0 and 1 have the same mean residual (no geometry, no
    flips); as children of their parent they are siblings 2 apart with every member 1
    from the plane between them, so the level-2 flip rate is Phi(-1/sigma)."""
    from scipy.special import ndtr

    from sidkit.diagnostics import data_codewords

    X = np.array([[-10.0, -1.0], [-10.0, 1.0], [10.0, 1.0], [10.0, -1.0]])
    codes = C([[0, 0], [0, 1], [1, 0], [1, 1]], [2, 2])
    E = data_codewords(codes, X)
    sigma = 0.5
    shared = analytic_overlap(codes, E, rms=1.0, scales=(sigma,), X=X, source="data")
    tree = analytic_overlap(codes, E, rms=1.0, scales=(sigma,), X=X, source="data", conditional=True)
    p = float(ndtr(-1.0 / sigma))
    assert shared["member"]["levels"][1]["flip_rate"][0] == pytest.approx(0.0)
    assert tree["member"]["levels"][1]["flip_rate"][0] == pytest.approx(p)
    assert tree["member"]["levels"][1]["O"][0] == pytest.approx(0.5 * (1 + 2 * math.sqrt(p * (1 - p))))
    assert tree["member"]["levels"][0]["flip_rate"][0] == pytest.approx(float(ndtr(-10.0 / sigma)), abs=1e-12)
    assert tree["member"]["conditional"] and not shared["member"]["conditional"]
