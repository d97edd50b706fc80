"""Small shared helpers: device choice, seeding, progress bars."""

from __future__ import annotations

import os
import re
import sys
from typing import Iterable, TypeVar

import numpy as np

from .errors import SidkitError

T = TypeVar("T")


def index_of(ids, catalogue, *, presorted: bool = False) -> np.ndarray:
    """Row of each of ``ids`` in ``catalogue`` (-1 where absent), vectorised: one argsort
    and one binary search (``presorted``: ``catalogue`` is sorted already).

    Ids compare as exact strings: numpy's string arrays drop trailing NUL characters, so
    an id given as a Python string that ends in one (``"a\\0"``) is never taken for ``"a"``.
    """
    raw = ids if isinstance(ids, np.ndarray) else list(ids)
    shape = np.shape(raw)
    q = np.asarray(raw).astype(str).reshape(-1)
    cat = np.asarray(catalogue).astype(str).reshape(-1)
    out = np.full(q.shape, -1, np.int64)
    if q.size == 0 or cat.size == 0:
        return out.reshape(shape)
    order = np.arange(len(cat)) if presorted else np.argsort(cat, kind="stable")
    srt = cat if presorted else cat[order]
    pos = np.minimum(np.searchsorted(srt, q), len(cat) - 1)
    found = srt[pos] == q
    if not isinstance(raw, np.ndarray) and len(shape) == 1:
        found &= np.fromiter((not str(i).endswith("\0") for i in raw), bool, len(raw))
    out[found] = order[pos[found]]
    return out.reshape(shape)


#: SplitMix64's increment (the golden ratio in 64 bits)
GOLDEN64 = 0x9E3779B97F4A7C15


#: Unicode's control characters (category Cc): U+0000-U+001F and U+007F-U+009F
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_char(s: str) -> tuple[int, str] | None:
    """``(position, character)`` of the first control character of ``s`` (ids never hold
    one: they are matched exactly), or None."""
    m = CONTROL_CHARS.search(s)
    return None if m is None else (m.start(), m.group())


def mix64(x) -> np.ndarray:
    """The SplitMix64 finaliser of uint64 values (Steele, Lea and Flood 2014; Vigna's
    ``splitmix64.c``): a stateless, vectorised hash, the same on every machine and run::

        z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        return z ^ (z >> 31)                      (all mod 2**64)
    """
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def resolve_device(device: str | None = "auto"):
    """Return a ``torch.device``; ``"auto"`` picks CUDA when present, else CPU."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise SidkitError(f"unknown device {device!r}", "use 'auto', 'cpu' or 'cuda[:N]'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SidkitError(f"device {device!r} requested but CUDA is not available",
                          "use --device auto or --device cpu")
    return dev


def rng(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed, a Generator, or None (fresh entropy)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


def torch_generator(random_state: int | None, device=None):
    import torch

    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(int(random_state) if random_state is not None else int(np.random.SeedSequence().entropy % (2**63)))
    return g


def progress(it: Iterable[T], *, desc: str = "", total: int | None = None,
             enabled: bool | None = None) -> Iterable[T]:
    """A tqdm progress bar on stderr; silent when SIDKIT_NO_PROGRESS=1 or disabled."""
    if enabled is None:
        enabled = os.environ.get("SIDKIT_NO_PROGRESS", "0") != "1"
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)


def sidkit_home():
    """The cache directory: ``$SIDKIT_HOME`` or the user's cache dir (``~/.cache/sidkit``)."""
    from pathlib import Path

    env = os.environ.get("SIDKIT_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sidkit"))
