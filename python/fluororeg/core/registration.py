"""Point-based 3D-to-2D registration of the bone model to dual-fluoroscope frames.

The paper's Eq. 2 and Table 1, solved in the C++ core by Ceres with analytic Jacobians.
Units: millimetres and degrees; poses are ``(theta_x, theta_y, theta_z, tau_x, tau_y, tau_z)``
with extrinsic z-y-x Euler angles and ``X_world = R X_model + tau`` (DESIGN.md).

Residual of landmark ``i`` in view ``k`` (0: view 1, 1: view 2), measured on that view's intensifier plane:
``e_ki = sqrt(w_ki) * (P_k(R X_i + tau) - U_ki)`` mm, ``U_ki`` being the detection (pixels)
converted to millimetres on the intensifier. Only the ``n_vis`` landmarks detected inside both
fields of view (finite, inside the image, weight > 0 in both views) take part; with fewer than
``min_visible`` (default 4, never less) the frame is reported as ``'too_few_landmarks'`` with
a NaN pose.

Objectives (``mode``), the value reported as ``objective``:

``'least_squares'``
    ``sum_k sum_i rho(|e_ki|^2)`` in mm^2, ``rho(s) = s`` without a loss. ``loss='huber'``:
    ``rho(s) = s`` for ``s <= a^2``, ``2 a sqrt(s) - a^2`` beyond; ``loss='cauchy'``:
    ``rho(s) = a^2 log(1 + s / a^2)``, ``a = loss_scale_mm``. The loss acts per landmark and
    view, so a few wild detections cannot drag the pose.
``'frobenius'``
    The paper's Eq. 2: ``sum_k sqrt(sum_i |e_ki|^2)`` in mm (no robust loss).

Mirror strategy (Table 1): left and right look alike on X-rays, so with ``mirror=True`` and
symmetric ``pairs`` the problem is solved four times, swapping the detections (and weights)
of every pair in view 1, view 2, both or neither; the lowest objective wins.
``mirror_case = f1 + 2 * f2`` (0: none, 1: view 1 mirrored, 2: view 2 mirrored, 3: both). For speed,
every case first gets ``screen_iterations`` (4) iterations of a small Levenberg-Marquardt on
the same cost; only the cases within ``screen_ratio`` (4) times the best objective are solved
further: the small LM to convergence (Ceres' tolerances), and Ceres from where it stopped for a
case it did not bring there (``screen_iterations=0``: a full Ceres solve of every case).

Settings: a :class:`RegistrationOptions` (the C++ core's ``fluororeg::RegistrationOptions``,
bound as a class with named, validated fields: ``mode``, ``loss``, ``loss_scale_mm``,
``mirror``, ``min_visible``, ``max_iterations``, ``screen_iterations``, ``num_threads``,
``init``, ``view_outlier_ratio`` ...). :func:`register_frames` also takes those keywords
directly (they override ``options``).

Initialisation (``options.init``): ``'paper'`` (theta = 0, tau = the system centre, the mean
of both sources and both intensifier centres), ``'given'`` (``init_poses``, e.g. poses of another
run; chosen by passing ``init_poses``) or ``'previous'`` (each frame starts from the previous
frame's registered pose, in order, the paper's start when that solve fails).

Disagreeing views (``options.view_outlier_ratio``, off by default; the pipeline's 4): when
the detector fails in one view (e.g. the skull partly outside its field of view) the robust
loss either ignores that view or settles on a compromise that fits neither. Frames whose
residual in a view is far above the recording's typical one (or in both views well above) are
solved from each view alone; if one view alone fits a rigid model and the other does not, the
pose is refined from that view's solution with both views again and marked ``'one_view'`` (it
rests on one view; its depth is the least certain part); if they cannot be told apart the
frame is ``'views_disagree'`` with a NaN pose. The core runs this after the batch's solves;
:func:`check_view_agreement` runs it alone on a given batch. Every status is one value of
:class:`RegistrationStatus` (:data:`STATUSES`).

Quality gate (``options.max_residual_mm``, default 5 mm; None = off), absolute and per view,
before the view check: each landmark's residual is taken at the bone (its intensifier-plane
residual divided by the view's magnification there, source-to-intensifier over
source-to-landmark distance along the view axis), reported per view as ``rms_bone_mm`` with
``inliers`` (landmarks within the limit). A frame whose RMS at the bone exceeds the limit in
either view is ``'large_residual'``; one with fewer than ``max(min_inliers_per_view,
ceil(min_inlier_fraction * n_vis))`` inliers in a view is ``'few_inliers'``. Both keep their
pose for inspection but are not registered (:data:`REGISTERED_STATUSES`). The recording's
typical residual of the view check is taken over the frames that passed the gate, and a
frame the check makes ``'one_view'`` must pass the gate in both views as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from fluororeg import _core
from fluororeg._core import RegistrationOptions, RegistrationStatus
from fluororeg.core.geometry import (ConeView, check_array_size, as_poses, poses_to_radians,
                                     stack_views, system_centre)

__all__ = [
    "RegistrationOptions",
    "RegistrationStatus",
    "MODES",
    "LOSSES",
    "STATUSES",
    "REGISTERED_STATUSES",
    "GATE_STATUSES",
    "INPUT_STATUSES",
    "MIRROR_CASES",
    "RegistrationResult",
    "BatchResult",
    "register_frame",
    "register_frames",
    "triangulated_poses",
    "check_view_agreement",
    "pose_errors",
    "mean_landmark_distance",
    "system_centre",
]

MODES = ("least_squares", "frobenius")
LOSSES = (None, "huber", "cauchy")
INITS = ("paper", "given", "previous")
# Every status, in the order of the core's enum (status code -> name); the names are those of
# the pose files.
STATUSES = tuple(s.name for s in sorted(RegistrationStatus, key=lambda s: s.value))
_STATUS_CODE = {s.name: s.value for s in RegistrationStatus}
# Statuses of registered frames (a pose that passed the quality gate). 'large_residual' and
# 'few_inliers' keep their pose for inspection but are never registered.
REGISTERED_STATUSES = ("ok", "one_view")
# The quality gate's statuses (absolute limits at the bone, set by the core) and the input
# checks' (set by the pipeline before registration, fluororeg.pipeline.quality).
GATE_STATUSES = ("large_residual", "few_inliers")
INPUT_STATUSES = ("blank_view", "same_image", "constant_detector", "ambiguous_mirror")
# mirror_case -> (view 1 mirrored, view 2 mirrored), the rows of the paper's Table 1 (F1, F2).
MIRROR_CASES = ((False, False), (True, False), (False, True), (True, True))


@dataclass(frozen=True)
class RegistrationResult:
    """Registration of one frame. NaN pose and matrix unless ``ok`` (status in
    :data:`REGISTERED_STATUSES`)."""

    pose: np.ndarray            # (6,) deg, mm
    matrix: np.ndarray          # (4, 4) world_from_model
    objective: float            # final objective of the winning case (mm^2 or mm, see mode)
    rms_mm: np.ndarray          # (2,) RMS reprojection error per view, mm on the intensifier
    rms_px: np.ndarray          # (2,) the same in pixels
    n_vis: int                  # landmarks used by the winning case
    mirror_case: int            # 0..3 (see MIRROR_CASES), -1 when nothing was solved
    iterations: int             # solver iterations of the winning case
    converged: bool             # the solver reported convergence
    status: str                 # one of STATUSES
    case_objective: np.ndarray  # (4,) objective per mirror case (NaN: not solved)
    rms_bone_mm: np.ndarray     # (2,) RMS residual per view at the bone, mm (quality gate)
    inliers: np.ndarray         # (2,) landmarks per view within max_residual_mm at the bone

    @property
    def ok(self) -> bool:
        return self.status in REGISTERED_STATUSES

    @property
    def mirrored(self) -> Optional[Tuple[bool, bool]]:
        """(view 1 mirrored, view 2 mirrored) of the winning case, None when nothing was solved."""
        return MIRROR_CASES[self.mirror_case] if self.mirror_case >= 0 else None


@dataclass(frozen=True)
class BatchResult:
    """Registrations of F frames as arrays; ``result[i]`` gives one :class:`RegistrationResult`."""

    poses: np.ndarray           # (F, 6) deg, mm
    matrices: np.ndarray        # (F, 4, 4)
    objective: np.ndarray       # (F,)
    rms_mm: np.ndarray          # (F, 2)
    rms_px: np.ndarray          # (F, 2)
    n_vis: np.ndarray           # (F,) int
    mirror_case: np.ndarray     # (F,) int
    iterations: np.ndarray      # (F,) int
    converged: np.ndarray       # (F,) bool
    status: np.ndarray          # (F,) str
    case_objective: np.ndarray  # (F, 4)
    rms_bone_mm: np.ndarray     # (F, 2) mm at the bone
    inliers: np.ndarray         # (F, 2) int

    def __len__(self) -> int:
        return int(self.poses.shape[0])

    def __getitem__(self, i: int) -> RegistrationResult:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"BatchResult index must be an integer, got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame {i} is out of range for {n} frames")
        return RegistrationResult(
            pose=self.poses[i].copy(), matrix=self.matrices[i].copy(),
            objective=float(self.objective[i]), rms_mm=self.rms_mm[i].copy(),
            rms_px=self.rms_px[i].copy(), n_vis=int(self.n_vis[i]),
            mirror_case=int(self.mirror_case[i]), iterations=int(self.iterations[i]),
            converged=bool(self.converged[i]), status=str(self.status[i]),
            case_objective=self.case_objective[i].copy(),
            rms_bone_mm=self.rms_bone_mm[i].copy(), inliers=self.inliers[i].copy())

    def with_frames(self, rows, part: "BatchResult") -> "BatchResult":
        """This batch with its frames ``rows`` taken from ``part`` (one frame each, in order); the
        other frames stay exactly as they were (no degree/radian round trip)."""
        fields = {}
        for name in BatchResult.__dataclass_fields__:
            a, b = getattr(self, name), getattr(part, name)
            merged = a.astype(np.result_type(a, b))  # a copy; wide enough for longer status strings
            merged[rows] = b
            fields[name] = merged
        return BatchResult(**fields)

    @classmethod
    def stack(cls, results: Sequence[RegistrationResult]) -> "BatchResult":
        """The batch of single-frame results (e.g. registered one after the other)."""
        if len(results) == 0:
            raise ValueError("no results to stack")
        singular = {"poses": "pose", "matrices": "matrix"}  # the batch's plural field names
        return cls(**{name: np.array([getattr(r, singular.get(name, name)) for r in results])
                      for name in cls.__dataclass_fields__})

    @property
    def ok(self) -> np.ndarray:
        """(F,) bool: frames with a pose."""
        return np.isin(self.status, REGISTERED_STATUSES)


# ---- validation ----------------------------------------------------------------------------

def _float_array(value, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}")
    check_array_size(value, name)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    return arr


def _landmarks(landmarks) -> np.ndarray:
    lm = _float_array(landmarks, "landmarks")
    if lm.ndim != 2 or lm.shape[1] != 3 or lm.shape[0] < 1:
        raise ValueError(f"landmarks has shape {lm.shape}, expected (N, 3) mm with N >= 1")
    if lm.shape[0] > _core.MAX_POINTS:
        raise ValueError(f"landmarks has {lm.shape[0]} rows: expected at most {_core.MAX_POINTS} landmarks")
    bad = np.argwhere(~np.isfinite(lm))
    if bad.size:
        i, c = bad[0]
        raise ValueError(f"landmarks[{i}, {c}] = {lm[i, c]}: expected finite coordinates (mm)")
    return np.ascontiguousarray(lm)


def _views(views) -> np.ndarray:
    if isinstance(views, ConeView) or not isinstance(views, Sequence):
        raise TypeError(f"views must be a pair (view 1, view 2) of ConeView, got {type(views).__name__}")
    if len(views) != 2:
        raise ValueError(f"got {len(views)} views: expected exactly two (view 1, view 2)")
    return stack_views(views)


def _pairs(pairs, n: int) -> np.ndarray:
    """pairs -> [P, 2] int32, checked by the core's one pair check (ValidatePairs)."""
    if pairs is None:
        return np.zeros((0, 2), dtype=np.int32)
    if isinstance(pairs, (str, bytes)):
        raise TypeError(f"pairs must be a sequence of (i, j) index pairs, got {type(pairs).__name__}")
    arr = np.asarray(pairs)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs has shape {arr.shape}, expected (P, 2) landmark indices")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"pairs must hold integer landmark indices, got dtype {arr.dtype}")
    info = np.iinfo(np.int32)
    out = np.ascontiguousarray(np.clip(arr, info.min, info.max), dtype=np.int32)
    _core.validate_pairs(out, n)
    return out


