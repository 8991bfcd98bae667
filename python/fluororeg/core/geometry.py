"""Poses, rotations and fluoroscope views (the conventions of DESIGN.md).

Units in this public API: millimetres and degrees. A pose is
``(theta_x, theta_y, theta_z, tau_x, tau_y, tau_z)`` with extrinsic z-y-x Euler angles,
``R = Rx(theta_x) Ry(theta_y) Rz(theta_z)`` and ``X_world = R X_model + tau``; in SciPy,
``Rotation.from_euler('zyx', [tz, ty, tx], degrees=True)``.

A :class:`ConeView` is one fluoroscope: point source ``S``, detector (intensifier) plane with
centre ``D`` and orthonormal in-plane axes ``u`` (image +x, columns) and ``v`` (image +y,
rows), pixel pitch ``(pitch_u, pitch_v)`` mm and size ``width x height`` px. Pixel
coordinates have their origin at the centre of the top-left pixel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "rotation_matrix",
    "euler_from_matrix",
    "pose_matrix",
    "pose_from_matrix",
    "model_poses_from_physical",
    "physical_poses_from_model",
    "as_poses",
    "ConeView",
    "ParallelCamera",
    "stack_views",
    "system_centre",
    "beam_crossing",
    "depth_reversed_poses",
]


MAX_ARRAY_ELEMENTS = 1 << 28  # poses, angles, points per call: 2 GiB as float64, far above any batch


def check_array_size(value, name: str) -> None:
    """ValueError when ``value`` is an array of more than :data:`MAX_ARRAY_ELEMENTS` values,
    checked before any copy (a huge zero-stride view costs nothing until it is copied)."""
    size = getattr(value, "size", None)
    if isinstance(size, int) and size > MAX_ARRAY_ELEMENTS:
        raise ValueError(f"{name} has shape {getattr(value, 'shape', '?')} ({size:,} values): expected at most "
                         f"{MAX_ARRAY_ELEMENTS:,} values per call")


def _finite_array(value, name: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    check_array_size(value, name)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric, got {type(value).__name__}") from exc
    if arr.shape[arr.ndim - len(shape_tail):] != shape_tail or arr.ndim < len(shape_tail):
        raise ValueError(f"{name} has shape {arr.shape}, expected (..., {', '.join(map(str, shape_tail))})")
    if not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{name} holds a non-finite value ({bad}); expected finite numbers")
    return arr


def rotation_matrix(theta_deg) -> np.ndarray:
    """R [..., 3, 3] from theta [..., 3] degrees (extrinsic z-y-x: R = Rx Ry Rz)."""
    t = np.deg2rad(_finite_array(theta_deg, "theta", (3,)))
    cx, sx = np.cos(t[..., 0]), np.sin(t[..., 0])
    cy, sy = np.cos(t[..., 1]), np.sin(t[..., 1])
    cz, sz = np.cos(t[..., 2]), np.sin(t[..., 2])
    R = np.empty(t.shape[:-1] + (3, 3))
    R[..., 0, 0] = cy * cz
    R[..., 0, 1] = -cy * sz
    R[..., 0, 2] = sy
    R[..., 1, 0] = cx * sz + sx * sy * cz
    R[..., 1, 1] = cx * cz - sx * sy * sz
    R[..., 1, 2] = -sx * cy
    R[..., 2, 0] = sx * sz - cx * sy * cz
    R[..., 2, 1] = sx * cz + cx * sy * sz
    R[..., 2, 2] = cx * cy
    return R


def euler_from_matrix(R) -> np.ndarray:
    """theta [..., 3] degrees from R [..., 3, 3] (inverse of :func:`rotation_matrix`;
    theta_y in [-90, 90])."""
    R = _finite_array(R, "R", (3, 3))
    ty = np.arcsin(np.clip(R[..., 0, 2], -1.0, 1.0))
    tx = np.arctan2(-R[..., 1, 2], R[..., 2, 2])
    tz = np.arctan2(-R[..., 0, 1], R[..., 0, 0])
    return np.rad2deg(np.stack([tx, ty, tz], axis=-1))


def as_poses(poses, name: str = "poses") -> np.ndarray:
    """Validate poses [6] or [n, 6] (deg, mm) and return them as float64 [n, 6]."""
    arr = _finite_array(poses, name, (6,))
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} has shape {arr.shape}, expected (6,) or (n, 6)")
    return np.ascontiguousarray(arr)


def poses_to_radians(poses_deg: np.ndarray) -> np.ndarray:
    """[n, 6] (deg, mm) -> [n, 6] (rad, mm) for the C++ core."""
    out = np.array(poses_deg, dtype=np.float64, copy=True)
    out[:, :3] *= np.pi / 180.0  # np.deg2rad's factor, without its call overhead
    return out


def pose_matrix(pose) -> np.ndarray:
    """4x4 world_from_model (or [n, 4, 4]) from pose(s) (deg, mm)."""
    p = _finite_array(pose, "pose", (6,))
    M = np.zeros(p.shape[:-1] + (4, 4))
    M[..., :3, :3] = rotation_matrix(p[..., :3])
    M[..., :3, 3] = p[..., 3:]
    M[..., 3, 3] = 1.0
    return M


def pose_from_matrix(M) -> np.ndarray:
    """Pose(s) (deg, mm) from 4x4 rigid transform(s)."""
    M = _finite_array(M, "M", (4, 4))
    return np.concatenate([euler_from_matrix(M[..., :3, :3]), M[..., :3, 3]], axis=-1)


def model_poses_from_physical(poses, origin) -> np.ndarray:
    """world_from_model poses [..., 6] (deg, mm) of world_from_physical ones [..., 6]: a bone's pose in
    its CT's own physical frame (as Autoscoper, 3D Slicer or a hand placement give it) in the model
    frame, whose origin is ``origin`` [3] mm of that physical frame (a subject's ``origin``)."""
    shift = np.eye(4)
    shift[:3, 3] = _finite_array(origin, "origin", (3,))
    return pose_from_matrix(pose_matrix(poses) @ shift)


def physical_poses_from_model(poses, origin) -> np.ndarray:
    """The inverse of :func:`model_poses_from_physical`: world_from_physical [..., 6] (deg, mm)."""
    return model_poses_from_physical(poses, -_finite_array(origin, "origin", (3,)))


@dataclass(frozen=True)
class ParallelCamera:
    """Parallel-beam camera of the artificial dataset: rays along camera +z; a camera point
    maps to ``x = scale * Xc / pixel_mm + (width - 1) / 2`` (same for y). ``scale`` is an
    in-plane magnification; line integrals stay physical."""

    width: int = 128
    height: int = 128
    pixel_mm: float = 2.0

    def __post_init__(self):
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"ParallelCamera.{name} = {v!r}: expected a positive integer")
        if not np.isfinite(self.pixel_mm) or self.pixel_mm <= 0:
            raise ValueError(f"ParallelCamera.pixel_mm = {self.pixel_mm!r}: expected a finite positive size in mm")


