"""The mid-sagittal symmetry plane of a bone surface (mirror ICP), used to propose
left/right landmark pairs (:mod:`fluororeg.subject.proposal`)."""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from fluororeg.core.volume import Volume

__all__ = ["symmetry_plane", "surface_points", "is_mask", "reflect"]


def is_mask(vol: Volume) -> bool:
    d = vol.data
    if d.dtype == np.bool_:
        return True
    if not np.issubdtype(d.dtype, np.integer):
        return False
    return int(d.min()) >= 0 and int(d.max()) <= 1


def reflect(x: np.ndarray, n: np.ndarray, d: float) -> np.ndarray:
    return x - 2.0 * (x @ n - d)[:, None] * n[None, :]


def _rot(axis: np.ndarray, ang: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * k @ k


def symmetry_plane(surface: np.ndarray, volume: Volume, initial_normal: Any = (1.0, 0.0, 0.0), *,
                   seed: int = 0, max_points: int = 8000, max_tilt_deg: float = 20.0
                   ) -> Tuple[np.ndarray, float, float]:
    """Mirror-symmetry plane ``n . x = d`` (mm, physical) of a binary surface on ``volume``'s grid.

    Minimises the mean truncated squared distance between the surface voxels and their
    mirror images (a Euclidean distance map of the surface, trilinearly interpolated):
    a coarse search over normals within ``max_tilt_deg`` of ``initial_normal`` and plane
    offsets, then Nelder-Mead from the best starts.  Returns ``(n, d, rms_mm)``: ``n`` a
    unit vector oriented like ``initial_normal`` and the root mean square (truncated) mirror
    distance of the surface points.
    """
    from scipy import ndimage, optimize

    surf = np.asarray(surface, dtype=bool)
    n0 = np.asarray(initial_normal, dtype=np.float64).reshape(-1)
    if n0.shape != (3,) or not np.all(np.isfinite(n0)) or np.linalg.norm(n0) == 0:
        raise ValueError(f"initial_normal must be a non-zero finite 3-vector, got {initial_normal!r}")
    n0 = n0 / np.linalg.norm(n0)
    kji = np.argwhere(surf)
    if len(kji) == 0:
        raise ValueError("the surface is empty")
    pts = volume.voxel_to_physical(kji[:, ::-1].astype(np.float64))
    rng = np.random.default_rng(seed)
    if len(pts) > max_points:
        pts = pts[rng.choice(len(pts), max_points, replace=False)]
    # distance (mm) to the nearest surface voxel centre, sampled on the voxel grid (k, j, i)
    dmap = ndimage.distance_transform_edt(~surf, sampling=volume.spacing[::-1]).astype(np.float64)
    cap = 2.0 * float(np.linalg.norm(volume.spacing))
    vfp = volume.voxel_from_physical
    a1 = np.cross(n0, [0.0, 0.0, 1.0] if abs(n0[2]) < 0.9 else [1.0, 0.0, 0.0])
    a1 /= np.linalg.norm(a1)
    a2 = np.cross(n0, a1)
    proj0 = pts @ n0
    scale = max(float(np.std(pts - pts.mean(axis=0))), 1e-6)  # mm per unit of the parameters

    def plane(x: np.ndarray) -> Tuple[np.ndarray, float]:
        n = n0 + x[0] * a1 + x[1] * a2
        nn = float(np.linalg.norm(n))
        return n / nn, x[2] * scale / nn

    def cost(x: np.ndarray) -> float:
        n, d = plane(x)
        refl = pts - 2.0 * (pts @ n - d)[:, None] * n[None, :]
        ijk = refl @ vfp[:3, :3].T + vfp[:3, 3]
        dist = ndimage.map_coordinates(dmap, ijk[:, ::-1].T, order=1, mode="nearest")
        # points mirrored outside the grid count as far away
        lo = np.all(ijk >= -0.5, axis=1) & np.all(ijk <= np.array(volume.shape_xyz) - 0.5, axis=1)
        dist = np.where(lo, dist, cap)
        return float(np.mean(np.minimum(dist, cap) ** 2))

    t = math.tan(math.radians(max_tilt_deg))
    grid = np.linspace(-t, t, 9)
    d_med = float(np.median(proj0))
    offs = d_med / scale + np.linspace(-0.15, 0.15, 7)
    starts = []
    for ga in grid:
        for gb in grid:
            for go in offs:
                x = np.array([ga, gb, go])
                starts.append((cost(x), x))
    starts.sort(key=lambda c: c[0])
    best = None
    for _, x in starts[:4]:
        res = optimize.minimize(cost, x, method="Nelder-Mead",
                                options={"xatol": 1e-5, "fatol": 1e-9, "maxiter": 2000,
                                         "initial_simplex": x + np.vstack([np.zeros(3), 0.05 * np.eye(3)])})
        if best is None or res.fun < best.fun:
            best = res
    n, d = plane(best.x)
    return n, float(d), math.sqrt(float(best.fun))


def surface_points(mask: np.ndarray, vol: Volume) -> Tuple[np.ndarray, np.ndarray]:
    """Physical positions [N, 3] of the outer surface voxels of ``mask`` and the surface
    as a boolean array (holes are filled first, so inner cavity walls do not count)."""
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(mask)
    inner = ndimage.binary_erosion(filled, structure=ndimage.generate_binary_structure(3, 1),
                                   border_value=0)
    surf = filled & ~inner
    kji = np.argwhere(surf)
    pts = vol.voxel_to_physical(kji[:, ::-1].astype(np.float64))
    return pts, surf
