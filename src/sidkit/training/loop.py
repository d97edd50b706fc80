"""The training loop of every torch recommender (see :mod:`sidkit.training`)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import ConfigError, DataError
from . import distributed
from .checkpoint import _fingerprint, _restore_optim, load_checkpoint, save_checkpoint
from .distributed import _rank_seed, _rng_states, _shard_backward, _wrap_ddp

SELECTION_METRIC = "ndcg@10"


def _autocast(precision: str, device, setting: str = "[train] precision"):
    """A context-manager factory for bfloat16 autocast with ``precision == "bf16"`` (a
    no-op for ``"fp32"``): the training forward pass (the loss is still reduced in float32
    by autocast's rules and ``backward`` runs outside it, as torch recommends) and the
    causal SID model's decoding (``setting`` names the key in error messages)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    if precision != "bf16":
        raise ConfigError(f"{setting} must be 'fp32' or 'bf16', got {precision!r}", 'use precision = "bf16"')
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{setting} = 'bf16' but the GPU {torch.cuda.get_device_name(device)} has no "
                          "bfloat16 support", 'use precision = "fp32" on this GPU')
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_cfg(cfg):
    from ..config import TrainConfig

    if cfg is None:
        return TrainConfig()
    if isinstance(cfg, dict):
        return TrainConfig(**cfg)
    return cfg


def _progress_bar(total: int, initial: int, enabled: bool | None):
    if enabled is None:
        enabled = os.environ.get("SIDKIT_NO_PROGRESS", "0") != "1"
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="epoch", file=sys.stderr,
                leave=False, dynamic_ncols=True)


def _train_epoch(model, module, net, opt, params, arrays, perm, cfg, step: int, autocast, rank: int, world: int):
    """One pass over the shuffled samples ``perm`` in batches: warm-up learning rate,
    forward and backward (this rank's share under DDP), clipping, an optimizer step.
    Returns the summed batch losses (weighted by batch size), the sample count, the step
    counter and the last learning rate."""
    import torch

    warm = max(int(cfg.warmup_steps), 0)
    total, count, lr = torch.zeros((), device=perm.device), 0, cfg.lr
    for lo in range(0, len(perm), cfg.batch_size):
        idx = perm[lo:lo + cfg.batch_size]
        if net is not None and len(idx) < world:
            break   # a last batch too small to give every rank a sample: dropped on every rank
        lr = cfg.lr * min(1.0, (step + 1) / warm) if warm else cfg.lr
        for g in opt.param_groups:
            g["lr"] = lr
        if net is None:
            with autocast():
                loss = model.train_loss(module, *(a[idx] for a in arrays))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        else:
            opt.zero_grad(set_to_none=True)
            loss = _shard_backward(model, net, arrays, idx, rank, world, autocast)
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        step += 1
        total += loss.detach() * len(idx)
        count += len(idx)
    return total, count, step, lr


def _resume(st: dict[str, Any], module, opt, shuffle_gen, device, ddp: bool, rank: int) -> None:
    """Put a checkpoint's weights, optimizer moments and RNG streams back in place."""
    import torch

    module.load_state_dict({k: v.to(device) for k, v in st["weights"].items()})
    tensors = st["tensors"]
    _restore_optim(opt, {k: v for k, v in tensors.items() if k.startswith("state.")}, st["param_groups"])
    shuffle_gen.set_state(tensors["rng.shuffle"])
    if ddp:   # this rank's own streams (from a checkpoint of fewer ranks: rank 0's, or a fresh one)
        own = f"rng.rank{rank}.torch"
        if own in tensors or rank == 0:
            torch.set_rng_state(tensors.get(own, tensors["rng.torch"]))
        if device.type == "cuda" and f"rng.rank{rank}.cuda" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.rank{rank}.cuda"], device)
    else:
        torch.set_rng_state(tensors["rng.torch"])
    if not ddp and torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _bar_update(bar, rec: dict[str, Any], best: float, best_epoch: int) -> None:
    """One epoch on the progress bar: its loss, the best validation NDCG@10 so far and its epoch."""
    post = {"loss": f"{rec['loss']:.4f}"}
    if best_epoch:
        post.update(best_ndcg10=f"{max(best, 0):.4f}", best_epoch=best_epoch)
    if "valid" in rec:
        post["ndcg10"] = f"{rec['valid'][SELECTION_METRIC]:.4f}"
    bar.set_postfix(post)
    bar.update(1)


