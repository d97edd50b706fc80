"""Content kNN: the cosine of each item's embedding to the mean of the history's embeddings.

The fair competitor of a Semantic-ID model on cold-start items (docs/cold_start.md): it knows
every item's content, including items nobody interacted with, and no interaction
signal at all.  Full ranking (``scores_all_items = True``) over the whole catalogue;
an empty history scores every item 0.  ``fit(data, embeddings=X)`` with ``X`` (N, d)
in the catalogue order of ``data`` (or an :class:`~sidkit.types.Embeddings` with item
ids, reordered to the catalogue).
"""

from __future__ import annotations

import numpy as np

from ..errors import ArtifactError, DataError
from .base import Recommender, register


@register
class ContentKNN(Recommender):
    """Score = cos(item embedding, mean of the history's item embeddings)."""

    name = "content_knn"

    def __init__(self, max_len: int = 50) -> None:
        self.max_len = max_len

    def fit(self, data, *, embeddings=None, **_) -> "ContentKNN":
        from ..eval.harness import as_sequence_data

        data = as_sequence_data(data)
        if embeddings is None:
            raise DataError("content kNN needs the item embeddings", "pass fit(data, embeddings=X)")
        ids = getattr(embeddings, "item_ids", None)
        X = np.asarray(getattr(embeddings, "vectors", getattr(embeddings, "X", embeddings)), np.float32)
        if ids is not None:
            ids = np.asarray(ids).astype(str)
            order = np.argsort(ids, kind="stable")
            pos = np.clip(np.searchsorted(ids[order], data.item_ids), 0, len(ids) - 1)
            if (ids[order][pos] != data.item_ids).any():
                raise DataError("the embeddings miss catalogue items", "embed every item of the catalogue")
            X = X[order[pos]]
        if X.ndim != 2 or X.shape[0] != data.n_items:
            raise DataError(f"embeddings must be (items, dim) = ({data.n_items}, d), got {X.shape}",
                            "pass one row per catalogue item, in catalogue order")
        if not np.isfinite(X).all():
            raise DataError("the embeddings hold NaN or infinite values", "pass finite embeddings")
        self._set_catalogue(data)
        norm = np.linalg.norm(X, axis=1, keepdims=True)
        self.unit_ = (X / np.maximum(norm, 1e-12)).astype(np.float32)
        self.history_ = []
        return self

    def scores(self, history):
        import torch

        self._check_fitted()
        h = self._check_history(history)[:, -self.max_len:]
        table = np.vstack([np.zeros((1, self.unit_.shape[1]), np.float32), self.unit_])
        mean = table[h].sum(1) / np.maximum((h > 0).sum(1, keepdims=True), 1)
        mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        return torch.from_numpy(mean @ self.unit_.T)

    def _state(self) -> dict[str, np.ndarray]:
        return {"unit": self.unit_}

    def _set_state(self, state) -> None:
        if state["unit"].ndim != 2 or state["unit"].shape[0] != self.n_items:
            raise ArtifactError(f"content kNN embeddings have shape {state['unit'].shape}, expected "
                                f"({self.n_items}, d)", "the model directory is corrupt; refit")
        self.unit_ = state["unit"]
        self.history_ = []
