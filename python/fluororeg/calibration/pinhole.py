"""Pinhole cameras ``K [R | t]`` and their equivalence with :class:`~fluororeg.core.geometry.ConeView`.

A pinhole maps a world point X (mm) to pixels by ``x ~ K (R X + t)`` with
``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels, the camera looking along +z of its
frame (positive depth in front), image x = column to the right, y = row downward, origin at
the centre of the top-left pixel: the OpenCV convention, and the convention of the project
(DESIGN.md). Converters for other conventions (MayaCam, DLT) live in
:mod:`fluororeg.calibration.formats`.

A cone view with source S, intensifier centre D, axes u, v (n = u x v), pitches (pu, pv) and
size W x H is the pinhole with

* ``R`` rows ``(u, v, n)``, ``t = -R S`` (the camera centre is the source),
* ``fx = d / pu``, ``fy = d / pv`` with ``d = n . (D - S)`` the source-intensifier distance,
* ``cx = (W - 1) / 2 - u . (D - S) / pu``, ``cy = (H - 1) / 2 - v . (D - S) / pv``,
* no skew.

Conversely a pinhole plus one pixel pitch ``pu`` (mm/px, which a pinhole does not hold:
only the product ``f * pitch`` is fixed) gives the view: ``d = fx * pu``, ``pv = d / fy``,
and D placed so that the principal point lands where ``cx, cy`` say. Views whose intensifier
normal ``u x v`` points from the intensifier back toward the source are mirror images and
have no pinhole with positive focal lengths; converting one raises ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fluororeg.core.geometry import ConeView

__all__ = ["PinholeCamera", "pinhole_from_view", "view_from_pinhole", "rq_decomposition",
           "decompose_projection"]


def _mat(value, name, shape):
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric, got {type(value).__name__}") from exc
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds a non-finite value: {a.tolist()}")
    return a


@dataclass(frozen=True)
class PinholeCamera:
    """``x ~ K (R X + t)``; K, R 3x3, t (3,) mm, image ``width x height`` px."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    def __post_init__(self):
        K = _mat(self.K, "K", (3, 3))
        R = _mat(self.R, "R", (3, 3))
        t = _mat(self.t, "t", (3,))
        if abs(K[2, 2]) < 1e-12 or np.any(np.abs(K[2, :2]) > 1e-9 * abs(K[2, 2])) or abs(K[1, 0]) > 1e-9 * abs(K[2, 2]):
            raise ValueError(f"K = {K.tolist()} is not upper triangular with K[2, 2] != 0")
        K = K / K[2, 2]
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K has focal lengths fx = {K[0, 0]}, fy = {K[1, 1]}: expected positive values")
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0:
            raise ValueError(f"R = {R.tolist()} is not a rotation (orthonormal, det +1)")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"PinholeCamera.{name} = {v!r}: expected a positive integer")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def P(self) -> np.ndarray:
        """3x4 projection matrix ``K [R | t]``."""
        return self.K @ np.hstack([self.R, self.t[:, None]])

    @property
    def centre(self) -> np.ndarray:
        """Camera centre (the X-ray source) in world mm: ``-R^T t``."""
        return -self.R.T @ self.t

    def project(self, points) -> np.ndarray:
        """World points [..., 3] mm -> pixels [..., 2] (NaN at zero depth)."""
        X = np.asarray(points, dtype=np.float64)
        xc = X @ self.R.T + self.t
        h = xc @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            return h[..., :2] / h[..., 2:3]

    def depth(self, points) -> np.ndarray:
        """Depth along the optical axis (positive in front of the camera), mm."""
        X = np.asarray(points, dtype=np.float64)
        return X @ self.R[2] + self.t[2]


