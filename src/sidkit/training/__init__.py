"""Training: one loop for every torch recommender, its checkpoints, and data-parallel runs.

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
:mod:`sidkit.training.distributed` and docs/distributed.md) the loop trains data-parallel: every
rank draws the same shuffled indices, takes its contiguous share of each global batch
(``batch_size`` samples in all, so ``batch_size / world_size`` per rank) and runs the
module wrapped in ``DistributedDataParallel``; each share's loss is weighted by its
number of loss terms so that the averaged gradient is the one of the global batch's
mean loss, exactly as in one process (up to floating-point reduction order; dropout
masks differ, each rank drawing from its own stream).  Rank 0 alone validates (the
result is broadcast, so every rank takes the same early-stopping decision), shows the
progress bar and writes checkpoints; the checkpoint holds every rank's RNG state.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import SELECTION_METRIC, train_cfg, train_loop

__all__ = ["SELECTION_METRIC", "load_checkpoint", "save_checkpoint", "train_cfg", "train_loop"]
