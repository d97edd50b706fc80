"""ReSID proxy diagnostic: how well item embeddings predict held-out item fields.

For every field but the item id, a k-nearest-neighbour probe (cosine similarity)
predicts the field of each held-out item from the ``k`` most similar other items: each
neighbour votes for each of its values, the value with the most votes wins (ties:
the first value in vocabulary order).  Accuracy = share of held-out items with a known
value whose predicted value is one of their values (for multi-valued fields, such as
genres, any of them).  ``majority`` is the same accuracy when always predicting the
most frequent value among the reference items: the chance level to beat.

Works for any embedding (text, FAMAE, a file).  Both text and FAMAE embeddings are
built from these fields, so the figure measures how much of the field information
an embedding keeps in its geometry, not generalisation to unseen metadata.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import DataError


def _multi_hot(codes: np.ndarray, n_values: int) -> np.ndarray:
    """(N, V) 0/1 of value codes 1..V (0 = missing, -1 = empty slot are dropped)."""
    out = np.zeros((codes.shape[0], n_values + 1), dtype=np.float32)
    rows = np.repeat(np.arange(codes.shape[0]), codes.shape[1])
    c = codes.ravel()
    keep = c > 0
    out[rows[keep], c[keep]] = 1.0
    return out[:, 1:]


def field_prediction(vectors: np.ndarray, items, fields: Sequence[Any] | None = None, *, k: int = 10,
                     test_fraction: float = 0.2, test_items: Sequence[int] | None = None,
                     random_state: int | None = 0, year_bucket: float = 5,
                     batch_size: int = 2048) -> dict[str, Any]:
    """Held-out field accuracy of a kNN probe on ``vectors`` (one row per row of ``items``).

    ``fields``: field names or :class:`~sidkit.embed.famae.FieldSpec` s (default: the
    item table's FAMAE fields without the item id).  ``test_items``: row indices held
    out (default: a random ``test_fraction`` of the rows).  Returns
    ``{"fields": {name: {"accuracy", "majority", "n_test"}}, "mean_accuracy",
    "mean_majority", "k", "n_test"}``.
    """
    from ..embed.famae import FieldSpec, build_field_tables, default_fields

    X = np.asarray(vectors, dtype=np.float64)
    df = getattr(items, "df", items)
    if X.ndim != 2 or X.shape[0] != len(df):
        raise DataError(f"vectors have shape {X.shape}, expected ({len(df)}, dim): one row per item",
                        "pass the embeddings in the item table's order")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"k must be an integer >= 1, got {k!r}", "use e.g. k=10")
    if fields is not None and all(isinstance(f, FieldSpec) for f in fields):
        specs = list(fields)
    else:
        specs = default_fields(items, year_bucket, fields)
    specs = [s for s in specs if s.column != "item_id"]
    if not specs:
        raise DataError("no item field to predict besides the item id", "name fields such as genres or year")
    n = len(X)
    if test_items is None:
        if not 0 < test_fraction < 1:
            raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction}", "use e.g. 0.2")
        perm = np.random.default_rng(random_state).permutation(n)
        test = np.sort(perm[:max(1, int(round(test_fraction * n)))])
    else:
        test = np.unique(np.asarray(test_items, dtype=np.int64))
        if len(test) == 0 or test.min() < 0 or test.max() >= n:
            raise DataError(f"test_items must be row indices in [0, {n}), got {list(test_items)[:5]}...",
                            "pass row numbers of the item table")
    ref = np.setdiff1d(np.arange(n), test)
    if len(ref) == 0:
        raise DataError("every item is held out: no reference items for the probe", "hold out fewer items")
    kk = min(k, len(ref))
    Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    nbrs = np.empty((len(test), kk), dtype=np.int64)
    for lo in range(0, len(test), batch_size):
        sim = Xn[test[lo:lo + batch_size]] @ Xn[ref].T
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk] if kk < len(ref) else \
            np.broadcast_to(np.arange(len(ref)), (sim.shape[0], len(ref)))
        nbrs[lo:lo + batch_size] = ref[top]
    tables = build_field_tables(items, specs)
    out: dict[str, Any] = {}
    for s, vocab, codes in zip(tables.specs, tables.vocabs, tables.codes):
        hot = _multi_hot(codes, len(vocab))                      # (N, V)
        known = hot[test].sum(1) > 0
        votes = hot[nbrs].sum(1)                                 # (T, V)
        pred = votes.argmax(1)
        hit = hot[test, pred] > 0
        top_ref = hot[ref].sum(0).argmax()
        maj = hot[test, top_ref] > 0
        m = int(known.sum())
        out[s.name] = {"accuracy": float(hit[known].mean()) if m else None,
                       "majority": float(maj[known].mean()) if m else None, "n_test": m}
    accs = [v["accuracy"] for v in out.values() if v["accuracy"] is not None]
    majs = [v["majority"] for v in out.values() if v["majority"] is not None]
    return {"fields": out, "mean_accuracy": float(np.mean(accs)) if accs else None,
            "mean_majority": float(np.mean(majs)) if majs else None, "k": int(kk), "n_test": int(len(test))}
