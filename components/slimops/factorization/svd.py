"""The linear algebra of a low-rank layer: which rank keeps enough energy, and the two factors."""

from __future__ import annotations

import numpy as np


def rank_for(singular_values: np.ndarray, energy: float) -> tuple[int, float]:
    """Smallest rank whose squared singular values hold ``energy`` of the total, and the fraction it holds."""
    squares = np.asarray(singular_values, dtype=np.float64) ** 2
    total = squares.sum()
    if total == 0:
        return 1, 1.0  # an all-zero weight: rank 1 (of zeros) is exact
    fraction = np.cumsum(squares) / total
    fraction[-1] = 1.0  # the full rank keeps everything, whatever the rounding says
    rank = min(int(np.searchsorted(fraction, energy, side="left")) + 1, len(fraction))
    return rank, float(fraction[rank - 1])


def low_rank_factors(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(U_r * S_r [k x r], V_r [r x n]) in the weight's dtype: their product is W's best rank-r approximation."""
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    dtype = weight.dtype if weight.dtype in (np.float16, np.float64) else np.float32
    return (np.ascontiguousarray((u[:, :rank] * s[:rank]).astype(dtype)),
            np.ascontiguousarray(vt[:rank].astype(dtype)))
