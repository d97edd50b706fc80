"""A tiny artifact store: each pipeline stage writes one directory atomically.

A stage's directory holds its artifact files and ``meta.json`` with the schema
version, the stage's parameters, the hashes of its inputs and of its outputs.
A stage is skipped when ``meta.json`` records the same key (parameters + input
hashes + stage version); otherwise it runs in a temporary directory that is renamed
into place only when the stage succeeded, so a crash never leaves a half-written
artifact under the final name.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .io import SCHEMA_VERSION, hash_file, hash_obj, read_json, write_json

StageFn = Callable[[Path, dict[str, Path]], dict[str, Any]]


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


def output_hash(directory: Path) -> str:
    """Hash of every file in a stage directory except ``meta.json``."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "meta.json")
    return hash_obj([[p.relative_to(directory).as_posix(), hash_file(p)] for p in files])


def read_meta(directory: Path) -> dict[str, Any] | None:
    meta = directory / "meta.json"
    if not meta.exists():
        return None
    try:
        return read_json(meta)
    except ValueError:
        return None


def stage_key(stage: Stage, input_hashes: dict[str, str]) -> str:
    return hash_obj({"schema_version": SCHEMA_VERSION, "stage": stage.name,
                     "version": stage.version, "params": stage.params, "inputs": input_hashes})


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory ``tmp`` onto ``target`` (same parent), replacing it."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        target.rename(trash / "old")
        tmp.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(target)


def run_stage(stage: Stage, root: Path, *, force: bool = False) -> StageResult:
    """Run ``stage`` under ``root/<name>`` unless an identical result is stored."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / stage.name
    input_dirs: dict[str, Path] = {}
    input_hashes: dict[str, str] = {}
    for name in stage.inputs:
        meta = read_meta(root / name)
        if meta is None:
            raise RuntimeError(f"stage {stage.name!r} needs stage {name!r}, which has not run")
        input_dirs[name] = root / name
        input_hashes[name] = meta["output_hash"]
    key = stage_key(stage, input_hashes)
    meta = read_meta(target)
    if not force and meta is not None and meta.get("key") == key:
        return StageResult(stage.name, target, "cached", 0.0, meta.get("summary", {}))

    tmp = Path(tempfile.mkdtemp(prefix=f".{stage.name}.", suffix=".tmp", dir=root))
    t0 = time.perf_counter()
    try:
        summary = stage.fn(tmp, input_dirs) or {}
        seconds = time.perf_counter() - t0
        write_json(tmp / "meta.json", {
            "artifact": stage.name, "schema_version": SCHEMA_VERSION, "key": key,
            "params": stage.params, "inputs": input_hashes, "output_hash": output_hash(tmp),
            "seconds": round(seconds, 3), "summary": summary,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StageResult(stage.name, target, "ran", seconds, summary)
