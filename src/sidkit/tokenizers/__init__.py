"""Semantic-ID tokenizers (see :mod:`sidkit.tokenizers.base` for the interface)."""

from .base import Tokenizer, available, check_embeddings, get_tokenizer_class, register
from .kmeans import KMeansResult, assign  # not `kmeans`: it would shadow the submodule
from .sizing import default_codebook_sizes
from .collisions import CollisionIndex, collision_stats, resolve_collisions
from .rq import VQ, HierarchicalKMeans, RQKMeans
from .hourglass import drop_level, topk_removal
from .rqvae import RQVAE
from .drq import DRQ, cooccurrence_pairs
from .gaoq import GAOQ, auto_branching

__all__ = ["Tokenizer", "available", "check_embeddings", "get_tokenizer_class", "register",
           "KMeansResult", "assign", "default_codebook_sizes", "CollisionIndex",
           "collision_stats", "resolve_collisions", "VQ", "HierarchicalKMeans", "RQKMeans",
           "drop_level", "topk_removal", "RQVAE", "DRQ", "cooccurrence_pairs", "GAOQ",
           "auto_branching"]
