"""The one ranking every search path uses: higher score first, ties to the lower global position, misses last."""

from __future__ import annotations

import numpy as np


def top_hits(scores: np.ndarray, positions: np.ndarray, depth: int, *carried: np.ndarray) -> tuple[np.ndarray, ...]:
    """The best `depth` columns of each row of (scores, positions, *carried); position -1 marks a missing hit."""
    order = np.lexsort((positions, -scores, positions < 0), axis=-1)[:, :depth]
    return tuple(np.take_along_axis(values, order, axis=1) for values in (scores, positions, *carried))
