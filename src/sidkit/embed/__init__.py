"""Item embeddings: sentence-transformer text embeddings (FAMAE to come)."""

from .text import DEFAULT_MODEL, TextEmbedder, resolve_model_dir

__all__ = ["DEFAULT_MODEL", "TextEmbedder", "resolve_model_dir"]
