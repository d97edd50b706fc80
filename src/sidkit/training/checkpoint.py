"""Training checkpoints: one directory per run and seed, replaced atomically after every
epoch (``state.json``, ``weights`` / ``best`` / ``optim`` safetensors), so a stopped
run resumes exactly where it was (see :mod:`sidkit.training`)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..io import SCHEMA_VERSION, hash_obj, read_json, replace_dir, write_json

CKPT_FORMAT = "sidkit-train-checkpoint"


def _fingerprint(model, data, cfg, seed: int, n_samples: int) -> str:
    # epochs, patience and the time budget only decide when to stop: a finished run can be extended
    train = {k: v for k, v in cfg.fingerprint_dict().items()
             if k not in ("epochs", "patience", "seeds", "max_minutes")}
    later = getattr(model, "later_defaults", {})   # parameters added later, at their default: left out
    params = {k: v for k, v in model.get_params().items() if not (k in later and v == later[k])}
    return hash_obj({"type": model.name, "params": params, "train": train, "seed": int(seed),
                     "catalogue": data.catalogue_hash, "n_samples": int(n_samples),
                     **model._fingerprint_extra()})


def _optim_tensors(opt) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous()
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _restore_optim(opt, tensors: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(path: Path, *, module, best_state, opt, shuffle_gen, state: dict[str, Any],
                    rng: dict[str, Any] | None = None) -> None:
    """Write a complete checkpoint directory next to ``path`` and swap it in atomically.

    ``rng``: the RNG-state tensors of every rank (data-parallel training), in place of
    this process's CUDA generators."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):   # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    with _signals_held():
        _write_checkpoint(path, module=module, best_state=best_state, opt=opt, shuffle_gen=shuffle_gen,
                          state=state, rng=rng)


@contextlib.contextmanager
def _signals_held():
    """SIGTERM and SIGINT wait until a checkpoint is written: a stop signal then finds either
    the old checkpoint or the new one, and no temporary folder.  While the write runs a
    deferring handler records them; afterwards the previous handlers are back and each
    recorded signal is raised again (the pipeline's SIGTERM-as-exception, Ctrl-C's
    KeyboardInterrupt, or the default: the process ends)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGTERM, signal.SIGINT)
    old = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def _write_checkpoint(path: Path, *, module, best_state, opt, shuffle_gen, state, rng) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                  str(tmp / "weights.safetensors"))
        if best_state is not None:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
        tensors, groups = _optim_tensors(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.shuffle"] = shuffle_gen.get_state()
        if rng is not None:
            tensors.update(rng)
        elif torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, str(tmp / "optim.safetensors"))
        write_json(tmp / "state.json", {"format": CKPT_FORMAT, "schema_version": SCHEMA_VERSION,
                                        "param_groups": groups, **state})
        replace_dir(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint's state (+ tensors) or None when ``path`` holds none; a damaged one
    raises an ArtifactError naming the file."""
    from ..io import load_safetensors

    path = Path(path)
    if not (path / "state.json").is_file():
        return None
    state = read_json(path / "state.json")
    if state.get("format") != CKPT_FORMAT or state.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path} is not a sidkit training checkpoint of schema version {SCHEMA_VERSION}",
                            "delete it to train from scratch")
    if state.get("fingerprint") != fingerprint:
        raise ArtifactError(
            f"the checkpoint in {path} was written for another model config, training config, seed "
            "or data set than the one given now",
            f"use the config it was written with, or delete {path} (sidkit train --force) to start afresh")
    fix = f"delete {path} (sidkit train --force) to train from scratch"
    state["weights"] = load_safetensors(path / "weights.safetensors", fix, framework="torch")
    state["best_weights"] = (load_safetensors(path / "best.safetensors", fix, framework="torch")
                             if (path / "best.safetensors").exists() else None)
    state["tensors"] = load_safetensors(path / "optim.safetensors", fix, framework="torch")
    return state
