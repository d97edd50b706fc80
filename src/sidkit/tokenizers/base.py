"""The tokenizer interface every Semantic-ID tokenizer implements.

scikit-learn conventions: the constructor only stores its parameters; ``fit``
validates and learns; fitted state lives in attributes ending in ``_``.  Fitted
state is saved as ``state.safetensors`` (tensors) + ``tokenizer.json`` (name and
parameters) -- plain files, never pickle.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

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


# ---------------------------------------------------------------- parameter constraints
# scikit-learn's ``_parameter_constraints`` idea: every tokenizer declares, per
# constructor parameter, the list of accepted forms; one function checks them all
# (at ``fit`` and when a saved tokenizer is loaded).  ``None`` in a list accepts None.

class Constraint:
    """One accepted form of a parameter value (see :data:`Tokenizer._parameter_constraints`)."""

    def accepts(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v)))


def _bounds_text(ge, gt, le, lt) -> str:
    parts = [f">= {ge:g}" if ge is not None else None, f"> {gt:g}" if gt is not None else None,
             f"<= {le:g}" if le is not None else None, f"< {lt:g}" if lt is not None else None]
    return " and ".join(p for p in parts if p)


def _in_bounds(v: float, ge, gt, le, lt) -> bool:
    return ((ge is None or v >= ge) and (gt is None or v > gt)
            and (le is None or v <= le) and (lt is None or v < lt))


class Int(Constraint):
    """An integer (not a bool, not a float) within optional bounds."""

    def __init__(self, ge: int | None = None, le: int | None = None):
        self.ge, self.le = ge, le

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and _in_bounds(value, self.ge, None, self.le, None)

    def describe(self) -> str:
        b = _bounds_text(self.ge, None, self.le, None)
        return f"an integer {b}" if b else "an integer"


class Real(Constraint):
    """A finite number within optional bounds (``ge``/``gt``/``le``/``lt``)."""

    def __init__(self, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None):
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt

    def accepts(self, value: Any) -> bool:
        return _is_real(value) and _in_bounds(float(value), self.ge, self.gt, self.le, self.lt)

    def describe(self) -> str:
        b = _bounds_text(self.ge, self.gt, self.le, self.lt)
        return f"a number {b}" if b else "a finite number"


class Ints(Constraint):
    """A list/tuple of integers, each ``>= ge`` (non-empty unless ``allow_empty``)."""

    def __init__(self, ge: int | None = None, allow_empty: bool = False):
        self.ge, self.allow_empty = ge, allow_empty

    def accepts(self, value: Any) -> bool:
        if isinstance(value, np.ndarray):
            value = value.tolist() if value.ndim == 1 else None
        if not isinstance(value, (list, tuple)) or (not value and not self.allow_empty):
            return False
        return all(_is_int(v) and (self.ge is None or v >= self.ge) for v in value)

    def describe(self) -> str:
        each = f", each >= {self.ge}" if self.ge is not None else ""
        return f"a {'' if self.allow_empty else 'non-empty '}list of integers{each}"


class Bool(Constraint):
    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def describe(self) -> str:
        return "true or false"


class Device(Constraint):
    """``"auto"`` or a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``...)."""

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if value == "auto":
            return True
        import torch

        try:
            torch.device(value)
        except (RuntimeError, TypeError, ValueError):
            return False
        return True

    def describe(self) -> str:
        return "'auto', 'cpu' or 'cuda[:N]'"


def _describe(options: Sequence[Any]) -> str:
    return " or ".join("None" if c is None else c.describe() for c in options)


def check_params(cls: type, params: dict[str, Any]) -> None:
    """Check ``params`` against ``cls._parameter_constraints``; raise one DataError naming
    the parameter and its value.  Also checks ``n_levels`` against ``codebook_sizes``."""
    constraints = getattr(cls, "_parameter_constraints", {})
    label = getattr(cls, "__name__", str(cls))
    for k, v in params.items():
        options = constraints.get(k)
        if options is None:
            continue
        if any((c is None and v is None) or (c is not None and c.accepts(v)) for c in options):
            continue
        raise DataError(f"{label} parameter {k}={v!r} is invalid: must be {_describe(options)}",
                        f"pass a valid {k} (see help({label}))")
    sizes, L = params.get("codebook_sizes"), params.get("n_levels")
    if isinstance(sizes, (list, tuple, np.ndarray)) and L is not None and len(sizes) != L:
        raise DataError(f"{label}: codebook_sizes={list(sizes)!r} has {len(sizes)} entries but "
                        f"n_levels={L!r}",
                        "give one codebook size per level, or leave n_levels at None "
                        "(the number of sizes)")


def check_scale(X: Any, *, name: str = "X") -> None:
    """Raise a DataError if ``X`` is so large that squared distances overflow float32.

    Squared distances are computed as ``|x|^2 - 2 x.c + |c|^2`` in float32; with
    ``max|x| = m`` in ``d`` dims they reach ``4 d m^2``.  Values beyond
    ``sqrt(float32_max / (64 d))`` (about 1e17 at d = 384) would silently turn into
    inf and collapse every level onto a couple of codewords, so they are rejected.
    ``X`` is a 2-D numpy array or torch tensor; no ``N x d`` temporary is made.
    """
    if getattr(X, "ndim", 0) != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        return
    try:
        import torch

        is_tensor = isinstance(X, torch.Tensor)
    except ImportError:  # pragma: no cover - torch is a dependency
        is_tensor = False
    if is_tensor:
        lo, hi = (float(v) for v in torch.aminmax(X.detach()))
    else:
        lo, hi = float(np.min(X)), float(np.max(X))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return  # NaN/inf: the caller's finiteness check names the rows
    m = max(abs(lo), abs(hi))
    limit = math.sqrt(float(np.finfo(np.float32).max) / (64.0 * X.shape[1]))
    if m > limit:
        raise DataError(
            f"{name} has values up to {m:.3g} in absolute value; squared distances in "
            f"{X.shape[1]} dims would overflow float32 (values must stay below {limit:.3g})",
            "rescale the embeddings first, e.g. L2-normalise each row or divide by "
            f"the max abs value ({m:.3g})")


def check_embeddings(X: Any, *, min_items: int = 1, name: str = "X") -> np.ndarray:
    """Validate an embedding matrix and return it as C-contiguous float32.

    Raises a :class:`DataError` naming the problem for 1-D/3-D input, empty input,
    NaN/inf values or fewer than ``min_items`` rows.
    """
    try:
        arr = np.asarray(X)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise DataError(f"{name} cannot be converted to an array: {e}",
                        "pass a numpy array (or list of equal-length rows) of numbers") from e
    if arr.ndim != 2:
        raise DataError(
            f"{name} must be a 2-D (items, dim) array, got {arr.ndim}-D shape {arr.shape}",
            "pass one row per item; reshape a single item with x[None, :]",
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}", "pass a float array of shape (items, dim)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape})", "pass at least one item")
    if arr.dtype.itemsize > 4 and np.issubdtype(arr.dtype, np.floating):
        check_scale(arr[np.isfinite(arr).all(axis=1)], name=name)  # before float32 turns it to inf
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise DataError(
            f"{name} has NaN or inf values in {rows.size} row(s), first at row {int(rows[0])}",
            "drop or re-embed those items",
        )
    check_scale(arr, name=name)
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
    #: True when a token means "child t of this parent" (a tree: hierarchical k-means,
    #: GAOQ) rather than an entry of a codebook shared by every prefix (VQ, RQ, RQ-VAE)
    prefix_conditional: ClassVar[bool] = False
    #: names of the fitted array attributes saved by ``save`` (each ends in ``_``)
    _state_attrs: ClassVar[tuple[str, ...]] = ()
    #: accepted forms of every constructor parameter (scikit-learn style): a list of
    #: :class:`Constraint` objects or ``None``; checked by :meth:`_check_params` at the
    #: top of ``fit`` and by :meth:`load`.  Every registered tokenizer declares all its
    #: parameters (the conformance suite checks this).
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}

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

    def _check_params(self) -> None:
        """Validate the constructor parameters (call first thing in ``fit``): a DataError
        names the parameter, its value and what is accepted."""
        check_params(type(self), self.get_params())

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
        """Save to directory ``path``: ``tokenizer.json`` + ``state.safetensors``.

        Timings (keys named ``seconds`` or ``*_seconds`` in the extra state) are left
        out: the saved files depend only on the fitted model, so a refit with the same
        seed gives byte-identical files (and the same pipeline stage hash).  They stay
        on the fitted object (e.g. ``fit_stats_["fit_seconds"]``).
        """
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
                "extra_state": _without_timings(self._extra_state()),
            },
        )
        return path

    @staticmethod
    def load(path: str | Path) -> "Tokenizer":
        """Load any registered tokenizer saved with :meth:`save`.

        Every problem with the directory (missing or damaged files, edited parameters
        that the constructor would not accept, missing tensors or tensors that do not
        fit the parameters) raises one :class:`ArtifactError` naming the file.
        """
        path = Path(path)
        meta_path, state_path = path / "tokenizer.json", path / "state.safetensors"
        fix = ("re-save the tokenizer with Tokenizer.save, or re-run the step that wrote "
               "it (`sidkit run CONFIG --force`, `sidkit tokenize`)")
        if not path.is_dir():
            raise ArtifactError(f"no saved tokenizer at {path} (not a directory)",
                                "pass the directory written by Tokenizer.save")
        if not meta_path.is_file():
            raise ArtifactError(f"no saved tokenizer in {path} (missing tokenizer.json)",
                                "pass the directory written by Tokenizer.save; " + fix)
        meta = read_json(meta_path)  # ArtifactError naming the file if unreadable
        if not isinstance(meta, dict):
            raise ArtifactError(f"{meta_path} does not hold a JSON object", fix)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(f"{meta_path} has schema version {meta.get('schema_version')!r}, "
                                f"expected {SCHEMA_VERSION}", "re-fit the tokenizer")
        name = meta.get("name")
        if not isinstance(name, str):
            raise ArtifactError(f"{meta_path}: key 'name' is missing or not a string ({name!r})",
                                fix)
        try:
            cls = get_tokenizer_class(name)
        except DataError as e:
            raise ArtifactError(f"{meta_path}: {e.problem}", e.fix) from None
        params = meta.get("params", {})
        if not isinstance(params, dict):
            raise ArtifactError(f"{meta_path}: key 'params' must be an object, got {params!r}", fix)
        unknown = sorted(set(params) - set(cls._param_names()))
        if unknown:
            raise ArtifactError(
                f"{meta_path}: unknown parameter(s) {unknown} for tokenizer {name!r}",
                f"valid parameters: {', '.join(cls._param_names())}; {fix}")
        try:
            check_params(cls, params)
        except DataError as e:
            raise ArtifactError(f"{meta_path}: {e.problem}", fix) from None
        obj = cls(**params)
        extra = meta.get("extra_state", {})
        if not isinstance(extra, dict):
            raise ArtifactError(f"{meta_path}: key 'extra_state' must be an object", fix)
        for k, v in _load_tensors(state_path, cls._state_attrs, fix).items():
            setattr(obj, k, v)
        try:
            obj._set_extra_state(extra)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{meta_path}: extra_state is incomplete or malformed "
                                f"({type(e).__name__}: {e})", fix) from None
        _probe(obj, path, fix)
        return obj


def _without_timings(obj: Any) -> Any:
    """``obj`` (JSON-like) without dict keys ``seconds`` / ``*_seconds``."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if not (isinstance(k, str) and (k == "seconds" or k.endswith("_seconds")))}
    if isinstance(obj, (list, tuple)):
        return [_without_timings(v) for v in obj]
    return obj