_UNSET = object()  # a keyword not given


def _options(options, **keywords) -> RegistrationOptions:
    """A copy of ``options`` (default: RegistrationOptions()) with the given keywords set; the
    core validates every field (ValueError / TypeError naming it)."""
    if options is None:
        options = RegistrationOptions()
    elif not isinstance(options, RegistrationOptions):
        raise TypeError(f"options must be a RegistrationOptions, got {type(options).__name__}")
    return options.replace(**{k: v for k, v in keywords.items() if v is not _UNSET})


def _detections(detections, n: int, batched: bool) -> np.ndarray:
    det = _float_array(detections, "detections")
    want = "(F, 2, N, 2)" if batched else "(2, N, 2)"
    if det.ndim != (4 if batched else 3) or det.shape[-3:] != (2, n, 2):
        raise ValueError(f"detections has shape {det.shape}, expected {want} px with N = {n} "
                         "(the number of landmarks)")
    nan = np.isnan(det)
    half = nan[..., 0] != nan[..., 1]
    if half.any():
        idx = tuple(int(i) for i in np.argwhere(half)[0])
        raise ValueError(f"detections{list(idx)} = {det[idx].tolist()}: expected both coordinates "
                         "finite, or both NaN when the landmark was not detected")
    inf = np.isinf(det)
    if inf.any():
        idx = tuple(int(i) for i in np.argwhere(inf)[0])
        raise ValueError(f"detections{list(idx)} = {det[idx]}: expected finite pixel coordinates "
                         "(NaN = not detected)")
    if not batched:
        det = det[None]
    return np.ascontiguousarray(det)


