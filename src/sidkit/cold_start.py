"""Cold-start evaluation (docs/cold_start.md): items no model saw in training.

Protocol:

1. :func:`choose_cold_items`: the cold items are drawn from the items of the test
   targets -- ``rule="random"``: a share ``fraction`` (default 5%) drawn with ``seed``
   (TIGER's setting); ``rule="latest"``: the items whose first interaction is the
   latest (the newest items of the data set).
2. :func:`cold_start_split`: every interaction with a cold item is removed from the
   training and validation roles, so cold items appear only as **test targets**; test
   inputs (training + validation items) then never hold one either.  Returns the
   ``full`` split (cold items as test targets; its catalogue = warm + cold items) and the
   ``warm`` split (also without the cold test targets; its catalogue = the warm items).
   :func:`check_no_cold_inputs` asserts the first property.
3. The tokenizer is fit on the warm items' embeddings only; the cold items get SIDs from
   ``encode_new`` (:func:`warm_and_cold_codes`).  A SID model is trained on the warm split
   and the cold items are added with :func:`sidkit.models.catalogue.add_items`; the
   extended model's catalogue is the full split's.
4. :func:`cold_start_metrics`: Recall@10 and NDCG@10 on the test examples whose target
   is cold, on the warm ones and on all, from the ranks of one :func:`evaluate` pass.

Baselines on the same examples: :class:`~sidkit.models.content_knn.ContentKNN` (knows every
item's content) and ID models trained on the warm split and lifted to the full catalogue
by :class:`WarmOnly` (a cold item gets the lowest score: such a model cannot recommend an
item it never saw, so its cold-target metrics are 0 by construction).  TIGER's knob
``epsilon`` (the largest share of cold items in the top-k) is :class:`ColdShare`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import DataError
from .models.base import Recommender
from .utils import index_of

#: the score :class:`WarmOnly` gives items the wrapped model never saw (finite: evaluate refuses inf)
UNSEEN_SCORE = -1e30


def choose_cold_items(split, fraction: float = 0.05, seed: int = 0, rule: str = "random") -> np.ndarray:
    """Sorted ids of the cold items, drawn from the items of the test targets."""
    if not 0 < fraction < 1:
        raise DataError(f"fraction must lie in (0, 1), got {fraction}", "use e.g. 0.05 (5% of the test items)")
    df = split.df
    test_items = np.unique(df.loc[df["role"] == "test", "item_id"].astype(str).to_numpy())
    if test_items.size < 2:
        raise DataError("the split has fewer than 2 test-target items to choose cold items from",
                        "use a larger data set")
    n = max(1, int(round(fraction * test_items.size)))
    if rule == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(test_items, size=n, replace=False))
    if rule == "latest":
        first = df.assign(item_id=df["item_id"].astype(str)).groupby("item_id")["timestamp"].min()
        first = first.loc[test_items]
        order = np.lexsort((first.index.to_numpy(), -first.to_numpy().astype(np.float64)))  # latest, then id
        return np.sort(first.index.to_numpy()[order[:n]].astype(str))
    raise DataError(f"unknown cold-item rule {rule!r}", "use 'random' or 'latest'")


def cold_start_split(split, cold_items: Iterable[str]):
    """``(full, warm)`` splits: see the module docstring."""
    from .data.containers import Split

    cold = np.asarray(sorted(set(map(str, cold_items))), dtype=str)
    df = split.df
    is_cold = df["item_id"].astype(str).isin(cold).to_numpy()
    full_df = df[~(is_cold & (df["role"] != "test").to_numpy())].copy()
    warm_df = df[~is_cold].copy()
    kept = set(full_df.loc[full_df["item_id"].astype(str).isin(cold), "item_id"].astype(str))
    if len(kept) != len(cold):
        raise DataError(f"{len(cold) - len(kept)} cold item(s) are no test target",
                        "draw cold items with choose_cold_items (from the test targets)")
    meta = dict(split.params or {})
    meta["cold_items"] = cold.tolist()
    full = Split(full_df.reset_index(drop=True), kind=split.kind, params=meta, name=split.name, source=split.source)
    warm = Split(warm_df.reset_index(drop=True), kind=split.kind, params=meta, name=split.name, source=split.source)
    return full, warm


def check_no_cold_inputs(data, cold_items: Iterable[str], max_len: int = 10_000) -> None:
    """Raise an AssertionError if a cold item appears in a training sequence or in the
    input of a validation or test example of ``data`` (a Split or SequenceData)."""
    from .eval.harness import as_sequence_data

    data = as_sequence_data(data)
    cold = set(map(str, cold_items))
    cold_tok = np.flatnonzero(np.isin(data.item_ids, list(cold))) + 1
    flat, _ = data.train_sequences()
    assert not np.isin(flat, cold_tok).any(), "a cold item is in a training sequence"
    for role in ("valid", "test"):
        inp = data.eval_inputs(role, max_len)
        if len(inp["targets"]):
            assert not np.isin(inp["seen_flat"], cold_tok).any(), f"a cold item is in a {role} input"
    vt = data.eval_inputs("valid", max_len)["targets"]
    assert not np.isin(vt + 1, cold_tok).any(), "a cold item is a validation target"


def warm_and_cold_codes(tokenizer, item_ids: Sequence[str], X: np.ndarray, cold_items: Iterable[str],
                        headroom: int = 0):
    """Fit ``tokenizer`` on the warm rows of ``X`` (rows = ``item_ids``) and return
    ``(warm_codes, cold_codes)`` (Codes with item ids; the cold ones from ``encode_new``).

    ``headroom``: extra tokens in the warm codes' last (disambiguation) codebook, so a
    model trained on them has free SIDs for new items whose semantic group is already
    full in the warm catalogue (without it, :func:`~sidkit.models.catalogue.add_items`
    refuses such an item: the model has no token for it)."""
    ids = np.asarray(item_ids).astype(str)
    is_cold = np.isin(ids, np.asarray(list(map(str, cold_items))))
    X = np.asarray(X, np.float32)
    warm = tokenizer.fit_encode(X[~is_cold])
    warm = warm.replace(item_ids=ids[~is_cold])
    if headroom:
        sizes = list(warm.codebook_sizes)
        sizes[-1] += int(headroom)
        warm = warm.replace(codebook_sizes=tuple(sizes))
    cold = tokenizer.encode_new(X[is_cold]).replace(item_ids=ids[is_cold])
    return warm, cold


class WarmOnly(Recommender):
    """An ID model fitted on the warm split, scoring the full catalogue: the items it never
    saw get :data:`UNSEEN_SCORE` (below every other score), so it cannot recommend them."""

    name = "warm_only"

    def __init__(self, model=None, full_data=None) -> None:
        self.model = model
        if model is not None and full_data is not None:
            self._set_catalogue(full_data)
            inner = np.asarray(model.item_ids_, dtype=str)
            pos = np.searchsorted(self.item_ids_, inner)
            if (self.item_ids_[np.minimum(pos, len(self.item_ids_) - 1)] != inner).any():
                raise DataError("the model's catalogue is not part of the full catalogue",
                                "evaluate the model on the data set (and cold items) it was trained for")
            self.inner_pos_ = pos
            # full token -> inner token (0 = unseen / pad)
            self.map_ = np.zeros(len(self.item_ids_) + 1, np.int64)
            self.map_[pos + 1] = np.arange(1, len(inner) + 1)
            self.max_len = getattr(model, "max_len", None)

    def scores(self, history):
        import torch

        h = self._check_history(history)
        inner = self.map_[h]
        # keep the left padding contiguous: unseen items drop out of the history
        from .eval.sequences import pad_left

        lengths = (inner > 0).sum(1)
        inner = pad_left((inner[inner > 0], lengths), h.shape[1])
        s = self.model.scores(inner).float()
        out = torch.full((h.shape[0], self.n_items), UNSEEN_SCORE, dtype=torch.float32, device=s.device)
        out[:, torch.as_tensor(self.inner_pos_, device=s.device)] = s
        return out


class ColdShare(Recommender):
    """TIGER's ε: a generative model's list with at most ``floor(epsilon * k_cap)`` cold
    items in the first ``k_cap`` slots (and at most ``floor(epsilon * p)`` in the first
    ``p > k_cap``).  The base model decodes ``pool`` candidates (beam ``pool``), best
    first; cold items beyond the cap move down, warm items move up.  A model that re-ranks
    a fixed candidate budget (``rerank = R``: the dense hybrid) is asked for its own ``R``
    candidates (at least ``k``), never ``pool``: a deeper pool would change which items it
    re-ranks, so the ε rows would compare another model with the ε = 1 row."""

    name = "cold_share"
    scores_all_items = False

    def __init__(self, model=None, cold_items: Iterable[str] = (), epsilon: float = 1.0, k_cap: int = 10,
                 pool: int | None = None) -> None:
        if not 0 <= epsilon <= 1:
            raise DataError(f"epsilon must lie in [0, 1], got {epsilon}", "use e.g. 0.1")
        self.model, self.epsilon, self.k_cap, self.pool = model, float(epsilon), int(k_cap), pool
        if model is not None:
            self.item_ids_ = model.item_ids_
            self.catalogue_hash_ = model.catalogue_hash_
            self.max_len = getattr(model, "max_len", None)
            self.cold_ = np.isin(self.item_ids_, np.asarray(list(map(str, cold_items))))

    def allowed(self, p: int) -> int:
        """Most cold items in the first ``p`` slots."""
        return int(math.floor(self.epsilon * max(p, self.k_cap) + 1e-9))

    def recommend(self, history, k: int, users=None, exclude=None) -> np.ndarray:
        budget = getattr(self.model, "rerank", None)
        if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool) and budget > 0:
            pool = max(int(budget), int(k))              # a re-ranking model's own candidates
        else:
            pool = max(int(self.pool or 0), int(k))
        kw = {} if exclude is None else {"exclude": exclude}
        if users is not None:
            kw["users"] = users
        if pool > getattr(self.model, "beam", pool):
            old = self.model.beam
            self.model.beam = pool
            try:
                cand = self.model.recommend(history, pool, **kw)
            finally:
                self.model.beam = old
        else:
            cand = self.model.recommend(history, pool, **kw)
        if self.epsilon >= 1:
            return cand[:, :k]
        return self._cap(cand, k)

    def _cap(self, cand: np.ndarray, k: int) -> np.ndarray:
        """The capped lists of the (B, P) best-first candidates (-1: none), slot by slot and
        vectorised over the users: each slot takes the best remaining candidate that may go
        there -- a warm one always, a cold one while the cold items so far stay within
        :meth:`allowed` -- so cold items beyond the cap move down and warm items up; the
        list ends where no candidate may go."""
        B, P = cand.shape
        out = np.full((B, k), -1, np.int64)
        if P == 0 or B == 0:
            return out
        valid = cand >= 0
        cold = np.zeros((B, P), bool)
        cold[valid] = self.cold_[cand[valid]]
        warm = valid & ~cold
        # simulate the greedy merge slot by slot, for every user at once
        wi = np.zeros(B, np.int64)               # next warm candidate (its rank among the warm)
        ci = np.zeros(B, np.int64)               # next cold candidate
        worder = np.argsort(~warm, axis=1, kind="stable")
        corder = np.argsort(~cold, axis=1, kind="stable")
        n_warm, n_cold = warm.sum(1), cold.sum(1)
        rows = np.arange(B)
        alive = np.ones(B, bool)
        for slot in range(k):                    # k slots (10-20): vectorised over users
            wpos = np.where(wi < n_warm, worder[rows, np.minimum(wi, P - 1)], P)
            cpos = np.where(ci < n_cold, corder[rows, np.minimum(ci, P - 1)], P)
            can_cold = alive & (ci < n_cold) & (ci + 1 <= self.allowed(slot + 1))
            take_cold = can_cold & ((cpos < wpos) | (wi >= n_warm))
            take_warm = alive & ~take_cold & (wi < n_warm)
            pick = np.where(take_cold, cpos, np.where(take_warm, wpos, -1))
            out[:, slot] = np.where(pick >= 0, cand[rows, np.maximum(pick, 0)], -1)
            ci += take_cold
            wi += take_warm
            alive &= pick >= 0
        return out


def _metrics(ranks: np.ndarray, ks=(10,)) -> dict[str, float]:
    r = np.asarray(ranks)
    found = r >= 0
    out = {}
    for k in ks:
        hit = found & (r < k)
        out[f"recall@{k}"] = float(hit.mean()) if r.size else float("nan")
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.maximum(r, 0) + 2), 0.0).mean()) if r.size \
            else float("nan")
    return out


def cold_start_metrics(model, full, cold_items: Iterable[str], *, ks=(10,), mask_seen: bool = False,
                       max_len: int | None = None) -> dict[str, Any]:
    """``{"cold": {...}, "warm": {...}, "all": {...}, "n_cold": int, "n_warm": int}``: Recall@k
    and NDCG@k on ``full``'s test examples whose target is cold, warm, and on all of them."""
    from .eval.harness import as_sequence_data, evaluate

    data = as_sequence_data(full)
    res = evaluate(model, data, "test", ks=tuple(sorted(set(ks) | {10})), mask_seen=mask_seen,
                   return_ranks=True, max_len=max_len)
    ranks = res["ranks"]
    ml = int(max_len or getattr(model, "max_len", None) or 50)
    targets = data.eval_inputs("test", ml)["targets"]
    is_cold = np.isin(data.item_ids[targets], np.asarray(list(map(str, cold_items))))
    return {"cold": _metrics(ranks[is_cold], ks), "warm": _metrics(ranks[~is_cold], ks),
            "all": _metrics(ranks, ks), "n_cold": int(is_cold.sum()), "n_warm": int((~is_cold).sum())}


