"""Expected codeword overlap and effective capacity (the DRQ paper).

Analytic model: a code ``j`` of a level is a Gaussian ``N(e_j, sigma^2 I)`` around
its codeword; two codes overlap by their Bhattacharyya coefficient
``k_jk = exp(-||e_j - e_k||^2 / (8 sigma^2))``.  With usage ``pi``, the expected
codeword overlap is ``O = pi^T k pi`` and the effective capacity ``K_eff = 1 / O``
(``k = I`` gives the inverse Simpson index).  ``sigma = s * rms`` where ``s`` is the
relative perturbation scale and ``rms`` the per-coordinate RMS of the centred data.
For whole SIDs the kernel is the product of the per-level kernels; ``O`` is a sum
over pairs of distinct SIDs weighted by their usage, exact and chunked when there
are at most ``max_exact`` distinct SIDs, else an unbiased pair estimate on a sample.

Empirical (Monte-Carlo) version: perturb items ``x' = x + s * rms * z``
(``z ~ N(0, I)``, one draw reused across scales) or take a paired view ``X2``,
re-encode, and compare the perturbed code ``b`` with the clean code ``a`` of the
same item.  With ``pi_j = P(a = j)`` and the confusion matrix
``C_jk = P(b = k | a = j)``:

* ``O_emp = sum_{j,k} pi_j pi_k k^C_jk`` with ``k^C_jk = sum_m sqrt(C_jm C_km)``, the
  Bhattacharyya coefficient of the perturbed-code distributions of codes ``j`` and
  ``k`` -- the exact discrete analogue of the analytic kernel (``C = I`` gives the
  inverse Simpson index again).  Computed as ``sum_m (sum_j pi_j sqrt(C_jm))^2``
  without forming ``k^C``; ``K_eff_emp = 1 / O_emp``.
* ``O_confusion = pi^T C pi = P(b_i = a_k)``: the probability that a perturbed item's
  code equals the clean code of an independently drawn item (``= pi'^T pi`` with
  ``pi'`` the perturbed marginal).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError
from ..types import Codes, joint_keys
from ..utils import rng
from .fidelity import _prefix_means, group_sums
from .prefix import _lcp
from .usage import semantic_codes

DEFAULT_SCALES: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)
CHUNK = 65536


# ------------------------------------------------------------------ analytic
def data_rms(X: np.ndarray) -> float:
    """Per-coordinate RMS of the centred data: sqrt(mean_{i,t} (x_it - mu_t)^2)."""
    X = np.asarray(X)
    n, d = X.shape
    s1 = np.zeros(d)
    s2 = 0.0
    for s in range(0, n, CHUNK):
        x = np.asarray(X[s:s + CHUNK], dtype=np.float64)
        s1 += x.sum(0)
        s2 += float(np.einsum("ij,ij->", x, x))
    mu = s1 / n
    return float(math.sqrt(max(s2 / (n * d) - float(mu @ mu) / d, 0.0)))


def _sq_dists(E: np.ndarray, F: np.ndarray | None = None) -> np.ndarray:
    F = E if F is None else F
    d2 = (E * E).sum(1)[:, None] + (F * F).sum(1)[None, :] - 2.0 * E @ F.T
    return np.maximum(d2, 0.0)


def bhattacharyya_kernel(E: np.ndarray, sigma: float, F: np.ndarray | None = None) -> np.ndarray:
    """``k_jk = exp(-||e_j - f_k||^2 / (8 sigma^2))``; ``sigma = 0`` gives 1 iff e_j == f_k."""
    E = np.asarray(E, dtype=np.float64)
    d2 = _sq_dists(E, None if F is None else np.asarray(F, dtype=np.float64))
    if sigma <= 0:
        scale = max(float(np.abs(E).max()) if E.size else 0.0, 1e-300)
        return (d2 <= 1e-12 * scale * scale).astype(np.float64)
    return np.exp(-d2 / (8.0 * sigma * sigma))


def expected_overlap(pi: np.ndarray, E: np.ndarray, sigma: float) -> float:
    """``O = pi^T k pi`` over the codes with ``pi > 0`` (chunked over rows)."""
    pi = np.asarray(pi, dtype=np.float64)
    pi = pi / pi.sum()
    used = pi > 0
    p, e = pi[used], np.asarray(E, dtype=np.float64)[used]
    tot = 0.0
    step = max(1, 4_000_000 // max(1, p.size))
    for s in range(0, p.size, step):
        tot += float(p[s:s + step] @ (bhattacharyya_kernel(e[s:s + step], sigma, e) @ p))
    return tot


def effective_capacity(pi: np.ndarray, E: np.ndarray, sigma: float) -> float:
    """``K_eff = 1 / (pi^T k pi)``."""
    return 1.0 / expected_overlap(pi, E, sigma)


def _with_pad(codes: Codes, kernels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-level (K_l, K_l) kernels extended by a PAD index K_l (k(PAD, PAD) = 1, else 0)."""
    ks = []
    for l, g in enumerate(kernels):
        k = codes.codebook_sizes[l]
        kern = np.zeros((k + 1, k + 1), dtype=np.float32)
        kern[:k, :k] = g[:k, :k]
        kern[k, k] = 1.0
        ks.append(kern)
    return ks


