"""Codebook sizes chosen from the catalogue size (the evidence: the codebook-size study,
``docs/studies/codebooks.md``).

    K = N / ITEMS_PER_CODEWORD                 ITEMS_PER_CODEWORD = 4
    K -> rounded up to a multiple of 8 when K > 8
    K -> clipped to [2, 256] and to at most N   (k-means needs K <= N)

the same K at every level.  So catalogues of 1,024 items or more get TIGER's 256
codewords per level, and a small catalogue gets at least 4 items per first-level
codeword on average.  Examples: N=1682 (MovieLens-100K) -> (256, 256, 256);
N=300 -> (80, 80, 80); N=60 -> (16, 16, 16).

Why (study 2, MovieLens-100K, causal SID model, 3 seeds each): test NDCG@10 0.0592 ±
0.0044 with 256 x 3 against 0.0411 ± 0.0013 with 24 x 3 and 0.0406 ± 0.0060 with
64 x 3 (and 0.0504 against 0.0360 at an equal 20-epoch cap, one seed).  What helps
the recommender is a first level fine enough that a SID nearly names its item (groups
of ~7 items at 256; 2.4% of the items share their semantic SID, 21% at 24 x 3), like
the ID-only model (0.0607).  The rule used before, ``K = ceil((4 N) ** (1 / L))`` (24 x
24 x 24 here), was written to keep the code space from being mostly empty
(``prod K ~ 4 N``); on this evidence empty code tuples cost nothing (the trie-
constrained decoder never emits them) while shared SIDs cost a third of NDCG@10.  The
studies that ran with the earlier rule pin their sizes (24 x 24 x 24) in their config
files.  ``[codes] codebook_sizes`` overrides the rule.
"""

from __future__ import annotations

import math

from ..errors import DataError

__all__ = ["default_codebook_sizes", "ITEMS_PER_CODEWORD", "MAX_CODEBOOK_SIZE"]

ITEMS_PER_CODEWORD = 4
MAX_CODEBOOK_SIZE = 256
MIN_CODEBOOK_SIZE = 2


def default_codebook_sizes(n_items: int, n_levels: int) -> tuple[int, ...]:
    """One codebook size per level for a catalogue of ``n_items`` (rule above)."""
    n_items, n_levels = int(n_items), int(n_levels)
    if n_items < 1:
        raise DataError(f"n_items must be >= 1, got {n_items}", "pass the catalogue size")
    if n_levels < 1:
        raise DataError(f"n_levels must be >= 1, got {n_levels}", "use at least one level")
    k = math.ceil(n_items / ITEMS_PER_CODEWORD)
    if k > 8:
        k = 8 * math.ceil(k / 8)
    k = max(MIN_CODEBOOK_SIZE, min(MAX_CODEBOOK_SIZE, k))
    k = max(1, min(k, n_items))
    return (k,) * n_levels
