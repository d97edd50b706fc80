"""Data-parallel training with ``torch.distributed`` (torchrun): the few helpers sidkit needs.

``sidkit train CONFIG --out RUN --nproc N`` starts ``torch.distributed.run`` with ``N``
local processes running ``python -m sidkit train`` (the same as ``torchrun --nproc_per_node N
-m sidkit train CONFIG --out RUN``).  Each process calls :func:`init` (gloo on CPU, NCCL
on CUDA with one GPU per local rank); :func:`sidkit.training.train_loop` then sees
an initialised process group and trains data-parallel (docs/distributed.md): every rank
takes its share of each global batch, gradients are averaged by
``DistributedDataParallel``, rank 0 evaluates and broadcasts the result, and only rank 0
writes checkpoints, models and metrics.

Without an initialised process group every helper is a no-op (rank 0 of 1), so the
single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

# rank 0 alone evaluates (and, under `sidkit train`, runs the data stages) while the
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

    from ..utils import resolve_device

    if active():
        return
    if not launched():
        raise ConfigError("this process was not started by torchrun (no RANK / WORLD_SIZE / LOCAL_RANK)",
                          "start it with `torchrun --nproc_per_node N -m sidkit train ...` or "
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
    """Run ``python -m sidkit train ARGS`` in ``nproc`` local processes under
    ``torch.distributed.run`` (standalone rendezvous on a free port); its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "sidkit", "train", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default for several processes, without its warning
    return subprocess.run(cmd, env=env).returncode


# ------------------------------------------------------------- the training loop's DDP
def _train_loss_module(model, module):
    """``model.train_loss`` on ``module`` as an ``nn.Module`` (what DistributedDataParallel
    wraps, so that any model's loss runs inside its forward)."""
    from torch import nn

    class TrainLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = module

        def forward(self, *batch):
            return model.train_loss(self.net, *batch)

    return TrainLoss()


def _wrap_ddp(model, module, device):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(_train_loss_module(model, module), device_ids=ids)


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s dropout stream (rank 0 keeps the single-process stream)."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def _shard_backward(model, net, arrays, idx, rank: int, world: int, autocast=None):
    """Forward and backward of this rank's share of the global batch ``idx``; returns the
    share's part of the global batch's mean loss (their sum over the ranks is that mean).

    ``idx`` is cut into ``world`` contiguous shares.  A loss is a mean over its batch's
    ``n_r`` loss terms (:meth:`TorchRecommender.train_loss_terms`), so rank ``r``
    back-propagates its loss times ``world * n_r / n`` (``n``: the global batch's terms,
    known to every rank): DistributedDataParallel averages the gradients over the ranks,
    which then equal those of the global batch's mean loss.  ``autocast``: the context
    factory of :func:`sidkit.training.loop._autocast` for the forward pass."""
    import torch

    parts = torch.tensor_split(idx, world)
    terms = torch.stack([torch.as_tensor(model.train_loss_terms(*(a[p] for a in arrays)), device=idx.device)
                         for p in parts]).float()
    w = terms[rank] / terms.sum()
    with (autocast or contextlib.nullcontext)():
        loss = net(*(a[parts[rank]] for a in arrays))
    (loss * (w * world)).backward()
    return loss.detach() * w


def _rng_states(device, rank: int) -> dict[str, Any]:
    """Every rank's torch (and CUDA) generator state, for rank 0's checkpoint (collective)."""
    import torch

    mine = {f"rng.rank{rank}.torch": torch.get_rng_state()}
    if device.type == "cuda":
        mine[f"rng.rank{rank}.cuda"] = torch.cuda.get_rng_state(device)
    out: dict[str, Any] = {}
    for d in all_gather(mine):
        out.update(d)
    return out
