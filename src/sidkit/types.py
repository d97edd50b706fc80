"""Artifact types shared by the pipeline stages.

``Codes`` is the Semantic-ID artifact: an ``(N, L)`` integer array of tokens with a
per-item length (variable-length SIDs exist, see the hourglass remedies), the
codebook size of every level, and how the codes were made.  Positions past an
item's length hold ``PAD`` (-1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, DataError
from .io import REWRITE_FIX, SCHEMA_VERSION, load_npz, read_json, save_npz, write_json

PAD = -1
COLLISION_RULES = ("none", "extra_level", "by_construction")


@dataclass(frozen=True, eq=False)
class Codes:
    """Semantic IDs of ``N`` items over ``L`` levels.

    Attributes
    ----------
    codes : (N, L) int64, ``PAD`` beyond ``lengths[i]``.
    lengths : (N,) int64, number of tokens of each item's SID (1..L).
    codebook_sizes : K_l for every level l.
    method, params : the tokenizer that made them.
    collision_rule : "none" (collisions may exist), "extra_level" (the last level
        disambiguates, TIGER) or "by_construction" (e.g. GAOQ's last level).
    item_ids : optional (N,) vocabulary, row i is item ``item_ids[i]``.
    """

    codes: np.ndarray
    codebook_sizes: tuple[int, ...]
    lengths: np.ndarray | None = None
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    collision_rule: str = "none"
    item_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise DataError(
                f"Codes.codes must be a 2-D (items, levels) array, got shape {codes.shape}",
                "reshape a single-level code vector with codes[:, None]",
            )
        if not np.issubdtype(codes.dtype, np.integer):
            raise DataError(f"Codes.codes must be integers, got dtype {codes.dtype}",
                            "cast the codes to an integer array (one column per level)")
        codes = codes.astype(np.int64, copy=False)
        n, L = codes.shape
        sizes = tuple(int(k) for k in self.codebook_sizes)
        if len(sizes) != L:
            raise DataError(
                f"codebook_sizes has {len(sizes)} entries but codes have {L} levels",
                "give one codebook size per level",
            )
        if self.lengths is None:
            lengths = np.full(n, L, dtype=np.int64)
        else:
            lengths = np.asarray(self.lengths, dtype=np.int64)
            if lengths.shape != (n,):
                raise DataError(f"lengths must have shape ({n},), got {lengths.shape}",
                                "give one length per item (row of codes)")
        if n and (lengths.min() < 1 or lengths.max() > L):
            raise DataError(f"lengths must lie in 1..{L}",
                            "give each SID's number of tokens, between 1 and the number of levels")
        valid = np.arange(L)[None, :] < lengths[:, None]
        if n and valid.any():
            ks = np.broadcast_to(np.asarray(sizes, dtype=np.int64), codes.shape)
            bad = valid & ((codes < 0) | (codes >= ks))
            if bad.any():
                i, l = map(int, np.argwhere(bad)[0])
                raise DataError(
                    f"token {codes[i, l]} of item {i} at level {l} is outside 0..{sizes[l] - 1}",
                    "check codebook_sizes or the tokenizer output",
                )
        codes = np.where(valid, codes, PAD)
        if self.collision_rule not in COLLISION_RULES:
            raise DataError(
                f"unknown collision_rule {self.collision_rule!r}",
                f"use one of {', '.join(COLLISION_RULES)}",
            )
        item_ids = self.item_ids
        if item_ids is not None:
            item_ids = np.asarray(item_ids)
            if item_ids.shape != (n,):
                raise DataError(f"item_ids must have shape ({n},), got {item_ids.shape}",
                                "give one id per item (row of codes)")
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "codebook_sizes", sizes)
        object.__setattr__(self, "item_ids", item_ids)
        object.__setattr__(self, "params", dict(self.params))

    # ------------------------------------------------------------------ shape
    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.codes.shape[1])

    @property
    def is_variable_length(self) -> bool:
        return bool((self.lengths != self.n_levels).any())

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return (
            f"Codes(n_items={self.n_items}, levels={self.n_levels}, "
            f"codebook_sizes={self.codebook_sizes}, method={self.method!r}, "
            f"collision_rule={self.collision_rule!r})"
        )

    def replace(self, **changes: Any) -> "Codes":
        return dataclasses.replace(self, **changes)

    def semantic(self) -> "Codes":
        """The semantic tokens only: drops each SID's disambiguation token.

        With ``collision_rule`` "extra_level" (TIGER's counter) or "by_construction"
        (e.g. GAOQ's last level, which enumerates the items of a leaf) the last token
        of every SID carries no geometry; it is removed (at ``lengths - 1``, so
        variable-length SIDs work too).  Codes with rule "none" are returned as they are.
        """
        if self.collision_rule == "none":
            return self
        lengths = self.lengths - 1
        if self.n_items and (lengths < 1).any():
            raise DataError("an item's SID has only its disambiguation token",
                            "pass codes produced by a tokenizer with at least one semantic level")
        arr = self.codes.copy()
        arr[np.arange(self.n_items), lengths] = PAD
        width = max(int(lengths.max()) if self.n_items else self.n_levels - 1, 1)
        params = {k: v for k, v in self.params.items() if k != "base_levels"}
        return Codes(arr[:, :width], self.codebook_sizes[:width], lengths=lengths,
                     method=self.method, params=params, collision_rule="none",
                     item_ids=self.item_ids)

    # ------------------------------------------------------------ identities
    def prefix_keys(self, depth: int) -> np.ndarray:
        """One int64 per item identifying its first ``depth`` tokens (PAD included).

        Two items share a key iff their SID prefixes of that depth are equal.
        Computed as a mixed-radix number, falling back to ``np.unique`` row ids when
        the radix product would overflow int64.
        """
        return joint_keys([self], depth)[0]

    def sid_keys(self) -> np.ndarray:
        """One int64 per item identifying its whole SID."""
        return self.prefix_keys(self.n_levels)

    def n_unique(self) -> int:
        return int(np.unique(self.sid_keys()).size)

    def has_collisions(self) -> bool:
        return self.n_unique() < self.n_items

    def to_tuples(self) -> list[tuple[int, ...]]:
        """SIDs as tuples without padding (for display and small cases)."""
        return [tuple(int(t) for t in row[:n]) for row, n in zip(self.codes, self.lengths)]

    def lookup(self, sids: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Map SIDs back to item rows; -1 where a SID is unknown or ambiguous.

        Catalogue and query SIDs get their keys in one pass (:func:`joint_keys`), so the
        lookup is exact for any codebook sizes (also when prod(K_l + 1) >= 2^62).
        """
        sids = np.atleast_2d(np.asarray(sids, dtype=np.int64))
        if sids.shape[1] != self.n_levels:
            raise DataError(f"SIDs must have {self.n_levels} columns, got {sids.shape[1]}",
                            "pass one column per level of these codes")
        if lengths is not None:
            mask = np.arange(self.n_levels)[None, :] < np.asarray(lengths)[:, None]
            sids = np.where(mask, sids, PAD)
        q = Codes(np.where(sids < 0, 0, sids), self.codebook_sizes).codes  # validate range
        q = np.where(sids < 0, PAD, q)
        probe = self.replace(codes=q, lengths=(q >= 0).sum(1).clip(1), item_ids=None)
        keys, qk = joint_keys([self, probe])
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        pos = np.searchsorted(sk, qk)
        pos_c = np.minimum(pos, len(sk) - 1)
        found = (pos < len(sk)) & (sk[pos_c] == qk)
        right = np.searchsorted(sk, qk, side="right")
        unique = (right - pos) == 1
        return np.where(found & unique, order[pos_c], -1)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.npz`` (arrays) and ``<path>.json`` (metadata); no pickle."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
        arrays = {"codes": self.codes, "lengths": self.lengths}
        if self.item_ids is not None:
            arrays["item_ids"] = self.item_ids.astype(str)
        save_npz(stem.with_suffix(".npz"), **arrays)
        write_json(
            stem.with_suffix(".json"),
            {
                "artifact": "Codes",
                "schema_version": SCHEMA_VERSION,
                "codebook_sizes": list(self.codebook_sizes),
                "method": self.method,
                "params": self.params,
                "collision_rule": self.collision_rule,
                "n_items": self.n_items,
                "n_levels": self.n_levels,
            },
        )
        return stem.with_suffix(".npz")

    @classmethod
    def load(cls, path: str | Path) -> "Codes":
        """Read ``<path>.npz`` + ``<path>.json``; any problem raises an ArtifactError
        naming the file (missing, damaged, edited into something inconsistent)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
        npz, meta_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
        if not npz.exists() or not meta_path.exists():
            raise ArtifactError(
                f"no Codes artifact at {stem} (need {npz.name} and {meta_path.name})",
                "point to the file written by Codes.save or `sidkit tokenize`",
            )
        meta = read_json(meta_path)
        if (not isinstance(meta, dict) or meta.get("artifact") != "Codes"
                or meta.get("schema_version") != SCHEMA_VERSION):
            raise ArtifactError(
                f"{meta_path} is not a Codes artifact of schema version {SCHEMA_VERSION}",
                "re-create it with this version of sidkit",
            )
        sizes = meta.get("codebook_sizes")
        if not (isinstance(sizes, list) and all(isinstance(k, int) and not isinstance(k, bool)
                                                for k in sizes)):
            raise ArtifactError(f"{meta_path}: key 'codebook_sizes' is missing or not a list "
                                f"of integers ({sizes!r})", REWRITE_FIX)
        for key, typ, default in (("method", str, ""), ("params", dict, {}),
                                  ("collision_rule", str, "none")):
            if not isinstance(meta.get(key, default), typ):
                raise ArtifactError(f"{meta_path}: key {key!r} must be a {typ.__name__}, got "
                                    f"{meta[key]!r}", REWRITE_FIX)
        arrays = load_npz(npz)
        missing = [k for k in ("codes", "lengths") if k not in arrays]
        if missing:
            raise ArtifactError(f"{npz} lacks array(s) {missing}", REWRITE_FIX)
        try:
            return cls(
                codes=arrays["codes"],
                lengths=arrays["lengths"],
                codebook_sizes=tuple(sizes),
                method=meta.get("method", ""),
                params=meta.get("params", {}),
                collision_rule=meta.get("collision_rule", "none"),
                item_ids=arrays.get("item_ids"),
            )
        except DataError as e:
            raise ArtifactError(f"{npz} and {meta_path.name} do not form valid codes: "
                                f"{e.problem}", REWRITE_FIX) from None


def joint_keys(codes: list["Codes"], depth: int | None = None) -> list[np.ndarray]:
    """Prefix keys of several Codes that are comparable ACROSS them.

    ``Codes.prefix_keys`` falls back to row ranks within one array when the radix
    product overflows int64 (e.g. 8 levels of 256), so keys of two arrays cannot be
    compared; here the rows of all arrays are keyed together.  ``depth`` defaults to
    the smallest number of levels.  Two rows get the same key iff their first
    ``depth`` tokens (PAD included) are equal.
    """
    if not codes:
        return []
    depth = min(c.n_levels for c in codes) if depth is None else int(depth)
    if depth <= 0:
        return [np.zeros(c.n_items, dtype=np.int64) for c in codes]
    sizes = np.max([c.codebook_sizes[:depth] for c in codes], axis=0)
    radices = sizes.astype(np.float64) + 1
    if np.prod(radices) < 2**62:
        out = []
        for c in codes:
            key = np.zeros(c.n_items, dtype=np.int64)
            for l in range(depth):  # loop over levels, not items
                key = key * int(radices[l]) + (c.codes[:, l] + 1)
            out.append(key)
        return out
    rows = np.concatenate([c.codes[:, :depth] for c in codes])
    _, inv = np.unique(rows, axis=0, return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)
    bounds = np.cumsum([c.n_items for c in codes])[:-1]
    return np.split(inv, bounds)


@dataclass(frozen=True, eq=False)
class Embeddings:
    """``(N, d)`` float32 item vectors with their item-id vocabulary.

    Saved as ``embeddings.npy`` + ``embeddings.json`` (item ids, source, model).
    """

    vectors: np.ndarray
    item_ids: np.ndarray
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = np.asarray(self.vectors)
        ids = np.asarray(self.item_ids).astype(str)
        if v.ndim != 2:
            raise DataError(f"embeddings must be a 2-D (items, dim) array, got shape {v.shape}",
                            "save one row per item")
        if v.shape[0] != ids.shape[0]:
            raise DataError(
                f"embeddings have {v.shape[0]} rows but there are {ids.shape[0]} item ids",
                "give exactly one embedding row per item, in item-id order",
            )
        if not np.issubdtype(v.dtype, np.number):
            raise DataError(f"embeddings must be numeric, got dtype {v.dtype}",
                            "pass a float array of shape (items, dim)")
        v = np.ascontiguousarray(v, dtype=np.float32)
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            raise DataError(
                f"embeddings contain NaN or inf in {int(bad.sum())} row(s), first at row "
                f"{int(np.flatnonzero(bad)[0])} (item {ids[np.flatnonzero(bad)[0]]})",
                "re-embed those items or drop them from the catalogue",
            )
        object.__setattr__(self, "vectors", v)
        object.__setattr__(self, "item_ids", ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def save(self, directory: str | Path) -> Path:
        from .io import save_npy

        d = Path(directory)
        save_npy(d / "embeddings.npy", self.vectors)
        write_json(d / "embeddings.json", {
            "artifact": "Embeddings", "schema_version": SCHEMA_VERSION,
            "n_items": len(self), "dim": self.dim, "source": self.source,
            "meta": self.meta, "item_ids": self.item_ids.tolist(),
        })
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Embeddings":
        from .io import load_npy

        d = Path(directory)
        if not (d / "embeddings.npy").exists() or not (d / "embeddings.json").exists():
            raise ArtifactError(f"no Embeddings artifact in {d}",
                                "point to a directory with embeddings.npy and embeddings.json")
        meta_path, npy = d / "embeddings.json", d / "embeddings.npy"
        meta = read_json(meta_path)
        ids = meta.get("item_ids") if isinstance(meta, dict) else None
        if not isinstance(ids, list):
            raise ArtifactError(f"{meta_path}: key 'item_ids' is missing or not a list",
                                REWRITE_FIX)
        vec = load_npy(npy)
        try:
            return cls(vec, np.asarray(ids), str(meta.get("source", "")),
                       meta.get("meta", {}) if isinstance(meta.get("meta"), dict) else {})
        except DataError as e:
            raise ArtifactError(f"{npy} and {meta_path.name} do not form valid embeddings: "
                                f"{e.problem}", REWRITE_FIX) from None
