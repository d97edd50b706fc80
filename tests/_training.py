"""Helpers shared by the training tests: interrupt a run after an epoch, compare histories."""

from __future__ import annotations


class StopTraining(Exception):
    """Raised by :func:`stop_after_epoch`'s callback: a training run interrupted on purpose."""


def stop_after_epoch(epoch: int):
    """A ``train_loop`` callback that raises :class:`StopTraining` once ``epoch`` is checkpointed."""
    def callback(rec):
        if rec["epoch"] == epoch:
            raise StopTraining(f"stopped after epoch {epoch}")
    return callback


def without_times(history: list[dict]) -> list[dict]:
    """A training history without its wall-clock fields (they differ between equal runs)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "valid_seconds")} for r in history]
