"""Processing: k-core filtering, chronological order, dedup, splits, history truncation.

Chronological order everywhere means: by user, then timestamp, then the original row
order (a stable tie-break, so equal timestamps keep the order of the source file).
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from ..errors import DataError
from .containers import Interactions, Split



def sort_chronologically(inter: Interactions) -> Interactions:
    """Rows ordered by user, timestamp and original row order (stable tie-break)."""
    df = inter.df.copy()
    df["_row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "timestamp", "_row"], kind="stable").drop(columns="_row")
    return inter.with_df(df.reset_index(drop=True))


def dedup(inter: Interactions, keep: str = "first") -> Interactions:
    """Keep one interaction per (user, item) pair: the earliest ("first") or latest ("last").

    Ties in time are broken by the original row order.
    """
    if keep not in ("first", "last"):
        raise DataError(f"keep must be 'first' or 'last', got {keep!r}",
                        "keep='first' keeps the earliest interaction of each pair")
    df = inter.df.copy()
    df["_row"] = np.arange(len(df))
    order = df.sort_values(["timestamp", "_row"], kind="stable")
    kept = order.drop_duplicates(["user_id", "item_id"], keep=keep)
    df = kept.sort_values("_row").drop(columns="_row")  # back to source order
    return inter.with_df(df.reset_index(drop=True))


class KCoreEmpty(DataError):
    """k-core filtering removed every interaction; carries the largest thresholds
    (``max_user_k``, ``max_item_k``) that still keep data."""

    def __init__(self, problem: str, fix: str, *, user_k: int, item_k: int, max_user_k: int,
                 max_item_k: int, n_interactions: int) -> None:
        super().__init__(problem, fix)
        self.user_k, self.item_k = user_k, item_k
        self.max_user_k, self.max_item_k = max_user_k, max_item_k
        self.n_interactions = n_interactions


def _kcore_df(df: pd.DataFrame, uk: int, ik: int, max_iter: int) -> pd.DataFrame:
    for _ in range(max_iter):
        keep = np.ones(len(df), dtype=bool)
        if uk > 1:
            keep &= (df.groupby("user_id")["user_id"].transform("size") >= uk).to_numpy()
        if ik > 1:
            keep &= (df.groupby("item_id")["item_id"].transform("size") >= ik).to_numpy()
        if keep.all():
            break
        df = df[keep]
        if len(df) == 0:
            break
    return df


def largest_kcore(inter: Interactions, user_k: int, item_k: int,
                  max_iter: int = 100) -> tuple[int, int]:
    """The largest thresholds ``(u, i)``, u <= user_k and i <= item_k, whose k-core is
    not empty: one side alone gives its largest count; with both sides on, both are
    capped at the largest ``t`` (binary search) for which ``(min(user_k, t),
    min(item_k, t))`` keeps data."""
    df = inter.df
    if len(df) == 0:
        return 0, 0
    if not item_k or item_k <= 1:
        return min(user_k, int(df.groupby("user_id").size().max())), item_k
    if not user_k or user_k <= 1:
        return user_k, min(item_k, int(df.groupby("item_id").size().max()))
    lo, hi = 1, max(user_k, item_k)  # t = 1 keeps everything
    while lo < hi:
        t = (lo + hi + 1) // 2
        if len(_kcore_df(df, min(user_k, t), min(item_k, t), max_iter)):
            lo = t
        else:
            hi = t - 1
    return min(user_k, lo), min(item_k, lo)


def kcore(inter: Interactions, k: int | None = None, *, user_k: int | None = None,
          item_k: int | None = None, max_iter: int = 100) -> Interactions:
    """Iterative k-core: drop users with < ``user_k`` and items with < ``item_k``
    interactions until both hold (each pass can create new violators).

    ``k`` sets both thresholds; ``user_k``/``item_k`` override one side; 0 or None
    disables that side.  Raises :class:`KCoreEmpty` (a DataError naming the largest
    thresholds that keep data) when nothing is left.
    """
    uk = user_k if user_k is not None else k
    ik = item_k if item_k is not None else k
    uk, ik = int(uk or 0), int(ik or 0)
    if uk < 0 or ik < 0:
        raise DataError(f"k-core thresholds must be >= 0, got user_k={uk}, item_k={ik}",
                        "use 0 to disable filtering on one side")
    df = _kcore_df(inter.df, uk, ik, max_iter)
    if len(df) == 0:
        mu, mi = largest_kcore(inter, uk, ik, max_iter)
        best = ", ".join([f"user_k={mu}"] * bool(uk) + [f"item_k={mi}"] * bool(ik))
        raise KCoreEmpty(
            f"k-core filtering with user_k={uk}, item_k={ik} removed every interaction "
            f"of {inter.name or 'the data set'} ({len(inter)} interactions, {inter.n_users} users, "
            f"{inter.n_items} items)",
            f"use {best} or lower (the largest thresholds that keep data), or 0 to disable a side",
            user_k=uk, item_k=ik, max_user_k=mu, max_item_k=mi, n_interactions=len(inter))
    return inter.with_df(df.reset_index(drop=True))


def _ordered(inter: Interactions) -> pd.DataFrame:
    if len(inter) == 0:
        raise DataError("cannot split an empty set of interactions",
                        "check the data set path and the k-core thresholds")
    df = sort_chronologically(inter).df
    df["position"] = df.groupby("user_id", sort=False).cumcount().astype(np.int64)
    return df


def leave_one_out(inter: Interactions) -> Split:
    """Leave-one-out split (TIGER/ReSID): per user, chronologically, the last item is
    test, the second-last valid, the rest train.

    A user with two interactions gets train + test (no valid), a user with one only
    train (nothing to evaluate); filter with :func:`kcore` first to avoid these.
    """
    df = _ordered(inter)
    n = df.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    pos = df["position"].to_numpy()
    role = np.full(len(df), "train", dtype=object)
    role[(pos == n - 1) & (n >= 2)] = "test"
    role[(pos == n - 2) & (n >= 3)] = "valid"
    cols = ["user_id", "item_id", "timestamp", "position"]
    out = df[cols].copy()
    out["role"] = role
    return Split(out, kind="leave_one_out", params={}, name=inter.name, source=inter.source)


def temporal_split(inter: Interactions, test_fraction: float = 0.1,
                   valid_fraction: float = 0.1) -> Split:
    """Global temporal split: cut the time line at timestamp quantiles.

    Interactions at or after ``t_test`` (the ``1 - test_fraction`` quantile of all
    timestamps) are test, those in ``[t_valid, t_test)`` valid (``t_valid`` the
    ``1 - test_fraction - valid_fraction`` quantile; ``valid_fraction=0`` gives no
    validation window), the rest train.  No train interaction lies after a cut.
    """
    for nm, v in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0 <= v < 1:
            raise DataError(f"{nm} must lie in [0, 1), got {v}", "use e.g. 0.1")
    if test_fraction <= 0 or test_fraction + valid_fraction >= 1:
        raise DataError(
            f"test_fraction={test_fraction} and valid_fraction={valid_fraction} leave no training data",
            "use 0 < test_fraction and test_fraction + valid_fraction < 1 (e.g. 0.1 and 0.1)")
    df = _ordered(inter)
    ts = df["timestamp"].to_numpy()
    t_test = int(np.quantile(ts, 1 - test_fraction, method="higher"))
    t_valid = int(np.quantile(ts, 1 - test_fraction - valid_fraction, method="higher")) \
        if valid_fraction > 0 else t_test
    role = np.where(ts >= t_test, "test", np.where(ts >= t_valid, "valid", "train")).astype(object)
    if not (role == "train").any():
        raise DataError(
            f"the temporal cut at t={t_valid} leaves no training interactions (many share that timestamp)",
            "use smaller test_fraction/valid_fraction or a leave-one-out split")
    out = df[["user_id", "item_id", "timestamp", "position"]].copy()
    out["role"] = role
    return Split(out, kind="temporal",
                 params={"test_fraction": test_fraction, "valid_fraction": valid_fraction,
                         "t_valid": t_valid, "t_test": t_test},
                 name=inter.name, source=inter.source)


REPEATS = ("keep", "first", "last")


def preprocess(inter: Interactions, *, user_k: int = 0, item_k: int = 0, repeats: str = "keep",
               dedup_pairs: bool = False) -> Interactions:
    """Repeated (user, item) pairs, then k-core, then chronological order.

    ``repeats``: ``"keep"`` every interaction (a user may consume an item again, and a
    target may be an item of its own history), or keep only the ``"first"`` or the
    ``"last"`` interaction of each pair (:func:`dedup`).  ``dedup_pairs=True`` is
    ``repeats="first"``.
    """
    if repeats not in REPEATS:
        raise DataError(f"unknown repeats rule {repeats!r}",
                        "use 'keep' (every interaction), 'first' or 'last' (one interaction per (user, item) pair)")
    if dedup_pairs:
        repeats = "first"
    if repeats != "keep":
        inter = dedup(inter, keep=repeats)
    if user_k or item_k:
        inter = kcore(inter, user_k=user_k, item_k=item_k)
    return sort_chronologically(inter)


def make_split(inter: Interactions, kind: str = "leave_one_out", **kw) -> Split:
    """``leave_one_out`` or ``temporal`` (keywords go to :func:`temporal_split`)."""
    if kind == "leave_one_out":
        if kw:
            raise DataError(f"leave_one_out takes no options, got {sorted(kw)}", "drop them")
        return leave_one_out(inter)
    if kind == "temporal":
        return temporal_split(inter, **kw)
    raise DataError(f"unknown split kind {kind!r}", "use 'leave_one_out' or 'temporal'")
