"""The recommender interface every model of sidkit implements.

A :class:`Recommender` is fitted on a :class:`~sidkit.eval.SequenceData` and then
answers batches of histories (left-padded token arrays, see
:mod:`sidkit.eval.sequences`) in one of two ways:

- ``score(history) -> (B, N)`` float scores over the whole catalogue (full-ranking
  models: popularity, SASRec; they implement ``scores``, the same as a torch tensor on
  the model's device); ``scores_all_items = True``;
- ``recommend(history, k) -> (B, k)`` catalogue indices, ``-1`` for a slot that is
  no valid item (generative models decoding SIDs); ``scores_all_items = False``.

:func:`sidkit.eval.evaluate` is the one place that turns either into metrics.
Saving writes ``model.json`` (type, parameters, catalogue) and
``weights.safetensors`` -- plain files, never pickle; :func:`load_recommender` reads
any registered type back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ArtifactError, DataError, NotFittedError
from ..io import SCHEMA_VERSION, atomic_path, hash_obj, read_json, write_json

_REGISTRY: dict[str, type["Recommender"]] = {}


def register(cls: type["Recommender"]) -> type["Recommender"]:
    """Class decorator: make a recommender loadable by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_recommender_class(name: str) -> type["Recommender"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown model type {name!r}", f"use one of: {', '.join(available())}") from None


_RETRAIN = ("the model files are damaged or were not written by this version of sidkit: retrain "
            "(`sidkit train CONFIG --out RUN --force`) or restore the model folder from a copy")


def check_exclude(exclude, n_rows: int, n_items: int) -> np.ndarray:
    """``exclude`` as a (n_rows, n_items) bool numpy array, or a clear error."""
    ex = exclude.detach().cpu().numpy() if hasattr(exclude, "detach") else np.asarray(exclude)
    if ex.shape != (n_rows, n_items):
        raise DataError(f"exclude must be a (histories, items) = ({n_rows}, {n_items}) boolean mask, "
                        f"got shape {ex.shape}", "pass one row over the catalogue per history")
    if ex.dtype != bool:
        raise DataError(f"exclude must be boolean, got dtype {ex.dtype}", "pass a boolean mask (True = exclude)")
    return ex


class Recommender:
    """Base class.  Subclasses set ``name``, implement ``fit`` and ``score`` or
    ``recommend``, and ``_state``/``_set_state`` (arrays to save/restore)."""

    name: ClassVar[str] = "base"
    scores_all_items: ClassVar[bool] = True

    # ---------------------------------------------------------------- parameters
    def get_params(self) -> dict[str, Any]:
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    # -------------------------------------------------------------------- fitting
    def _set_catalogue(self, data) -> None:
        self.item_ids_ = np.asarray(data.item_ids, dtype=str)
        self.catalogue_hash_ = data.catalogue_hash

    def _check_fitted(self) -> None:
        if not hasattr(self, "item_ids_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet", "call fit(data) first")

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return len(self.item_ids_)

    def check_catalogue(self, data) -> None:
        """Raise an ArtifactError unless ``data`` has this model's item vocabulary."""
        self._check_fitted()
        if data.catalogue_hash != self.catalogue_hash_:
            raise ArtifactError(
                f"the model was trained on another catalogue ({len(self.item_ids_)} items) than "
                f"the data it is used on ({data.n_items} items, different ids or order)",
                "evaluate the model on the split it was trained on, or retrain it on this data")

    def _check_history(self, history) -> np.ndarray:
        h = np.asarray(history)
        if h.ndim != 2 or not np.issubdtype(h.dtype, np.integer):
            raise DataError(f"history must be a 2-D integer token array (B, L), got shape {h.shape} "
                            f"and dtype {h.dtype}", "build it with SequenceData.eval_inputs or pad_left")
        if h.size and (h.min() < 0 or h.max() > self.n_items):
            raise DataError(f"history tokens must lie in [0, {self.n_items}] (0 = padding), "
                            f"got {int(h.min())}..{int(h.max())}",
                            "encode item ids with SequenceData.encode_items")
        return h.astype(np.int64, copy=False)

    # ------------------------------------------------------------------- inference
    def scores(self, history: np.ndarray):
        """(B, N) torch scores over the catalogue (higher is better), on the model's
        device; :func:`sidkit.eval.evaluate` ranks them there.  Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not score all items; use recommend()")

    def score(self, history: np.ndarray) -> np.ndarray:
        """(B, N) float32 numpy scores over the catalogue; higher is better."""
        self._check_fitted()
        return self.scores(self._check_history(history)).detach().float().cpu().numpy()

    def recommend(self, history: np.ndarray, k: int, exclude=None) -> np.ndarray:
        """(B, k) catalogue indices, best first (ties: lower index first); ``exclude``:
        optional (B, N) boolean mask of items not to return (e.g. the seen items)."""
        from ..eval.metrics import topk_from_scores

        self._check_fitted()
        h = self._check_history(history)
        if exclude is not None:
            exclude = check_exclude(exclude, h.shape[0], self.n_items)
        return topk_from_scores(self.scores(h), k, exclude=exclude)

    def recommend_ids(self, histories: list[list[str]], k: int = 10) -> list[list[str]]:
        """Top-``k`` item ids for histories given as item ids (oldest first)."""
        from ..eval.sequences import encode_items, pad_left

        self._check_fitted()
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        flat = encode_items(self.item_ids_, np.concatenate([np.asarray(h, dtype=str) for h in histories])
                            if len(histories) else np.zeros(0, str))
        max_len = int(getattr(self, "max_len", None) or max(int(lengths.max(initial=1)), 1))
        top = self.recommend(pad_left((flat, lengths), max_len), k)
        return [[self.item_ids_[i] if i >= 0 else None for i in row] for row in top]

    # ------------------------------------------------------------------ save/load
    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def config_hash(self) -> str:
        return hash_obj({"type": self.name, "params": self.get_params()})

    def save(self, path: str | Path) -> Path:
        """Write ``model.json`` + ``weights.safetensors`` into directory ``path``."""
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
        with atomic_path(path / "weights.safetensors") as tmp:
            save_file(state, str(tmp))
        write_json(path / "model.json", {
            "artifact": "Recommender", "schema_version": SCHEMA_VERSION, "type": self.name,
            "params": self.get_params(), "item_ids": self.item_ids_.tolist(),
            "catalogue_hash": self.catalogue_hash_, "extra": self._extra()})
        return path

    def _extra(self) -> dict[str, Any]:
        return {}

    def _set_extra(self, extra: dict[str, Any]) -> None:
        pass

    @staticmethod
    def load(path: str | Path) -> "Recommender":
        """Load any registered recommender saved with :meth:`save`."""
        from ..io import load_safetensors

        path = Path(path)
        meta_path = path / "model.json"
        if not meta_path.is_file() or not (path / "weights.safetensors").is_file():
            raise ArtifactError(f"no saved recommender in {path} (need model.json and weights.safetensors)",
                                "point to a model directory written by sidkit train")
        meta = read_json(meta_path)
        if not isinstance(meta, dict):
            raise ArtifactError(f"{meta_path} does not hold a JSON object", _RETRAIN)
        if meta.get("artifact") != "Recommender" or meta.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(f"{meta_path} is not a Recommender of schema version {SCHEMA_VERSION}",
                                "retrain the model with this version of sidkit")
        weights = load_safetensors(path / "weights.safetensors", _RETRAIN)
        try:
            cls = get_recommender_class(meta["type"])
            model = cls(**meta["params"])
            model.item_ids_ = np.asarray(meta["item_ids"], dtype=str)
            model.catalogue_hash_ = meta["catalogue_hash"]
            model._set_extra(meta.get("extra", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{meta_path} is not a complete model description "
                                f"({type(e).__name__}: {e})", _RETRAIN) from None
        try:
            model._set_state(weights)
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise ArtifactError(f"{path / 'weights.safetensors'} does not fit its model.json "
                                f"({type(e).__name__}: {e})", _RETRAIN) from None
        return model
