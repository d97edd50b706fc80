"""Item sequences for recommenders, built from a :class:`~sidkit.data.Split`.

Vocabulary: the catalogue is ``split.items`` (every item of every role, sorted as
strings); catalogue index ``i`` is written as **token** ``i + 1`` in history arrays,
token ``0`` is padding (``PAD``).  Histories are left-padded int64 arrays of shape
``(B, max_len)``: the most recent item is in the last column.

- :meth:`SequenceData.windows` gives training windows of ``max_len + 1`` tokens
  covering every target of every user's training sequence once (inputs ``w[:, :-1]``,
  targets ``w[:, 1:]``, target ``0`` = no loss),
- :meth:`SequenceData.eval_inputs` gives the inputs of the validation or test
  examples (the protocol of ``docs/evaluation.md``).

Most rows are mostly padding (Amazon Beauty: 12% of the cells of its training windows
hold an item), so the models never run their transformers over it:
:func:`real_spans` measures each row's real part (the columns from its first non-pad
token on) and :func:`length_groups` splits a batch into groups of similar span, each
trimmed to its longest span (the leading columns that are padding in every row of the
group are dropped).  Padding is masked out of attention, so the trimmed computation
equals the padded one up to float rounding (``tests/test_packing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..data.history import history_spans
from ..io import hash_obj
from ..utils import index_of

PAD = 0


def pad_left(seqs: Sequence[Sequence[int]] | tuple[np.ndarray, np.ndarray], max_len: int) -> np.ndarray:
    """Left-pad (and truncate to the last ``max_len``) integer sequences into (B, max_len).

    ``seqs`` is a list of sequences, or ``(flat, lengths)`` (concatenated values and
    each sequence's length), which avoids Python objects per sequence.
    """
    if isinstance(seqs, tuple):
        flat, lengths = (np.asarray(a, dtype=np.int64) for a in seqs)
    else:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if len(seqs) \
            else np.zeros(0, np.int64)
    B = len(lengths)
    out = np.zeros((B, max_len), dtype=np.int64)
    if B == 0 or flat.size == 0:
        return out
    ends = np.cumsum(lengths)
    keep = np.minimum(lengths, max_len)
    # position j of row b (right-aligned) holds flat[end_b - (max_len - j)] when j >= max_len - keep_b
    j = np.arange(max_len)
    src = ends[:, None] - (max_len - j)[None, :]
    valid = j[None, :] >= (max_len - keep)[:, None]
    out[valid] = flat[src[valid]]
    return out


def real_spans(tokens, pad: int = PAD) -> np.ndarray:
    """(B,) int64: the width of each row's real part, ``L - (index of its first non-pad
    token)`` (0 for an all-pad row) of a (B, L) numpy or torch array of left-padded
    tokens.  A row's span covers every real token, whatever padding lies inside it."""
    if hasattr(tokens, "detach"):
        real = (tokens != pad).detach().cpu().numpy()
    else:
        real = np.asarray(tokens) != pad
    if real.ndim != 2:
        raise DataError(f"tokens must be 2-D (B, L), got shape {real.shape}", "pass one row of tokens per sequence")
    L = real.shape[1]
    return np.where(real.any(1), L - real.argmax(1), 0).astype(np.int64)


