"""Semantic-ID tokenizers (see :mod:`sidkit.tokenizers.base` for the interface)."""

from .base import Tokenizer, available, check_embeddings, get_tokenizer_class, register

__all__ = ["Tokenizer", "available", "check_embeddings", "get_tokenizer_class", "register"]
