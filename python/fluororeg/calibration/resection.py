"""Estimating a fluoroscope view from beads with known 3D positions.

* :func:`dlt_resection`: the linear (normalised) DLT from >= 6 non-coplanar 3D-2D
  correspondences, giving ``P = K [R | t]`` up to scale;
* :func:`~.pinhole.decompose_projection` splits it (RQ) and the pinhole becomes a
  :class:`~fluororeg.core.geometry.ConeView` given the pixel pitch (source = camera centre,
  intensifier plane ``f * pitch`` mm along the principal axis, principal point -> intensifier
  centre offset);
* :func:`refine_view` (C++/Ceres): 9-DOF refinement (source, intensifier centre, intensifier
  orientation; pitches fixed) minimising the reprojection error in pixels;
* :func:`estimate_source`: the paper's four-bead source alignment tool. With the intensifier
  plane (D, u, v, pitch) known in the world frame (for example from the plate mounted on
  the intensifier or from a previous full calibration), four beads (8 equations) determine
  the source position (3 unknowns) by optimisation; four beads cannot determine all 9
  parameters of a view;
* :func:`match_beads` and :func:`calibrate_view`: automatic correspondence. Matching needs a
  rough view (the nominal set-up, a MayaCam file or yesterday's calibration): the known
  beads are projected through it, the dominant image shift is found by voting over all
  bead pairs (so a rough view that is off by many bead spacings still works as long as the
  layout's shape is roughly right), the assignment is solved optimally (Hungarian), and
  view estimation and matching alternate until the matches stop changing. Without a rough
  view, pass correspondences directly to :func:`estimate_view`.

Units: mm; pixels with x = column, y = row, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from fluororeg import _core
from fluororeg.core.geometry import ConeView
from fluororeg.calibration.beads import BeadDetections, detect_beads, load_image
from fluororeg.calibration.pinhole import PinholeCamera, decompose_projection

__all__ = ["ViewEstimate", "ViewCalibration", "check_layout", "dlt_resection", "estimate_view", "refine_view", "estimate_source",
           "match_beads", "calibrate_view", "reprojection_residuals"]


def _points(a, name, dim) -> np.ndarray:
    try:
        p = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric [n, {dim}]") from exc
    if p.ndim != 2 or p.shape[1] != dim:
        raise ValueError(f"{name} has shape {p.shape}, expected (n, {dim})")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} holds non-finite values")
    return np.ascontiguousarray(p)


@dataclass(frozen=True)
class ViewEstimate:
    """An estimated view and its reprojection residuals (projected - observed) [n, 2] px."""

    view: ConeView
    residuals_px: np.ndarray
    rms_px: float
    max_px: float
    converged: bool = True
    initial_rms_px: float = float("nan")


def _estimate(view, residuals, converged=True, initial=float("nan")) -> ViewEstimate:
    err = np.linalg.norm(residuals, axis=1)
    return ViewEstimate(view, residuals, float(np.sqrt(np.mean(err ** 2))), float(err.max()),
                        bool(converged), float(initial))


def check_layout(points_world, *, min_points: int = 6, name: str = "bead layout") -> None:
    """Raise ValueError unless >= ``min_points`` points span 3D (not coplanar or collinear)."""
    X = _points(points_world, "points_world", 3)
    if len(X) < min_points:
        raise ValueError(f"{name} has {len(X)} beads: at least {min_points} are needed")
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    if s[0] <= 0 or s[1] / s[0] < 1e-3:
        raise ValueError(f"{name} is degenerate: the beads are collinear (singular values {s.round(6).tolist()})")
    if s[2] / s[0] < 1e-3:
        raise ValueError(f"{name} is degenerate: the beads are coplanar (thickness ratio {s[2] / s[0]:.2e}); "
                         "a linear resection needs beads off one plane")


def dlt_resection(points_world, pixels) -> np.ndarray:
    """3x4 projection matrix from >= 6 non-coplanar correspondences (Hartley-normalised
    DLT), scaled so that the beads have positive depth and ``|P[2, :3]| = 1``."""
    X = _points(points_world, "points_world", 3)
    x = _points(pixels, "pixels", 2)
    if len(X) != len(x):
        raise ValueError(f"got {len(X)} 3D points but {len(x)} pixel positions")
    check_layout(X)
    if np.linalg.svd(x - x.mean(axis=0), compute_uv=False)[1] < 1e-9 * max(np.ptp(x), 1.0):
        raise ValueError("the bead images are collinear: degenerate view of the layout")
    mX, mx = X.mean(axis=0), x.mean(axis=0)
    sX = np.sqrt(3) / np.mean(np.linalg.norm(X - mX, axis=1))
    sx = np.sqrt(2) / np.mean(np.linalg.norm(x - mx, axis=1))
    T3 = np.diag([sX, sX, sX, 1.0])
    T3[:3, 3] = -sX * mX
    T2 = np.diag([sx, sx, 1.0])
    T2[:2, 2] = -sx * mx
    Xn = np.c_[X, np.ones(len(X))] @ T3.T
    xn = np.c_[x, np.ones(len(x))] @ T2.T
    n = len(X)
    A = np.zeros((2 * n, 12))
    A[0::2, 0:4] = Xn
    A[0::2, 8:12] = -xn[:, :1] * Xn
    A[1::2, 4:8] = Xn
    A[1::2, 8:12] = -xn[:, 1:2] * Xn
    _, s, Vt = np.linalg.svd(A)
    if s[-2] < 1e-10 * s[0]:
        raise ValueError("degenerate bead layout: the linear resection has no unique solution")
    P = np.linalg.solve(T2, Vt[-1].reshape(3, 4)) @ T3
    P /= np.linalg.norm(P[2, :3])
    depth = np.c_[X, np.ones(n)] @ P[2]
    if np.sum(depth > 0) < n / 2:
        P = -P
    if np.linalg.det(P[:, :3]) < 0:
        raise ValueError("the resection gives a mirrored camera (beads behind the camera for a "
                         "right-handed frame): check that image x is the column and y the row")
    return P


def _view_from_P(P, width, height, pitch_u, pitch_v) -> ConeView:
    cam: PinholeCamera = decompose_projection(P, width, height)
    K, R = cam.K, cam.R
    d = 0.5 * (K[0, 0] * pitch_u + K[1, 1] * pitch_v)
    S = cam.centre
    D = (S + d * R[2] + ((width - 1) / 2 - K[0, 2]) * pitch_u * R[0]
         + ((height - 1) / 2 - K[1, 2]) * pitch_v * R[1])
    return ConeView(S, D, R[0], R[1], float(pitch_u), float(pitch_v), int(width), int(height))


def reprojection_residuals(view: ConeView, points_world, pixels) -> np.ndarray:
    """Projected minus observed pixel positions [n, 2] (NaN behind the source)."""
    X = _points(points_world, "points_world", 3)
    x = _points(pixels, "pixels", 2)
    if len(X) != len(x):
        raise ValueError(f"got {len(X)} 3D points but {len(x)} pixel positions")
    return np.asarray(_core.reprojection_residuals(view.packed(), X, x))


def refine_view(view: ConeView, points_world, pixels, *, source: bool = True,
                intensifier_centre: bool = True, orientation: bool = True,
                huber_px: float = 0.0, max_iterations: int = 200) -> ViewEstimate:
    """Ceres refinement of ``view`` (pitches and image size fixed): the free blocks move to
    minimise the reprojection error in pixels. Raises ValueError for too few beads for the
    free parameters or a bead behind the source."""
    if not isinstance(view, ConeView):
        raise TypeError(f"view is a {type(view).__name__}, expected ConeView")
    X = _points(points_world, "points_world", 3)
    x = _points(pixels, "pixels", 2)
    if len(X) != len(x):
        raise ValueError(f"got {len(X)} 3D points but {len(x)} pixel positions")
    r = _core.refine_cone_view(view.packed(), X, x, source, intensifier_centre, orientation,
                               int(max_iterations), float(huber_px))
    p = np.asarray(r["view"])
    u = p[6:9] / np.linalg.norm(p[6:9])
    v = p[9:12] - (p[9:12] @ u) * u
    v /= np.linalg.norm(v)
    out = ConeView(p[0:3], p[3:6], u, v, view.pitch_u, view.pitch_v, view.width, view.height)
    return _estimate(out, np.asarray(r["residuals_px"]), r["converged"], r["initial_rms_px"])


def estimate_view(points_world, pixels, width: int, height: int, pitch_u: float,
                  pitch_v: float | None = None, *, initial: ConeView | None = None,
                  huber_px: float = 0.0) -> ViewEstimate:
    """A full view from correspondences: linear DLT resection (>= 6 non-coplanar beads)
    then Ceres refinement. With fewer beads or a planar layout, ``initial`` (a rough view)
    is refined instead. ``pitch_u``/``pitch_v`` (mm/px, default square pixels) fix the scale
    of the detector (only ``f * pitch`` is observable)."""
    pitch_v = pitch_u if pitch_v is None else pitch_v
    for name, val in (("pitch_u", pitch_u), ("pitch_v", pitch_v)):
        if not np.isfinite(val) or val <= 0:
            raise ValueError(f"{name} = {val!r}: expected a finite positive pixel pitch in mm")
    X = _points(points_world, "points_world", 3)
    x = _points(pixels, "pixels", 2)
    if initial is None:
        P = dlt_resection(X, x)
        start = _view_from_P(P, width, height, pitch_u, pitch_v)
    else:
        if len(X) < 5:
            raise ValueError(f"{len(X)} beads cannot fix the 9 parameters of a view: at least 5 are needed "
                             "(use estimate_source for 4 beads and a known intensifier plane)")
        start = ConeView(initial.source, initial.intensifier_centre, initial.u, initial.v,
                         float(pitch_u), float(pitch_v), int(width), int(height))
    return refine_view(start, X, x, huber_px=huber_px)


def estimate_source(view: ConeView, points_world, pixels) -> ViewEstimate:
    """The four-bead source alignment: keep the intensifier plane of ``view`` (centre, axes,
    pitch) and move only its source so that >= 2 beads (4 in the paper's tool) project onto
    ``pixels``. ``view.source`` is the starting guess (the nominal source position)."""
    X = _points(points_world, "points_world", 3)
    if len(X) < 2:
        raise ValueError(f"{len(X)} beads cannot fix a source position: at least 2 (4 recommended)")
    c = X.mean(axis=0)
    if np.linalg.svd(X - c, compute_uv=False)[0] < 1e-6:
        raise ValueError("the source alignment beads coincide: degenerate layout")
    return refine_view(view, X, pixels, source=True, intensifier_centre=False, orientation=False)


def match_beads(detected_xy, points_world, view_guess: ConeView, *, gate_px: float | None = None,
                align_shift: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Assign detected bead centres [k, 2] to known 3D beads [m, 3] through a rough view.
    Returns ``(world_index, detected_index)`` of the matches. ``gate_px`` (default: 0.35 x
    the smallest distance between projected beads) bounds a match's distance after the
    dominant image shift (found by voting when ``align_shift``) is removed."""
    d = _points(detected_xy, "detected_xy", 2)
    X = _points(points_world, "points_world", 3)
    from fluororeg.core.render import project_cone
    proj = np.asarray(project_cone(X, view_guess, np.zeros(6))[0]).reshape(-1, 2)
    if not np.all(np.isfinite(proj)):
        raise ValueError("some known beads lie behind the source of the rough view")
    if len(d) == 0:
        raise ValueError("no beads detected")
    sep = cKDTree(proj).query(proj, k=2)[0][:, 1].min() if len(proj) > 1 else 50.0
    gate = 0.35 * sep if gate_px is None else float(gate_px)
    shift = np.zeros(2)
    if align_shift:
        tree = cKDTree(d)
        best = (-1, np.inf)
        for i in range(len(proj)):
            for j in range(len(d)):
                s = d[j] - proj[i]
                dist, _ = tree.query(proj + s)
                ok = dist < gate
                score = (int(ok.sum()), -float(np.sum(dist[ok])))
                if score > (best[0], -best[1]):
                    best = (score[0], -score[1])
                    shift = s
    cost = np.linalg.norm(proj[:, None, :] + shift - d[None, :, :], axis=2)
    big = 1e6
    ri, ci = linear_sum_assignment(np.where(cost < gate, cost, big))
    ok = cost[ri, ci] < gate
    return ri[ok], ci[ok]


@dataclass(frozen=True)
class ViewCalibration:
    """:func:`calibrate_view` result: the estimate, the detections and the matches."""

    estimate: ViewEstimate
    detections: BeadDetections
    world_index: np.ndarray
    detected_index: np.ndarray

    @property
    def view(self) -> ConeView:
        return self.estimate.view


def calibrate_view(image, points_world, view_guess: ConeView, *, pitch_u: float | None = None,
                   pitch_v: float | None = None, radius_px: float = 4.0, polarity: str = "dark",
                   fov="auto", min_beads: int = 6, distortion=None, iterations: int = 5) -> ViewCalibration:
    """One view from an image of a calibration object with known beads ``points_world``
    [m, 3] mm: detect the beads (after undistorting their centres with ``distortion``, a
    :class:`~.distortion.DistortionModel`, when given), match them through ``view_guess``,
    estimate the view (DLT + Ceres; refinement of the guess when the layout is planar) and
    re-match until stable. The pitch defaults to the guess's."""
    img = load_image(image)
    X = _points(points_world, "points_world", 3)
    H, W = img.shape
    if (W, H) != (view_guess.width, view_guess.height):
        raise ValueError(f"the bead image is {W} x {H} px but the rough view is {view_guess.width} x "
                         f"{view_guess.height} px: give the bead image at the size of the recording's frames (the "
                         "same camera at the same resolution)")
    if distortion is not None and (W, H) != (distortion.width, distortion.height):
        raise ValueError(f"the bead image is {W} x {H} px but the distortion model was fitted on "
                         f"{distortion.width} x {distortion.height} px images")
    pu = view_guess.pitch_u if pitch_u is None else float(pitch_u)
    pv = (view_guess.pitch_v if pitch_u is None else pu) if pitch_v is None else float(pitch_v)
    det = detect_beads(img, radius_px=radius_px, polarity=polarity, fov=fov)
    xy = det.xy if distortion is None else distortion.undistort_points(det.xy)
    if len(xy) < min_beads:
        raise ValueError(f"only {len(xy)} beads found in the image: at least {min_beads} are needed "
                         f"(check radius_px = {radius_px} and polarity = {polarity!r})")
    guess = view_guess
    wi, di = match_beads(xy, X, guess)
    est = None
    for it in range(iterations):
        if len(wi) < min_beads:
            raise ValueError(f"only {len(wi)} beads matched the calibration object: at least {min_beads} "
                             "are needed (is the rough view close enough?)")
        try:
            check_layout(X[wi])
            planar = False
        except ValueError:
            planar = True
        est = estimate_view(X[wi], xy[di], W, H, pu, pv, initial=guess if planar else None)
        wi2, di2 = match_beads(xy, X, est.view, align_shift=False)
        if len(wi2) == len(wi) and np.array_equal(np.sort(wi2), np.sort(wi)) and np.array_equal(
                di2[np.argsort(wi2)], di[np.argsort(wi)]):
            break
        guess, wi, di = est.view, wi2, di2
    return ViewCalibration(est, det, wi, di)