def _load_tensors(state_path: Path, names: Sequence[str], fix: str) -> dict[str, np.ndarray]:
    """The tensors of a ``state.safetensors``; exactly ``names``, numeric, else ArtifactError."""
    from ..io import load_safetensors

    tensors = load_safetensors(state_path, fix)
    missing = [a for a in names if a not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        what = "; ".join(x for x in (f"missing tensor(s) {missing}" if missing else "",
                                     f"unexpected tensor(s) {extra}" if extra else "") if x)
        raise ArtifactError(f"{state_path} does not match its tokenizer.json: {what}", fix)
    return tensors


def _probe(obj: "Tokenizer", path: Path, fix: str) -> None:
    """Encode and decode two rows with a freshly loaded tokenizer, so tensors of the wrong
    shape or dtype fail here with an ArtifactError rather than later with an IndexError."""
    from ..errors import SidkitError
    from ..utils import resolve_device

    dev = getattr(obj, "device", "auto")
    try:
        resolve_device(dev)
    except SidkitError:
        return  # e.g. fitted on CUDA, loaded without: the device error comes at first use
    if getattr(obj, "n_features_in_", None) is None and not hasattr(obj, "_dim"):
        return  # a tokenizer that does not expose its input dimension: nothing to probe
    try:
        d = getattr(obj, "n_features_in_", None)
        d = int(d) if d is not None else int(obj._dim())
        codes = obj.encode(np.zeros((2, d), np.float32))
        # decode the encoded rows and the last codeword of every level (all tables full size)
        top = np.asarray(codes.codebook_sizes, dtype=np.int64)[None, :] - 1
        Xh = np.asarray(obj.decode(np.concatenate([codes.codes[:1], top])))
        if Xh.shape != (2, d) or not np.isfinite(Xh).all():
            raise ValueError(f"decode returned shape {Xh.shape}, finite={np.isfinite(Xh).all()}")
    except Exception as e:  # any failure means the saved state is inconsistent
        raise ArtifactError(
            f"the tokenizer in {path} is inconsistent: state.safetensors does not fit "
            f"tokenizer.json ({type(e).__name__}: {e})", fix) from None


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution ``counts / counts.sum()``."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(max(0.0, -(p * np.log2(p)).sum()))


def counts_perplexity(counts) -> float:
    """``2 ** entropy`` of a code-usage count vector: the number of codewords that, used
    equally, would have the same entropy (``K`` when all ``K`` are used equally)."""
    return float(2.0 ** entropy_bits(counts))


def perplexity(tokens: np.ndarray, k: int) -> float:
    """:func:`counts_perplexity` of the tokens of one level (``-1`` = no token)."""
    tokens = np.asarray(tokens)
    tokens = tokens[tokens >= 0]
    return counts_perplexity(np.bincount(tokens, minlength=k)) if tokens.size else 0.0