@dataclass(frozen=True)
class ConeView:
    """One fluoroscope (point source + flat intensifier), world millimetres."""

    source: np.ndarray           # (3,) mm, S
    intensifier_centre: np.ndarray  # (3,) mm, D (pixel ((W-1)/2, (H-1)/2))
    u: np.ndarray                # (3,) unit, image +x
    v: np.ndarray                # (3,) unit, image +y
    pitch_u: float               # mm / px
    pitch_v: float               # mm / px
    width: int                   # px
    height: int                  # px

    def __post_init__(self):
        for name in ("source", "intensifier_centre", "u", "v"):
            arr = _finite_array(getattr(self, name), f"ConeView.{name}", (3,))
            if arr.ndim != 1:
                raise ValueError(f"ConeView.{name} has shape {arr.shape}, expected (3,)")
            object.__setattr__(self, name, arr)
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"ConeView.{name} = {v!r}: expected a positive integer")
        for name in ("pitch_u", "pitch_v"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"ConeView.{name} = {v!r}: expected a finite positive pitch in mm")
        u, v = self.u, self.v
        if abs(u @ u - 1) > 1e-6 or abs(v @ v - 1) > 1e-6 or abs(u @ v) > 1e-6:
            raise ValueError(f"ConeView axes u={u.tolist()} and v={v.tolist()} must be orthonormal")
        sdd = float(self.normal @ (self.intensifier_centre - self.source))
        if abs(sdd) < 1e-6:
            raise ValueError(
                f"ConeView source {self.source.tolist()} lies on the intensifier plane: expected a "
                "positive source-intensifier distance")

    @property
    def normal(self) -> np.ndarray:
        """Unit intensifier normal u x v."""
        return np.cross(self.u, self.v)

    @property
    def source_intensifier_distance(self) -> float:
        """Perpendicular distance from S to the intensifier plane, mm."""
        return float(abs(self.normal @ (self.intensifier_centre - self.source)))

    @classmethod
    def looking_at(cls, source, target, *, distance_to_intensifier: float | None = None, up=(0.0, 0.0, 1.0),
                   pitch: float = 0.5, width: int = 512, height: int = 512,
                   distance_to_detector: float | None = None) -> "ConeView":
        """A view whose principal ray goes from ``source`` through ``target`` and meets an
        intensifier ``distance_to_intensifier`` mm from the source; image rows (+v) point away from
        ``up`` where possible."""
        if distance_to_detector is not None:  # the earlier spelling ("detector" is the network now)
            warnings.warn("ConeView.looking_at(distance_to_detector=...) is deprecated: use "
                          "distance_to_intensifier", DeprecationWarning, stacklevel=2)
            if distance_to_intensifier is None:
                distance_to_intensifier = distance_to_detector
        if distance_to_intensifier is None:
            raise TypeError("ConeView.looking_at needs distance_to_intensifier (mm from the source)")
        S = _finite_array(source, "source", (3,))
        T = _finite_array(target, "target", (3,))
        n = T - S
        if np.linalg.norm(n) < 1e-9:
            raise ValueError("source and target coincide: expected distinct points")
        n = n / np.linalg.norm(n)
        upv = _finite_array(up, "up", (3,))
        v = -(upv - (upv @ n) * n)
        if np.linalg.norm(v) < 1e-9:
            raise ValueError(f"up {upv.tolist()} is parallel to the viewing direction")
        v /= np.linalg.norm(v)
        u = np.cross(v, n)
        return cls(S, S + distance_to_intensifier * n, u, v, float(pitch), float(pitch), int(width), int(height))

    def packed(self) -> np.ndarray:
        """The C++ core's packed form, float64 [16]: S, D, u, v, pitch_u, pitch_v, W, H."""
        out = np.empty(PACKED_VIEW_SIZE)  # filled in place: every renderer call packs its view
        out[0:3], out[3:6], out[6:9], out[9:12] = self.source, self.intensifier_centre, self.u, self.v
        out[12:16] = self.pitch_u, self.pitch_v, self.width, self.height
        return out

    def pixel_to_intensifier_mm(self, xy) -> np.ndarray:
        """Pixel coordinates [..., 2] -> intensifier-plane coordinates [..., 2] mm along (u, v)
        relative to D."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] - (self.width - 1) / 2) * self.pitch_u,
                         (xy[..., 1] - (self.height - 1) / 2) * self.pitch_v], axis=-1)

    def pixel_to_world(self, xy) -> np.ndarray:
        """Pixel coordinates [..., 2] -> intensifier points [..., 3] in world mm."""
        d = self.pixel_to_intensifier_mm(xy)
        return self.intensifier_centre + d[..., :1] * self.u + d[..., 1:] * self.v


PACKED_VIEW_SIZE = 16  # ConeView.packed(): S, D, u, v, pitch_u, pitch_v, W, H


def stack_views(views, n: int | None = None) -> np.ndarray:
    """Packed views [n, 16] from one ConeView (repeated n times), a sequence of them, or views
    already packed (float [n, 16] as :meth:`ConeView.packed` lays them out: returned as they are;
    the core checks each view as it checks any)."""
    if isinstance(views, ConeView):
        one = views.packed()[None]
        return one if n is None or n == 1 else np.repeat(one, n, axis=0)
    if isinstance(views, np.ndarray) and views.dtype.kind == "f":
        if views.ndim != 2 or views.shape[1] != PACKED_VIEW_SIZE:
            raise ValueError(f"packed views have shape {views.shape}, expected (n, {PACKED_VIEW_SIZE})")
        if not np.all(np.isfinite(views)):
            raise ValueError("packed views hold a non-finite value")
        if n is not None and len(views) != n:
            raise ValueError(f"got {len(views)} views for {n} poses: expected one view per pose or a single view")
        return np.ascontiguousarray(views, dtype=np.float64)
    views = list(views)
    for i, v in enumerate(views):
        if not isinstance(v, ConeView):
            raise TypeError(f"views[{i}] is a {type(v).__name__}, expected ConeView")
    if n is not None and len(views) != n:
        raise ValueError(f"got {len(views)} views for {n} poses: expected one view per pose or a single view")
    return np.ascontiguousarray(np.stack([v.packed() for v in views]))


def system_centre(views) -> np.ndarray:
    """The paper's initial translation: mean of both sources and both intensifier centres."""
    views = list(views)
    pts = [v.source for v in views] + [v.intensifier_centre for v in views]
    return np.mean(pts, axis=0)


