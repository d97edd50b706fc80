"""Atomic writes, content hashing and artifact metadata.

Every artifact is written to a temporary file in the target directory and renamed
into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import ArtifactError

SCHEMA_VERSION = 1

#: the fix suggested when an artifact file cannot be read
REWRITE_FIX = ("the file is damaged or was not written by sidkit: re-run the step that "
               "wrote it (`sidkit run CONFIG --force` for a run directory) or re-save it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, to_json(obj) + "\n")


def _missing(path: Path) -> ArtifactError:
    return ArtifactError(f"{path} does not exist", "check the path, or " + REWRITE_FIX)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing, unreadable or invalid file raises an ArtifactError
    naming it (never FileNotFoundError / UnicodeDecodeError / JSONDecodeError)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} cannot be read as UTF-8 text ({e})", REWRITE_FIX) from None
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError (empty, truncated, garbage)
        raise ArtifactError(f"{path} is not valid JSON ({e})", REWRITE_FIX) from None


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def _load_error(path: Path, e: ValueError, kind: str) -> ArtifactError:
    """numpy's ValueError on load -> an ArtifactError without its allow_pickle advice."""
    msg = str(e)
    if "Object arrays" in msg:  # a real object-dtype array
        return ArtifactError(f"{path} holds an object-dtype array (it would need pickle, "
                             "which sidkit never loads)",
                             "save a numeric array, e.g. np.save(path, X.astype(np.float32))")
    if "pickle" in msg:  # numpy's fallback for bytes that are neither .npy nor .npz
        return ArtifactError(f"{path} is not a {kind} file (unrecognised or pickled content)",
                             REWRITE_FIX)
    return ArtifactError(f"{path} is not a valid {kind} file ({msg})", REWRITE_FIX)


def load_npy(path: str | os.PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """Load a ``.npy`` array without pickle; anything but a plain numeric/string array
    file (missing, truncated, garbage, an object array, an ``.npz``) raises an
    ArtifactError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as e:
        raise _load_error(path, e, ".npy") from None
    except (OSError, EOFError) as e:
        raise ArtifactError(f"{path} is not a valid .npy file ({e})", REWRITE_FIX) from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under a .npy name
        arr.close()
        raise ArtifactError(f"{path} is an .npz archive, not a .npy array",
                            "pass the .npy file (np.save), or " + REWRITE_FIX)
    return arr


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` without pickle; a missing, truncated or garbage file or
    an object array raises an ArtifactError naming the file (never BadZipFile)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        raise _load_error(path, e, ".npz") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError) as e:
        raise ArtifactError(f"{path} is not a valid .npz file ({type(e).__name__}: {e})",
                            REWRITE_FIX) from None


def load_safetensors(path: str | os.PathLike, fix: str = REWRITE_FIX, *, framework: str = "numpy",
                     names: Any = None) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file (numpy arrays, or torch tensors with
    ``framework="torch"``).  A missing, empty, truncated or garbage file raises an
    ArtifactError naming it and ``fix`` (never safetensors' own SafetensorError);
    ``names``: the tensors it must hold (missing ones are an ArtifactError too)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing", fix)
    if framework == "torch":
        from safetensors.torch import load_file
    else:
        from safetensors.numpy import load_file
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError
        size = path.stat().st_size
        what = "is empty" if size == 0 else f"is not a readable safetensors file ({type(e).__name__}: {e})"
        raise ArtifactError(f"{path} {what}", fix) from None
    if names is not None:
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ArtifactError(f"{path} lacks tensor(s) {missing} (it holds {sorted(tensors)[:8]})", fix)
    return tensors


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_array(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.view(np.uint8).reshape(-1).data if arr.size else b"")
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (parameters, configs)."""
    return hash_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode())


def replace_dir(tmp: Path, target: Path, *, prefix: str | None = None) -> None:
    """Move the finished directory ``tmp`` onto ``target`` (same parent), replacing it.

    The old folder is first renamed aside into ``<prefix>*.old`` (default
    ``.<target name>.``) and only then removed, so a crash never leaves ``target`` half-written.
    """
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=prefix or f".{target.name}.", suffix=".old",
                                      dir=target.parent))
        target.rename(trash / "old")
        tmp.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(target)
