"""A tiny artifact store: each pipeline stage writes one directory atomically.

A stage's directory holds its artifact files and ``meta.json`` with the schema
version, the stage's parameters, the hashes of its inputs and of its outputs (one
size + SHA-256 per file, and their combined ``output_hash``).  A stage is skipped
when ``meta.json`` records the same key (parameters + input hashes + stage version)
*and* its files still match the recorded sizes and hashes; otherwise it runs in a
temporary directory ``.<stage>.<pid>-<random>.tmp`` that is renamed into place only
when the stage succeeded, so a crash never leaves a half-written artifact under the
final name.  Temporary directories left by a killed run are removed by the next run.

sidkit only ever replaces a directory it wrote itself (a valid ``meta.json`` naming
the stage, and no files that meta.json does not list): anything else at a stage path
is an :class:`~sidkit.errors.ArtifactError` and is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import ArtifactError
from .io import SCHEMA_VERSION, hash_file, hash_obj, read_json, replace_dir, write_json

StageFn = Callable[[Path, dict[str, Path]], dict[str, Any]]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Stage:
    """One pipeline stage: ``fn(out_dir, input_dirs) -> summary``."""

    name: str
    fn: StageFn
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    version: int = 1


@dataclass
class StageResult:
    name: str
    path: Path
    status: str  # "ran" | "cached"
    seconds: float
    summary: dict[str, Any]
    reason: str | None = None  # why a stage with an unchanged key ran again


# ------------------------------------------------------------ output records
def _output_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "meta.json")


def output_records(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of every file but meta.json."""
    return {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": hash_file(p)}
            for p in _output_files(directory)}


def _combined_hash(records: dict[str, dict[str, Any]]) -> str:
    return hash_obj([[rel, rec["sha256"]] for rel, rec in sorted(records.items())])


def output_hash(directory: Path) -> str:
    """Hash of every file in a stage directory except ``meta.json``."""
    return _combined_hash(output_records(directory))


def read_meta(directory: Path) -> dict[str, Any] | None:
    meta = directory / "meta.json"
    if not meta.is_file():
        return None
    try:
        data = read_json(meta)
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


def is_stage_meta(meta: Any, name: str) -> bool:
    """Whether ``meta`` is a meta.json that sidkit wrote for stage ``name``."""
    if not isinstance(meta, dict) or meta.get("artifact") != name:
        return False
    if not isinstance(meta.get("schema_version"), int) or isinstance(meta.get("schema_version"), bool):
        return False
    if not all(isinstance(meta.get(k), str) and _HEX64.match(meta[k]) for k in ("key", "output_hash")):
        return False
    if not isinstance(meta.get("inputs"), dict) or not isinstance(meta.get("params"), dict):
        return False
    outs = meta.get("outputs")
    if outs is None:  # written before per-file records existed
        return True
    return isinstance(outs, dict) and all(
        isinstance(r, dict) and isinstance(r.get("size"), int) and isinstance(r.get("sha256"), str)
        for r in outs.values())


def check_replaceable(directory: Path, name: str) -> None:
    """Raise ArtifactError unless ``directory`` is absent or a stage directory sidkit
    wrote for ``name`` (valid meta.json) holding only the files that meta.json lists."""
    if not directory.exists() and not directory.is_symlink():
        return
    fix = ("move it out of the run directory (sidkit only replaces stage folders it wrote "
           "itself), or choose another --out")
    if directory.is_symlink() or not directory.is_dir():
        raise ArtifactError(f"{directory} is in the way of the {name!r} stage: it is not a "
                            "folder written by sidkit", fix)
    meta = read_meta(directory)
    if not is_stage_meta(meta, name):
        found = sorted(p.name for p in directory.iterdir())[:5]
        why = "no meta.json" if not (directory / "meta.json").exists() else \
            "its meta.json was not written by sidkit for this stage"
        raise ArtifactError(f"{directory} exists but was not written by sidkit ({why}; it holds "
                            f"{found or 'nothing'}); sidkit will not replace it", fix)
    outs = meta.get("outputs")
    if outs is not None:
        extra = [p.relative_to(directory).as_posix() for p in _output_files(directory)
                 if p.relative_to(directory).as_posix() not in outs]
        if extra:
            raise ArtifactError(f"{directory} holds file(s) sidkit did not write: {extra[:5]}; "
                                "rerunning the stage would delete them", fix)