def run_cold_start(split, item_ids: Sequence[str], X: np.ndarray, *, seed: int = 0, fraction: float = 0.05,
                   rule: str = "random", codebook_sizes: Sequence[int] = (256, 256, 256), headroom: int = 8,
                   model_params: dict | None = None, train=None, device: str = "cpu",
                   epsilons: Sequence[float] = (0.0, 0.1, 0.2, 0.5, 1.0), pool: int = 50,
                   baselines: Sequence[str] = ("content_knn", "popularity"), progress: bool = False) -> dict[str, Any]:
    """The whole protocol for one seed: cold items, split, warm-only RQ-KMeans, a causal SID
    model trained on the warm split and extended with the cold items, the ε sweep and the
    baselines.  ``X``: embeddings of ``item_ids`` (every item of the split).  With a dense
    hybrid (``model_params`` with ``dense > 0``) the rows are ``causal_sid_dense*``, and
    ``causal_sid_dense_all`` ranks the whole catalogue by the dense score (``rerank="all"``:
    a cold item's vector sums its SID tokens).  Returns
    ``{"seed", "n_cold_items", "rows": [{"model", "epsilon", "cold": {...}, "warm": {...},
    "all": {...}, "n_cold", "n_warm"}]}``."""
    import torch

    from .config import TrainConfig
    from .models import CausalSID, ContentKNN, Popularity, SASRec
    from .models.catalogue import add_items
    from .tokenizers import RQKMeans
    from .eval.sequences import SequenceData

    ids = np.asarray(item_ids).astype(str)
    cold = choose_cold_items(split, fraction, seed=seed, rule=rule)
    full, warm = cold_start_split(split, cold)
    fd, wd = SequenceData.from_split(full), SequenceData.from_split(warm)
    check_no_cold_inputs(fd, cold)
    pos = index_of(fd.item_ids, ids)
    if (pos < 0).any():
        raise DataError("the embeddings miss items of the split", "embed every item of the data set")
    Xf = np.asarray(X, np.float32)[pos]
    tok = RQKMeans(codebook_sizes=list(codebook_sizes), resolve_collisions=True, random_state=seed, device=device)
    warm_codes, cold_codes = warm_and_cold_codes(tok, fd.item_ids, Xf, cold, headroom=headroom)
    torch.manual_seed(seed)
    sid = CausalSID(**(model_params or {})).fit(wd, codes=warm_codes, train=train or TrainConfig(), seed=seed,
                                                device=device, progress=progress)
    ext = add_items(sid, cold_codes.item_ids, cold_codes)
    uniform = copy.copy(ext)                  # the same weights, the last level decoded as uniform
    uniform.uniform_last = True
    base = "causal_sid_dense" if getattr(sid, "dense", 0) else "causal_sid"
    variants = [(base, ext), (base + "_uniform_last", uniform)]
    if getattr(sid, "dense", 0) and sid.rerank != "all":
        dense_all = copy.copy(ext)            # the same weights, the whole catalogue ranked by the dense score
        dense_all.rerank = "all"
        variants.append((base + "_all", dense_all))
    rows = []
    for name, model in variants:
        for eps in epsilons:
            m = model if eps >= 1 else ColdShare(model, cold, epsilon=eps, pool=pool)
            rows.append({"model": name, "epsilon": float(eps), **cold_start_metrics(m, fd, cold)})
    if "content_knn" in baselines:
        knn = ContentKNN(max_len=getattr(ext, "max_len", 50)).fit(fd, embeddings=Xf)
        rows.append({"model": "content_knn", "epsilon": None, **cold_start_metrics(knn, fd, cold)})
    if "popularity" in baselines:
        rows.append({"model": "popularity", "epsilon": None,
                     **cold_start_metrics(WarmOnly(Popularity().fit(wd), fd), fd, cold)})
    if "sasrec" in baselines:
        torch.manual_seed(seed)
        sas = SASRec().fit(wd, train=train or TrainConfig(), seed=seed, device=device, progress=progress)
        rows.append({"model": "sasrec", "epsilon": None, **cold_start_metrics(WarmOnly(sas, fd), fd, cold)})
    return {"seed": seed, "n_cold_items": int(len(cold)), "n_items": int(fd.n_items),
            "sid_best_epoch": int(getattr(sid, "best_epoch_", -1)), "rows": rows}
