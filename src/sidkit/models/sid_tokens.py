"""Semantic-ID token data: the vocabulary every generative recommender of sidkit uses.

Vocabulary (``V = n_special + sum(K_l) + user_buckets``)::

    0 PAD   1 BOS   2 EOS   [3 END: end of a SID, only when SIDs have variable length]
    offset_l + t          token t of level l  (offset_0 = n_special, offset_l = offset_{l-1} + K_{l-1})
    user_offset + b       user bucket b (optional, TIGER: 2,000 buckets of a stable hash)

An item's SID is written as ``W = n_levels`` token slots: its ``lengths[i]`` level tokens,
then (if shorter than ``W``) one ``END``, then ``PAD``.  A full-length SID needs no ``END``
(nothing can extend it), so every SID takes at most ``W`` decoding steps and no SID is
a prefix of another.  ``n_tokens[i]`` is the number of non-``PAD`` slots.

Items are catalogue indices ``0..N-1`` (row ``i`` of the ``Codes``); histories are the
left-padded token arrays of :mod:`sidkit.eval.sequences` (catalogue index + 1, 0 = pad).
:meth:`SIDTokens.items_of` (through the :class:`~sidkit.models.trie.SIDTrie`) is the one
map SID -> item every model decodes through.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ArtifactError, DataError
from ..io import SCHEMA_VERSION, atomic_path, read_json, write_json
from ..utils import index_of

PAD, BOS, EOS, END = 0, 1, 2, 3
TIGER_USER_BUCKETS = 2000


def user_bucket(user_ids, n_buckets: int = TIGER_USER_BUCKETS) -> np.ndarray:
    """Stable hash bucket in ``0..n_buckets-1`` of each user id (as a string).

    blake2b of the UTF-8 id, so the same user gets the same bucket in every process
    (Python's ``hash()`` is salted per process).
    """
    if n_buckets < 1:
        raise DataError(f"n_buckets must be >= 1, got {n_buckets}", "use e.g. 2000 (TIGER)")
    ids = np.asarray(user_ids).astype(str).ravel()
    digest = b"".join(hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest() for u in ids)
    h = np.frombuffer(digest, dtype="<u8") if ids.size else np.zeros(0, np.uint64)
    return (h % np.uint64(n_buckets)).astype(np.int64)


def sid_keys(codes: np.ndarray, lengths: np.ndarray, sizes: Sequence[int], last: bool = True) -> np.ndarray | None:
    """One int64 per SID: equal keys for equal SIDs (length and tokens), so that sets of SIDs
    compare with sorting and ``searchsorted`` instead of row-wise ``np.unique``.  ``last=False``:
    the key of the SID's prefix (its last token left out).  None when the SIDs do not fit
    in 63 bits (then compare rows)."""
    codes = np.asarray(codes, np.int64)
    lengths = np.asarray(lengths, np.int64)
    W = codes.shape[1]
    radix = [int(k) + 1 for k in sizes]
    if (W + 1) * float(np.prod(np.asarray(radix, np.float64))) >= 2.0 ** 62:
        return None
    keep = np.arange(W)[None, :] < (lengths if last else lengths - 1)[:, None]
    key = lengths.copy()
    for lv in range(W):
        key = key * radix[lv] + np.where(keep[:, lv], codes[:, lv] + 1, 0)
    return key


class SIDTokens:
    """Token data of a :class:`~sidkit.types.Codes` artifact (see the module docstring).

    Parameters
    ----------
    codes : Codes; row ``i`` is catalogue item ``i`` (use :meth:`from_codes` with
        ``item_ids`` to reorder rows to a catalogue).
    user_buckets : 0 (no user token) or the number of user hash buckets (TIGER: 2000).

    Raises a DataError when two items share a SID (the error names the SID and items).
    """

    def __init__(self, codes, user_buckets: int = 0):
        from ..types import Codes

        if not isinstance(codes, Codes):
            raise DataError(f"SIDTokens needs a Codes artifact, got {type(codes).__name__}",
                            "load the codes with sidkit.types.Codes.load or a tokenizer's encode")
        if codes.n_items == 0:
            raise DataError("the codes hold no items", "tokenize a non-empty catalogue")
        if user_buckets < 0:
            raise DataError(f"user_buckets must be >= 0, got {user_buckets}",
                            "use 0 (no user token) or e.g. 2000 (TIGER)")
        self.codes = codes
        self.user_buckets = int(user_buckets)
        self.codebook_sizes = tuple(codes.codebook_sizes)
        self.n_levels = codes.n_levels
        self.variable_length = codes.is_variable_length
        self.n_special = 4 if self.variable_length else 3
        self.end_token = END if self.variable_length else None
        self.level_offsets = self.n_special + np.r_[0, np.cumsum(self.codebook_sizes)[:-1]].astype(np.int64)
        self.user_offset = int(self.n_special + sum(self.codebook_sizes))
        self.vocab_size = self.user_offset + self.user_buckets
        self.n_items = codes.n_items
        W = self.n_levels
        lv = np.arange(W)
        valid = lv[None, :] < codes.lengths[:, None]
        tok = np.where(valid, codes.codes + self.level_offsets[None, :], PAD)
        if self.variable_length:
            short = codes.lengths < W
            tok[np.flatnonzero(short), codes.lengths[short]] = END
        self.item_tokens = tok.astype(np.int64)                   # (N, W)
        self.n_tokens = np.minimum(codes.lengths + 1, W).astype(np.int64) if self.variable_length \
            else codes.lengths.astype(np.int64)
        self._check_collisions()
        self._trie = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_codes(cls, codes, item_ids=None, user_buckets: int = 0) -> "SIDTokens":
        """Token data with rows in the order of the catalogue ``item_ids`` (if given).

        ``codes.item_ids`` must then hold every catalogue item (extra code rows are dropped).
        """
        if item_ids is not None:
            item_ids = np.asarray(item_ids).astype(str)
            if codes.item_ids is None:
                if len(item_ids) != codes.n_items:
                    raise DataError(f"the codes have {codes.n_items} rows and no item ids, the catalogue "
                                    f"{len(item_ids)} items", "pass codes written with their item ids")
            else:
                rows = index_of(item_ids, codes.item_ids)
                missing = rows < 0
                if missing.any():
                    raise DataError(f"{int(missing.sum())} catalogue item(s) have no SID in the codes, e.g. "
                                    f"{item_ids[missing][:3].tolist()}",
                                    "tokenize the catalogue of this split (sidkit run) before training")
                codes = codes.replace(codes=codes.codes[rows], lengths=codes.lengths[rows], item_ids=item_ids)
        return cls(codes, user_buckets=user_buckets)

    def _check_collisions(self) -> None:
        keys = sid_keys(self.codes.codes, self.codes.lengths, self.codebook_sizes)
        if keys is not None:                      # one sort of int64 keys: most catalogues
            srt = np.sort(keys)
            if not (srt[1:] == srt[:-1]).any():
                return
        tok = self.item_tokens
        _, inv, counts = np.unique(tok, axis=0, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        if (counts > 1).any():
            grp = int(np.flatnonzero(counts > 1)[0])
            items = np.flatnonzero(inv == grp)
            i = int(items[0])
            sid = self.codes.codes[i, : self.codes.lengths[i]].tolist()
            raise DataError(
                f"{int((counts > 1).sum())} SID(s) map to several items, e.g. SID {sid} is shared by items "
                f"{items[:5].tolist()} (rows of the codes)",
                "use codes without collisions: a tokenizer with collision_rule 'extra_level' "
                "(TIGER's counter) or 'by_construction', or more/larger levels")

    @property
    def trie(self):
        """The :class:`~sidkit.models.trie.SIDTrie` of every item's SID (built once)."""
        if self._trie is None:
            from .trie import SIDTrie

            self._trie = SIDTrie(self.item_tokens, self.n_tokens, self.vocab_size)
        return self._trie

    # ------------------------------------------------------------------ tokens
    def level_of(self, tokens) -> np.ndarray:
        """Level of each token, -1 for special and user tokens."""
        t = np.asarray(tokens, dtype=np.int64)
        lvl = np.searchsorted(self.level_offsets, t, side="right") - 1
        return np.where((t >= self.n_special) & (t < self.user_offset), lvl, -1)

    def user_tokens(self, user_ids) -> np.ndarray:
        """User token of each user id (requires ``user_buckets > 0``)."""
        if not self.user_buckets:
            raise DataError("these SID tokens have no user tokens (user_buckets = 0)",
                            "build SIDTokens(codes, user_buckets=2000) to use user tokens")
        return self.user_offset + user_bucket(user_ids, self.user_buckets)

    def _check_items(self, items: np.ndarray, *, what: str, low: int, high: int) -> None:
        if items.size and (items.min() < low or items.max() > high):
            bad = items[(items < low) | (items > high)]
            raise DataError(f"{what} hold values outside {low}..{high} (e.g. {bad[:3].tolist()}); "
                            f"the codes have {self.n_items} items",
                            "encode items with the catalogue the codes were built for")

    def sid_tokens(self, items) -> np.ndarray:
        """(..., W) SID tokens of catalogue indices ``items`` (``END``/``PAD`` filled)."""
        items = np.asarray(items, dtype=np.int64)
        self._check_items(items, what="item indices", low=0, high=self.n_items - 1)
        return self.item_tokens[items]

    def history_tokens(self, history, max_len: int | None = None, users=None) -> np.ndarray:
        """Flattened SID token stream of left-padded item histories.

        ``history`` (B, H): tokens of :mod:`sidkit.eval.sequences` (item index + 1, 0 = pad).
        Returns (B, max_len) int64, left-padded with ``PAD``: every item's SID tokens
        (with ``END`` for short SIDs), oldest first, preceded by the user token when
        ``users`` is given; the oldest tokens are cut when longer than ``max_len``
        (default: ``H * W`` (+ 1 with users)).
        """
        from ..eval.sequences import pad_left

        h = np.asarray(history)
        if h.ndim != 2 or not np.issubdtype(h.dtype, np.integer):
            raise DataError(f"history must be a 2-D integer array (B, H), got shape {h.shape} dtype {h.dtype}",
                            "build it with SequenceData.eval_inputs or pad_left")
        h = h.astype(np.int64)
        self._check_items(h, what="history tokens", low=0, high=self.n_items)
        B, H = h.shape
        W = self.n_levels
        table = np.vstack([np.zeros((1, W), np.int64), self.item_tokens])
        ntok = np.r_[0, self.n_tokens]
        tok = table[h].reshape(B, H * W)
        mask = (np.arange(W)[None, None, :] < ntok[h][:, :, None]).reshape(B, H * W)
        if users is not None:
            ut = self.user_tokens(users)
            if ut.shape != (B,):
                raise DataError(f"users must have one id per history row ({B}), got {ut.shape[0]}",
                                "pass the user id of each history")
            tok = np.hstack([ut[:, None], tok])
            mask = np.hstack([np.ones((B, 1), bool), mask])
        if max_len is None:
            max_len = tok.shape[1]
        return pad_left((tok[mask], mask.sum(1)), int(max_len))

    def stream_items(self, tokens) -> np.ndarray:
        """Inverse of :meth:`history_tokens`: (B, T) token streams -> (B, H) item tokens.

        ``PAD``/``BOS``/``EOS`` and user tokens are skipped; returns left-padded history
        tokens (item index + 1, 0 = pad) with ``H`` the most items of a row.  A SID that
        maps to no item, or an unfinished SID at the end of a row, raises a DataError.
        """
        from ..eval.sequences import pad_left

        t = np.asarray(tokens, dtype=np.int64)
        if t.ndim != 2:
            raise DataError(f"token streams must be 2-D (B, T), got shape {t.shape}",
                            "pass one row of tokens per history")
        B, T = t.shape
        lvl = self.level_of(t)
        keep = (lvl >= 0) | (t == END) if self.variable_length else lvl >= 0
        if (t >= self.vocab_size).any() or (t < 0).any():
            raise DataError(f"token streams hold tokens outside 0..{self.vocab_size - 1}",
                            "decode tokens made by this SIDTokens (the model's own vocabulary)")
        end = keep & ((t == END) | (lvl == self.n_levels - 1)) if self.variable_length \
            else keep & (lvl == self.n_levels - 1)
        # a SID starts right after the previous end (or at the row's first kept token)
        ends_after = np.cumsum(end[:, ::-1], 1)[:, ::-1] - end
        unfinished = keep & (ends_after == 0) & ~end
        if unfinished.any():
            r = int(np.argwhere(unfinished)[0][0])
            raise DataError(f"row {r} of the token stream ends inside a SID", "pass whole SIDs only")
        # item number of every kept token (row-major) and its slot within the SID
        flat_keep = keep.ravel()
        kt = t.ravel()[flat_keep]
        ke = end.ravel()[flat_keep]
        sid_no = np.cumsum(ke) - ke                                           # global SID number
        start = np.r_[0, np.flatnonzero(ke)[:-1] + 1] if ke.any() else np.zeros(0, np.int64)
        slot = np.arange(kt.size) - start[sid_no]
        n_sids = int(ke.sum())
        if (slot >= self.n_levels).any():
            raise DataError("a SID in the token stream is longer than the number of levels",
                            "decode tokens made by this SIDTokens: each SID ends after its last level or at END")
        rows = np.full((n_sids, self.n_levels), PAD, np.int64)
        rows[sid_no, slot] = kt
        items = self.items_of(rows)
        if (items < 0).any():
            bad = rows[np.flatnonzero(items < 0)[0]]
            raise DataError(f"token SID {bad.tolist()} maps to no item", "decode with the trie (beam_search)")
        per_row = end.sum(1)
        H = max(int(per_row.max(initial=0)), 1)
        return pad_left((items + 1, per_row), H)

    def items_of(self, sid_tokens) -> np.ndarray:
        """(M,) catalogue index of each (M, W) SID token row; -1 where none."""
        return self.trie.items_of(sid_tokens)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write ``sid_tokens.json`` + ``sid_tokens.safetensors`` into directory ``path``."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"codes": np.ascontiguousarray(self.codes.codes), "lengths": np.ascontiguousarray(self.codes.lengths)}
        with atomic_path(path / "sid_tokens.safetensors") as tmp:
            save_file(arrays, str(tmp))
        write_json(path / "sid_tokens.json", {
            "artifact": "SIDTokens", "schema_version": SCHEMA_VERSION,
            "codebook_sizes": list(self.codebook_sizes), "user_buckets": self.user_buckets,
            "item_ids": None if self.codes.item_ids is None else np.asarray(self.codes.item_ids).astype(str).tolist(),
            "vocab_size": self.vocab_size})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SIDTokens":
        from ..io import load_safetensors

        from ..types import Codes

        path = Path(path)
        meta_p, arr_p = path / "sid_tokens.json", path / "sid_tokens.safetensors"
        if not meta_p.is_file() or not arr_p.is_file():
            raise ArtifactError(f"no SID token data in {path} (need sid_tokens.json and sid_tokens.safetensors)",
                                "point to a directory written by SIDTokens.save")
        meta = read_json(meta_p)
        if meta.get("artifact") != "SIDTokens" or meta.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(f"{meta_p} is not SIDTokens of schema version {SCHEMA_VERSION}",
                                "re-save the token data with this version of sidkit")
        fix = "re-save the token data (SIDTokens.save), or retrain the model that holds it"
        arrays = load_safetensors(arr_p, fix, names=("codes", "lengths"))
        try:
            codes = Codes(arrays["codes"], tuple(meta["codebook_sizes"]), lengths=arrays["lengths"],
                          item_ids=None if meta["item_ids"] is None else np.asarray(meta["item_ids"]))
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{meta_p} is not a complete SID token description ({type(e).__name__}: {e})",
                                fix) from None
        out = cls(codes, user_buckets=int(meta["user_buckets"]))
        if out.vocab_size != meta["vocab_size"]:
            raise ArtifactError(f"{meta_p}: vocabulary size {out.vocab_size} differs from the stored "
                                f"{meta['vocab_size']}", "re-save the token data with this version of sidkit")
        return out

    def __repr__(self) -> str:
        return (f"SIDTokens(n_items={self.n_items}, levels={self.n_levels}, codebook_sizes={self.codebook_sizes}, "
                f"variable_length={self.variable_length}, user_buckets={self.user_buckets}, "
                f"vocab_size={self.vocab_size})")
