"""Codebook sizes chosen from the catalogue size (SPEC 4.10).

TIGER's 3 x 256 codebooks were sized for catalogues of 10^4..10^6 items; on a
1.7k-item catalogue they leave most of the 16.7M code tuples (and most level-2/3
codewords) empty.  The rule here sizes the SID space to the catalogue:

    K = ceil((OVERSAMPLE * N) ** (1 / L))      OVERSAMPLE = 4
    K -> rounded up to a multiple of 8 when K > 8
    K -> clipped to [2, 256] and to at most N   (k-means needs K <= N)

so that ``prod(K) ~ 4 N``: enough room for k-means' uneven cluster sizes
(collisions are resolved by an extra level anyway) without empty codebooks.
Examples: N=1682, L=3 -> (24, 24, 24) (13824 tuples, 8.2 N);
N=12k, L=3 -> (40, 40, 40); N=1M, L=3 -> (160, 160, 160); N>=4.2M -> 256.
"""

from __future__ import annotations

import math

from ..errors import DataError

__all__ = ["default_codebook_sizes", "OVERSAMPLE", "MAX_CODEBOOK_SIZE"]

OVERSAMPLE = 4
MAX_CODEBOOK_SIZE = 256
MIN_CODEBOOK_SIZE = 2


def default_codebook_sizes(n_items: int, n_levels: int) -> tuple[int, ...]:
    """One codebook size per level for a catalogue of ``n_items`` (rule above)."""
    n_items, n_levels = int(n_items), int(n_levels)
    if n_items < 1:
        raise DataError(f"n_items must be >= 1, got {n_items}", "pass the catalogue size")
    if n_levels < 1:
        raise DataError(f"n_levels must be >= 1, got {n_levels}", "use at least one level")
    k = math.ceil((OVERSAMPLE * n_items) ** (1.0 / n_levels) - 1e-9)
    if k > 8:
        k = 8 * math.ceil(k / 8)
    k = max(MIN_CODEBOOK_SIZE, min(MAX_CODEBOOK_SIZE, k))
    k = max(1, min(k, n_items))
    return (k,) * n_levels
