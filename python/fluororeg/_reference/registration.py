"""SciPy reference of the point-based registration (Eq. 2, Table 1): slow, obviously correct.

Same objective, visibility rule and four-case mirror strategy as the C++ engine
(:mod:`fluororeg.core.registration`), written directly in NumPy and minimised by
``scipy.optimize.least_squares`` over (Euler angles, translation). Every objective is written
as the squared norm of a residual vector ``r`` (``objective = sum(r**2)``):

* least squares:        r = sqrt(w) e                                 (per landmark and view)
* least squares + loss: r = sqrt(w) e * sqrt(rho(s) / s), s = w |e|^2 (so |r|^2 = rho(s))
* Frobenius (Eq. 2):    r_k = sqrt(w) e_k / sqrt(|sqrt(w) e_k|_F)     (so |r_k|^2 = |.|_F)

Also the batch logic that the C++ core's ``RegisterBatch`` / ``CheckViewAgreement`` took over
from Python (the previous-frame start and the check of the two views' agreement), kept as
written before the move: :func:`register_batch_reference` and
:func:`check_view_agreement_reference`. They call the engine for each solve (the solver itself
is checked against :func:`register_frame_reference`), so the tests compare the batch logic.

Also the triangulated starts in NumPy (:func:`triangulated_poses_reference`, vectorised over the
frames), the reference of the core's ``TriangulatedPoses``, and a synthetic dual-fluoroscope
scene like the paper's for tests and benchmarks.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from fluororeg.core.geometry import ConeView, pose_from_matrix, system_centre

STATUSES = ("ok", "too_few_landmarks", "failed")  # of one solve (register_frame_reference)
REGISTERED_STATUSES = ("ok", "one_view")
GATE_STATUSES = ("large_residual", "few_inliers")
INLIER_FACTOR = 2.0  # a landmark is an inlier of the gate within this many times max_residual_mm
# A view left out of a solve keeps this share of its weights.
LEFT_OUT_WEIGHT = 1e-6


def rotation(theta_rad) -> np.ndarray:
    """R = Rx Ry Rz (extrinsic z-y-x) from theta = (x, y, z) radians, via SciPy."""
    tx, ty, tz = theta_rad
    return Rotation.from_euler("zyx", [tz, ty, tx]).as_matrix()


def project_mm(view: ConeView, X_world: np.ndarray) -> np.ndarray:
    """[..., 3] world points -> [..., 2] mm on the intensifier along (u, v) relative to D."""
    n = np.cross(view.u, view.v)
    d = X_world - view.source
    t = (n @ (view.intensifier_centre - view.source)) / (d @ n)
    P = view.source + t[..., None] * d
    return np.stack([(P - view.intensifier_centre) @ view.u, (P - view.intensifier_centre) @ view.v], -1)


def project_px(view: ConeView, X_world: np.ndarray) -> np.ndarray:
    mm = project_mm(view, X_world)
    return np.stack([mm[..., 0] / view.pitch_u + (view.width - 1) / 2,
                     mm[..., 1] / view.pitch_v + (view.height - 1) / 2], -1)


def _rho(s, loss, a):
    if loss is None:
        return s
    if loss == "huber":
        return np.where(s <= a * a, s, 2 * a * np.sqrt(s) - a * a)
    if loss == "cauchy":
        return a * a * np.log1p(s / (a * a))
    raise ValueError(f"unknown loss {loss!r}")


def _residuals(x, lm, views, targets, sqrt_w, mode, loss, a):
    R = rotation(x[:3])
    Xw = lm @ R.T + x[3:]
    out = []
    for k in range(2):
        e = (project_mm(views[k], Xw) - targets[k]) * sqrt_w[k][:, None]
        if mode == "frobenius":
            norm = np.sqrt(np.sum(e * e))
            out.append(e.ravel() / np.sqrt(max(norm, 1e-300)))
        elif loss is None:
            out.append(e.ravel())
        else:
            s = np.sum(e * e, axis=1)
            f = np.where(s > 1e-300, np.sqrt(_rho(s, loss, a) / np.maximum(s, 1e-300)), 1.0)
            out.append((e * f[:, None]).ravel())
    return np.concatenate(out)


def register_frame_reference(landmarks, views, detections, *, weights=None, pairs=None,
                             mode="least_squares", loss=None, loss_scale_mm=1.0, init_pose=None,
                             mirror=True, min_visible=4) -> dict:
    """One frame. landmarks [N, 3] mm; views (view 1, view 2); detections [2, N, 2] px (NaN = not
    detected); weights [2, N]; pairs [(i, j)]; init_pose [6] deg, mm. Returns a dict with pose
    (deg, mm), objective, mirror_case, n_vis, status, case_objective."""
    lm = np.asarray(landmarks, float)
    det = np.asarray(detections, float)
    n = lm.shape[0]
    w = np.ones((2, n)) if weights is None else np.asarray(weights, float)
    partner = np.arange(n)
    for i, j in (pairs or []):
        partner[i], partner[j] = j, i
    if init_pose is None:
        x0 = np.concatenate([np.zeros(3), system_centre(views)])
    else:
        x0 = np.asarray(init_pose, float).copy()
        x0[:3] = np.deg2rad(x0[:3])
    n_cases = 4 if (mirror and pairs) else 1
    best = None
    case_objective = np.full(4, np.nan)
    max_vis = 0
    for c in range(n_cases):
        flips = (bool(c & 1), bool(c & 2))
        src = [partner if flips[k] else np.arange(n) for k in range(2)]
        dk = [det[k][src[k]] for k in range(2)]
        wk = [w[k][src[k]] for k in range(2)]
        vis = np.ones(n, bool)
        for k in range(2):
            W, H = views[k].width, views[k].height
            x, y = dk[k][:, 0], dk[k][:, 1]
            with np.errstate(invalid="ignore"):
                vis &= (np.isfinite(x) & (x >= -0.5) & (x < W - 0.5) & (y >= -0.5)
                        & (y < H - 0.5) & (wk[k] > 0))
        n_vis = int(vis.sum())
        max_vis = max(max_vis, n_vis)
        if n_vis < min_visible:
            continue
        targets = [views[k].pixel_to_intensifier_mm(dk[k][vis]) for k in range(2)]
        sqrt_w = [np.sqrt(wk[k][vis]) for k in range(2)]
        args = (lm[vis], views, targets, sqrt_w, mode, loss, loss_scale_mm)
        sol = least_squares(_residuals, x0, args=args, method="trf", x_scale="jac",
                            xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=2000)
        obj = float(np.sum(_residuals(sol.x, *args) ** 2))
        case_objective[c] = obj
        if best is None or obj < best[1]:
            best = (sol.x, obj, c, n_vis)
    if best is None:
        return dict(pose=np.full(6, np.nan), objective=np.nan, mirror_case=-1, n_vis=max_vis,
                    status="too_few_landmarks", case_objective=case_objective)
    x, obj, c, n_vis = best
    R = rotation(x[:3])
    # Report the Euler angles of the rotation (as the engine does).
    tz, ty, tx = Rotation.from_matrix(R).as_euler("zyx")
    pose = np.concatenate([np.rad2deg([tx, ty, tz]), x[3:]])
    return dict(pose=pose, objective=obj, mirror_case=c, n_vis=n_vis, status="ok",
                case_objective=case_objective)


# ---- the quality gate (reference of the core's rms_bone_mm, inliers and ApplyQualityGate) --

def bone_residuals_reference(landmarks, views, detections, pose, mirror_case, *, weights=None, pairs=None,
                             max_residual_mm=4.0):
    """Per view, the RMS residual at the bone (mm) and the inliers of one frame's pose [6] (deg,
    mm) with its mirror case: each landmark's intensifier-plane residual times its source-to-landmark
    depth over the source-to-intensifier distance (1 / magnification), over the landmarks detected
    in both views in that case; inliers: within INLIER_FACTOR * max_residual_mm, the RMS over
    them. Returns (rms_bone_mm [2], inliers [2])."""
    lm = np.asarray(landmarks, float)
    det = np.asarray(detections, float)
    n = lm.shape[0]
    w = np.where(np.isfinite(det[..., 0]), 1.0, 0.0) if weights is None else np.asarray(weights, float)
    partner = np.arange(n)
    for i, j in (pairs or []):
        partner[i], partner[j] = j, i
    flips = (bool(mirror_case & 1), bool(mirror_case & 2))
    src = [partner if flips[k] else np.arange(n) for k in range(2)]
    dk = [det[k][src[k]] for k in range(2)]
    vis = np.ones(n, bool)
    for k in range(2):
        x, y = dk[k][:, 0], dk[k][:, 1]
        with np.errstate(invalid="ignore"):
            vis &= (np.isfinite(x) & (x >= -0.5) & (x < views[k].width - 0.5) & (y >= -0.5)
                    & (y < views[k].height - 0.5) & (w[k][src[k]] > 0))
    p = np.asarray(pose, float)
    Xw = lm[vis] @ rotation(np.deg2rad(p[:3])).T + p[3:]
    rms, inliers = np.zeros(2), np.zeros(2, int)
    for k, view in enumerate(views):
        e_det = np.linalg.norm(project_mm(view, Xw) - view.pixel_to_intensifier_mm(dk[k][vis]), axis=1)
        depth = (Xw - view.source) @ view.normal
        sdd = view.normal @ (view.intensifier_centre - view.source)
        e = e_det * np.abs(depth / sdd)  # mm at the bone
        keep = e <= INLIER_FACTOR * max_residual_mm if max_residual_mm else np.ones(len(e), bool)
        inliers[k] = int(keep.sum())
        rms[k] = np.sqrt(np.mean(e[keep] ** 2)) if keep.any() else np.nan
    return rms, inliers


def quality_gate_reference(status, rms_bone_mm, inliers, n_vis, options):
    """The gate's verdict on one frame: 'large_residual' when a view's RMS at the bone exceeds
    options.max_residual_mm, else 'few_inliers' when a view has fewer than max(min_inliers_per_view,
    ceil(min_inlier_fraction n_vis)) inliers, else ``status``; only registered frames are gated."""
    if options.max_residual_mm is None or status not in REGISTERED_STATUSES:
        return status
    if not np.all(np.asarray(rms_bone_mm) <= options.max_residual_mm):  # NaN (no inlier) fails too
        return "large_residual"
    needed = max(options.min_inliers_per_view, int(np.ceil(options.min_inlier_fraction * n_vis - 1e-9)))
    if np.any(np.asarray(inliers) < needed):
        return "few_inliers"
    return status


# ---- the batch logic (reference of fluororeg::RegisterBatch and CheckViewAgreement) -------

def _stack(results):
    from fluororeg.core.registration import BatchResult

    return BatchResult.stack(results)


def check_view_agreement_reference(landmarks, views, detections, batch, *, weights=None, pairs=None,
                                   options=None, outlier_ratio=4.0, joint_ratio=2.5, fit_ratio=1.5,
                                   min_frames=5):
    """The check of the two views' agreement as Python did it (see fluororeg.core.registration's
    docstring): detections [F, 2, N, 2] px, weights [F, 2, N] or None, batch a BatchResult
    (deg, mm); ``options`` (RegistrationOptions) for the re-solves. Returns a BatchResult."""
    import dataclasses

    from fluororeg.core.registration import RegistrationOptions

    options = RegistrationOptions() if options is None else options
    det = np.asarray(detections, float)
    w = np.where(np.isfinite(det[..., 0]), 1.0, 0.0) if weights is None else np.array(weights, dtype=float)
    ok = np.isin(batch.status, REGISTERED_STATUSES)
    gated = np.isin(batch.status, GATE_STATUSES)  # failed the absolute gate: maybe one view fits alone
    if ok.sum() < max(1, int(min_frames)):
        return batch
    typical = np.maximum(np.median(batch.rms_mm[ok], axis=0), 1e-3)  # [2] mm
    ratio = batch.rms_mm / typical
    worst, least = np.fmax(ratio[:, 0], ratio[:, 1]), np.fmin(ratio[:, 0], ratio[:, 1])
    suspect = np.flatnonzero(gated | (ok & ((worst > outlier_ratio) | (least > joint_ratio))))
    if suspect.size == 0:
        return batch
    pairs_kw = dict(pairs=pairs)
    alone = []
    for k in range(2):
        wk = w[suspect].copy()
        wk[:, 1 - k] *= LEFT_OUT_WEIGHT
        alone.append(_solve_pairs(landmarks, views, det[suspect], wk, None, options, **pairs_kw))
    own = np.stack([alone[k].rms_mm[:, k] / typical[k] for k in range(2)], axis=1)  # [S, 2]
    own = np.where(np.stack([alone[k].ok for k in range(2)], axis=1), own, np.inf)
    best = np.argmin(own, axis=1)
    best_own = own[np.arange(len(suspect)), best]
    other_own = own[np.arange(len(suspect)), 1 - best]
    resolved = (best_own <= fit_ratio) & (other_own >= 2.0 * best_own)
    start = np.stack([alone[b].poses[j] for j, b in enumerate(best)])
    refined = _solve_pairs(landmarks, views, det[suspect], w[suspect], np.nan_to_num(start), options, **pairs_kw)
    keep_refined = refined.ok & (refined.rms_mm[np.arange(len(suspect)), best] / typical[best] <= fit_ratio)
    chosen = []
    for j, frame in enumerate(suspect):
        if resolved[j]:
            r = dataclasses.replace((refined if keep_refined[j] else alone[best[j]])[j], status="one_view")
            rms, inl = bone_residuals_reference(landmarks, views, det[frame], r.pose, r.mirror_case,
                                                weights=w[frame], pairs=pairs, max_residual_mm=options.max_residual_mm)
            r = dataclasses.replace(r, status=quality_gate_reference("one_view", rms, inl, r.n_vis, options))
            chosen.append(r if (r.ok or not gated[frame]) else batch[int(frame)])
        elif gated[frame]:  # stays gated, its pose on record
            chosen.append(batch[int(frame)])
        else:  # the two-view numbers stay on record, the pose does not
            chosen.append(dataclasses.replace(batch[int(frame)], status="views_disagree", pose=np.full(6, np.nan),
                                              matrix=np.full((4, 4), np.nan)))
    return batch.with_frames(suspect, _stack(chosen))


def _solve_pairs(landmarks, views, det, weights, init_poses, options, *, pairs):
    from fluororeg.core.registration import register_frames

    opts = options.replace(view_outlier_ratio=None, init="given" if init_poses is not None else "paper")
    return register_frames(landmarks, views, det, weights=weights, pairs=pairs, init_poses=init_poses, options=opts)


def register_batch_reference(landmarks, views, detections, *, weights=None, pairs=None, options=None):
    """The registration of a recording as Python's pipeline did it: ``options.init`` 'paper'
    (one batch call) or 'previous' (a loop over the frames, each starting from the last
    registered pose, falling back to the paper's start), then, when
    ``options.view_outlier_ratio`` is set, :func:`check_view_agreement_reference` with
    ``joint_ratio = options.view_joint_ratio``, ``fit_ratio``, ``min_frames`` alike.
    detections [F, 2, N, 2] px; weights [F, 2, N] or None. Returns a BatchResult (deg, mm)."""
    from fluororeg.core.registration import RegistrationOptions, register_frame

    options = RegistrationOptions() if options is None else options
    det = np.asarray(detections, float)
    if options.init == "paper":
        batch = _solve_pairs(landmarks, views, det, weights, None, options, pairs=pairs)
    elif options.init == "previous":
        single = options.replace(view_outlier_ratio=None, init="paper")
        results, previous = [], None
        for i in range(det.shape[0]):
            w = None if weights is None else weights[i]
            r = register_frame(landmarks, views, det[i], weights=w, pairs=pairs, init_pose=previous, options=single)
            if not r.ok and previous is not None:  # a bad start: fall back to the paper's
                fresh = register_frame(landmarks, views, det[i], weights=w, pairs=pairs, options=single)
                if fresh.ok or not np.isfinite(r.pose[0]):  # a gated solve stays unless the fresh one passes
                    r = fresh
            previous = r.pose if r.ok else previous
            results.append(r)
        batch = _stack(results)
    else:
        raise ValueError(f"init {options.init!r}: the reference covers 'paper' and 'previous'")
    if options.view_outlier_ratio is None:
        return batch
    return check_view_agreement_reference(landmarks, views, det, batch, weights=weights, pairs=pairs,
                                          options=options, outlier_ratio=options.view_outlier_ratio,
                                          joint_ratio=options.view_joint_ratio, fit_ratio=options.view_fit_ratio,
                                          min_frames=options.view_min_frames)


# ---- synthetic scene -----------------------------------------------------------------------


def triangulated_poses_reference(landmarks, views, detections, mirror=None, *, min_points: int = 4) -> np.ndarray:
    """NumPy reference of the core's ``TriangulatedPoses``
    (:func:`fluororeg.core.registration.triangulated_poses`), vectorised over the frames: per
    frame and labelling, the midpoints of the two views' closest ray points, then the rigid fit
    (Kabsch) with the lowest RMS. Poses [F, 6] (deg, mm), NaN rows where fewer than
    ``min_points`` landmarks are seen in both views."""
    lm = np.asarray(landmarks, dtype=np.float64)
    views = list(views)
    if len(views) != 2:
        raise ValueError(f"got {len(views)} views: expected two ConeViews")
    det = np.asarray(detections, dtype=np.float64)
    N = len(lm)
    if det.ndim != 4 or det.shape[1:] != (2, N, 2):
        raise ValueError(f"detections have shape {det.shape}: expected (F, 2, {N}, 2)")
    perm = np.arange(N) if mirror is None else np.asarray(mirror, dtype=np.int64)
    if perm.shape != (N,) or sorted(perm.tolist()) != list(range(N)):
        raise ValueError(f"mirror must be a permutation of the {N} landmarks, got {mirror!r}")
    src = [np.asarray(v.source, np.float64) for v in views]
    rays = [v.pixel_to_world(det[:, k]) - src[k] for k, v in enumerate(views)]  # [F, N, 3] each
    F = len(det)
    cases = [(np.arange(N), np.arange(N))] if mirror is None else \
        [(np.arange(N), np.arange(N)), (np.arange(N), perm), (perm, np.arange(N)), (perm, perm)]
    best_rms, best_M = np.full(F, np.inf), np.zeros((F, 4, 4))
    w = src[0] - src[1]
    for a, b in cases:  # view 1 labels a, view 2 labels b: landmark n seen as a[n] and b[n]
        d1, d2 = rays[0][:, a], rays[1][:, b]                                         # [F, N, 3]
        # closest points s1 + t1 d1 and s2 + t2 d2 of the two rays, for every frame at once
        aa, bb, cc = (d1 * d1).sum(-1), (d1 * d2).sum(-1), (d2 * d2).sum(-1)           # [F, N]
        dd, ee = (d1 * w).sum(-1), (d2 * w).sum(-1)
        den = aa * cc - bb * bb
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = np.isfinite(den) & (den > 1e-12 * aa * cc)                            # [F, N] seen in both, not parallel
            t1 = np.where(ok, (bb * ee - cc * dd) / den, 0.0)
            t2 = np.where(ok, (aa * ee - bb * dd) / den, 0.0)
        X = np.where(ok[..., None], 0.5 * (src[0] + t1[..., None] * d1 + src[1] + t2[..., None] * d2), 0.0)
        m = ok.astype(np.float64)                                                      # [F, N]
        n = np.maximum(m.sum(1), 1.0)
        pc = (m @ lm) / n[:, None]                                                     # [F, 3] model mm
        xc = (m[..., None] * X).sum(1) / n[:, None]                                    # [F, 3] world mm
        Pm = (lm[None] - pc[:, None]) * m[..., None]
        U, _, Vt = np.linalg.svd(np.einsum("fni,fnj->fij", Pm, X - xc[:, None]))      # Kabsch, per frame
        V, Ut = np.swapaxes(Vt, 1, 2), np.swapaxes(U, 1, 2)
        D = np.ones((F, 3))
        D[:, 2] = np.sign(np.linalg.det(V @ Ut))
        R = V @ (D[..., None] * Ut)                                                    # [F, 3, 3]
        r = np.einsum("fij,fnj->fni", R, lm[None] - pc[:, None]) + xc[:, None] - X
        rms = np.sqrt((m * (r ** 2).sum(-1)).sum(1) / n)
        better = (m.sum(1) >= min_points) & (rms < best_rms)
        best_rms[better] = rms[better]
        best_M[better, :3, :3] = R[better]
        best_M[better, :3, 3] = xc[better] - np.einsum("fij,fj->fi", R[better], pc[better])
        best_M[better, 3, 3] = 1.0
    out = np.full((F, 6), np.nan)
    found = np.isfinite(best_rms)
    if found.any():
        out[found] = pose_from_matrix(best_M[found])
    return out


def make_view(iso, azimuth_deg, *, source_to_iso=600.0, iso_to_intensifier=500.0, pitch=0.6,
              size=512) -> ConeView:
    """A fluoroscope looking horizontally along `azimuth_deg` at `iso`; image rows down (-z)."""
    a = np.deg2rad(azimuth_deg)
    d = np.array([np.cos(a), np.sin(a), 0.0])
    v = np.array([0.0, 0.0, -1.0])
    u = np.cross(v, d)
    iso = np.asarray(iso, float)
    return ConeView(iso - source_to_iso * d, iso + iso_to_intensifier * d, u, v, pitch, pitch,
                    size, size)


class SyntheticScene:
    """Dual fluoroscopes 100 degrees apart (sources 1.1 m from the intensifiers, world origin
    at the view 1 intensifier centre, as the paper at F1), 33 skull-like landmarks (+-70 mm) with 13
    symmetric pairs (mirrored about the model's x = 0 plane, 1 mm asymmetry) and 7 midline
    landmarks (indices 26..32). Images 512 x 512 px of `pitch` mm."""

    def __init__(self, seed: int = 0, pitch: float = 0.6):
        rng = np.random.default_rng(seed)
        f1 = make_view(np.zeros(3), -50.0, pitch=pitch)
        iso = -f1.intensifier_centre
        self.views = (make_view(iso, -50.0, pitch=pitch), make_view(iso, 50.0, pitch=pitch))
        left = np.column_stack([rng.uniform(15, 70, 13), rng.uniform(-70, 70, (13, 2))])
        right = left * [-1, 1, 1] + rng.normal(0, 1.0, (13, 3))
        mid = np.column_stack([rng.normal(0, 2.0, 7), rng.uniform(-70, 70, (7, 2))])
        self.landmarks = np.vstack([left, right, mid])
        self.pairs = [(i, 13 + i) for i in range(13)]
        self.centre = system_centre(self.views)

    @property
    def n(self) -> int:
        return self.landmarks.shape[0]

    def random_poses(self, count: int, rng, max_deg: float = 30.0, max_mm: float = 30.0):
        """[count, 6] poses (deg, mm) within +-max_deg and system centre +-max_mm."""
        p = np.empty((count, 6))
        p[:, :3] = rng.uniform(-max_deg, max_deg, (count, 3))
        p[:, 3:] = self.centre + rng.uniform(-max_mm, max_mm, (count, 3))
        return p

    def detect(self, pose, noise_px: float = 0.0, rng=None) -> np.ndarray:
        """[2, N, 2] px detections of the landmarks under pose (deg, mm), NaN outside the
        image, with Gaussian noise of noise_px."""
        pose = np.asarray(pose, float)
        Xw = self.landmarks @ rotation(np.deg2rad(pose[:3])).T + pose[3:]
        out = np.full((2, self.n, 2), np.nan)
        for k, view in enumerate(self.views):
            xy = project_px(view, Xw)
            if noise_px > 0:
                xy = xy + rng.normal(0, noise_px, xy.shape)
            inside = ((xy[:, 0] >= -0.5) & (xy[:, 0] < view.width - 0.5)
                      & (xy[:, 1] >= -0.5) & (xy[:, 1] < view.height - 0.5))
            out[k, inside] = xy[inside]
        return out

    def mirror(self, detections, view: int) -> np.ndarray:
        """Swap the detections of every symmetric pair in one view (0: view 1, 1: view 2)."""
        d = np.array(detections, float, copy=True)
        for i, j in self.pairs:
            d[..., view, [i, j], :] = d[..., view, [j, i], :]
        return d
