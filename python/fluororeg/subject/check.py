"""Checks of a subject folder: are the landmarks on the bone?"""

from __future__ import annotations

import numpy as np

__all__ = ["landmark_distances_to_bone"]


def landmark_distances_to_bone(subject) -> np.ndarray:
    """[L] mm: each landmark's distance to the subject's bone mask (0 inside it)."""
    from scipy import ndimage

    mask = np.asarray(subject.mask.data).astype(bool)
    dist_mm = ndimage.distance_transform_edt(~mask, sampling=tuple(float(v) for v in subject.mask.spacing[::-1]))
    ijk = np.round(subject.mask.physical_to_voxel(subject.landmarks.positions)).astype(int)[:, ::-1]  # k, j, i
    ijk = np.clip(ijk, 0, np.array(mask.shape) - 1)
    return dist_mm[tuple(ijk.T)]
