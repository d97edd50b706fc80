"""The tokenizer interface every Semantic-ID tokenizer implements.

scikit-learn conventions: the constructor only stores its parameters; ``fit``
validates and learns; fitted state lives in attributes ending in ``_``.  Fitted
state is saved as ``state.safetensors`` (tensors) + ``tokenizer.json`` (name and
parameters) -- plain files, never pickle.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ArtifactError, DataError, NotFittedError
from ..io import SCHEMA_VERSION, atomic_path, read_json, write_json
from ..types import Codes

_REGISTRY: dict[str, type["Tokenizer"]] = {}


def register(cls: type["Tokenizer"]) -> type["Tokenizer"]:
    """Class decorator: make a tokenizer loadable by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_tokenizer_class(name: str) -> type["Tokenizer"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(
            f"unknown tokenizer {name!r}", f"use one of: {', '.join(available())}"
        ) from None


def check_embeddings(X: Any, *, min_items: int = 1, name: str = "X") -> np.ndarray:
    """Validate an embedding matrix and return it as C-contiguous float32.

    Raises a :class:`DataError` naming the problem for 1-D/3-D input, empty input,
    NaN/inf values or fewer than ``min_items`` rows.
    """
    try:
        arr = np.asarray(X)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise DataError(f"{name} cannot be converted to an array: {e}") from e
    if arr.ndim != 2:
        raise DataError(
            f"{name} must be a 2-D (items, dim) array, got {arr.ndim}-D shape {arr.shape}",
            "pass one row per item; reshape a single item with x[None, :]",
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape})", "pass at least one item")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise DataError(
            f"{name} has NaN or inf values in {rows.size} row(s), first at row {int(rows[0])}",
            "drop or re-embed those items",
        )
    if arr.shape[0] < min_items:
        raise DataError(
            f"{name} has {arr.shape[0]} items but at least {min_items} are needed "
            "(the codebook has more codewords than items)",
            "use smaller codebook sizes or more items",
        )
    return arr


class Tokenizer:
    """Base class: ``fit(X)``, ``encode(X) -> Codes``, ``decode(Codes) -> X_hat``."""

    name: ClassVar[str] = "base"
    #: names of the fitted array attributes saved by ``save`` (each ends in ``_``)
    _state_attrs: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------ parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self" and sig.parameters[p].kind
                not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]

    def _store_params(self, values: dict[str, Any]) -> None:
        """Store every constructor parameter from ``values`` (pass ``locals()``)."""
        for p in self._param_names():
            setattr(self, p, values[p])

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self._param_names()}

    def set_params(self, **params: Any) -> "Tokenizer":
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise DataError(f"{type(self).__name__} has no parameter {k!r}",
                                f"valid parameters: {', '.join(sorted(valid))}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any = None) -> "Tokenizer":  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, X: Any) -> Codes:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, codes: Codes | np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def fit_encode(self, X: Any, y: Any = None) -> Codes:
        return self.fit(X, y).encode(X)

    @property
    def is_fitted(self) -> bool:
        return all(hasattr(self, a) for a in self._state_attrs) and bool(self._state_attrs)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet",
                "call fit(X) before encode/decode, or Tokenizer.load(path)",
            )

    def _check_X(self, X: Any) -> np.ndarray:
        """Validated float32 ``X`` with the fitted number of features (``n_features_in_``)."""
        self._check_fitted()
        X = check_embeddings(X)
        d = int(self.n_features_in_)
        if X.shape[1] != d:
            raise DataError(f"X has {X.shape[1]} features but the tokenizer was fitted on "
                            f"{d}", "embed the items with the same model")
        return X

    # ------------------------------------------------------------ save/load
    def _extra_state(self) -> dict[str, Any]:
        """JSON-serialisable fitted state that is not an array (override)."""
        return {}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` returned (override)."""

    def save(self, path: str | Path) -> Path:
        """Save to directory ``path``: ``tokenizer.json`` + ``state.safetensors``."""
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {a: np.ascontiguousarray(getattr(self, a)) for a in self._state_attrs}
        with atomic_path(path / "state.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(
            path / "tokenizer.json",
            {
                "artifact": "Tokenizer",
                "schema_version": SCHEMA_VERSION,
                "name": self.name,
                "params": self.get_params(),
                "extra_state": self._extra_state(),
            },
        )
        return path

    @staticmethod
    def load(path: str | Path) -> "Tokenizer":
        """Load any registered tokenizer saved with :meth:`save`."""
        from safetensors.numpy import load_file

        path = Path(path)
        meta_path = path / "tokenizer.json"
        if not meta_path.exists():
            raise ArtifactError(f"no saved tokenizer in {path} (missing tokenizer.json)",
                                "pass the directory written by Tokenizer.save")
        meta = read_json(meta_path)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(f"{meta_path} has schema version {meta.get('schema_version')}, "
                                f"expected {SCHEMA_VERSION}", "re-fit the tokenizer")
        cls = get_tokenizer_class(meta["name"])
        obj = cls(**meta["params"])
        for k, v in load_file(str(path / "state.safetensors")).items():
            setattr(obj, k, v)
        obj._set_extra_state(meta.get("extra_state", {}))
        return obj