def _check_old_meta_files(target: Path, new_records: dict[str, Any]) -> None:
    """A meta.json written before per-file records cannot tell which files are
    sidkit's: refuse to replace a folder holding files the stage no longer writes."""
    meta = read_meta(target) or {}
    if meta.get("outputs") is not None:
        return  # check_replaceable already compared the files with meta.json
    extra = [p.relative_to(target).as_posix() for p in _output_files(target)
             if p.relative_to(target).as_posix() not in new_records]
    if extra:
        raise ArtifactError(f"{target} holds file(s) the {target.name!r} stage does not write: "
                            f"{extra[:5]}; sidkit will not delete them",
                            "move them out of the run directory, then run again")


def verify_outputs(directory: Path, meta: dict[str, Any]) -> str | None:
    """None when the stage's files match meta.json (sizes first, then SHA-256);
    otherwise a sentence saying what changed."""
    outs = meta.get("outputs")
    if outs is None:  # old meta.json: only the combined hash is recorded
        if output_hash(directory) != meta.get("output_hash"):
            return "its outputs changed since they were written (content hash)"
        return None
    present = {p.relative_to(directory).as_posix(): p for p in _output_files(directory)}
    for rel in sorted(outs):
        if rel not in present:
            return f"output {rel} is missing"
    for rel in sorted(present):
        if rel not in outs:
            return f"file {rel} was added since the stage was written"
    for rel, rec in sorted(outs.items()):
        size = present[rel].stat().st_size
        if size != rec["size"]:
            return (f"output {rel} changed since it was written (size {size} bytes, "
                    f"recorded {rec['size']})")
    for rel, rec in sorted(outs.items()):
        if hash_file(present[rel]) != rec["sha256"]:
            return f"output {rel} changed since it was written (content hash differs, same size)"
    return None


# ------------------------------------------------------- temporary folders
def _tmp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


def _tmp_pattern(names: Iterable[str]) -> re.Pattern[str]:
    alt = "|".join(re.escape(n) for n in names)
    # .<stage>.<pid>-<mkdtemp random>.tmp|.old, and the pid-less names of older versions
    return re.compile(rf"^\.(?:{alt})\.(?:(\d+)-)?[a-z0-9_]{{8}}\.(?:tmp|old)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


def clean_stale_tmp(root: Path, names: Iterable[str]) -> list[Path]:
    """Remove the ``.<stage>.*.tmp`` / ``.old`` folders a killed run left in ``root``
    (only names of sidkit's own pattern whose process is gone); returns what went."""
    if not root.is_dir():
        return []
    pat = _tmp_pattern(names)
    removed = []
    for p in root.iterdir():
        m = pat.match(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        if m.group(1) is not None and _pid_alive(int(m.group(1))):
            continue  # a run in progress in another process
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM arrives during a run (exit code 143)."""


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into a :class:`Terminated` exception for the duration, so the
    cleanup of temporary stage folders runs.  A no-op off the main thread or when
    the program installed its own SIGTERM handler."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ------------------------------------------------------------------- runs
def stage_key(stage: Stage, input_hashes: dict[str, str]) -> str:
    return hash_obj({"schema_version": SCHEMA_VERSION, "stage": stage.name,
                     "version": stage.version, "params": stage.params, "inputs": input_hashes})


def run_stage(stage: Stage, root: Path, *, force: bool = False) -> StageResult:
    """Run ``stage`` under ``root/<name>`` unless an identical, intact result is stored."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / stage.name
    input_dirs: dict[str, Path] = {}
    input_hashes: dict[str, str] = {}
    for name in stage.inputs:
        meta = read_meta(root / name)
        if not is_stage_meta(meta, name):
            raise RuntimeError(f"stage {stage.name!r} needs stage {name!r}, which has not run")
        input_dirs[name] = root / name
        input_hashes[name] = meta["output_hash"]
    key = stage_key(stage, input_hashes)
    check_replaceable(target, stage.name)
    meta = read_meta(target)
    reason = None
    if not force and meta is not None and meta.get("key") == key:
        reason = verify_outputs(target, meta)
        if reason is None:
            return StageResult(stage.name, target, "cached", 0.0, meta.get("summary", {}))

    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(stage.name), suffix=".tmp", dir=root))
    t0 = time.perf_counter()
    try:
        summary = stage.fn(tmp, input_dirs) or {}
        seconds = time.perf_counter() - t0
        records = output_records(tmp)
        write_json(tmp / "meta.json", {
            "artifact": stage.name, "schema_version": SCHEMA_VERSION, "key": key,
            "params": stage.params, "inputs": input_hashes, "output_hash": _combined_hash(records),
            "outputs": records, "seconds": round(seconds, 3), "summary": summary,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        if target.exists():
            check_replaceable(target, stage.name)  # nothing appeared while the stage ran
            _check_old_meta_files(target, records)
        replace_dir(tmp, target, prefix=_tmp_prefix(stage.name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StageResult(stage.name, target, "ran", seconds, summary, reason)