def _weights(weights, n_frames: int, n: int, batched: bool) -> Optional[np.ndarray]:
    if weights is None:
        return None
    w = _float_array(weights, "weights")
    want = (n_frames, 2, n) if batched else (2, n)
    if w.shape != want:
        raise ValueError(f"weights has shape {w.shape}, expected {want}")
    bad = np.argwhere(~(np.isfinite(w) & (w >= 0)))
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise ValueError(f"weights{list(idx)} = {w[idx]}: expected finite weights >= 0")
    if not batched:
        w = w[None]
    return np.ascontiguousarray(w)


def _init_poses(init, n_frames: int, batched: bool) -> Optional[np.ndarray]:
    """Given starts [F, 6] in radians; a row of six NaN (no start: the paper's) stays NaN."""
    if init is None:
        return None
    name = "init_poses" if batched else "init_pose"
    try:
        arr = np.asarray(init, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None  # as_poses names the problem
    none = np.zeros(0, bool)
    if arr is not None and arr.ndim in (1, 2) and arr.shape[-1] == 6:
        none = np.isnan(arr.reshape(-1, 6)).all(axis=1)
        if none.any():
            init = np.where(none[:, None], 0.0, arr.reshape(-1, 6))
    p = as_poses(init, name)
    if none.shape != (p.shape[0],):
        none = np.zeros(p.shape[0], bool)
    if p.shape[0] == 1 and n_frames != 1:
        p, none = np.repeat(p, n_frames, axis=0), np.repeat(none, n_frames)
    if p.shape[0] != n_frames:
        raise ValueError(f"{name} has {p.shape[0]} poses for {n_frames} frames: expected one "
                         "per frame or a single pose")
    rad = poses_to_radians(p)
    rad[none] = np.nan
    return np.ascontiguousarray(rad)


def _from_batch(batch: BatchResult) -> dict:
    """The inverse of _to_batch: the core's arrays (radians, int32 codes)."""
    poses = np.array(batch.poses, dtype=np.float64)
    poses[:, :3] = np.deg2rad(poses[:, :3])
    unknown = sorted(set(map(str, batch.status)) - set(_STATUS_CODE))
    if unknown:
        raise ValueError(f"batch holds status {unknown[0]!r}: expected one of {STATUSES}")
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return dict(poses=poses, matrices=f64(batch.matrices), objective=f64(batch.objective),
                case_objective=f64(batch.case_objective), rms_mm=f64(batch.rms_mm), rms_px=f64(batch.rms_px),
                n_vis=i32(batch.n_vis), mirror_case=i32(batch.mirror_case), iterations=i32(batch.iterations),
                converged=np.ascontiguousarray(batch.converged, dtype=bool),
                rms_bone_mm=f64(batch.rms_bone_mm), inliers=i32(batch.inliers),
                status=np.array([_STATUS_CODE[str(s)] for s in batch.status], dtype=np.int32).reshape(-1))


def _to_batch(out: dict) -> BatchResult:
    poses = out["poses"].copy()
    poses[:, :3] = np.rad2deg(poses[:, :3])
    return BatchResult(
        poses=poses, matrices=out["matrices"], objective=out["objective"], rms_mm=out["rms_mm"],
        rms_px=out["rms_px"], n_vis=out["n_vis"].astype(np.int64),
        mirror_case=out["mirror_case"].astype(np.int64),
        iterations=out["iterations"].astype(np.int64), converged=out["converged"].astype(bool),
        status=np.array([STATUSES[s] for s in out["status"]], dtype=object).astype(str),
        case_objective=out["case_objective"], rms_bone_mm=out["rms_bone_mm"],
        inliers=out["inliers"].astype(np.int64))


# ---- public API ----------------------------------------------------------------------------

def register_frames(landmarks, views, detections, *, weights=None, pairs=None, init_poses=None,
                    options: Optional[RegistrationOptions] = None, mode=_UNSET, loss=_UNSET,
                    loss_scale_mm=_UNSET, mirror=_UNSET, min_visible=_UNSET, max_iterations=_UNSET,
                    screen_iterations=_UNSET, num_threads=_UNSET) -> BatchResult:
    """Register all frames of a recording in one call to the core (all cores, GIL released):
    the solves from ``options.init``'s start, then, with ``options.view_outlier_ratio``, the
    check of the two views' agreement (see the module docstring).

    landmarks [N, 3] mm (model frame); views (view 1, view 2) :class:`ConeView`; detections
    [F, 2, N, 2] px (NaN = not detected); weights [F, 2, N] or None; pairs [(i, j), ...] or
    None; init_poses [F, 6] or [6] (deg, mm) or None: given poses make ``init='given'`` (a
    row of six NaN: that frame starts from the paper's start);
    options: :class:`RegistrationOptions` (default: its defaults); the keywords ``mode``,
    ``loss``, ``loss_scale_mm``, ``mirror``, ``min_visible``, ``max_iterations``,
    ``screen_iterations`` and ``num_threads`` (0 = all cores) override its fields.
    """
    opts = _options(options, mode=mode, loss=loss, loss_scale_mm=loss_scale_mm, mirror=mirror,
                    min_visible=min_visible, max_iterations=max_iterations,
                    screen_iterations=screen_iterations, num_threads=num_threads)
    lm = _landmarks(landmarks)
    n = lm.shape[0]
    packed = _views(views)
    pr = _pairs(pairs, n)
    det = _detections(detections, n, batched=True)
    F = det.shape[0]
    w = _weights(weights, F, n, batched=True)
    init = _init_poses(init_poses, F, batched=True)
    if init is not None:
        if opts.init == "previous":
            raise ValueError("init_poses were given with options.init = 'previous': expected "
                             "init 'given' (or 'paper') with init_poses, or no init_poses")
        opts = opts.replace(init="given")
    elif opts.init == "given":
        raise ValueError("options.init = 'given' needs init_poses [F, 6] (deg, mm)")
    out = _core.register_batch(lm, packed, pr, det, w, init, opts)
    return _to_batch(out)


def register_frame(landmarks, views, detections, *, weights=None, pairs=None, init_pose=None,
                   options: Optional[RegistrationOptions] = None, mode=_UNSET, loss=_UNSET,
                   loss_scale_mm=_UNSET, mirror=_UNSET, min_visible=_UNSET,
                   max_iterations=_UNSET, screen_iterations=_UNSET) -> RegistrationResult:
    """Register one frame: detections [2, N, 2] px (NaN = not detected), weights [2, N] or
    None, init_pose [6] (deg, mm) or None (the paper's initialisation). ``options.init`` and
    the view check do not apply to one frame. See :func:`register_frames`."""
    opts = _options(options, mode=mode, loss=loss, loss_scale_mm=loss_scale_mm, mirror=mirror,
                    min_visible=min_visible, max_iterations=max_iterations,
                    screen_iterations=screen_iterations)
    opts = opts.replace(init="paper", view_outlier_ratio=None, num_threads=1)
    lm = _landmarks(landmarks)
    n = lm.shape[0]
    det = _detections(detections, n, batched=False)
    w = _weights(weights, 1, n, batched=False)
    init = None if init_pose is None else as_poses(init_pose, "init_pose")
    if init is not None and init.shape[0] != 1:
        raise ValueError(f"init_pose has shape {np.shape(init_pose)}, expected (6,)")
    return register_frames(lm, views, det, weights=w, pairs=pairs, init_poses=init, options=opts)[0]


def check_view_agreement(landmarks, views, detections, batch: BatchResult, *, weights=None, pairs=None,
                         options: Optional[RegistrationOptions] = None, outlier_ratio: float = 4.0,
                         joint_ratio: float = 2.5, fit_ratio: float = 1.5, min_frames: int = 5,
                         **register_kwargs) -> BatchResult:
    """Resolve frames of ``batch`` (from :func:`register_frames` with the same landmarks,
    views, detections [F, 2, N, 2] px and weights [F, 2, N]) whose two views disagree: the
    core's check alone (``register_frames`` with ``options.view_outlier_ratio`` runs it after
    the solves in the same call).

    The typical residual of view k is the median ``rms_mm[:, k]`` over the registered frames
    (at least ``min_frames`` of them, else ``batch`` is returned as it is). A registered frame
    is suspect when a view's residual exceeds ``outlier_ratio`` times its typical one, or both
    views' exceed ``joint_ratio`` times theirs (a compromise that fits neither). It is then
    solved from each view alone (the other's weights scaled by 1e-6). If the better
    view's own residual is at most ``fit_ratio`` times typical and at most half the other
    view's own residual, the frame is solved again with both views from that pose and becomes
    ``'one_view'`` (the refined pose when it still fits the better view within ``fit_ratio``,
    else the one-view pose). Otherwise it becomes ``'views_disagree'`` with a NaN pose.
    ``options`` and ``register_kwargs`` (mode, loss, ...) set the re-solves, as for
    :func:`register_frames`.
    """
    if "init_poses" in register_kwargs:
        raise TypeError("check_view_agreement starts its own re-solves: init_poses is not taken")
    if not isinstance(batch, BatchResult):
        raise TypeError(f"batch must be a BatchResult, got {type(batch).__name__}")
    opts = _options(options, **register_kwargs)
    if isinstance(min_frames, bool) or not isinstance(min_frames, (int, np.integer)):
        raise TypeError(f"min_frames must be an integer, got {type(min_frames).__name__}")
    opts = opts.replace(init="paper", view_outlier_ratio=outlier_ratio, view_joint_ratio=joint_ratio,
                        view_fit_ratio=fit_ratio, view_min_frames=max(1, int(min_frames)))
    lm = _landmarks(landmarks)
    n = lm.shape[0]
    det = _detections(detections, n, batched=True)
    F = det.shape[0]
    if len(batch) != F:
        raise ValueError(f"batch has {len(batch)} frames and detections {F}: expected the same")
    w = _weights(weights, F, n, batched=True)
    out = _core.check_view_agreement(lm, _views(views), _pairs(pairs, n), det, w, _from_batch(batch), opts)
    rows = np.flatnonzero(out.pop("changed"))
    if rows.size == 0:
        return batch
    checked = _to_batch(out)
    part = BatchResult(**{name: getattr(checked, name)[rows] for name in BatchResult.__dataclass_fields__})
    return batch.with_frames(rows, part)


def triangulated_poses(landmarks, views, detections, mirror=None, *, min_points: int = 4) -> np.ndarray:
    """Starts for Eq. 2 that assume nothing about the CT's axes: per frame, the rigid pose
    (world_from_model, deg / mm) that best maps the model landmarks [N, 3] onto the landmarks
    triangulated from both views' detections [F, 2, N, 2] (undistorted px; NaN: not seen): the
    midpoint of the shortest segment between the two source rays, then least squares (Kabsch),
    computed by the core (``TriangulatedPoses``; NumPy reference
    :func:`fluororeg._reference.registration.triangulated_poses_reference`).

    ``mirror`` [N]: the left/right permutation (:meth:`Subject.mirror_permutation`); the four
    labellings of the paper's mirror cases are triangulated (a detector that swaps left and
    right in one view makes rays that miss each other) and the best rigid fit kept. NaN rows
    where fewer than ``min_points`` (at least 3) landmarks are seen in both views. The 'paper'
    start (the system centre, theta 0) assumes the CT's axes agree with the world's: measured on the
    independent recordings of a CT whose header is rotated 180 deg about the vertical, the
    landmark registration ended 94-120 deg off from it, and as on the original CT (3-4 deg)
    from the triangulated start."""
    lm = _landmarks(landmarks)
    packed = _views(list(views))
    det = np.ascontiguousarray(detections, dtype=np.float64)
    N = len(lm)
    if det.ndim != 4 or det.shape[1:] != (2, N, 2):
        raise ValueError(f"detections have shape {det.shape}: expected (F, 2, {N}, 2)")
    perm = None
    if mirror is not None:  # the core checks that it is a permutation
        perm = np.asarray(mirror)
        if perm.shape != (N,) or perm.dtype.kind not in "iu":
            raise ValueError(f"mirror must be a permutation of the {N} landmarks, got {mirror!r}")
        perm = perm.astype(np.int32)
    if isinstance(min_points, bool) or not isinstance(min_points, (int, np.integer)):
        raise ValueError(f"min_points = {min_points!r}: expected an integer >= 3 (a rigid fit needs three points)")
    poses = _core.triangulated_poses(lm, packed, det, perm, int(min_points), 0)
    poses[:, :3] = np.rad2deg(poses[:, :3])
    return poses


def _paired_poses(pose_a, pose_b) -> Tuple[np.ndarray, np.ndarray]:
    """Both pose arguments as [n, 6] arrays of one length (a single pose is repeated)."""
    a = as_poses(pose_a, "pose_a")
    b = as_poses(pose_b, "pose_b")
    if a.shape[0] == 1 and b.shape[0] > 1:
        a = np.repeat(a, b.shape[0], axis=0)
    if b.shape[0] == 1 and a.shape[0] > 1:
        b = np.repeat(b, a.shape[0], axis=0)
    if a.shape != b.shape:
        raise ValueError(f"pose_a has {a.shape[0]} poses and pose_b {b.shape[0]}: expected "
                         "the same number (or one)")
    return a, b


def pose_errors(pose_a, pose_b) -> Tuple[Union[float, np.ndarray], Union[float, np.ndarray]]:
    """The paper's Eq. 3: (eps_theta deg, eps_tau mm), the infinity norms of the angle
    differences (each wrapped to [-180, 180)) and translation differences. Poses [6] or
    [n, 6] (deg, mm); returns floats or [n] arrays."""
    single = np.ndim(pose_a) == 1 and np.ndim(pose_b) == 1
    a, b = _paired_poses(pose_a, pose_b)
    e = _core.pose_errors(poses_to_radians(a), poses_to_radians(b))
    et, ep = np.rad2deg(e[:, 0]), e[:, 1]
    return (float(et[0]), float(ep[0])) if single else (et, ep)


def mean_landmark_distance(landmarks, pose_a, pose_b) -> Union[float, np.ndarray]:
    """Mean distance (mm) between the landmarks [N, 3] placed by pose_a and by pose_b
    ([6] or [n, 6], deg, mm); a float or [n] array."""
    lm = _landmarks(landmarks)
    single = np.ndim(pose_a) == 1 and np.ndim(pose_b) == 1
    a, b = _paired_poses(pose_a, pose_b)
    d = _core.mean_landmark_distance(lm, poses_to_radians(a), poses_to_radians(b))
    return float(d[0]) if single else d