def train_loop(model, data, cfg, *, seed: int = 0,
               checkpoint_dir: str | Path | None = None, callbacks: Iterable[Callable] = (),
               progress: bool | None = None) -> list[dict[str, Any]]:
    """Train ``model.module_`` (built here) on ``data``; returns the per-epoch history.

    Each history record: ``epoch`` (1-based), ``loss`` (mean training loss), ``lr``,
    ``seconds`` (training time of the epoch), and after a validation ``valid``
    (the metrics of :func:`sidkit.eval.evaluate` on the validation examples) and
    ``valid_seconds`` (its time).
    ``callbacks`` are called as ``cb(record)`` after each epoch's checkpoint (raising
    from one interrupts training; :func:`train_loop` resumes from the checkpoint).
    The module ends with the best-validation weights.
    """
    import torch

    from ..eval.harness import evaluate

    cfg = train_cfg(cfg)
    device = model.device_
    ddp = distributed.active()
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(int(seed))
    module = model.build_module(data.n_items).to(device)
    model.module_ = module
    if rank > 0:
        torch.manual_seed(_rank_seed(seed, rank))  # same initial weights, its own dropout masks
    arrays = [torch.as_tensor(np.ascontiguousarray(a), device=device) for a in model.train_arrays(data)]
    n = int(arrays[0].shape[0])
    if n == 0:
        raise DataError("there are no training samples", "use a data set with longer user histories")
    if n < world:
        raise DataError(f"there are {n} training samples for {world} processes",
                        "train with fewer processes (--nproc) or on more data")
    has_valid = data.n_role("valid") > 0
    shuffle_gen = torch.Generator().manual_seed(int(seed) + 1)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fp = _fingerprint(model, data, cfg, seed, n)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None

    epoch, step, best, best_epoch, bad, history, best_state = 0, 0, -1.0, 0, 0, [], None
    stopped = False
    if ckpt is not None and (st := load_checkpoint(ckpt, fp)) is not None:
        _resume(st, module, opt, shuffle_gen, device, ddp, rank)
        epoch, step, best, best_epoch, bad = (st["epoch"], st["step"], st["best"], st["best_epoch"], st["bad"])
        best_state, history = st["best_weights"], st["history"]
        stopped = bad >= cfg.patience  # the patience given now (a larger one resumes a stopped run)
    budget = float(cfg.max_minutes) * 60.0 if cfg.max_minutes else None

    def spent() -> float:
        return sum(h["seconds"] + h.get("valid_seconds", 0.0) for h in history)

    def over_budget() -> bool:
        return budget is not None and spent() >= budget

    reason = "patience" if stopped else None
    if not stopped and over_budget():
        stopped, reason = True, "budget"

    bar = _progress_bar(cfg.epochs, epoch, progress) if rank == 0 else None
    autocast = _autocast(cfg.precision, device)
    params = [p for p in module.parameters() if p.requires_grad]
    net = _wrap_ddp(model, module, device) if ddp else None   # also syncs rank 0's weights to all ranks
    try:
        while epoch < cfg.epochs and not stopped:
            (module if net is None else net).train()
            t0 = time.perf_counter()
            perm = model.epoch_indices(n, shuffle_gen, epoch).to(device)
            total, count, step, lr = _train_epoch(model, module, net, opt, params, arrays, perm, cfg, step,
                                                  autocast, rank, world)
            if net is not None:
                torch.distributed.all_reduce(total)   # the shares' parts -> the global batches' mean losses
            epoch += 1
            rec: dict[str, Any] = {"epoch": epoch, "loss": float(total) / count, "lr": lr,
                                   "seconds": time.perf_counter() - t0}
            if not np.isfinite(rec["loss"]):
                raise DataError(f"the training loss became {rec['loss']} at epoch {epoch}",
                                "lower the learning rate or enable gradient clipping ([train] clip)")
            # the epoch that uses up a time budget is validated off the eval_every schedule too,
            # so its training counts (otherwise the budget's last epochs would be thrown away)
            budget_ends = budget is not None and spent() + rec["seconds"] >= budget
            if has_valid and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs or budget_ends):
                val = distributed.broadcast(   # rank 0 validates; every rank takes the same decision
                    evaluate(model, data, "valid", mask_seen=cfg.mask_seen, tie_break=cfg.tie_break,
                             batch_size=cfg.eval_batch_size)
                    if rank == 0 else None)
                rec["valid"] = {k: v for k, v in val.items() if k not in ("seconds",)}
                rec["valid_seconds"] = float(val.get("seconds", 0.0))
                if val[SELECTION_METRIC] > best:
                    best, best_epoch, bad = val[SELECTION_METRIC], epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                else:
                    bad += 1
                    stopped = bad >= cfg.patience
                    reason = "patience" if stopped else None
            elif not has_valid:
                best_epoch = epoch
                best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            history.append(rec)
            if not stopped and over_budget():
                stopped, reason = True, "budget"
            if ckpt is not None:
                rng = _rng_states(device, rank) if ddp else None      # every rank's, gathered
                if rank == 0:
                    save_checkpoint(ckpt, module=module, best_state=best_state, opt=opt, shuffle_gen=shuffle_gen,
                                    state={"fingerprint": fp, "epoch": epoch, "step": step, "best": best,
                                           "best_epoch": best_epoch, "bad": bad, "history": history,
                                           "stopped": stopped, **({"world_size": world} if ddp else {})},
                                    rng=rng)
            if bar is not None:
                _bar_update(bar, rec, best, best_epoch)
            for cb in callbacks:
                cb(rec)
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        module.load_state_dict({k: v.to(device) for k, v in best_state.items()})
    module.eval()
    model.best_epoch_ = best_epoch
    model.best_valid_ = best if best >= 0 else None
    # why training ended: validation stopped improving, the epoch cap, or the time budget
    model.stop_reason_ = reason or ("cap" if epoch >= cfg.epochs else "patience")
    return history
