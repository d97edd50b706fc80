"""Most-popular baseline: every user gets the items most often seen in training."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Recommender, register


@register
class Popularity(Recommender):
    """Scores each item by its number of training interactions (the ``train`` role
    only: validation and test targets never leak into the counts).  The history is
    ignored, so every user gets the same ranking; ties go to the lower catalogue index.
    """

    name = "popularity"

    def __init__(self) -> None:
        pass

    def fit(self, data, valid=None, **_) -> "Popularity":
        flat, lengths = data.train_sequences()
        if flat.size == 0:
            raise DataError("the split has no training interactions", "check the split and k-core settings")
        self._set_catalogue(data)
        self.counts_ = np.bincount(flat - 1, minlength=data.n_items).astype(np.float32)
        self.history_ = []
        return self

    def scores(self, history: np.ndarray):
        import torch

        self._check_fitted()
        h = self._check_history(history)
        return torch.from_numpy(self.counts_).expand(h.shape[0], self.n_items)

    def _state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts_}

    def _set_state(self, state) -> None:
        if state["counts"].shape != (self.n_items,):
            from ..errors import ArtifactError
            raise ArtifactError(f"popularity counts have shape {state['counts'].shape}, "
                                f"expected ({self.n_items},)", "the model directory is corrupt; retrain")
        self.counts_ = state["counts"]
