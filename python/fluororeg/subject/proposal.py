"""Automatic landmarks for subjects that come without them.

:func:`propose_landmarks` proposes a well-spread, left-right symmetric landmark set on the
bone surface: it estimates the mid-sagittal symmetry plane of the bone surface (mirror ICP,
:mod:`fluororeg.subject.symmetry`), picks mirror-image pairs on both sides and unpaired points
on the plane by farthest-point sampling. With ``n_pairs=0`` (a bone that is not left-right
symmetric: a radius, a femur, a vertebra seen alone) no symmetry plane is estimated and the
landmarks are spread over the whole bone surface by farthest-point sampling; such a subject has
no pairs and the registration then solves one case only (no mirror search).
"""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

from fluororeg.core.volume import Volume
from fluororeg.subject.landmarks import Landmarks
from fluororeg.subject.subject import DEFAULT_MASK_THRESHOLD_HU
from fluororeg.subject.symmetry import is_mask, reflect, surface_points, symmetry_plane

__all__ = ["propose_landmarks"]


def propose_landmarks(mask_or_ct: Volume, n_landmarks: int = 33, n_pairs: int = 13, *,
                      threshold_hu: float = DEFAULT_MASK_THRESHOLD_HU, seed: int = 0,
                      initial_normal: Any = (1.0, 0.0, 0.0)
                      ) -> Tuple[Landmarks, Tuple[Tuple[int, int], ...]]:
    """Propose a spread, left-right symmetric landmark set on the bone surface.

    ``mask_or_ct`` is a binary mask (bool, or integers 0/1) or a CT in HU (thresholded at
    ``threshold_hu``, largest 26-connected component).  Steps: the outer surface voxels of
    the (hole-filled) mask; its mirror-symmetry plane by mirror ICP starting from
    ``initial_normal`` (LPS x, left-right for a head CT); ``n_pairs`` pairs by farthest-point
    sampling (the plane counting as already covered) over surface voxels off the plane (by at least two voxels and a tenth of the
    surface's half-width) whose mirror image lands
    on the surface (within 0.75 voxel diagonals), each paired with the surface voxel
    nearest its mirror image; then ``n_landmarks - 2 n_pairs`` unpaired points by
    farthest-point sampling over surface voxels on the plane (within half a voxel).

    Every point is the centre of a surface voxel.  Names: ``auto_01_L``/``auto_01_R`` (L on
    the side of +``initial_normal``, i.e. the patient's left for LPS x), ``auto_mid_01``.
    Returns ``(landmarks, pairs)`` with pairs as (left, right) indices: (0, 1), (2, 3), ...
    """
    from scipy.spatial import cKDTree

    if not isinstance(mask_or_ct, Volume):
        raise TypeError(f"propose_landmarks expects a Volume, got {type(mask_or_ct).__name__}")
    for nm, v in (("n_landmarks", n_landmarks), ("n_pairs", n_pairs), ("seed", seed)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{nm} must be an integer, got {v!r}")
    n_landmarks, n_pairs = int(n_landmarks), int(n_pairs)
    if n_pairs < 0 or n_landmarks < 1 or 2 * n_pairs > n_landmarks:
        raise ValueError(f"need n_landmarks >= 1 and 0 <= 2 * n_pairs <= n_landmarks, got "
                         f"n_landmarks={n_landmarks}, n_pairs={n_pairs}")
    n_mid = n_landmarks - 2 * n_pairs
    vol = mask_or_ct
    if is_mask(vol):
        bone = np.asarray(vol.data) != 0
        if not bone.any():
            raise ValueError("the mask given to propose_landmarks is empty")
    else:
        bone = vol.mask(threshold_hu, largest_component=True).data.astype(bool)
    pts, surf = surface_points(bone, vol)
    if len(pts) < 4 * n_landmarks:
        raise ValueError(f"the bone surface has only {len(pts)} voxels, too few for "
                         f"{n_landmarks} landmarks")
    if n_pairs == 0:
        return _spread_on_surface(pts, n_landmarks), ()
    n, d, cost = symmetry_plane(surf, vol, initial_normal, seed=int(seed))
    voxel = float(np.max(vol.spacing))
    diag = float(np.linalg.norm(vol.spacing))
    tree = cKDTree(pts)
    s = pts @ n - d

    # ---- pair candidates: off the plane, mirror image on the surface
    margin = max(2.0 * voxel, 0.1 * float(np.max(np.abs(s))))
    cand = np.nonzero(s > margin)[0]
    dist, partner = tree.query(reflect(pts[cand], n, d))
    ok = (dist <= 0.75 * diag) & (s[partner] < -voxel)
    cand, partner = cand[ok], partner[ok]
    if len(cand) < n_pairs:
        raise ValueError(f"only {len(cand)} surface points have a mirror image on the bone "
                         f"(symmetry plane normal {np.round(n, 3).tolist()}, mean mirror distance "
                         f"{cost:.2f} mm); cannot place {n_pairs} pairs")
    chosen: List[np.ndarray] = []
    names: List[str] = []
    pairs: List[Tuple[int, int]] = []
    if n_pairs:
        pl, pr = pts[cand], pts[partner]
        # the plane counts as covered (by the unpaired points): start from the distance to it
        mind = s[cand].copy()
        for q in range(n_pairs):
            c = int(np.argmax(mind))
            if not mind[c] > 0:
                raise ValueError(f"ran out of distinct mirror pairs after {q} of {n_pairs}")
            a, b = pl[c], pr[c]
            pairs.append((len(chosen), len(chosen) + 1))
            chosen += [a, b]
            names += [f"auto_{q + 1:02d}_L", f"auto_{q + 1:02d}_R"]
            for p in (a, b):
                mind = np.minimum(mind, np.minimum(np.linalg.norm(pl - p, axis=1),
                                                   np.linalg.norm(pr - p, axis=1)))

    # ---- unpaired points on the plane
    if n_mid:
        width = 0.5 * voxel
        mid = np.nonzero(np.abs(s) <= width)[0]
        while len(mid) < 4 * n_mid and width < 4 * voxel:
            width *= 1.5
            mid = np.nonzero(np.abs(s) <= width)[0]
        if len(mid) < n_mid:
            raise ValueError(f"only {len(mid)} surface points lie on the symmetry plane; cannot "
                             f"place {n_mid} unpaired landmarks")
        pm = pts[mid]
        # prefer points closest to the plane: the distance to the plane is a small penalty
        pen = np.abs(s[mid])
        if chosen:
            sel = np.array(chosen)
            mind = np.min(np.linalg.norm(pm[:, None, :] - sel[None, :, :], axis=2), axis=1)
        else:
            mind = np.full(len(mid), np.inf)
            mind[int(np.argmax(np.linalg.norm(pm - pts.mean(axis=0), axis=1)))] = 1e300
        for q in range(n_mid):
            c = int(np.argmax(mind - pen))
            if not mind[c] > 0:
                raise ValueError(f"ran out of distinct points on the symmetry plane after {q} of {n_mid}")
            chosen.append(pm[c])
            names.append(f"auto_mid_{q + 1:02d}")
            mind = np.minimum(mind, np.linalg.norm(pm - pm[c], axis=1))
    return Landmarks(tuple(names), np.array(chosen).reshape(-1, 3)), tuple(pairs)


def _spread_on_surface(pts: np.ndarray, n: int) -> Landmarks:
    """``n`` surface points by farthest-point sampling, starting from the point farthest from
    the surface's centroid (deterministic); names ``auto_01`` ..."""
    d = np.linalg.norm(pts - pts.mean(axis=0), axis=1)
    first = int(np.argmax(d))
    chosen = [first]
    mind = np.linalg.norm(pts - pts[first], axis=1)
    for _ in range(n - 1):
        c = int(np.argmax(mind))
        if not mind[c] > 0:
            raise ValueError(f"ran out of distinct surface points after {len(chosen)} of {n} landmarks")
        chosen.append(c)
        mind = np.minimum(mind, np.linalg.norm(pts - pts[c], axis=1))
    return Landmarks(tuple(f"auto_{q + 1:02d}" for q in range(n)), pts[chosen].reshape(-1, 3))