def length_groups(spans, *, overhead: float = 0.0, quadratic: float = 0.0, min_width: int = 1,
                  max_width: int | None = None) -> list[tuple[np.ndarray, int]]:
    """Split rows into groups of similar span, to run each group trimmed to its widest row.

    ``spans``: (B,) each row's real width (:func:`real_spans`).  Returns ``[(rows, width),
    ...]``: every row exactly once (``rows``: ascending int64 indices), ``width`` the largest
    span of the group (at least ``min_width``, at most ``max_width``), groups by ascending
    width.  The grouping minimises the modelled cost ``sum over groups of overhead +
    len(rows) * (width + quadratic * width**2)`` exactly (a dynamic programme over the
    distinct spans in sorted order: a group is a run of consecutive spans): ``overhead``
    is the fixed cost of one more pass over a group, counted in row-columns, ``quadratic``
    the attention's share per column.  ``overhead = inf`` gives one group (the batch
    trimmed to its widest row); ``overhead = 0`` one group per distinct span.
    """
    s = np.maximum(np.asarray(spans, dtype=np.int64).ravel(), int(min_width))
    if max_width is not None:
        s = np.minimum(s, int(max_width))
    if s.size == 0:
        return []
    order = np.argsort(s, kind="stable")
    vals, starts = np.unique(s[order], return_index=True)
    ends = np.r_[starts[1:], s.size]
    if not np.isfinite(overhead):
        return [(np.arange(s.size, dtype=np.int64), int(vals[-1]))]
    f = vals + quadratic * vals.astype(np.float64) ** 2
    D = len(vals)
    best = np.zeros(D + 1)
    cut = np.zeros(D + 1, dtype=np.int64)
    for j in range(D):                        # best[j + 1]: spans 0..j grouped, the last group ending at j
        c = best[:j + 1] + overhead + (ends[j] - starts[:j + 1]) * f[j]
        i = int(np.argmin(c))
        best[j + 1], cut[j + 1] = c[i], i
    groups = []
    j = D
    while j > 0:
        i = int(cut[j])
        groups.append((np.sort(order[starts[i]:ends[j - 1]]), int(vals[j - 1])))
        j = i
    return groups[::-1]


