"""The pipeline's quality gate: input checks before registration and the QC report after it.

Registration can only be as good as its input, and a pose with a small objective is not a good
pose when the input was absurd. Before registration the pipeline decides, per frame, whether
its input is usable at all; a frame that is not gets its own status (one value of
:class:`~fluororeg.core.registration.RegistrationStatus`, :data:`INPUT_STATUSES`) and is never
registered:

``'blank_view'``
    a view is blank or saturated: its grey levels inside the field of view are nearly constant
    (robust spread, 1st to 99th percentile, below ``blank_spread`` of its level, or below
    ``blank_relative`` of the recording's median spread of that view).
``'same_image'``
    both views hold the same image (or nearly: normalised correlation of the two views'
    thumbnails above ``same_correlation``). Two fluoroscopes never see the same picture.
``'constant_detector'``
    the detections ignore the input: in a view, a recording's detections are the same (to
    ``constant_px``) across frames whose images differ. Flagged for the whole recording, with
    a warning.
``'ambiguous_mirror'`` (after the solve)
    the mirror search chose a case that mirrors one view but not the other (Table 1 cases 1
    and 2: the left/right labels of one view swapped) while the next best case was within
    ``mirror_gap`` of it (relative objective gap): the labelling could not be told apart, so
    the frame is flagged rather than decided silently.

The absolute limits on the solved poses (``'large_residual'``, ``'few_inliers'``: residual in mm
at the bone, per view) are the core's (``RegistrationOptions.max_residual_mm``). With intensity
refinement (the pipeline's default) the image similarity after refinement is the final gate
(:mod:`fluororeg.pipeline.refine_stage`): a landmark pose held back by these limits may still
be registered as ``'refined'`` (when its depth-reversed twin, refined too, does not explain the
images about as well: ``'ambiguous_depth'``), and a frame whose refinement fails is not
registered (``'low_similarity'``, ``'moved_far'``, ``'no_overlap'``).

:func:`check_geometry` refuses absurd geometry values (a source inside the patient region,
views looking away from each other or from the crossing point, a crossing point off the
detectors) before any work. :func:`qc_report` summarises a registered recording: counts per
status, median residual at the bone per view, the refinement's similarity, the worst frames;
:func:`write_qc` writes it as ``qc.json`` and ``qc.png`` (per-frame residual per view with the
limit line and, with refinement, the similarity per view, coloured by status) and, given the
recording and subject, overlays of the worst frames (``qc_worst_<frame>.png``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fluororeg import _core
from fluororeg.core import registration as _registration
from fluororeg.inference.crops import FieldOfView
from fluororeg.pipeline.refine_stage import REFINE_FAILURE_STATUSES, REFINED_STATUS, TRACKED_STATUS

__all__ = ["InputCheckOptions", "DEFAULT_MAX_RESIDUAL_MM", "REGISTERED_STATUSES", "check_geometry", "InputStatistics",
           "image_statistics", "blank_views", "input_statuses", "constant_detector", "ambiguous_mirror",
           "apply_input_statuses", "max_residual_from_detector", "qc_report", "format_qc", "write_qc",
           "write_worst_overlays"]

# The core's default limit, mm at the bone (RegistrationOptions.max_residual_mm); the pipeline's
# default is PipelineOptions.max_residual_crop_px crop pixels (5 mm for 2 mm/px crops).
# Measured (on the registration scene of fluororeg._reference.registration, 33
# landmarks, 300 frames, Gaussian detection noise of a given mean radial error at the bone plus
# 0-5 % outliers 10 crop px off, Cauchy loss): the gate's RMS at the bone over the inliers is
# about 1.1 times the detector's mean error and does not depend on the outliers. For the
# project's detector (1.39 crop px = 2.8 mm at 2 mm/px) it is 3.0 mm (p95 3.7 mm): a 4 mm limit
# flags 0-0.3 % of these good frames (0.5 deg pose error), 5 mm none; for a 2 crop px detector
# (4 mm) it is 4.2 mm: 5 mm flags 7.7 %, 6 mm 0.3 %. Hence 2.5 crop px by default and twice
# the detector's recorded validation error when it has one.
DEFAULT_MAX_RESIDUAL_MM = 5.0
# The statuses of a frame the pipeline registered (a pose in poses.csv): the core's (landmark
# registration) and the refinement stage's (fluororeg.pipeline.refine_stage).
REGISTERED_STATUSES = _registration.REGISTERED_STATUSES + (REFINED_STATUS, TRACKED_STATUS)
# max_residual_mm = this many times the detector's validation error at the bone (its metadata,
# the mean radial landmark error in mm).
RESIDUAL_LIMIT_FACTOR = 2.0
# A low_similarity frame within this of the refinement's floor is reported as just below it.
NEAR_FLOOR = 0.1


@dataclass(frozen=True)
class InputCheckOptions:
    blank_spread: float = 0.02       # spread / level below this: blank or saturated
    blank_relative: float = 0.1      # spread below this share of the recording's median: blank
    same_correlation: float = 0.995  # thumbnails of both views correlate above this: same image
    constant_px: float = 1e-3        # detections move less than this (px) across differing frames
    image_change: float = 0.02       # frames differ when their thumbnails differ by this (share of spread)
    mirror_gap: float = 0.25         # relative objective gap below which a one-view mirror is ambiguous
    # (measured on the scene above: the next case is at least 1.6 times worse, i.e. a gap >= 1.6,
    # in every one of 1200 normal frames)
    thumbnail: int = 64              # side of the thumbnails (px)


# ---- geometry ------------------------------------------------------------------------------

def check_geometry(views, *, min_source_distance_mm: float = 150.0) -> None:
    """Refuse absurd two-view geometry before any work (ValueError naming the view and value):
    each view must look at the crossing point of the principal rays (the joint's place) with
    the point in front of the source and before the intensifier, at least
    ``min_source_distance_mm`` from the source (a source inside the patient region otherwise),
    and the crossing point must project inside the detector's image."""
    from fluororeg.core.geometry import beam_crossing

    views = list(views)
    if len(views) != 2:
        raise ValueError(f"expected two views, got {len(views)}")
    try:
        centre = beam_crossing(views)
    except ValueError as exc:
        raise ValueError(f"geometry: {exc}") from exc
    for k, v in enumerate(views):
        axis = v.intensifier_centre - v.source
        sdd = float(np.linalg.norm(axis))
        depth = float((centre - v.source) @ axis / sdd)  # mm along the view's principal ray
        if depth <= 0:
            raise ValueError(f"view {k + 1} looks away from the other view's beam: the crossing point of the "
                             f"principal rays lies {-depth:.0f} mm behind its source")
        if depth >= sdd:
            raise ValueError(f"view {k + 1}: the crossing point of the principal rays lies {depth:.0f} mm from the "
                             f"source, beyond its detector ({sdd:.0f} mm): expected the subject between source "
                             "and detector")
        if depth < min_source_distance_mm:
            raise ValueError(f"view {k + 1}: the source is {depth:.0f} mm from the crossing point of the principal "
                             f"rays (the subject): expected at least {min_source_distance_mm:.0f} mm (a source "
                             "inside the patient region is not a fluoroscope)")
        miss = float(np.linalg.norm(np.cross(centre - v.source, axis / sdd)))
        half_diag = 0.5 * np.hypot(v.width * v.pitch_u, v.height * v.pitch_v) * depth / sdd
        if miss > half_diag:
            raise ValueError(f"view {k + 1}: the crossing point of the principal rays is {miss:.0f} mm off its "
                             f"principal ray, outside its field of view ({half_diag:.0f} mm at that depth): "
                             "the two views do not look at the same place")


# ---- image checks --------------------------------------------------------------------------

def _thumbnail_mask(shape, fov, side: int) -> np.ndarray:
    """[side, side] bool: the thumbnail pixels (block centres, as :func:`image_statistics` bins
    them) inside a slightly smaller circle than the field of view (the rim blends field and
    surround); all when fov is None or fewer than 16 lie inside."""
    if fov is None:
        return np.ones((side, side), bool)
    H, W = shape
    ys = np.linspace(0, H, side + 1).astype(int)
    xs = np.linspace(0, W, side + 1).astype(int)
    ys[-1], xs[-1] = H, W
    cy = (ys[:-1] + ys[1:] - 1) / 2.0
    cx = (xs[:-1] + xs[1:] - 1) / 2.0
    mask = np.hypot(cx[None, :] - fov.cx, cy[:, None] - fov.cy) <= 0.9 * fov.radius
    return mask if mask.sum() >= 16 else np.ones((side, side), bool)


class InputStatistics:
    """The input checks' figures of a recording's ``F`` frames (what :func:`image_statistics`
    returns), gathered block by block from frames read for other work: the pipeline's detection
    pass hands over each chunk's frames, so the checks do not read the recording again.

    :meth:`figures` computes a block's per-frame figures of one view (thumbnails, spread, level:
    the core's ``frame_statistics``; safe on several threads at once); :meth:`add` takes the
    blocks' figures in frame order and keeps what the checks need; :meth:`result` gives the
    arrays. Each view's ``change`` compares frames with its reference frame: the one given to
    :meth:`set_reference`, else the first frame whose ``found`` (:meth:`add`) is true, the first
    with detections. Frames before that one have no detections, and their change (which the
    constant-detector check never reads) is NaN. Memory does not grow with the recording's
    length: thumbnails are not kept past their block."""

    def __init__(self, F: int, fovs=None, options: InputCheckOptions = InputCheckOptions(), *,
                 num_threads: int = 0):
        from threading import Lock

        from fluororeg.core.threads import num_threads as process_threads

        self.F, self.options = int(F), options
        self.fovs = (None, None) if fovs is None else tuple(fovs)
        self.threads = process_threads(num_threads)
        self.spread, self.level = np.full((self.F, 2), np.nan), np.full((self.F, 2), np.nan)
        self.correlation, self.change = np.full(self.F, np.nan), np.full((self.F, 2), np.nan)
        self.reference = np.zeros(2, np.int64)
        self._reference_thumbs: list[np.ndarray | None] = [None, None]  # [t, t] per view, once known
        self._setup: list[dict] = [{}, {}]  # per view, from its first frame: shape, thumb_mask, inside, stride
        self._setup_lock = Lock()
        self._next = 0  # the first frame :meth:`add` expects next

    def _view_setup(self, k: int, shape) -> dict:
        with self._setup_lock:
            v = self._setup[k]
            if not v:
                if len(shape) != 2:
                    raise ValueError(f"view {k + 1}'s frames have shape {shape}: expected grey-level images [H, W]")
                inside = _full_mask(shape, self.fovs[k])
                v.update(shape=tuple(shape), thumb_mask=_thumbnail_mask(shape, self.fovs[k], self.options.thumbnail),
                         inside=inside.astype(np.uint8), stride=max(1, int(inside.sum()) // 200000))
            return v

    def figures(self, k: int, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thumbs [n, t, t], spread [n], level [n]) of view ``k``'s frames ``images`` (a
        sequence of [H, W], or a float32 array [n, H, W] as
        :func:`~fluororeg.inference.crops.frame_stack` makes it, taken without a copy); frames of
        another size than the view's first are refused."""
        stacked = isinstance(images, np.ndarray) and images.ndim == 3 and images.dtype == np.float32
        arrays = [images[0]] if stacked and len(images) else [np.asarray(img) for img in images]
        if not arrays:
            t = self.options.thumbnail
            return np.empty((0, t, t)), np.empty(0), np.empty(0)
        v = self._view_setup(k, arrays[0].shape)
        for a in arrays:
            if a.shape != v["shape"]:
                raise ValueError(f"view {k + 1} has frames of shape {a.shape} and {v['shape']}: expected one "
                                 "frame size per view")
        frames = images if stacked else np.stack(arrays).astype(np.float32, copy=False)
        return _core.frame_statistics(frames, self.options.thumbnail, v["inside"], v["stride"], self.threads)

    def set_reference(self, k: int, frame: int, image) -> None:
        """Compare view ``k``'s frames with ``image``, its frame at position ``frame``."""
        self.reference[k] = int(frame)
        self._reference_thumbs[k] = self.figures(k, [image])[0][0]

    def add(self, f0: int, figures, found=None) -> None:
        """The figures of frames ``f0`` .. ``f0 + n - 1``: ``figures`` per view, as
        :meth:`figures` returns them; ``found`` [n, 2] bool: the frames with detections per view
        (picks a view's reference frame when none was set). Blocks come in frame order."""
        thumbs = [np.asarray(f[0]) for f in figures]
        n = len(thumbs[0])
        if f0 != self._next or f0 + n > self.F or len(thumbs[1]) != n:
            raise ValueError(f"input statistics of frames {f0} to {f0 + n - 1}: expected the {len(thumbs[1])} "
                             f"frames from frame {self._next} on, in order, within the recording's {self.F}")
        self._next = f0 + n
        rows = slice(f0, f0 + n)
        for k in range(2):
            self.spread[rows, k], self.level[rows, k] = figures[k][1], figures[k][2]
            first = 0  # the block's first frame compared with the reference
            if self._reference_thumbs[k] is None and found is not None and np.any(found[:, k]):
                first = int(np.argmax(found[:, k]))
                self.reference[k] = f0 + first
                self._reference_thumbs[k] = thumbs[k][first]
            ref = self._reference_thumbs[k]
            if ref is not None:
                mask = self._setup[k]["thumb_mask"]
                self.change[f0 + first:f0 + n, k] = np.abs(thumbs[k][first:, mask] - ref[mask]).mean(axis=1)
        if n:
            both = self._setup[0]["thumb_mask"] & self._setup[1]["thumb_mask"]
            self.correlation[rows] = _views_correlation(thumbs[0], thumbs[1], both)

    def result(self) -> dict:
        """spread [F, 2], level [F, 2], views_correlation [F], change [F, 2], reference [2] (see
        :func:`image_statistics`); every frame must have been added."""
        if self._next != self.F:
            raise ValueError(f"input statistics hold frames 0 to {self._next - 1} of {self.F}: every frame is needed")
        return dict(spread=self.spread, level=self.level, views_correlation=self.correlation, change=self.change,
                    reference=self.reference.copy())


def image_statistics(recording, fovs=None, options: InputCheckOptions = InputCheckOptions(),
                     reference_frames=(0, 0), *, num_threads: int = 0):
    """Per frame and view, what the input checks need, computed frame by frame (memory does not
    grow with the recording's length): spread [F, 2] (1st to 99th percentile inside the field of
    view), level [F, 2] (largest absolute percentile, the image's scale), views_correlation [F]
    (normalised correlation of the two views' thumbnails inside both fields of view; 1 for
    identical images), change [F, 2] (mean absolute difference of each view's thumbnail from
    that of frame ``reference_frames[k]``: the constant-detector check compares frames with the
    first one that has detections) and reference [2]. Reads every frame once (and the two
    reference frames once more), 32 at a time (:meth:`Recording.read
    <fluororeg.io.recording.Recording.read>`); the thumbnails and percentiles are the core's
    ``frame_statistics`` (its NumPy reference: ``fluororeg._reference.picture``), on
    ``num_threads`` threads (0: the process's count). :class:`InputStatistics` gathers the same
    figures from frames read for other work."""
    F = len(recording)
    reference = tuple(int(r) for r in reference_frames)
    if len(reference) != 2 or not all(0 <= r < max(F, 1) for r in reference):
        raise ValueError(f"reference_frames = {reference_frames!r}: expected two frame positions in [0, {F})")
    gathered = InputStatistics(F, fovs, options, num_threads=num_threads)
    if F:
        for k in range(2):
            gathered.set_reference(k, reference[k], recording.frame(reference[k])[k])
    block = 32  # frames read (Recording.read: in parallel where the sequences allow) per step
    for f0 in range(0, F, block):
        block_frames = range(f0, min(F, f0 + block))
        gathered.add(f0, [gathered.figures(k, recording.read(k, block_frames, num_threads)) for k in range(2)])
    return gathered.result()


def _full_mask(shape, fov):
    H, W = shape
    if fov is None:
        return np.ones((H, W), bool)
    mask = FieldOfView(fov.cx, fov.cy, 0.9 * fov.radius).mask((H, W))
    return mask if mask.sum() >= 64 else np.ones((H, W), bool)


def blank_views(stats: dict, options: InputCheckOptions = InputCheckOptions()) -> np.ndarray:
    """[F, 2] bool: the views of each frame that are blank or saturated (from
    :func:`image_statistics`; frames with one are ``'blank_view'``)."""
    spread, level = stats["spread"], stats["level"]
    typical = np.median(spread, axis=0)  # [2] the recording's usual contrast per view
    return (spread <= options.blank_spread * np.maximum(level, 1e-12)) | (spread <= options.blank_relative * typical)


def input_statuses(stats: dict, options: InputCheckOptions = InputCheckOptions()) -> np.ndarray:
    """[F] str: 'blank_view', 'same_image' or '' (usable) per frame from :func:`image_statistics`."""
    out = np.full(stats["spread"].shape[0], "", dtype=object)
    same = stats["views_correlation"] >= options.same_correlation
    out[same] = "same_image"
    out[blank_views(stats, options).any(axis=1)] = "blank_view"
    return out.astype(str)


def _views_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[n] normalised correlations of two views' thumbnails a, b [n, t, t] inside ``mask`` [t, t]
    (both fields of view; everywhere when it holds fewer than 16 pixels); 1 for identical
    thumbnails (also constant ones)."""
    if mask.sum() < 16:
        mask = np.ones_like(mask)
    identical = np.all(np.abs(a - b) <= 1e-9, axis=(1, 2))
    x, y = a[:, mask], b[:, mask]  # [n, m]
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(den > 0, (x * y).sum(axis=1) / den, 0.0)
    return np.where(identical, 1.0, corr)


def constant_detector(detections, stats: dict | None = None,
                      options: InputCheckOptions = InputCheckOptions()) -> np.ndarray:
    """[2] bool per view: the recording's detections [F, 2, N, 2] px are the same (within
    ``constant_px``; NaN where NaN) in at least two frames whose images differ (thumbnails by more
    than ``image_change`` of the view's spread; any frames when ``stats`` is None) and the same
    in all frames with detections. A detector whose output ignores its input."""
    det = np.asarray(detections, dtype=np.float64)
    F = det.shape[0]
    out = np.zeros(2, bool)
    if F < 2:
        return out
    for k in range(2):
        d = det[:, k]  # [F, N, 2]
        found = np.isfinite(d[..., 0]).any(axis=1)
        if found.sum() < 2:
            continue
        rows = np.flatnonzero(found)
        ref = d[rows[0]]
        same_nan = np.all(np.isnan(d[rows][..., 0]) == np.isnan(ref[..., 0]), axis=1)
        with np.errstate(invalid="ignore"):
            close = np.nanmax(np.abs(d[rows] - ref).reshape(len(rows), -1), axis=1) <= options.constant_px
        if not np.all(same_nan & (close | ~np.isfinite(ref).any())):
            continue
        if stats is None:
            out[k] = True
            continue
        if int(stats["reference"][k]) != rows[0]:
            raise ValueError(f"image statistics of view {k + 1} compare frames with frame {int(stats['reference'][k])}, "
                             f"but its first frame with detections is {rows[0]}: pass reference_frames to "
                             "image_statistics")
        scale = max(float(np.median(stats["spread"][rows, k])), 1e-12)
        change = stats["change"][rows, k] / scale  # each frame against the first with detections
        out[k] = bool(np.any(change > options.image_change))
    return out


def ambiguous_mirror(batch, options: InputCheckOptions = InputCheckOptions()) -> np.ndarray:
    """[F] bool: frames whose winning mirror case mirrors one view but not the other (cases 1
    and 2) while the next best solved case's objective is within ``mirror_gap`` (relative) of
    it."""
    case_obj = np.asarray(batch.case_objective, dtype=np.float64)
    best = np.asarray(batch.mirror_case)
    out = np.zeros(len(best), bool)
    for f, c in enumerate(best):
        if c not in (1, 2):
            continue
        obj = case_obj[f]
        others = np.delete(obj, c)
        others = others[np.isfinite(others)]
        if others.size == 0 or not np.isfinite(obj[c]):
            continue
        gap = (others.min() - obj[c]) / max(abs(obj[c]), 1e-12)
        out[f] = gap < options.mirror_gap
    return out


def apply_input_statuses(batch, frame_status: np.ndarray):
    """``batch`` with the frames whose ``frame_status`` [F] is non-empty marked with it (their
    solve stays on record; they are not registered)."""
    import dataclasses

    flagged = np.asarray(frame_status, dtype=str) != ""
    if not flagged.any():
        return batch
    status = np.asarray(batch.status).astype(object)
    status[flagged] = np.asarray(frame_status, dtype=object)[flagged]
    return dataclasses.replace(batch, status=status.astype(str))


def detector_validation_error_mm(detector) -> float | None:
    """The detector's recorded validation error at the bone, mm (mean landmark error), or None:
    ``detector.training['val_mean_mm']`` (the training figures exports record), else the model
    metadata's ``val_mean_mm``, ``val_err_mm`` or ``validation_error_mm`` (top level or inside a
    ``training`` entry). A value that is not a positive number is ignored with a warning."""
    sources = []
    training = getattr(detector, "training", None)
    if isinstance(training, dict):
        sources.append(training)
    meta = getattr(getattr(detector, "model", None), "meta", None) or {}
    if isinstance(meta.get("training"), dict):
        sources.append(meta["training"])
    sources.append(meta)
    for source in sources:
        for key in ("val_mean_mm", "val_err_mm", "validation_error_mm"):
            if source.get(key) is None:
                continue
            try:
                value = float(source[key])
            except (TypeError, ValueError):
                value = float("nan")
            if np.isfinite(value) and value > 0:
                return value
            warnings.warn(f"detector metadata {key} = {source[key]!r} is not a positive number: the default residual "
                          "limit applies", stacklevel=2)
    return None


def max_residual_from_detector(detector) -> float | None:
    """The gate's limit, mm at the bone, from the detector: RESIDUAL_LIMIT_FACTOR times its
    recorded validation error (:func:`detector_validation_error_mm`), else None (the caller's
    default)."""
    err = detector_validation_error_mm(detector)
    return None if err is None else RESIDUAL_LIMIT_FACTOR * err


# ---- QC report -----------------------------------------------------------------------------

def qc_report(frames, batch, status, max_residual_mm, *, worst: int = 5, constant_views=None,
              detector=None, refine_columns=None, refine_seconds: float | None = None,
              min_similarity: float | None = None) -> dict:
    """The recording's quality summary (JSON-able): frames, counts per status, registered
    count, the limit, median residual at the bone per view over the frames with a landmark pose, the
    ``worst`` frames (by their larger view residual; with refinement, frames that failed its
    gate first, by their lower view similarity), the per-frame figures, the refinement's
    figures (``refine_columns`` of :func:`fluororeg.pipeline.refine_stage.refine_recording_poses`;
    ``refine_seconds``: the stage's wall-clock time; ``min_similarity``: the floor it used, None:
    RefineOptions') and the training figures of ``detector`` (its metadata) with why it is not
    to be trusted, if it is not. ``refined.just_below_floor``: the frames flagged
    ``low_similarity`` whose mean similarity ended within NEAR_FLOOR of the floor (real
    fluoroscopy scores far lower than simulations: their overlays decide, see format_qc).
    ``batch`` None: a run without the landmark path (``track``): no residual figures, the
    refinement's alone (``landmark_path`` False)."""
    status = np.asarray(status, dtype=str)
    frames = np.asarray(frames)
    counts = {str(s): int(n) for s, n in zip(*np.unique(status, return_counts=True))}
    registered = np.isin(status, REGISTERED_STATUSES)
    if batch is None:
        rb = np.full((len(status), 2), np.nan)
        posed = registered
    else:
        rb = np.asarray(batch.rms_bone_mm, dtype=np.float64)
        posed = np.isfinite(np.asarray(batch.poses, dtype=np.float64)).all(axis=1)  # registered or gated

    def med(x):
        x = x[np.isfinite(x)]
        return float(np.median(x)) if x.size else None

    # The worst frames: the larger view residual; a view without inliers (NaN) is the worst.
    larger = np.where(posed, np.nan_to_num(np.maximum(rb[:, 0], rb[:, 1]), nan=np.inf), -np.inf)
    sim = None
    if refine_columns is not None:
        sim = np.stack([np.asarray(refine_columns["similarity_view1"], np.float64),
                        np.asarray(refine_columns["similarity_view2"], np.float64)], axis=1)  # [F, 2]
        # Refinement decides: frames it did not pass first, lowest similarity first.
        failed = np.isin(status, REFINE_FAILURE_STATUSES)
        lower = np.nan_to_num(np.fmin(sim[:, 0], sim[:, 1]), nan=-1.0)
        larger = np.where(failed, 1e9 - lower, np.where(registered, -lower, larger))
    order = [int(i) for i in np.argsort(-larger, kind="stable") if larger[i] > -np.inf][:worst]
    nan_none = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    landmarks = batch is not None
    report = {
        "frames": int(len(status)),
        "registered": int(registered.sum()),
        "landmark_path": landmarks,
        "counts": counts,
        "max_residual_mm": None if max_residual_mm is None else float(max_residual_mm),
        "median_residual_bone_mm": [med(rb[posed, k]) for k in range(2)],
        "median_residual_bone_mm_registered": [med(rb[registered & posed, k]) for k in range(2)],
        "constant_detector_views": [] if constant_views is None else [int(k) + 1 for k in np.flatnonzero(constant_views)],
        "detector_training": getattr(detector, "training", None),
        "detector_undertrained": detector.undertrained() if hasattr(detector, "undertrained") else None,
        "worst": [{"frame": int(frames[i]), "status": str(status[i])}
                  | ({"residual_bone_mm": [nan_none(rb[i, 0]), nan_none(rb[i, 1])]} if landmarks else {})
                  | ({} if sim is None else {"similarity": [nan_none(sim[i, 0]), nan_none(sim[i, 1])]})
                  for i in order],
        "per_frame": {"frame": [int(f) for f in frames], "status": [str(s) for s in status]},
        "refined": None,
    }
    if landmarks:
        report["per_frame"] |= {"residual_bone_mm": [[nan_none(v) for v in row] for row in rb],
                                "inliers": [[int(v) for v in row] for row in np.asarray(batch.inliers)],
                                "n_vis": [int(v) for v in np.asarray(batch.n_vis)]}
    if refine_columns is not None:
        report["per_frame"]["similarity"] = [[nan_none(v) for v in row] for row in sim]
        if "landmark_status" in refine_columns:
            report["per_frame"]["landmark_status"] = [str(s) for s in refine_columns["landmark_status"]]
        rot = np.asarray(refine_columns["refine_rotation_change_deg"], np.float64)
        mov = np.asarray(refine_columns["refine_translation_change_mm"], np.float64)
        n_refined = int(np.sum(np.asarray(refine_columns["refine_status"]) != "not_refined"))
        from fluororeg.core.refine import min_similarity_or_default

        min_similarity = min_similarity_or_default(min_similarity)
        used = np.isfinite(sim).sum(axis=1)  # the views with a similarity, per frame
        mean_sim = np.nansum(sim, axis=1) / np.maximum(used, 1)
        near = (status == "low_similarity") & (used > 0) & (mean_sim >= min_similarity - NEAR_FLOOR)
        twin_chosen = np.asarray(refine_columns.get("refine_twin_chosen", np.zeros(len(status))), bool)
        report["refined"] = {
            "min_similarity": float(min_similarity),
            "just_below_floor": [int(f) for f in frames[near]],
            "median_similarity_registered": [med(sim[registered, k]) for k in range(2)],
            "median_rotation_change_deg": med(rot[registered]), "median_translation_change_mm": med(mov[registered]),
            "tracked": int(np.sum(status == TRACKED_STATUS)),
            # registered at the depth-reversed twin of where the frame's landmark pose led
            "twin_chosen": [int(f) for f in frames[twin_chosen]],
            "frames_refined": n_refined,
            # wall-clock of the whole stage (reading, undistorting, refining) per refined frame pair
            "seconds_per_frame": (float(refine_seconds) / n_refined) if refine_seconds and n_refined else None,
        }
    return report


def format_qc(report: dict) -> str:
    """The one-screen summary of :func:`qc_report`."""
    lines = []
    if report.get("detector_undertrained"):
        lines.append(f"WARNING: UNDERTRAINED DETECTOR: {report['detector_undertrained']}; every pose below rests on it")
    landmarks = report.get("landmark_path", True)
    lines += [f"QC: {report['registered']} of {report['frames']} frames registered"
             + ((f" (limit {report['max_residual_mm']:.2f} mm at the bone per view)"
                 if report["max_residual_mm"] is not None else " (no residual limit)") if landmarks
                else " (no landmark path: the refinement's similarity is the gate)")]
    for s, n in sorted(report["counts"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {s:<18} {n:6d}")
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    if landmarks:
        med = report["median_residual_bone_mm"]
        lines.append(f"  median residual at the bone (frames with a landmark pose, registered or not): view 1 "
                     f"{fmt(med[0])} mm, view 2 {fmt(med[1])} mm")
    ref = report.get("refined")
    if ref:
        sm = ref["median_similarity_registered"]
        lines.append(f"  intensity refinement (the final gate): median similarity of registered frames view 1 "
                     f"{fmt(sm[0])}, view 2 {fmt(sm[1])}; pose change {fmt(ref['median_rotation_change_deg'])} deg / "
                     f"{fmt(ref['median_translation_change_mm'])} mm (median); {ref['tracked']} tracked; "
                     f"{fmt(ref['seconds_per_frame'])} s per frame pair")
        near = ref.get("just_below_floor") or []
        if near:
            lines.append(f"  {len(near)} frame(s) ended just below the similarity floor {ref['min_similarity']:.2f} "
                         f"(within {NEAR_FLOOR:g}; frames {', '.join(map(str, near[:8]))}"
                         f"{' ...' if len(near) > 8 else ''}): real fluoroscopy scores lower than simulations "
                         "(the radius in Autoscoper's wrist frames 0.60-0.62 at its pose); if their overlays show "
                         "the bone in place, register --min-similarity lets them through")
    if ref:
        ambiguous = report["counts"].get("ambiguous_depth", 0)
        if ambiguous:
            lines.append(f"  {ambiguous} frame(s) ambiguous_depth: the refined pose and its depth-reversed twin (the bone "
                         "turned 180 deg about the axis across both views' rays) matched the images about equally, so "
                         "neither is registered; a registered neighbour tracks them, or `fluororeg track` from a pose "
                         "placed by hand")
        twins = ref.get("twin_chosen") or []
        if twins:
            lines.append(f"  {len(twins)} frame(s) registered at the depth-reversed twin of where their landmark pose "
                         f"led, which matched the images clearly better (frames {', '.join(map(str, twins[:8]))}"
                         f"{' ...' if len(twins) > 8 else ''}): check their overlays")
    if report["constant_detector_views"]:
        lines.append(f"  WARNING: the detections ignore the images in view(s) {report['constant_detector_views']}")
    if report["worst"]:
        lines.append("  worst frames:")
        for w in report["worst"]:
            r = w.get("residual_bone_mm")
            sim = w.get("similarity")
            shown = ([f"view 1 {fmt(r[0])} mm, view 2 {fmt(r[1])} mm"] if r else []) \
                + ([f"similarity {fmt(sim[0])}, {fmt(sim[1])}"] if sim else [])
            lines.append(f"    frame {w['frame']:6d}  {w['status']:<18} " + "; ".join(shown))
    return "\n".join(lines)


_STATUS_COLOURS = {"ok": "tab:green", "one_view": "tab:olive", "refined": "limegreen", "tracked": "darkseagreen",
                   "large_residual": "tab:red", "few_inliers": "tab:orange", "views_disagree": "tab:purple",
                   "ambiguous_mirror": "tab:pink", "blank_view": "tab:gray", "same_image": "tab:brown",
                   "constant_detector": "black", "too_few_landmarks": "tab:cyan", "failed": "tab:blue",
                   "low_similarity": "darkred", "moved_far": "orangered", "no_overlap": "dimgray",
                   "ambiguous_depth": "magenta"}


def qc_json_text(report: dict) -> str:
    """qc.json's text: a line per top-level field and per per-frame column, each written by
    json's C encoder (an indented dump goes through its pure-Python one: 0.5 s for 10,000 frames
    on the development machine)."""
    def field(key, value, indent: str) -> str:
        return f"{indent}{json.dumps(key)}: {json.dumps(value)}"

    lines = []
    for key, value in report.items():
        if key == "per_frame" and isinstance(value, dict) and value:
            columns = ",\n".join(field(k, v, "  ") for k, v in value.items())
            lines.append(f' {json.dumps(key)}: {{\n{columns}\n }}')
        else:
            lines.append(field(key, value, " "))
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_qc(out_dir, report: dict, *, recording=None, subject=None, poses=None) -> tuple[Path, Path | None]:
    """``qc.json`` and ``qc.png`` (residual at the bone per view and frame, the limit line,
    and with refinement the similarity per view; points coloured by status) in ``out_dir``.
    With ``recording``, ``subject`` and ``poses`` [F, 6] (the pose each frame ended with,
    registered or not; NaN: none), also ``qc_worst_<frame>.png``: the report's worst frames
    with the bone drawn at that pose. Plots need matplotlib (skipped with a warning when it is
    missing). Returns the paths of qc.json and qc.png (None for a skipped plot)."""
    from fluororeg.io.atomic import atomic_write_text

    out = Path(out_dir)
    json_path = out / "qc.json"
    atomic_write_text(json_path, qc_json_text(report))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: qc.png is not written", stacklevel=2)
        return json_path, None
    pf = report["per_frame"]
    frames = np.asarray(pf["frame"])
    status = np.asarray(pf["status"])
    panels = []
    if "residual_bone_mm" in pf:  # the landmark path's figures (not in a track run's report)
        rb = np.array([[np.nan if v is None else v for v in row] for row in pf["residual_bone_mm"]],
                      float).reshape(-1, 2)
        panels += [("residual", k) for k in range(2)]
    if "similarity" in pf:
        sim = np.array([[np.nan if v is None else v for v in row] for row in pf["similarity"]], float).reshape(-1, 2)
        panels += [("similarity", k) for k in range(2)]
    if not panels:  # nothing measured per frame to plot
        return json_path, None
    height = 2.75 * len(panels)  # inches
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, height), sharex=True)
    for ax, (kind, k) in zip(axes, panels):
        values = rb[:, k] if kind == "residual" else sim[:, k]
        for s in np.unique(status):  # markers of a line: Agg draws them as one stamped path (scatter: 1.7x slower)
            sel = status == s
            ax.plot(frames[sel], values[sel], "o", ms=3.2, ls="none", color=_STATUS_COLOURS.get(s, "tab:gray"), label=s)
        if kind == "similarity":
            ax.set_ylabel(f"view {k + 1} similarity")
            continue
        if report["max_residual_mm"] is not None:
            ax.axhline(report["max_residual_mm"], color="k", ls="--", lw=1, label="limit")
        ax.set_ylabel(f"view {k + 1} RMS at bone (mm)")
        if np.isfinite(values).any() and np.nanmax(values) > 20 * max(report["max_residual_mm"] or 1.0, 1e-3):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1].set_xlabel("frame")
    fig.suptitle(f"{report['registered']} of {report['frames']} frames registered")
    # Margins in inches (tight_layout measured every label: 0.2-0.35 s of a run's fixed cost).
    fig.subplots_adjust(left=0.8 / 9, right=1 - 0.15 / 9, bottom=0.5 / height, top=1 - 0.45 / height, hspace=0.1)
    png = out / "qc.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    if recording is not None and subject is not None and poses is not None:
        write_worst_overlays(out, report, recording, subject, poses)
    return json_path, png


def write_worst_overlays(out_dir, report: dict, recording, subject, poses) -> list[Path]:
    """``qc_worst_<frame>.png`` for each of the report's worst frames: both views with the bone
    and landmarks drawn at ``poses`` [F, 6] (row = the recording's frame index), so a lab sees at
    a glance what went wrong. Earlier runs' worst-frame images are removed first."""
    from PIL import Image

    from fluororeg.viz.overlay import overlay_pair

    out = Path(out_dir)
    for old in out.glob("qc_worst_*.png"):
        old.unlink(missing_ok=True)
    numbers = list(np.asarray(getattr(recording, "frame_numbers", np.arange(len(recording)))))
    written = []
    for w in report["worst"]:
        i = numbers.index(w["frame"]) if w["frame"] in numbers else None
        if i is None:
            continue
        image = overlay_pair(recording.frame(i), subject, recording.geometry.views, np.asarray(poses[i], np.float64),
                             distortion=recording.geometry.distortion, frame=int(w["frame"]), status=w["status"])
        path = out / f"qc_worst_{int(w['frame'])}.png"
        Image.fromarray(image).save(path)
        written.append(path)
    return written
