"""Histories before each target: the one computation behind :meth:`Split.examples` (ids,
for people) and :meth:`SequenceData.eval_inputs` (tokens, for models)."""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

from ..errors import DataError

T = TypeVar("T")


def truncate_history(seq: Sequence[T], max_len: int | None) -> list[T]:
    """The last ``max_len`` items of ``seq`` (all of them when ``max_len`` is None).

    TIGER uses 20, ReSID 50.
    """
    check_max_len(max_len)
    return list(seq) if max_len is None else list(seq[-int(max_len):])


def check_max_len(max_len: int | None) -> None:
    """A history length: a positive integer, or None (no limit)."""
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
                                or max_len < 1):
        raise DataError(f"max_len must be a positive integer or None, got {max_len!r}",
                        "use e.g. max_len=20 (TIGER) or 50 (ReSID)")


def history_spans(new_user: np.ndarray, allowed: np.ndarray, is_role: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets and their histories, vectorised over rows sorted by user, then time.

    ``new_user`` marks each user's first row, ``allowed`` the rows that may be history and
    ``is_role`` the candidate targets. Returns ``(targets, start, end)``: the indices of
    the candidate rows with at least one history row, and for each the span
    ``rows[allowed][start:end]`` of its user's allowed rows before it (oldest first).
    """
    new_user, allowed, is_role = (np.asarray(a, bool) for a in (new_user, allowed, is_role))
    group = np.cumsum(new_user) - 1
    done = np.cumsum(allowed) - allowed            # allowed rows before each row, whole frame
    count = done - done[new_user][group]           # ... and of its own user
    targets = np.flatnonzero(is_role & (count > 0))
    end = done[targets]
    return targets, end - count[targets], end
