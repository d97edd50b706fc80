"""Data-parallel training with ``torch.distributed`` (torchrun): the few helpers sidkit needs.

``sidkit train CONFIG --out RUN --nproc N`` starts ``torch.distributed.run`` with ``N``
local processes running :mod:`sidkit.train` (the same as ``torchrun --nproc_per_node N
-m sidkit.train CONFIG --out RUN``).  Each process calls :func:`init` (gloo on CPU, NCCL
on CUDA with one GPU per local rank); :func:`sidkit.models.train.train_loop` then sees
an initialised process group and trains data-parallel (docs/distributed.md): every rank
takes its share of each global batch, gradients are averaged by
``DistributedDataParallel``, rank 0 evaluates and broadcasts the result, and only rank 0
writes checkpoints, models and metrics.

Without an initialised process group every helper is a no-op (rank 0 of 1), so the
single-process path is unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any, Sequence

from .errors import ConfigError

# rank 0 alone evaluates (and, under `sidkit.train`, runs the data stages) while the
# other ranks wait in a collective: allow far more than torch's 30-minute default
TIMEOUT = timedelta(hours=2)


def active() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True in a process started by torchrun (``torch.distributed.run``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ


def init(device: str | None = "auto") -> None:
    """Join the process group of a torchrun-launched process (no-op when already in one).

    ``device`` (the config's): CUDA (``auto`` with a GPU, or ``cuda``) uses NCCL and GPU
    ``LOCAL_RANK`` of this machine, set as the current device; CPU uses gloo."""
    import torch
    import torch.distributed as dist

    from .utils import resolve_device

    if active():
        return
    if not launched():
        raise ConfigError("this process was not started by torchrun (no RANK / WORLD_SIZE / LOCAL_RANK)",
                          "start it with `torchrun --nproc_per_node N -m sidkit.train ...` or "
                          "`sidkit train ... --nproc N`")
    local = int(os.environ["LOCAL_RANK"])
    if resolve_device(device).type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)",
                              "start at most one process per GPU (--nproc), or train on --device cpu")
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)


def shutdown(sync: bool = True) -> None:
    """Leave the process group.  ``sync``: after a barrier, so that no rank tears down
    its gloo connections while a peer still uses them (a rank that exits first can
    otherwise abort the other's process with "terminate called without an active
    exception"); pass ``sync=False`` on an error path, where a peer may never arrive."""
    import torch.distributed as dist

    if active():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def broadcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a process group)."""
    import torch.distributed as dist

    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` outside a process group)."""
    import torch.distributed as dist

    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def launch(args: Sequence[str], nproc: int) -> int:
    """Run ``python -m sidkit.train ARGS`` in ``nproc`` local processes under
    ``torch.distributed.run`` (standalone rendezvous on a free port); its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "sidkit.train", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default for several processes, without its warning
    return subprocess.run(cmd, env=env).returncode
