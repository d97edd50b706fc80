"""Recommenders: the :class:`Recommender` interface, baselines, one training loop.

- :class:`Popularity`: training-interaction counts,
- :class:`SASRec`: causal self-attention over item ids (torch),
- :func:`train_loop`: AdamW + warm-up, clipping, early stopping on validation
  NDCG@10, per-epoch checkpoints with exact resume.
"""

from .base import Recommender, available, get_recommender_class, register
from .popularity import Popularity
from .sasrec import SASRec
from .train import TorchRecommender, train_loop

load_recommender = Recommender.load

__all__ = ["Popularity", "Recommender", "SASRec", "TorchRecommender", "available", "get_recommender_class",
           "load_recommender", "register", "train_loop"]
