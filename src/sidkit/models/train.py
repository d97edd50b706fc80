"""One training loop for every torch recommender.

AdamW with linear warm-up (then a constant learning rate), gradient-norm clipping,
validation NDCG@10 every ``eval_every`` epochs with early stopping (``patience``
evaluations without improvement), a checkpoint after every epoch and exact resume,
deterministic seeds, a progress bar (silent with ``SIDKIT_NO_PROGRESS=1``), CPU or
CUDA (``device="auto"``).

A checkpoint directory holds ``state.json`` (epoch, step, best figures, history, a
fingerprint of the config and data), ``weights.safetensors`` (current weights),
``best.safetensors`` (best-validation weights) and ``optim.safetensors`` (AdamW moments
and the torch RNG states).  It is replaced atomically after each epoch, so an
interrupted run resumes from the last finished epoch and ends with the same weights
and metrics as an uninterrupted one (bit-identical on CPU; on CUDA up to the
non-determinism of some kernels).

Inside an initialised ``torch.distributed`` process group (torchrun, see
:mod:`sidkit.distributed` and docs/distributed.md) the loop trains data-parallel: every
rank draws the same shuffled indices, takes its contiguous share of each global batch
(``batch_size`` samples in all, so ``batch_size / world_size`` per rank) and runs the
module wrapped in ``DistributedDataParallel``; each share's loss is weighted by its
number of loss terms so that the averaged gradient is the one of the global batch's
mean loss, exactly as in one process (up to floating-point reduction order; dropout
masks differ, each rank drawing from its own stream).  Rank 0 alone validates (the
result is broadcast, so every rank takes the same early-stopping decision), shows the
progress bar and writes checkpoints; the checkpoint holds every rank's RNG state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .. import distributed
from ..errors import ArtifactError, ConfigError, DataError
from ..io import SCHEMA_VERSION, hash_obj, read_json, write_json
from ..io import replace_dir
from .base import Recommender

CKPT_FORMAT = "sidkit-train-checkpoint"
SELECTION_METRIC = "ndcg@10"


def _train_cfg(cfg):
    from ..config import TrainConfig

    if cfg is None:
        return TrainConfig()
    if isinstance(cfg, dict):
        return TrainConfig(**cfg)
    return cfg


class TorchRecommender(Recommender):
    """A recommender whose state is one ``torch.nn.Module`` (``module_``).

    Subclasses implement ``build_module(n_items)``, ``train_arrays(data)`` (numpy
    arrays with one row per training sample), ``train_loss(module, *batch)`` and
    ``score_tensor(module, history) -> (B, N)``.  :meth:`fit` runs :func:`train_loop`.
    """

    def _check_transformer_params(self, int_names: tuple[str, ...], example: str) -> None:
        """The shared checks of a transformer's size parameters: positive integers,
        ``hidden`` divisible by ``n_heads``, ``dropout`` in [0, 1)."""
        from ..errors import ConfigError

        if self.hidden % self.n_heads:
            raise ConfigError(f"hidden={self.hidden} is not divisible by n_heads={self.n_heads}",
                              f"pick n_heads dividing hidden, e.g. {example}")
        for nm in int_names:
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{nm} must be an integer >= 1, got {v!r}", f"set {nm} to a positive integer")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}", "use e.g. 0.2")

    # ------------------------------------------------------------ padding
    #: Run the transformer on length groups trimmed to their real part (see
    #: :meth:`length_groups`); ``False`` runs every batch at its full padded width (the
    #: reference of ``tests/test_packing.py`` and the "before" path of
    #: ``benchmarks/train.py --data beauty``).
    trim_padding: bool = True
    #: The cost model of :meth:`length_groups` on a CPU: the fixed cost of one more group
    #: pass, in row-columns, and the attention's share per column (fitted on the 2-core
    #: CPU, one torch thread: a pass costs ~2.5 ms, a SASRec row-column ~20 us forward +
    #: backward, a causal-SID token ~35 us).  On an accelerator a batch is only trimmed to
    #: its widest row (one group: kernels are cheap, launches are not).
    group_overhead: float = 200.0
    group_quadratic: float = 0.004

    def length_groups(self, tokens, *also, overhead: float | None = None) -> list[tuple[Any, int]]:
        """How to run a (B, L) batch of left-padded ``tokens`` without its padding:
        ``[(rows, width), ...]``, every row once: run rows ``rows`` on their last ``width``
        columns (``rows``: a long tensor on the batch's device for a torch batch, an int64
        array for a numpy one; ``None``: every row, in order).  A row's real part starts at
        its first non-pad (non-zero) token of ``tokens`` or of any array of ``also`` (e.g.
        the targets, or a boolean mask of the loss positions).  The groups come from
        :func:`sidkit.eval.sequences.length_groups` with this model's cost model
        (``overhead``: the fixed cost of a group, in place of ``group_overhead``); with
        ``trim_padding`` off, one group of every row at full width."""
        import torch

        from ..eval.sequences import length_groups, real_spans

        B, L = tokens.shape
        if not self.trim_padding or B == 0:
            return [(None, L)]
        spans = real_spans(tokens)
        for a in also:
            spans = np.maximum(spans, real_spans(a[:, -L:]))
        is_torch = isinstance(tokens, torch.Tensor)
        if overhead is None:
            overhead = self.group_overhead
        device = tokens.device if is_torch else getattr(self, "device_", None)
        if device is not None and torch.device(device).type != "cpu":
            overhead = float("inf")
        groups = length_groups(spans, overhead=overhead, quadratic=self.group_quadratic, max_width=L)
        if len(groups) == 1:
            return [(None, groups[0][1])]
        if not is_torch:
            return groups
        return [(torch.as_tensor(rows, device=tokens.device), w) for rows, w in groups]

    def epoch_indices(self, n: int, generator, epoch: int = 0):
        """The sample rows of epoch ``epoch`` (0-based) in training order: by default all
        ``n`` rows, shuffled with ``generator`` (the checkpointed shuffle generator).  A
        model may train on a subset per epoch (TIGER: a few targets per user)."""
        import torch

        return torch.randperm(n, generator=generator)

    def train_loss_terms(self, *batch):
        """How many terms the mean of ``train_loss(module, *batch)`` averages (by default
        the batch's rows; a model averaging over target tokens counts those).  Data-parallel
        training weights each rank's share of a batch by it (:func:`train_loop`)."""
        return len(batch[0])

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Whatever else a checkpoint depends on (e.g. a SID model's codes): a resume with
        different values is refused like one with different parameters."""
        return {}

    def fit(self, data, *, train=None, seed: int = 0, device: str | None = "auto",
            checkpoint_dir: str | Path | None = None, callbacks: Iterable[Callable] = (),
            progress: bool | None = None) -> "TorchRecommender":
        from ..utils import resolve_device

        cfg = _train_cfg(train)
        self.device_ = resolve_device(device)
        self._set_catalogue(data)
        self.train_config_ = cfg.model_dump()
        self.seed_ = int(seed)
        self.history_ = train_loop(self, data, cfg, seed=seed, checkpoint_dir=checkpoint_dir,
                                   callbacks=callbacks, progress=progress)
        return self

    # -------------------------------------------------------------- inference
    def scores(self, history):
        import torch

        self._check_fitted()
        h = torch.as_tensor(self._check_history(history), device=self.device_)
        was = self.module_.training
        self.module_.eval()
        with torch.no_grad():
            s = self.score_tensor(self.module_, h).float()
        self.module_.train(was)
        return s

    # -------------------------------------------------------------- save / load
    def _state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()}

    def _set_state(self, state) -> None:
        import torch

        from ..utils import resolve_device

        self._check_module_state(state)
        self.device_ = resolve_device("auto")
        module = self.build_module(self.n_items)
        try:
            module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        except RuntimeError as e:
            raise ArtifactError(f"the saved weights do not fit the model parameters: {str(e)[:300]}",
                                "the weights belong to another config; retrain") from None
        self.module_ = module.to(self.device_).eval()

    def _check_module_state(self, state: dict) -> None:
        pass

    def _extra(self) -> dict[str, Any]:
        return {"history": getattr(self, "history_", []), "seed": getattr(self, "seed_", None),
                "train": getattr(self, "train_config_", None),
                "best_epoch": getattr(self, "best_epoch_", None), "best_valid": getattr(self, "best_valid_", None)}

    def _set_extra(self, extra: dict[str, Any]) -> None:
        self.history_ = extra.get("history", [])
        self.seed_ = extra.get("seed")
        self.train_config_ = extra.get("train")
        self.best_epoch_ = extra.get("best_epoch")
        self.best_valid_ = extra.get("best_valid")

    def to(self, device) -> "TorchRecommender":
        from ..utils import resolve_device

        self.device_ = resolve_device(device)
        self.module_.to(self.device_)
        return self


# ------------------------------------------------------------------ checkpoints
def _fingerprint(model: TorchRecommender, data, cfg, seed: int, n_samples: int) -> str:
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
    import torch
    from safetensors.torch import save_file

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


# ---------------------------------------------------------------- data parallel
def _train_loss_module(model: TorchRecommender, module):
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


def _wrap_ddp(model: TorchRecommender, module, device):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(_train_loss_module(model, module), device_ids=ids)


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s dropout stream (rank 0 keeps the single-process stream)."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def _autocast(precision: str, device):
    """A context-manager factory for the training forward pass: bfloat16 autocast for
    ``precision == "bf16"`` (the loss is still reduced in float32 by autocast's rules and
    ``backward`` runs outside it, as torch recommends), a no-op for ``"fp32"``."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    if precision != "bf16":
        raise ConfigError(f"[train] precision must be 'fp32' or 'bf16', got {precision!r}", 'use precision = "bf16"')
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"[train] precision = 'bf16' but the GPU {torch.cuda.get_device_name(device)} has no "
                          "bfloat16 support", 'use precision = "fp32" on this GPU')
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _shard_backward(model: TorchRecommender, net, arrays, idx, rank: int, world: int, autocast=None):
    """Forward and backward of this rank's share of the global batch ``idx``; returns the
    share's part of the global batch's mean loss (their sum over the ranks is that mean).

    ``idx`` is cut into ``world`` contiguous shares.  A loss is a mean over its batch's
    ``n_r`` loss terms (:meth:`TorchRecommender.train_loss_terms`), so rank ``r``
    back-propagates its loss times ``world * n_r / n`` (``n``: the global batch's terms,
    known to every rank): DistributedDataParallel averages the gradients over the ranks,
    which then equal those of the global batch's mean loss.  ``autocast``: the context
    factory of :func:`_autocast` for the forward pass."""
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
    for d in distributed.all_gather(mine):
        out.update(d)
    return out


# ------------------------------------------------------------------------ loop
def _progress_bar(total: int, initial: int, enabled: bool | None):
    if enabled is None:
        enabled = os.environ.get("SIDKIT_NO_PROGRESS", "0") != "1"
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="epoch", file=sys.stderr,
                leave=False, dynamic_ncols=True)


