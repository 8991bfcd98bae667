"""Pixel <-> network coordinates, and the left/right mirror permutation (written once here).

Network coordinates of an ``N``-pixel axis (DESIGN.md): ``n = (p - (N-1)/2) / ((N-1)/2)`` with
``p`` 0-based pixel coordinates (x = column, y = row, origin at the centre of the top-left
pixel), so pixel centres 0 and N-1 map to -1 and +1.

Two images of the same extent but different pixel counts (a dataset's ``S``-pixel DRRs and a
network's ``N``-pixel input, pixel edges aligned) share physical positions, not network
coordinates: :func:`convert_norm` maps between them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["px_to_norm", "norm_to_px", "convert_norm"]


def px_to_norm(p, size: int) -> np.ndarray:
    """Pixel coordinates of a ``size``-pixel axis -> network coordinates."""
    half = (size - 1) / 2
    return (np.asarray(p, dtype=np.float64) - half) / half


def norm_to_px(n, size: int) -> np.ndarray:
    """Network coordinates of a ``size``-pixel axis -> pixel coordinates."""
    half = (size - 1) / 2
    return np.asarray(n) * half + half


def convert_norm(n, from_size: int, to_size: int) -> np.ndarray:
    """Network coordinates of an ``from_size``-pixel axis to those of a ``to_size``-pixel axis
    of the same extent (pixel edges aligned): ``n * (N_from - 1) / N_from * N_to / (N_to - 1)``."""
    return np.asarray(n) * ((from_size - 1) / from_size) * (to_size / (to_size - 1))
