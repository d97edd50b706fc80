"""Recommenders: the :class:`Recommender` interface, baselines, one training loop.

- :class:`Popularity`: training-interaction counts,
- :class:`SASRec`: causal self-attention over item ids (torch),
- :class:`CausalSID`: decoder-only transformer over flattened SID streams, beam-search decoding,
- :class:`TIGER`: T5 encoder-decoder generating SIDs (TIGER recipe), same decoder,
- :class:`ContentKNN`: cosine of item embeddings to the history's mean (the cold-start baseline),
- :func:`train_loop`: AdamW + warm-up, clipping, early stopping on validation
  NDCG@10, per-epoch checkpoints with exact resume.
- :class:`SIDTokens`, :class:`SIDTrie`, :func:`beam_search`: SID token data, the trie of
  valid SIDs and the constrained beam search generative models decode with.
"""

from .base import Recommender, available, get_recommender_class, register
from .beam import BeamResult, beam_search, beam_users
from .causal_sid import CausalSID
from .content_knn import ContentKNN
from .popularity import Popularity
from .sasrec import SASRec
from .sid_tokens import SIDTokens, user_bucket
from .tiger import TIGER
from ..training import train_loop
from .torch_base import TorchRecommender
from .trie import SIDTrie

load_recommender = Recommender.load

__all__ = ["BeamResult", "CausalSID", "ContentKNN", "Popularity", "Recommender", "SASRec", "SIDTokens", "SIDTrie", "TIGER", "TorchRecommender",
           "available", "beam_search", "beam_users", "get_recommender_class", "load_recommender", "register",
           "train_loop", "user_bucket"]