@dataclass(eq=False)
class SequenceData:
    """Catalogue vocabulary + per-user chronological token sequences of a split.

    ``item_ids``: (N,) str catalogue; ``users``: (U,) user ids; ``tokens``: the
    concatenation of every user's whole sequence (train, valid and test, in
    chronological order) as tokens; ``offsets``: (U + 1,) start of each user;
    ``roles``: per token 0 = train, 1 = valid, 2 = test.
    """

    item_ids: np.ndarray
    users: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray
    roles: np.ndarray
    kind: str = "leave_one_out"

    ROLE_CODES = {"train": 0, "valid": 1, "test": 2}

    @classmethod
    def from_split(cls, split) -> "SequenceData":
        df = split.df.sort_values(["user_id", "position"], kind="stable")
        if len(df) == 0:
            raise DataError("the split is empty (no interactions)",
                            "check the data set path and the k-core thresholds")
        item_ids = np.asarray(split.items, dtype=str)
        tok = np.searchsorted(item_ids, df["item_id"].to_numpy().astype(str)) + 1
        user = df["user_id"].to_numpy().astype(str)
        new = np.r_[True, user[1:] != user[:-1]]
        starts = np.flatnonzero(new)
        offsets = np.r_[starts, len(user)].astype(np.int64)
        roles = df["role"].map(cls.ROLE_CODES).to_numpy().astype(np.int8)
        return cls(item_ids, user[starts], tok.astype(np.int64), offsets, roles, split.kind)

    # ------------------------------------------------------------------ vocabulary
    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def catalogue_hash(self) -> str:
        """Identifies the item vocabulary (a model trained on another one cannot be used)."""
        return hash_obj(self.item_ids.tolist())

    def encode_items(self, ids: Any) -> np.ndarray:
        """Tokens (catalogue index + 1) of item ids; unknown ids raise a DataError."""
        ids = np.asarray(ids).astype(str)
        return encode_items(self.item_ids, ids)

    def n_role(self, role: str) -> int:
        return int((self.roles == self.ROLE_CODES[role]).sum())

    # -------------------------------------------------------------------- training
    def train_sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat tokens, lengths) of each user's training-role sequence."""
        keep = self.roles == 0
        user_of = np.repeat(np.arange(len(self.users)), np.diff(self.offsets))
        lengths = np.bincount(user_of[keep], minlength=len(self.users)).astype(np.int64)
        return self.tokens[keep], lengths

    def windows(self, max_len: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Training windows: ``(inputs, targets)``, each (W, max_len) int64, left-padded.

        A user's training sequence ``s`` of length ``n`` gives windows ending at
        ``n-1, n-1-stride, ...``, each holding up to ``max_len + 1`` items ``w``:
        ``inputs = w[:, :-1]``, ``targets = w[:, 1:]`` (``PAD`` = no loss).  A target predicted by a later window as well is set
        to ``PAD`` in the earlier one, so every target of ``s[1:]`` counts exactly once,
        with as much context as possible.  ``stride`` defaults to ``max_len``
        (consecutive chunks).
        """
        stride = max_len if stride is None else int(stride)
        if not 1 <= stride <= max_len:
            raise DataError(f"stride must lie in [1, max_len={max_len}], got {stride}",
                            "use stride = max_len (chunks) or smaller (overlapping windows)")
        flat, lengths = self.train_sequences()
        n_targets = np.maximum(lengths - 1, 0)
        n_win = -(-n_targets // stride)                    # ceil
        if n_win.sum() == 0:
            raise DataError("no user has two or more training interactions, so there is nothing to train on",
                            "use a data set with longer histories (k-core filtering, e.g. user_core = 5)")
        user = np.repeat(np.arange(len(lengths)), n_win)
        k = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)   # window number
        start_u = np.r_[0, np.cumsum(lengths)[:-1]]
        end = lengths[user] - 1 - k * stride               # last position (within the user)
        first = np.maximum(end - max_len, 0)
        L = max_len + 1
        j = np.arange(L)
        pos = end[:, None] - (L - 1 - j)[None, :]          # right-aligned positions
        valid = pos >= first[:, None]
        out = np.zeros((len(end), L), dtype=np.int64)
        out[valid] = flat[(start_u[user][:, None] + pos)[valid]]
        # targets also covered by the next-later window (k - 1) get no loss here
        later_first = np.where(k > 0, end + stride - max_len, -1)
        dup = (k[:, None] > 0) & (pos[:, 1:] > later_first[:, None])
        targets = out[:, 1:].copy()
        targets[dup | ~valid[:, :-1]] = PAD          # no target after padding or already covered
        has = (targets != PAD).any(1)
        return out[has, :-1], targets[has]

    # ------------------------------------------------------------------ evaluation
    def eval_inputs(self, role: str, max_len: int) -> dict[str, np.ndarray]:
        """Inputs of the ``role`` ("valid"/"test") examples.

        Returns ``users`` (B,), ``history`` (B, max_len) left-padded tokens,
        ``targets`` (B,) catalogue indices, and ``seen_flat`` / ``seen_offsets``: each
        example's whole (untruncated) history as tokens, for masking seen items.
        Leave-one-out: a test input is everything up to and including the validation
        item, a validation input stops before it.  Temporal split: the history is
        every earlier interaction of the user in the allowed roles.
        """
        if role not in ("valid", "test"):
            raise DataError(f"evaluation role must be 'valid' or 'test', got {role!r}",
                            "use role='valid' or role='test'")
        code = self.ROLE_CODES[role]
        allowed = np.array([0] if role == "valid" else [0, 1])
        if self.kind == "temporal":
            allowed = np.array([0, 1] if role == "valid" else [0, 1, 2])
        user_of = np.repeat(np.arange(len(self.users)), np.diff(self.offsets))
        ok = np.isin(self.roles, allowed)
        new_user = np.r_[True, user_of[1:] != user_of[:-1]]
        is_target, start, end = history_spans(new_user, ok, self.roles == code)
        hist_flat = self.tokens[ok]
        cnt = end - start
        idx = np.repeat(end - cnt, cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        seen_flat = hist_flat[idx]
        return {
            "users": self.users[user_of[is_target]],
            "history": pad_left((seen_flat, cnt), max_len),
            "targets": self.tokens[is_target] - 1,
            "seen_flat": seen_flat,
            "seen_offsets": np.r_[0, np.cumsum(cnt)].astype(np.int64),
        }


def encode_items(item_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Tokens (catalogue index + 1) of ``ids`` in the sorted catalogue ``item_ids``."""
    ids = np.asarray(ids).astype(str)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    pos_c = index_of(ids, item_ids, presorted=True)
    bad = pos_c < 0
    if bad.any():
        unknown = np.unique(ids[bad])
        raise DataError(
            f"{unknown.size} item id(s) are not in the model's catalogue of {len(item_ids)} items, "
            f"e.g. {unknown[:3].tolist()}",
            "drop unknown items from the histories, or retrain the model on a split that has them")
    return pos_c + 1