def pinhole_from_view(view: ConeView) -> PinholeCamera:
    """The pinhole camera that projects exactly like ``view`` (see the module notes)."""
    if not isinstance(view, ConeView):
        raise TypeError(f"view is a {type(view).__name__}, expected ConeView")
    n = view.normal
    ds = view.intensifier_centre - view.source
    d = float(n @ ds)
    if d <= 0:
        raise ValueError(
            f"view is mirrored: its normal u x v = {n.tolist()} points from the detector toward "
            "the source, so no pinhole with positive focal lengths matches it; negate u or v")
    R = np.stack([view.u, view.v, n])
    t = -R @ view.source
    K = np.array([[d / view.pitch_u, 0.0, (view.width - 1) / 2 - (view.u @ ds) / view.pitch_u],
                  [0.0, d / view.pitch_v, (view.height - 1) / 2 - (view.v @ ds) / view.pitch_v],
                  [0.0, 0.0, 1.0]])
    return PinholeCamera(K, R, t, view.width, view.height)


def view_from_pinhole(camera: PinholeCamera, pitch_u: float, *, max_skew: float = 1e-6) -> ConeView:
    """The cone view of a pinhole, given the pixel pitch along image x (mm/px).

    The intensifier plane lands ``fx * pitch_u`` mm from the source; ``pitch_v = fx * pitch_u / fy``.
    A skew ``|K[0, 1]| > max_skew * fx`` cannot be represented (the intensifier axes are
    orthonormal) and raises ``ValueError``; smaller skew is dropped.
    """
    if not isinstance(camera, PinholeCamera):
        raise TypeError(f"camera is a {type(camera).__name__}, expected PinholeCamera")
    if not np.isfinite(pitch_u) or pitch_u <= 0:
        raise ValueError(f"pitch_u = {pitch_u!r}: expected a finite positive pixel pitch in mm")
    K, R = camera.K, camera.R
    fx, fy, s, cx, cy = K[0, 0], K[1, 1], K[0, 1], K[0, 2], K[1, 2]
    if abs(s) > max_skew * fx:
        raise ValueError(f"K has skew {s} (fx = {fx}): a cone view has orthogonal pixel axes; "
                         "refine the view or raise max_skew to drop it")
    u, v, n = R[0], R[1], R[2]
    S = camera.centre
    d = fx * pitch_u
    pitch_v = d / fy
    D = S + d * n + ((camera.width - 1) / 2 - cx) * pitch_u * u + ((camera.height - 1) / 2 - cy) * pitch_v * v
    return ConeView(S, D, u, v, float(pitch_u), float(pitch_v), camera.width, camera.height)


def rq_decomposition(M) -> tuple[np.ndarray, np.ndarray]:
    """M = Rup @ Q with Rup upper triangular (positive diagonal) and Q orthonormal."""
    M = _mat(M, "M", (3, 3))
    Pm = np.flipud(np.eye(3))
    q, r = np.linalg.qr((Pm @ M).T)
    Rup = Pm @ r.T @ Pm
    Q = Pm @ q.T
    sgn = np.diag(np.sign(np.where(np.diag(Rup) == 0, 1.0, np.diag(Rup))))
    return Rup @ sgn, sgn @ Q


def decompose_projection(P, width: int, height: int) -> PinholeCamera:
    """Split a 3x4 projection matrix (any scale or sign) into ``K [R | t]`` with positive
    focal lengths and ``det R = +1`` (points in front of the camera have positive depth when
    the sign of P is such; the caller chooses it, see :func:`~.resection.dlt_resection`)."""
    P = _mat(P, "P", (3, 4))
    M = P[:, :3]
    if abs(np.linalg.det(M)) < 1e-12 * np.abs(M).max() ** 3:
        raise ValueError("projection matrix has a singular left 3x3 block (a camera at infinity)")
    if np.linalg.det(M) < 0:
        P = -P
        M = P[:, :3]
    K, R = rq_decomposition(M)
    scale = K[2, 2]
    t = np.linalg.solve(K, P[:, 3])
    K = K / scale
    return PinholeCamera(K, R, t, width, height)
