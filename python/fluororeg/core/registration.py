"""Point-based 3D-to-2D registration of the bone model to dual-fluoroscope frames.

The paper's Eq. 2 and Table 1, solved in the C++ core by Ceres with analytic Jacobians.
Units: millimetres and degrees; poses are ``(theta_x, theta_y, theta_z, tau_x, tau_y, tau_z)``
with extrinsic z-y-x Euler angles and ``X_world = R X_model + tau`` (DESIGN.md).

Residual of landmark ``i`` in view ``k`` (0: view 1, 1: view 2), measured on that view's intensifier plane:
``e_ki = sqrt(w_ki) * (P_k(R X_i + tau) - U_ki)`` mm, ``U_ki`` being the detection (pixels)
converted to millimetres on the detector. Only the ``n_vis`` landmarks detected inside both
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
``mirror_case = f1 + 2 * f2`` (0: none, 1: view 1 mirrored, 2: view 2 mirrored, 3: both).

Initialisation: the paper's (theta = 0, tau = the system centre, the mean of both sources and
both detector centres) unless ``init_pose`` is given (e.g. the previous frame's pose).

Disagreeing views (:func:`check_view_agreement`, after a batch): when the detector fails in
one view (e.g. the skull partly outside its field of view) the robust loss either ignores that
view or settles on a compromise that fits neither. Frames whose residual in a view is far above
the recording's typical one (or in both views well above) are solved from each view alone; if one view alone fits a rigid
model and the other does not, the pose is refined from that view's solution with both views
again and marked ``'one_view'`` (it rests on one view; its depth is the least certain part);
if they cannot be told apart the frame is ``'views_disagree'`` with a NaN pose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from fluororeg import _core
from fluororeg.core.geometry import ConeView, as_poses, poses_to_radians, stack_views, system_centre

__all__ = [
    "MODES",
    "LOSSES",
    "STATUSES",
    "REGISTERED_STATUSES",
    "MIRROR_CASES",
    "RegistrationResult",
    "BatchResult",
    "register_frame",
    "register_frames",
    "check_view_agreement",
    "pose_errors",
    "mean_landmark_distance",
    "system_centre",
]

MODES = ("least_squares", "frobenius")
LOSSES = (None, "huber", "cauchy")
STATUSES = ("ok", "too_few_landmarks", "failed")  # the C++ solver's, in its enum's order
# Statuses with a pose; 'one_view' and 'views_disagree' come from check_view_agreement.
REGISTERED_STATUSES = ("ok", "one_view")
# mirror_case -> (view 1 mirrored, view 2 mirrored), the rows of the paper's Table 1 (F1, F2).
MIRROR_CASES = ((False, False), (True, False), (False, True), (True, True))


@dataclass(frozen=True)
class RegistrationResult:
    """Registration of one frame. NaN pose and matrix unless ``ok`` (status in
    :data:`REGISTERED_STATUSES`)."""

    pose: np.ndarray            # (6,) deg, mm
    matrix: np.ndarray          # (4, 4) world_from_model
    objective: float            # final objective of the winning case (mm^2 or mm, see mode)
    rms_mm: np.ndarray          # (2,) RMS reprojection error per view, mm on the detector
    rms_px: np.ndarray          # (2,) the same in pixels
    n_vis: int                  # landmarks used by the winning case
    mirror_case: int            # 0..3 (see MIRROR_CASES), -1 when nothing was solved
    iterations: int             # solver iterations of the winning case
    converged: bool             # the solver reported convergence
    status: str                 # 'ok', 'too_few_landmarks' or 'failed'
    case_objective: np.ndarray  # (4,) objective per mirror case (NaN: not solved)

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
            case_objective=self.case_objective[i].copy())

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
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    return arr


def _landmarks(landmarks) -> np.ndarray:
    lm = _float_array(landmarks, "landmarks")
    if lm.ndim != 2 or lm.shape[1] != 3 or lm.shape[0] < 1:
        raise ValueError(f"landmarks has shape {lm.shape}, expected (N, 3) mm with N >= 1")
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
    seen = {}
    for p, (i, j) in enumerate(arr.tolist()):
        for idx in (i, j):
            if not 0 <= idx < n:
                raise ValueError(f"pairs[{p}] = ({i}, {j}) names landmark {idx}, which does not "
                                 f"exist: expected indices in [0, {n})")
        if i == j:
            raise ValueError(f"pairs[{p}] = ({i}, {j}) pairs a landmark with itself")
        for idx in (i, j):
            if idx in seen:
                raise ValueError(f"pairs[{p}] = ({i}, {j}): landmark {idx} is already in "
                                 f"pairs[{seen[idx]}]")
            seen[idx] = p
    return np.ascontiguousarray(arr, dtype=np.int32)


def _mode_loss(mode, loss, loss_scale_mm) -> Tuple[str, str, float]:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown: expected one of {MODES}")
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is unknown: expected one of {LOSSES}")
    if mode == "frobenius" and loss is not None:
        raise ValueError(f"loss {loss!r} acts per landmark and is only available with "
                         "mode='least_squares', not with the Frobenius objective (Eq. 2)")
    try:
        scale = float(loss_scale_mm)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"loss_scale_mm must be a number, got {type(loss_scale_mm).__name__}") from exc
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"loss_scale_mm = {loss_scale_mm!r}: expected a finite positive scale in mm")
    return mode, "none" if loss is None else loss, scale


def _int_option(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} = {value}: expected at least {minimum}")
    return int(value)


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
    if init is None:
        return None
    name = "init_poses" if batched else "init_pose"
    p = as_poses(init, name)
    if p.shape[0] == 1 and n_frames != 1:
        p = np.repeat(p, n_frames, axis=0)
    if p.shape[0] != n_frames:
        raise ValueError(f"{name} has {p.shape[0]} poses for {n_frames} frames: expected one "
                         "per frame or a single pose")
    return np.ascontiguousarray(poses_to_radians(p))


def _to_batch(out: dict) -> BatchResult:
    poses = out["poses"].copy()
    poses[:, :3] = np.rad2deg(poses[:, :3])
    return BatchResult(
        poses=poses, matrices=out["matrices"], objective=out["objective"], rms_mm=out["rms_mm"],
        rms_px=out["rms_px"], n_vis=out["n_vis"].astype(np.int64),
        mirror_case=out["mirror_case"].astype(np.int64),
        iterations=out["iterations"].astype(np.int64), converged=out["converged"].astype(bool),
        status=np.array([STATUSES[s] for s in out["status"]], dtype=object).astype(str),
        case_objective=out["case_objective"])


# ---- public API ----------------------------------------------------------------------------

def register_frames(landmarks, views, detections, *, weights=None, pairs=None,
                    mode: str = "least_squares", loss: Optional[str] = None,
                    loss_scale_mm: float = 1.0, init_poses=None, mirror: bool = True,
                    min_visible: int = 4, max_iterations: int = 100,
                    screen_iterations: int = 4, num_threads: int = 0) -> BatchResult:
    """Register all frames of a recording in one call (all cores, GIL released).

    landmarks [N, 3] mm (model frame); views (view 1, view 2) :class:`ConeView`; detections
    [F, 2, N, 2] px (NaN = not detected); weights [F, 2, N] or None; pairs [(i, j), ...] or
    None; init_poses [F, 6] or [6] (deg, mm) or None (the paper's initialisation);
    num_threads 0 = all cores; screen_iterations: every mirror case first gets this many
    solver iterations and only the contenders (objective within 4x of the best) are
    finished (0 = finish every case). See the module docstring for mode, loss and mirror.
    """
    lm = _landmarks(landmarks)
    n = lm.shape[0]
    packed = _views(views)
    pr = _pairs(pairs, n)
    mode, loss_name, scale = _mode_loss(mode, loss, loss_scale_mm)
    if not isinstance(mirror, (bool, np.bool_)):
        raise TypeError(f"mirror must be a bool, got {type(mirror).__name__}")
    min_visible = _int_option(min_visible, "min_visible", 4)
    max_iterations = _int_option(max_iterations, "max_iterations", 1)
    screen_iterations = _int_option(screen_iterations, "screen_iterations", 0)
    num_threads = _int_option(num_threads, "num_threads", 0)
    det = _detections(detections, n, batched=True)
    F = det.shape[0]
    w = _weights(weights, F, n, batched=True)
    init = _init_poses(init_poses, F, batched=True)
    out = _core.register_frames(lm, packed, pr, det, w, init, mode=mode, loss=loss_name,
                                loss_scale_mm=scale, mirror=bool(mirror),
                                min_visible=min_visible, max_iterations=max_iterations,
                                screen_iterations=screen_iterations, num_threads=num_threads)
    return _to_batch(out)


def register_frame(landmarks, views, detections, *, weights=None, pairs=None,
                   mode: str = "least_squares", loss: Optional[str] = None,
                   loss_scale_mm: float = 1.0, init_pose=None, mirror: bool = True,
                   min_visible: int = 4, max_iterations: int = 100,
                   screen_iterations: int = 4) -> RegistrationResult:
    """Register one frame: detections [2, N, 2] px (NaN = not detected), weights [2, N] or
    None, init_pose [6] (deg, mm) or None (the paper's initialisation). See
    :func:`register_frames` and the module docstring."""
    lm = _landmarks(landmarks)
    n = lm.shape[0]
    det = _detections(detections, n, batched=False)
    w = _weights(weights, 1, n, batched=False)
    init = None if init_pose is None else as_poses(init_pose, "init_pose")
    if init is not None and init.shape[0] != 1:
        raise ValueError(f"init_pose has shape {np.shape(init_pose)}, expected (6,)")
    return register_frames(lm, views, det, weights=w, pairs=pairs, mode=mode, loss=loss,
                           loss_scale_mm=loss_scale_mm, init_poses=init, mirror=mirror,
                           min_visible=min_visible, max_iterations=max_iterations,
                           screen_iterations=screen_iterations, num_threads=1)[0]


# A view left out of a solve keeps this share of its weights: the landmark set (detected in
# both views) stays the same, the view's pull on the pose becomes negligible.
_LEFT_OUT_WEIGHT = 1e-6


def _replace_rows(batch: BatchResult, rows: np.ndarray, part: BatchResult) -> BatchResult:
    """``batch`` with its frames ``rows`` taken from ``part`` (one frame each, in order)."""
    fields = {}
    for name in BatchResult.__dataclass_fields__:
        a, b = getattr(batch, name), getattr(part, name)
        merged = a.astype(np.result_type(a, b))  # a copy; wide enough for longer status strings
        merged[rows] = b
        fields[name] = merged
    return BatchResult(**fields)


def check_view_agreement(landmarks, views, detections, batch: BatchResult, *, weights=None,
                         outlier_ratio: float = 4.0, joint_ratio: float = 2.5, fit_ratio: float = 1.5,
                         min_frames: int = 5, **register_kwargs) -> BatchResult:
    """Resolve frames of ``batch`` (from :func:`register_frames` with the same landmarks,
    views, detections [F, 2, N, 2] px and weights [F, 2, N]) whose two views disagree.

    The typical residual of view k is the median ``rms_mm[:, k]`` over the registered frames
    (at least ``min_frames`` of them, else ``batch`` is returned as it is). A registered frame
    is suspect when a view's residual exceeds ``outlier_ratio`` times its typical one, or both
    views' exceed ``joint_ratio`` times theirs (a compromise that fits neither). It is then
    solved from each view alone (the other's weights scaled by 1e-6). If the better
    view's own residual is at most ``fit_ratio`` times typical and at most half the other
    view's own residual, the frame is solved again with both views from that pose and becomes
    ``'one_view'`` (the refined pose when it still fits the better view within ``fit_ratio``,
    else the one-view pose). Otherwise it becomes ``'views_disagree'`` with a NaN pose.
    ``register_kwargs`` go to :func:`register_frames` (pairs, mode, loss, ...).
    """
    if "init_poses" in register_kwargs:
        raise TypeError("check_view_agreement starts its own re-solves: init_poses is not taken")
    if not (np.isfinite(outlier_ratio) and outlier_ratio > 1):
        raise ValueError(f"outlier_ratio = {outlier_ratio!r}: expected a number > 1")
    if not (np.isfinite(joint_ratio) and 1 < joint_ratio <= outlier_ratio):
        raise ValueError(f"joint_ratio = {joint_ratio!r}: expected a number in (1, outlier_ratio]")
    if not (np.isfinite(fit_ratio) and 0 < fit_ratio < joint_ratio):
        raise ValueError(f"fit_ratio = {fit_ratio!r}: expected a number in (0, joint_ratio)")
    det = _detections(detections, _landmarks(landmarks).shape[0], batched=True)
    F = det.shape[0]
    if len(batch) != F:
        raise ValueError(f"batch has {len(batch)} frames and detections {F}: expected the same")
    w = np.where(np.isfinite(det[..., 0]), 1.0, 0.0) if weights is None else \
        np.array(_weights(weights, F, det.shape[2], batched=True), dtype=float)
    ok = batch.ok
    if ok.sum() < max(1, int(min_frames)):
        return batch
    typical = np.maximum(np.median(batch.rms_mm[ok], axis=0), 1e-3)  # [2] mm (exact detections: 1 um)
    ratio = batch.rms_mm / typical
    worst, least = np.fmax(ratio[:, 0], ratio[:, 1]), np.fmin(ratio[:, 0], ratio[:, 1])  # [F]; a NaN view is ignored
    suspect = np.flatnonzero(ok & ((worst > outlier_ratio) | (least > joint_ratio)))
    if suspect.size == 0:
        return batch
    alone = []
    for k in range(2):
        wk = w[suspect].copy()
        wk[:, 1 - k] *= _LEFT_OUT_WEIGHT
        alone.append(register_frames(landmarks, views, det[suspect], weights=wk, **register_kwargs))
    own = np.stack([alone[k].rms_mm[:, k] / typical[k] for k in range(2)], axis=1)  # [S, 2]
    own = np.where(np.stack([alone[k].ok for k in range(2)], axis=1), own, np.inf)
    best = np.argmin(own, axis=1)
    best_own = own[np.arange(len(suspect)), best]
    other_own = own[np.arange(len(suspect)), 1 - best]
    resolved = (best_own <= fit_ratio) & (other_own >= 2.0 * best_own)
    start = np.stack([alone[b].poses[j] for j, b in enumerate(best)])
    refined = register_frames(landmarks, views, det[suspect], weights=w[suspect],
                              init_poses=np.nan_to_num(start), **register_kwargs)
    keep_refined = refined.ok & (refined.rms_mm[np.arange(len(suspect)), best] / typical[best] <= fit_ratio)
    chosen = []
    for j, frame in enumerate(suspect):
        if resolved[j]:
            chosen.append(dataclasses.replace((refined if keep_refined[j] else alone[best[j]])[j], status="one_view"))
        else:  # the two-view numbers stay on record, the pose does not
            chosen.append(dataclasses.replace(batch[int(frame)], status="views_disagree", pose=np.full(6, np.nan),
                                              matrix=np.full((4, 4), np.nan)))
    part = BatchResult.stack(chosen)
    return _replace_rows(batch, suspect, part)


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