def _level_kernels(codes: Codes, codewords: Sequence[np.ndarray], sigma: float) -> list[np.ndarray]:
    """The codeword kernel of every level, extended by PAD."""
    return _with_pad(codes, [bhattacharyya_kernel(np.asarray(E)[:k], sigma)
                             for E, k in zip(codewords, codes.codebook_sizes)])


def _weighted_product_sum(tok: np.ndarray, w: np.ndarray, kernels: Sequence[np.ndarray],
                          keys: np.ndarray | None = None) -> float:
    """``sum_{a,b} w_a w_b prod_l kernel_l[tok_a,l, tok_b,l]`` chunked over rows a.

    With ``keys``, pairs with equal keys (identical SIDs) are left out.
    """
    u = tok.shape[0]
    step = max(1, 4_000_000 // max(1, u))
    w = w.astype(np.float64)
    tot = 0.0
    for s in range(0, u, step):
        blk = None
        for l, kern in enumerate(kernels):
            g = kern[tok[s:s + step, l]][:, tok[:, l]]
            blk = g if blk is None else blk * g
        if keys is not None:
            blk = blk * (keys[s:s + step, None] != keys[None, :])
        tot += float(w[s:s + step] @ (blk.astype(np.float64) @ w))
    return tot


def sid_overlap(codes: Codes, codewords: Sequence[np.ndarray], sigmas: Sequence[float],
                max_exact: int = 4096, n_sample: int = 4096, random_state: Any = 0,
                level_kernels: Callable[[float], list[np.ndarray]] | None = None) -> dict[str, Any]:
    """Whole-SID overlap ``O = sum_{a,b} pi_a pi_b prod_l k_l(a_l, b_l)`` per sigma.

    Exact over the distinct SIDs when there are at most ``max_exact``.  Otherwise
    ``O = sum_a pi_a^2 + (N-1)/N * E_{i != j}[K(s_i, s_j) 1(s_i != s_j)]``: the identical-SID
    part is exact (from the counts) and the rest is the unbiased U-statistic over
    ``n_sample`` items drawn without replacement; ``O`` is exact at ``sigma = 0``.
    ``level_kernels(sigma)`` gives the (K_l, K_l) kernel of every level (default: the
    codeword kernel :func:`bhattacharyya_kernel`).
    """
    n = codes.n_items
    tok = np.where(codes.codes >= 0, codes.codes, np.asarray(codes.codebook_sizes)[None, :])
    keys = codes.sid_keys()
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    exact = uniq.size <= max_exact
    pi = counts / n
    simpson = float(pi @ pi)
    if exact:
        pts, w, pkeys = tok[first], pi, None
    else:
        g = rng(random_state)
        m = min(n_sample, n)
        rows = np.sort(g.choice(n, size=m, replace=False))
        pts, w, pkeys = tok[rows], np.full(m, 1.0 / m), keys[rows]
    O = []
    for sigma in sigmas:
        if not exact and sigma <= 0:
            O.append(simpson)
            continue
        kerns = (_level_kernels(codes, codewords, sigma) if level_kernels is None
                 else _with_pad(codes, level_kernels(sigma)))
        S = _weighted_product_sum(pts, w, kerns, pkeys)
        if not exact:
            m = pts.shape[0]
            ustat = S * m * m / (m * (m - 1)) if m > 1 else 0.0
            S = simpson + (n - 1) / n * ustat
        O.append(float(S))
    return {
        "exact": bool(exact),
        "n_distinct": int(uniq.size),
        "n_points": int(pts.shape[0]),
        "inverse_simpson": 1.0 / simpson if simpson > 0 else None,
        "O": O,
        "K_eff": [1.0 / o if o > 0 else float("inf") for o in O],
    }


def analytic_overlap(codes: Codes, codewords: Sequence[np.ndarray], rms: float,
                     scales: Sequence[float] = DEFAULT_SCALES, sid: bool = True,
                     max_exact: int = 4096, n_sample: int = 4096,
                     random_state: Any = 0, X: np.ndarray | None = None,
                     source: str = "data", n_member: int | None = 100_000,
                     conditional: bool = False) -> dict[str, Any]:
    """Per-level and whole-SID ``O`` and ``K_eff`` for every relative scale ``s``.

    The codeword kernel's figures are ``levels`` / ``sid``; with the embeddings ``X``
    (row order of the codes) also ``member``: the member-distribution model
    (:func:`member_overlap`; ``source`` says how the codewords were obtained,
    ``conditional`` whether tokens are children of their prefix, as in trees).
    """
    if len(codewords) != codes.n_levels:
        raise DataError(f"need codewords for {codes.n_levels} levels, got {len(codewords)}",
                        "pass one codebook per level (the tokenizer's codebooks())")
    sigmas = [float(s) * rms for s in scales]
    levels = []
    for l, E in enumerate(codewords):
        k = codes.codebook_sizes[l]
        tokens = codes.codes[:, l]
        counts = np.bincount(tokens[tokens >= 0], minlength=k)[:k]
        E = np.asarray(E)[:k]
        O = [expected_overlap(counts, E, sg) for sg in sigmas]
        levels.append({"level": l + 1, "O": O, "K_eff": [1.0 / o for o in O], "K": k})
    out = {"rms": float(rms), "scales": [float(s) for s in scales], "sigmas": sigmas,
           "levels": levels}
    if sid:
        out["sid"] = sid_overlap(codes, codewords, sigmas, max_exact, n_sample, random_state)
    if X is not None:
        out["member"] = member_overlap(codes, X, codewords, sigmas, source, sid, max_exact,
                                       n_sample, n_member, random_state, conditional)
    return out


# ------------------------------------------------------- member-distribution model
def _prefix_offsets(codes: Codes, X: np.ndarray, codewords: Sequence[np.ndarray], level: int,
                    source: str) -> tuple[np.ndarray, np.ndarray]:
    """(inv, table): the level-``level`` input of item i is ``x_i - table[inv[i]]``.

    ``source = "data"`` (data codewords): the mean embedding of the item's prefix, as in
    :func:`sidkit.diagnostics.fidelity.data_codewords`; otherwise (a tokenizer's residual
    codewords) the sum of the item's codewords of the levels before.
    """
    n, d = X.shape
    if level == 0:
        return np.zeros(n, dtype=np.int64), np.zeros((1, d))
    if source == "data":
        inv, means, _ = _prefix_means(codes, X, level)
        return inv, means
    _, first, inv = np.unique(codes.prefix_keys(level), return_index=True, return_inverse=True)
    table = np.zeros((first.size, d))
    for m in range(level):
        tok = codes.codes[first, m]
        E = np.asarray(codewords[m], dtype=np.float64)
        table += np.where((tok >= 0)[:, None], E[np.maximum(tok, 0)], 0.0)
    return inv.reshape(-1), table


def _node_pairs(codes: Codes, level: int, rows: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every (member, sibling node) pair of a prefix-conditional level.

    Nodes are the distinct (prefix, token) pairs of ``level``; returns ``node`` (node of
    every member row), ``pair_row`` / ``pair_node`` (each member with every node under
    its prefix, its own node included) and ``node_tok`` (token of every node).
    """
    pkey = codes.prefix_keys(level)
    tok = codes.codes[:, level]
    ok = tok >= 0
    nkeys = np.stack([pkey[ok], tok[ok]], 1)
    uniq, inv_ok = np.unique(nkeys, axis=0, return_inverse=True)   # sorted by prefix, then token
    node_of = np.full(codes.n_items, -1, dtype=np.int64)
    node_of[np.flatnonzero(ok)] = inv_ok.reshape(-1)
    parents, start, fan = np.unique(uniq[:, 0], return_index=True, return_counts=True)
    node = node_of[rows]
    par = np.searchsorted(parents, pkey[rows])
    reps = fan[par]
    pair_row = np.repeat(np.arange(rows.size), reps)
    offs = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    pair_node = np.repeat(start[par], reps) + offs
    return node, pair_row, pair_node, uniq[:, 1], node_of


def member_confusion(codes: Codes, X: np.ndarray, codewords: Sequence[np.ndarray],
                     sigmas: Sequence[float], source: str = "data", n_sample: int | None = 100_000,
                     random_state: Any = 0, conditional: bool = False) -> list[list[np.ndarray]]:
    """Per level and sigma, the model confusion ``C_jk = P(code j -> k)`` of the members.

    A member ``r`` of code ``j`` (its level input, :func:`_prefix_offsets`) lies at distance
    ``m_k(r) = (||r - e_k||^2 - ||r - e_j||^2) / (2 ||e_j - e_k||)`` from the hyperplane
    half-way between the codewords ``e_j`` and ``e_k``.  An isotropic perturbation of
    scale ``sigma`` moves it across that plane with probability ``Phi(-m_k(r) / sigma)``
    (its projection on the axis is N(0, sigma^2)), so
    ``C_jk = mean over the members of j of Phi(-|m_k(r)| / sigma)`` for ``k != j`` and
    ``C_jj = 1 - sum_{k != j} C_jk`` (rows whose pairwise sum exceeds 1 are rescaled).
    Codes other than the used ones are candidates only when the codewords are the
    tokenizer's (``source != "data"``); duplicate codewords (distance <= 1e-6 of the
    largest) never swap.  Members on the far side of a plane (data codewords are means,
    not the tokenizer's decision rule) count with their distance ``|m_k|``.
    ``conditional=True`` (trees: a token means "child t of this parent"): below the
    first level the cells are the (prefix, token) nodes, with the mean level input of
    their members as codewords, and a member's candidates are its siblings.
    ``sigma = 0`` gives ``C = I``.  One (n x d) @ (d x K) product per level (or one dot
    product per member and sibling) on at most ``n_sample`` items (seeded sample).
    """
    from scipy.special import ndtr

    X = np.asarray(X)
    n = X.shape[0]
    if n_sample is not None and n > n_sample:
        rows = np.sort(rng(random_state).choice(n, size=n_sample, replace=False))
    else:
        rows = np.arange(n)
    sigmas = [float(sg) for sg in sigmas]
    out = []
    for l, E in enumerate(codewords):
        k = codes.codebook_sizes[l]
        inv, table = _prefix_offsets(codes, X, codewords, l, source)
        tok = codes.codes[rows, l]
        ok = tok >= 0
        r_rows, t = rows[ok], tok[ok]
        cnt = np.bincount(t, minlength=k)[:k].astype(np.float64)
        sums = [np.zeros((k, k)) for _ in sigmas]
        if conditional and l > 0:
            node, pair_row, pair_node, node_tok, node_of = _node_pairs(codes, l, r_rows, t)
            has = node_of >= 0
            nn = node_tok.size
            ncw = group_sums(node_of[has], nn, X, rows=np.flatnonzero(has))
            ncnt = np.bincount(node_of[has], minlength=nn).astype(np.float64)
            ncw = ncw / np.maximum(ncnt, 1)[:, None]
            # node codeword in the level-input space: node mean minus its prefix's offset
            first = np.zeros(nn, dtype=np.int64)
            first[node_of[has]] = np.flatnonzero(has)
            ncw -= table[inv[first]]
            step = max(1, 4_000_000 // max(1, X.shape[1]))
            for s in range(0, pair_row.size, step):
                pr, pn = pair_row[s:s + step], pair_node[s:s + step]
                own = node[pr]
                keep = pn != own
                pr, pn, own = pr[keep], pn[keep], own[keep]
                R = np.asarray(X[r_rows[pr]], dtype=np.float64) - table[inv[r_rows[pr]]]
                ej, ek = ncw[own], ncw[pn]
                D = np.sqrt(np.einsum("ij,ij->i", ej - ek, ej - ek))
                tie = 1e-6 * max(float(D.max()) if D.size else 0.0, 1e-300)
                with np.errstate(divide="ignore", invalid="ignore"):
                    margin = np.abs((np.einsum("ij,ij->i", R - ek, R - ek)
                                     - np.einsum("ij,ij->i", R - ej, R - ej)) / (2 * D))
                valid = D > tie
                cell = t[pr] * k + node_tok[pn]
                for i, sg in enumerate(sigmas):
                    if sg > 0:
                        w = np.where(valid, ndtr(-margin / sg), 0.0)
                        sums[i] += np.bincount(cell, weights=w, minlength=k * k).reshape(k, k)
        else:
            E = np.asarray(E, dtype=np.float64)[:k]
            cand = (np.bincount(codes.codes[:, l][codes.codes[:, l] >= 0], minlength=k)[:k] > 0
                    if source == "data" else np.ones(k, dtype=bool))
            dist = np.sqrt(_sq_dists(E))
            tie = 1e-6 * max(float(dist.max()) if dist.size else 0.0, 1e-300)  # duplicate codewords: no flips
            step = max(1, 2_000_000 // max(1, k))
            for s in range(0, r_rows.size, step):
                rr, tt = r_rows[s:s + step], t[s:s + step]
                R = np.asarray(X[rr], dtype=np.float64) - table[inv[rr]] - E[tt]   # r - e_j
                P = np.einsum("ij,ij->i", R, E[tt])[:, None] - R @ E.T            # (r - e_j).(e_j - e_k)
                D = dist[tt]
                with np.errstate(divide="ignore", invalid="ignore"):
                    margin = np.abs(D / 2 + P / D)
                valid = (D > tie) & cand[None, :]
                for i, sg in enumerate(sigmas):
                    if sg > 0:
                        sums[i] += group_sums(tt, k, np.where(valid, ndtr(-margin / sg), 0.0))
        levels = []
        for i, sg in enumerate(sigmas):
            C = sums[i] / np.maximum(cnt, 1)[:, None]
            C[np.arange(k), np.arange(k)] = 0.0   # siblings with the same token (other parents) do not swap
            off = C.sum(1)
            C /= np.maximum(off, 1.0)[:, None]
            C[np.arange(k), np.arange(k)] = np.maximum(1.0 - np.minimum(off, 1.0), 0.0)
            levels.append(C)
        out.append(levels)
    return out


def confusion_kernel(C: np.ndarray) -> np.ndarray:
    """``k_jk = sum_m sqrt(C_jm C_km)``: Bhattacharyya coefficient of two codes' confusion rows."""
    R = np.sqrt(np.asarray(C, dtype=np.float64))
    return R @ R.T


def member_overlap(codes: Codes, X: np.ndarray, codewords: Sequence[np.ndarray], sigmas: Sequence[float],
                   source: str = "data", sid: bool = True, max_exact: int = 4096,
                   n_sample: int = 4096, n_member: int | None = 100_000,
                   random_state: Any = 0, conditional: bool = False) -> dict[str, Any]:
    """``O`` and ``K_eff`` of the member-distribution model, per level and whole SID.

    Per level ``O = sum_{j,k} pi_j pi_k k_jk`` with the kernel of the model confusion
    (:func:`member_confusion`, :func:`confusion_kernel`) -- the analytic counterpart of
    the Monte-Carlo ``O_emp``; whole SIDs use the product of the level kernels over
    pairs of SIDs, with the exact / sampled pair sums of :func:`sid_overlap`.  ``O`` is
    the inverse Simpson index at ``sigma = 0``, grows with ``sigma`` as members near a
    cell boundary start to cross it, and differs between tokenizers with the same usage.
    """
    Cs = member_confusion(codes, X, codewords, sigmas, source, n_member, random_state, conditional)
    levels = []
    for l, per_sigma in enumerate(Cs):
        k = codes.codebook_sizes[l]
        tokens = codes.codes[:, l]
        pi = np.bincount(tokens[tokens >= 0], minlength=k)[:k].astype(np.float64)
        O = [overlap_from_confusion(C, pi)["O_emp"] for C in per_sigma]
        flip = [float(1.0 - (pi / pi.sum()) @ np.diag(C)) for C in per_sigma]
        levels.append({"level": l + 1, "O": O, "K_eff": [1.0 / o for o in O], "K": k, "flip_rate": flip})
    out: dict[str, Any] = {"levels": levels, "conditional": bool(conditional),
                           "n_member_items": int(min(codes.n_items, n_member or codes.n_items))}
    if sid:
        index = {float(sg): i for i, sg in enumerate(sigmas)}

        def kernels(sigma: float) -> list[np.ndarray]:
            return [confusion_kernel(per_sigma[index[float(sigma)]]) for per_sigma in Cs]
        out["sid"] = sid_overlap(codes, codewords, sigmas, max_exact, n_sample, random_state,
                                 level_kernels=kernels)
    return out


# --------------------------------------------------------------- empirical
def overlap_from_confusion(C: np.ndarray, pi: np.ndarray) -> dict[str, float]:
    """``O_emp`` (Bhattacharyya of confusion rows) and ``O_confusion`` from a given C."""
    C = np.asarray(C, dtype=np.float64)
    pi = np.asarray(pi, dtype=np.float64)
    pi = pi / pi.sum()
    col = pi @ np.sqrt(C)
    o_emp = float(col @ col)
    o_conf = float(pi @ C @ pi)
    return {"O_emp": o_emp, "K_eff_emp": 1.0 / o_emp, "O_confusion": o_conf,
            "K_eff_confusion": 1.0 / o_conf}


def overlap_from_labels(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Same quantities estimated from clean labels ``a`` and perturbed labels ``b``."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    m = a.size
    lo = min(int(a.min()), int(b.min())) if m else 0
    hi = max(int(a.max()), int(b.max())) if m else 0
    if hi - lo < 4096:  # small labels (one level's tokens): dense bincount
        u = hi - lo + 1
        ai, bi = a - lo, b - lo
        pair = np.bincount(ai * u + bi, minlength=u * u)
        pk = np.flatnonzero(pair)
        pc = pair[pk]
    else:  # SID keys: relabel by np.unique
        _, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
        inv = inv.reshape(-1)
        u = int(inv.max()) + 1
        ai, bi = inv[:m], inv[m:]
        pk, pc = np.unique(ai * u + bi, return_counts=True)
    na = np.bincount(ai, minlength=u).astype(np.float64)
    nb = np.bincount(bi, minlength=u).astype(np.float64)
    j, k = pk // u, pk % u
    term = (na[j] / m) * np.sqrt(pc / na[j])
    col = np.bincount(k, weights=term, minlength=u)
    o_emp = float(col @ col)
    o_conf = float((na / m) @ (nb / m))
    return {"O_emp": o_emp, "K_eff_emp": 1.0 / o_emp, "O_confusion": o_conf,
            "K_eff_confusion": 1.0 / o_conf if o_conf > 0 else float("inf")}


def compare_codes(clean: Codes, pert: Codes) -> dict[str, Any]:
    """Flip rate per level, SID change rate, shared-prefix length and empirical O.

    A disambiguation level (``collision_rule="extra_level"``) is left out: it is a
    counter, not a semantic token.
    """
    clean, pert = semantic_codes(clean), semantic_codes(pert)
    # re-encoded unseen rows may carry another collision rule (GAOQ: "none" for items
    # that are not training rows), so compare the semantic levels both have
    L = min(clean.n_levels, pert.n_levels)
    A, B = clean.codes[:, :L], pert.codes[:, :L]
    flips, lev = [], []
    for l in range(L):
        ok = clean.lengths > l
        flips.append(float((A[ok, l] != B[ok, l]).mean()) if ok.any() else 0.0)
        lev.append({"level": l + 1, **overlap_from_labels(A[:, l], B[:, l])})
    changed = (A != B).any(axis=1)
    lcp = _lcp(A, B)
    sid = overlap_from_labels(*joint_keys([clean, pert], L))  # comparable across the two
    return {
        "flip_rate": flips,
        "sid_change_rate": float(changed.mean()),
        "mean_shared_prefix": float(lcp.mean()),
        "levels": lev,
        "sid": sid,
    }


def perturbation_overlap(tokenizer: Any, X: np.ndarray, scales: Sequence[float] = DEFAULT_SCALES,
                         X2: np.ndarray | None = None, n_sample: int | None = 100_000,
                         rms: float | None = None, random_state: Any = 0) -> dict[str, Any]:
    """Monte-Carlo overlap: perturb, re-encode, compare; one entry per scale (+ "paired").

    At most ``n_sample`` items (uniform without replacement, seeded) are used; the
    clean reference codes are ``tokenizer.encode`` of the same sample, so a collision
    level added after encoding does not count as a flip.
    """
    X = np.asarray(X)
    n, d = X.shape
    g = rng(random_state)
    if n_sample is not None and n > n_sample:
        rows = np.sort(g.choice(n, size=n_sample, replace=False))
    else:
        rows = np.arange(n)
    Xs = np.ascontiguousarray(X[rows], dtype=np.float32)
    if rms is None:
        rms = data_rms(X if n <= 1_000_000 else Xs)
    clean = tokenizer.encode(Xs)
    Z = g.standard_normal(Xs.shape, dtype=np.float32)
    runs = []
    for s in scales:
        if s == 0:
            pert = clean
        else:
            pert = tokenizer.encode(Xs + np.float32(s * rms) * Z)
        runs.append({"scale": float(s), **compare_codes(clean, pert)})
    out: dict[str, Any] = {"n_sampled": int(rows.size), "n_items": int(n), "rms": float(rms),
                           "scales": [float(s) for s in scales], "runs": runs}
    if X2 is not None:
        X2 = np.asarray(X2)
        if X2.shape != X.shape:
            raise DataError(f"paired view X2 has shape {X2.shape}, expected {X.shape}",
                            "pass one retrieval-time embedding per item, same row order")
        pert = tokenizer.encode(np.ascontiguousarray(X2[rows], dtype=np.float32))
        out["paired"] = {"scale": "paired", **compare_codes(clean, pert)}
    return out
