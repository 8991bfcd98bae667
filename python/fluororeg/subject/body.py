"""The body mask: what a fluoroscope sees of the subject in the CT.

A CT also shows what the subject lay on or was held by: the table, a head holder or headrest,
cushions, positioning frames. A fluoroscope never sees them with the subject, so training DRRs
must not show them (issue 13: a detector trained on DRRs with the CT's headrest). The body is:

1. the CT above ``threshold_hu`` (-500 HU: soft tissue, not air or foam);
2. objects are told apart after a morphological opening by ``opening_voxels`` (6-connected
   erosions then dilations): a headrest touching the scalp over a thin contact becomes a
   separate component; the largest component of the opened mask is the body, every other
   component of at least ``min_object_voxels`` is a foreign object;
3. each foreign object (grown back by ``opening_voxels + 1`` voxels within the thresholded CT,
   so that its eroded rim goes with it) is removed from the thresholded CT; of what remains
   the largest 26-connected component is the body (thin parts of the body itself, such as
   the ears, which the opening erases but which are not separate objects, stay);
4. enclosed cavities (sinuses, airways closed off in the CT) are filled, so that the body's
   inside is rendered as it is.

Everything outside the body is rendered as air (:meth:`fluororeg.subject.subject.Subject.attenuation_model`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["body_mask", "BODY_THRESHOLD_HU"]

BODY_THRESHOLD_HU = -500.0


def _largest(labels: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    return labels == int(np.argmax(counts))


def body_mask(ct_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU, opening_voxels: int = 2,
              min_object_voxels: int = 27) -> np.ndarray:
    """bool [k, j, i]: the subject's body in a CT ``ct_hu`` [k, j, i] (HU); see the module docstring."""
    from scipy import ndimage

    data = np.asarray(ct_hu)
    if data.ndim != 3:
        raise ValueError(f"body_mask expects a 3-D CT [k, j, i], got shape {data.shape}")
    if not (isinstance(opening_voxels, (int, np.integer)) and opening_voxels >= 0):
        raise ValueError(f"opening_voxels = {opening_voxels!r}: expected a whole number >= 0")
    above = data >= float(threshold_hu)
    if not above.any():
        raise ValueError(f"no voxel of the CT reaches {threshold_hu} HU (range {data.min()}..{data.max()}): no body")
    full = np.ones((3, 3, 3), dtype=bool)
    keep = above
    if opening_voxels > 0:
        six = ndimage.generate_binary_structure(3, 1)
        opened = ndimage.binary_opening(above, structure=six, iterations=int(opening_voxels))
        labels, n = ndimage.label(opened, structure=full)
        if n > 1:
            counts = np.bincount(labels.ravel(), minlength=n + 1)
            counts[0] = 0
            body_label = int(np.argmax(counts))
            foreign = (labels != body_label) & (labels > 0) & (counts[labels] >= min_object_voxels)
            if foreign.any():
                grown = ndimage.binary_dilation(foreign, structure=six, iterations=int(opening_voxels) + 1, mask=above)
                # never take what the opened body itself holds
                keep = above & ~(grown & ~(labels == body_label))
    labels, n = ndimage.label(keep, structure=full)
    body = _largest(labels, n) if n > 1 else keep
    return ndimage.binary_fill_holes(body)
