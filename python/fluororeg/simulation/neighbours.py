"""Scenes of a bone with a neighbour, for frames where another bone overlaps the registered one.

The refinement renders one bone (its subject's CT), while every bone of a joint has neighbours
that overlap it in one view or both: radius and ulna, femur and patella, tibia and fibula.
These helpers build such frames with ground truth (``benchmarks/bench_overlapping_bones.py``,
``tests/pipeline/test_real_wrist_refinement.py``): the neighbour laid along the bone at a chosen
distance and direction, and the soft tissue about them as a water cylinder, whose line integrals
are exact (no renderer involved). The bones' own frames come from any renderer, e.g.
:func:`fluororeg.simulation.plastimatch_drr.render_cone_plastimatch`.

Poses are world_from_model [6] (deg, mm); points and axes are in mm.
"""

from __future__ import annotations

import numpy as np

from fluororeg.core.geometry import ConeView, pose_from_matrix, pose_matrix
from fluororeg.core.volume import Volume

__all__ = ["principal_axis", "pose_beside", "soft_tissue_cylinder"]


def principal_axis(mask: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The centroid [3] and the principal axis [3] (unit; its sign is arbitrary) of the voxels
    of ``mask`` above 0, in the mask's frame (mm): a long bone's long axis."""
    if not isinstance(mask, Volume):
        raise TypeError(f"mask must be a fluororeg.Volume, got {type(mask).__name__}")
    ijk = np.argwhere(np.asarray(mask.data) > 0)[:, ::-1].astype(np.float64)  # (i, j, k) = (x, y, z) indices
    if len(ijk) < 2:
        raise ValueError(f"the mask holds {len(ijk)} voxels above 0: expected a bone (at least 2)")
    points = mask.voxel_to_physical(ijk)
    centre = points.mean(axis=0)
    return centre, np.linalg.svd(points - centre, full_matrices=False)[2][0]


def pose_beside(pose, bone: Volume, neighbour: Volume, distance_mm: float, direction_deg: float) -> np.ndarray:
    """The pose [6] of ``neighbour`` (a mask) whose principal axis runs along that of ``bone``
    (a mask) at ``pose`` [6], its centroid ``distance_mm`` from the bone's, in the direction
    ``direction_deg`` about the axis (0: along the axis crossed with the world's z; 90: a
    quarter turn on, right-handed about the bone's axis as :func:`principal_axis` signs it)."""
    if not np.isfinite(distance_mm) or distance_mm < 0:
        raise ValueError(f"distance_mm is {distance_mm}: expected a finite distance >= 0")
    if not np.isfinite(direction_deg):
        raise ValueError(f"direction_deg is {direction_deg}: expected a finite angle")
    from scipy.spatial.transform import Rotation

    M = pose_matrix(np.asarray(pose, dtype=np.float64))
    c, a = principal_axis(bone)
    axis, centre = M[:3, :3] @ a, M[:3, :3] @ c + M[:3, 3]
    across = np.cross(axis, [0.0, 0.0, 1.0])
    if np.linalg.norm(across) < 1e-6:  # the axis along z: any perpendicular
        across = np.cross(axis, [1.0, 0.0, 0.0])
    across /= np.linalg.norm(across)
    phi = np.deg2rad(direction_deg)
    offset = distance_mm * (np.cos(phi) * across + np.sin(phi) * np.cross(axis, across))
    cn, an = principal_axis(neighbour)
    R = Rotation.align_vectors([axis], [an])[0].as_matrix()
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R, centre + offset - R @ cn
    return pose_from_matrix(out)


def soft_tissue_cylinder(view: ConeView, centre, axis, radius_mm: float = 35.0,
                         mu_per_mm: float = 0.02) -> np.ndarray:
    """Line integrals [H, W] float32 of ``view`` through a cylinder of ``radius_mm`` and
    attenuation ``mu_per_mm`` (water: 0.02) about the infinite line ``centre`` + t ``axis``
    (world, mm): each ray's chord through it, 2 sqrt(r^2 - d^2) / sin(angle), with d the
    distance between the ray's line and the axis and the angle between them."""
    if not isinstance(view, ConeView):
        raise TypeError(f"view must be a fluororeg.ConeView, got {type(view).__name__}")
    if not (np.isfinite(radius_mm) and radius_mm > 0) or not (np.isfinite(mu_per_mm) and mu_per_mm >= 0):
        raise ValueError(f"radius_mm {radius_mm} and mu_per_mm {mu_per_mm}: expected a radius > 0 and an "
                         "attenuation >= 0")
    axis = np.asarray(axis, dtype=np.float64)
    if axis.shape != (3,) or not np.linalg.norm(axis) > 0:
        raise ValueError(f"axis is {axis.tolist()}: expected a non-zero direction [3]")
    axis = axis / np.linalg.norm(axis)
    ys, xs = np.mgrid[0:view.height, 0:view.width]
    ray = view.pixel_to_world(np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)) - view.source  # [H W, 3]
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    normal = np.cross(ray, axis)  # [H W, 3] |normal| = sin(angle)
    sine = np.maximum(np.linalg.norm(normal, axis=1), 1e-9)
    d = np.abs(normal @ (view.source - np.asarray(centre, dtype=np.float64))) / sine
    chord = 2.0 * np.sqrt(np.maximum(radius_mm ** 2 - d ** 2, 0.0)) / sine
    return (mu_per_mm * chord).reshape(view.height, view.width).astype(np.float32)