def train_loop(model: TorchRecommender, data, cfg, *, seed: int = 0,
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

    cfg = _train_cfg(cfg)
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
        module.load_state_dict({k: v.to(device) for k, v in st["weights"].items()})
        best_state = st["best_weights"]
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
        epoch, step, best, best_epoch, bad = (st["epoch"], st["step"], st["best"], st["best_epoch"], st["bad"])
        history = st["history"]
        stopped = bad >= cfg.patience  # the patience given now (a larger one resumes a stopped run)
    budget = float(cfg.max_minutes) * 60.0 if cfg.max_minutes else None

    def over_budget() -> bool:
        return budget is not None and sum(h["seconds"] + h.get("valid_seconds", 0.0) for h in history) >= budget

    reason = "patience" if stopped else None
    if not stopped and over_budget():
        stopped, reason = True, "budget"

    bar = _progress_bar(cfg.epochs, epoch, progress) if rank == 0 else None
    autocast = _autocast(cfg.precision, device)
    warm = max(int(cfg.warmup_steps), 0)
    params = [p for p in module.parameters() if p.requires_grad]
    net = _wrap_ddp(model, module, device) if ddp else None   # also syncs rank 0's weights to all ranks
    try:
        while epoch < cfg.epochs and not stopped:
            (module if net is None else net).train()
            t0 = time.perf_counter()
            perm = model.epoch_indices(n, shuffle_gen, epoch).to(device)
            total, count = torch.zeros((), device=device), 0
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
            if net is not None:
                torch.distributed.all_reduce(total)   # the shares' parts -> the global batches' mean losses
            epoch += 1
            rec: dict[str, Any] = {"epoch": epoch, "loss": float(total) / count, "lr": lr,
                                   "seconds": time.perf_counter() - t0}
            if not np.isfinite(rec["loss"]):
                raise DataError(f"the training loss became {rec['loss']} at epoch {epoch}",
                                "lower the learning rate or enable gradient clipping ([train] clip)")
            if has_valid and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
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
                rng = _rng_states(device, rank) if ddp else None
                if rank == 0:
                    save_checkpoint(ckpt, module=module, best_state=best_state, opt=opt, shuffle_gen=shuffle_gen,
                                    state={"fingerprint": fp, "epoch": epoch, "step": step, "best": best,
                                           "best_epoch": best_epoch, "bad": bad, "history": history,
                                           "stopped": stopped, **({"world_size": world} if ddp else {})},
                                    rng=rng)
            if bar is not None:
                post = {"loss": f"{rec['loss']:.4f}"}
                if best_epoch:
                    post.update(best_ndcg10=f"{max(best, 0):.4f}", best_epoch=best_epoch)
                if "valid" in rec:
                    post["ndcg10"] = f"{rec['valid'][SELECTION_METRIC]:.4f}"
                bar.set_postfix(post)
                bar.update(1)
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