def beam_crossing(views) -> np.ndarray:
    """Where the principal rays (source -> intensifier centre) of the views pass closest to each
    other (least squares), mm: where a lab puts the joint, seen at the centre of every image.
    Raises for parallel principal rays, which do not cross."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for v in views:
        d = v.intensifier_centre - v.source
        d = d / np.linalg.norm(d)
        P = np.eye(3) - np.outer(d, d)   # projects onto the plane normal to the ray
        A += P
        b += P @ v.source
    if np.linalg.cond(A) > 1e8:
        raise ValueError("the views' principal rays are parallel: they have no crossing point")
    return np.linalg.solve(A, b)



def depth_reversed_poses(poses, views, centre_model) -> np.ndarray:
    """Each pose's depth-reversed twin [F, 6] (deg, mm): the bone turned 180 deg about the axis
    through its centre (``centre_model`` [3] mm, in the model frame) perpendicular to both
    views' rays to that centre. The turn reverses every ray's direction through the bone, so
    both views see nearly the mirror images of what they saw, and for a bone symmetric about a
    plane near that axis nearly the same images: a second optimum of an image similarity that
    both views share (a head seen by two views 112 deg apart: up to 0.72 against 0.93 at its
    pose in independent-renderer frames, enough to pass an absolute gate of 0.6). A row whose
    rays are parallel (no such axis) or a NaN row gives a NaN row."""
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 6:
        raise ValueError(f"poses have shape {p.shape}, expected (F, 6) (deg, mm)")
    views = list(views)
    if len(views) != 2:
        raise ValueError(f"got {len(views)} views: the depth-reversed twin needs two")
    c_model = _finite_array(centre_model, "centre_model", (3,))
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p).all(axis=1)
    if not ok.any():
        return out
    R = rotation_matrix(p[ok, :3])                              # [n, 3, 3]
    centre = R @ c_model + p[ok, 3:]                            # [n, 3] mm, world
    axis = np.cross(centre - views[0].source, centre - views[1].source)
    norm = np.linalg.norm(axis, axis=1, keepdims=True)          # [n, 1]
    usable = norm[:, 0] > 1e-9 * np.linalg.norm(centre - views[0].source, axis=1) ** 2
    a = axis / np.where(norm > 0, norm, 1.0)
    turn = 2.0 * a[:, :, None] * a[:, None, :] - np.eye(3)      # [n, 3, 3] 180 deg about a
    twin = np.concatenate([euler_from_matrix(turn @ R),
                           np.einsum("nij,nj->ni", turn, p[ok, 3:] - centre) + centre], axis=1)
    rows = np.flatnonzero(ok)
    out[rows[usable]] = twin[usable]
    return out
