"""Item embeddings: sentence-transformer text embeddings and FAMAE field embeddings."""

from .famae import FAMAE, FieldSpec, build_field_tables, default_fields
from .text import DEFAULT_MODEL, TextEmbedder, resolve_model_dir

__all__ = ["FAMAE", "FieldSpec", "build_field_tables", "default_fields", "DEFAULT_MODEL", "TextEmbedder", "resolve_model_dir"]
