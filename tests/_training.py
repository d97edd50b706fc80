"""Helpers shared by the training tests: a tiny data set, interrupt a run after an epoch,
compare histories."""

from __future__ import annotations

from pathlib import Path


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


def write_tiny_interactions(root: Path) -> Path:
    """``root/tiny/tiny.inter``: 30 items, 40 users with 10 interactions each (RecBole
    atomic format, deterministic); returns the data set directory."""
    import numpy as np

    rng = np.random.default_rng(0)
    d = root / "tiny"
    d.mkdir()
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(40):
        start = rng.integers(30)
        rows += [f"u{u}\ti{(start + t) % 30:02d}\t{1000 + 10 * t}" for t in range(10)]
    (d / "tiny.inter").write_text("\n".join(rows) + "\n")
    return d
