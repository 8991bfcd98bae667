"""Registering a whole recording: frames -> crops -> style translation -> landmark detection
-> point undistortion -> Eq. 2 registration, one row per frame.

For every frame of both views (:mod:`fluororeg.io.recording`):

1. Crop to the bone (the one crop rule, :mod:`fluororeg.inference.crops`): a square whose
   pixel size at the subject matches the artificial dataset's (``crop_pixel_mm``, 2 mm by
   default): the side in frame pixels is ``size * crop_pixel_mm / (pitch * SOD / SDD)``.
   With ``recentre`` (the default) a first, cheap pass locates the bone: crops around the
   field-of-view centre (SOD: the source's distance to where the principal rays cross, :func:`~fluororeg.core.geometry.beam_crossing`),
   Beer-Lambert inversion, detection and registration of the chunk's frames; the final crops
   are then centred on where that pose puts the model origin in each (distorted) frame, with
   SOD its depth. The dataset centres the model origin within +-15 mm, so a subject that walks
   through the field of view is seen by the detector as in training. Frames the first pass
   cannot register keep the field-of-view crop. Outside the frame and the circular field of
   view the crop is filled with the open-field grey (air).
2. Style: ``'translate'`` runs the X-ray-to-DRR generator (the paper's method); ``'log'``
   inverts Beer-Lambert instead (``-ln(I / I_open)``, a physics-based DRR look without
   learning); ``'invert'`` only flips grey levels (bone bright, as in DRRs); ``'none'`` feeds
   the X-ray as it is.
3. Detect: landmarks in crop pixels and a confidence each, mapped back to frame pixels.
4. Undistort the detected points with the view's distortion model from the geometry file,
   rather than resampling the images first: exact for the points, and the detector sees the
   distorted image, whose shape differs from an undistorted one by little more than an
   affine map within a crop (for the simulator's 4 % pincushion + S-distortion, 0.23 crop px
   on average after the best affine fit).
5. Register all frames with the C++ batch solver (four mirror cases, robust loss), or frame
   after frame from the previous pose (``init='previous'``). Frames whose two views disagree
   far beyond the recording's typical residual (the detector failed in one view) are solved
   from the view that fits alone (``'one_view'``) or left unregistered (``'views_disagree'``):
   :func:`~fluororeg.core.registration.check_view_agreement`; the core does all of it in one call
   (:meth:`PipelineOptions.registration_options`). Optional low-pass smoothing.

6. Quality gate (:mod:`fluororeg.pipeline.quality`): absurd geometry is refused before any
   work; frames whose input is unusable (a blank or saturated view, the same image as both
   views, a detector whose output ignores its input) get their own status and are not
   registered; every solved frame must pass absolute limits per view (RMS residual in mm at the
   bone, ``max_residual_mm``: from the detector's recorded validation error, else 2.5 crop
   pixels; enough inliers), else ``'large_residual'`` / ``'few_inliers'`` (the pose stays in
   ``batch`` for inspection; the files have none); a one-view mirror pick with a small objective
   gap is ``'ambiguous_mirror'``. ``poses.csv`` gets the residuals at the bone and inliers per
   view; ``qc.json`` and ``qc.png`` summarise the recording.

Frames are read once per chunk for both passes and for the input checks' figures (thumbnails,
percentiles: :class:`~fluororeg.pipeline.quality.InputStatistics`); chunks are read in order and
worked on by a few threads at once (:func:`detect_recording`). Detections (and the crop boxes) are saved per
chunk of frames under ``<out>/detections/chunk_FIRST_LAST.npz``, so an interrupted run resumes
where it stopped. Each chunk holds its frame indices, a hash of every frame it was made from
(:func:`frame_hashes`: SHA-256 of each view's image as read, with its shape and dtype) and the
digest of the settings. A chunk is reused only if it is whole and its frames' hashes and
settings match this run's; a damaged one (truncated, not a zip, wrong keys or shapes) is
reported once by name and detected again, as are chunks whose frames changed (said once). A
change of settings (``detections/settings.json``: the networks' file digests, the geometry,
the crops' fields of view, the options that shape detection) discards every chunk. Chunks are
written to a temporary file and renamed, so a killed run never leaves half a chunk.

The run owns its output folder (:mod:`fluororeg.io.run_lock`: a second writer is refused).
It first deletes an earlier run's results (``poses.csv``, ``poses.tra`` and its sidecar,
``options.json``, ``qc.json``, ``qc.png``) and writes them anew at the end from the complete
in-memory result, each file atomically: the folder never mixes rows or files of two runs.
``poses.tra`` is Autoscoper's file for the same poses (:func:`write_run_tra`): load it with the
trial in Autoscoper as it is.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.io.recording import MAX_FRAME_RATE_HZ
from fluororeg.core.temporal import check_smoothing, smooth_poses
from fluororeg.inference.crops import bone_crop_boxes, frame_stack, recording_crop_boxes, recording_fovs, view_crops

__all__ = ["PipelineOptions", "RecordingResult", "detect_recording", "frame_hashes", "locate_bone_boxes",
           "refine_pixel_mm", "register_detections", "register_recording", "subject_refine_pixel_mm", "write_run_tra",
           "run_subject_record"]

INITS = ("triangulate", "paper", "previous")  # PipelineOptions.init
# detections/chunk_*.npz layout (2: with frames, frame_hashes, settings_sha256; 3: SHA-256 frame hashes)
CHUNK_FORMAT = 3
CHUNK_KEYS = ("detections", "confidence", "crop_boxes", "frames", "frame_hashes", "settings_sha256")
FRAME_HASH_BYTES = 16     # bytes of a frame's hash kept (the first of its SHA-256 digest)
# The detection pass: at most this many chunks worked on at once (each on all threads), and
# their frames within DETECTION_MEMORY_BYTES.
DETECTION_WORKERS = 4
DETECTION_MEMORY_BYTES = 1 << 30
# A run's outputs (and qc_worst_*.png); poses.tra.fluororeg.json: the .tra's sidecar (io.autoscoper).
RESULT_FILES = ("poses.csv", "poses.tra", "poses.tra.fluororeg.json", "options.json", "qc.json", "qc.png")


@dataclass(frozen=True)
class PipelineOptions:
    style: str = "translate"          # 'translate' | 'log' | 'invert' | 'none'
    crop_pixel_mm: float = 2.0        # crop pixel size at the subject (the dataset's pixel_mm)
    mode: str = "least_squares"       # Eq. 2 form: 'least_squares' | 'frobenius'
    loss: str | None = "cauchy"       # robust loss against wild detections (None, 'huber', 'cauchy')
    loss_scale_mm: float = 6.0        # about twice the detector's typical error at the bone (1.5 px of 2 mm)
    mirror: bool = True               # the paper's four-case mirror strategy
    min_visible: int = 6              # fewer landmarks in both fields of view: not registrable
    min_confidence: float = 0.0       # detections below this confidence are dropped
    use_confidence_weights: bool = True
    # Eq. 2's start: 'triangulate' (the landmarks triangulated from both views, rigidly fitted:
    # no assumption on the CT's axes), 'paper' (system centre, theta 0: right only when the CT's
    # axes agree with the world's) or 'previous' (frame after frame).
    init: str = "triangulate"
    smoothing_hz: float | None = None  # low-pass cut-off (Hz); needs the frame rate
    fps: float | None = None          # frame rate (frames/s); None: the recording's frame_rate_hz
    recentre: bool = True             # locate the bone first, then crop around it (see above)
    view_outlier_ratio: float | None = 4.0  # RegistrationOptions.view_outlier_ratio (None: off)
    chunk: int = 32                   # frames per detection chunk (resume granularity)
    # Intensity refinement after landmark registration (fluororeg.pipeline.refine_stage): on by
    # default, measured on independent-renderer recordings (benchmarks/bench_pipeline.py
    # --independent); its similarity gate then decides which frames are registered.
    refine: bool = True
    # Where refinement renders: 'cpu', 'cuda' or 'auto' (CUDA when usable). The CUDA path runs
    # the CPU's per-ray code and gives the CPU's poses to rounding (on an H100 33x the same
    # machine's 16 cores: benchmarks/results/h100_5c17644_bench_refine.json).
    refine_device: str = "auto"
    # The refinement's gate: the least similarity of a registered frame (None: RefineOptions'
    # 0.6). Measured at the true pose: 0.92-0.99 on simulated and independent-renderer frames
    # of two head CTs, 0.60-0.62 on real wrist frames (the radius among other bones and soft
    # tissue: benchmarks/bench_real_wrist.py); a head refined from a start 160-180 deg off ends
    # in a false near-mirror optimum at 0.51-0.55. Lower it only after checking overlays.
    min_similarity: float | None = None
    num_threads: int = 0              # C++ core and onnxruntime threads (0: fluororeg.core.threads' count)
    # The quality gate (fluororeg.pipeline.quality, RegistrationOptions.max_residual_mm): the
    # largest RMS residual per view at the bone, mm. None: RESIDUAL_LIMIT_FACTOR (2) times the
    # detector's validation error at the bone when it records one (val_mean_mm / val_err_mm; at
    # most twice the default), else max_residual_crop_px crop pixels (5 mm for 2 mm crops).
    max_residual_mm: float | None = None
    max_residual_crop_px: float = 2.5
    quality_gate: bool = True         # False: no absolute limit and no input checks
    input_checks: bool = True         # blank / duplicated views, constant detector, ambiguous mirror
    mirror_gap: float = 0.25          # relative objective gap of an ambiguous one-view mirror case
    # The VolumeFlip Autoscoper loads the subject's CT with (io.autoscoper.subject_volume_flip: a
    # subject imported from a trial has it; the CLI reads it): poses.tra is in that volume frame.
    autoscoper_flip: tuple = (0, 0, 0)

    def __post_init__(self):
        if self.style not in ("translate", "log", "invert", "none"):
            raise ValueError(f"style '{self.style}' is unknown: expected 'translate', 'log', 'invert' or 'none'")
        if self.refine_device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"refine_device '{self.refine_device}' is unknown: expected 'cpu', 'cuda' or 'auto'")
        if self.init not in INITS:
            raise ValueError(f"init '{self.init}' is unknown: expected one of {INITS}")
        if not (np.isfinite(self.min_confidence) and 0 <= self.min_confidence < 1):
            raise ValueError(f"min_confidence = {self.min_confidence!r}: expected a number in [0, 1)")
        if not (np.isfinite(self.crop_pixel_mm) and self.crop_pixel_mm > 0):
            raise ValueError(f"crop_pixel_mm = {self.crop_pixel_mm!r}: expected a positive size in mm")
        if not (isinstance(self.chunk, int) and self.chunk >= 1):
            raise ValueError(f"chunk = {self.chunk!r}: expected an integer >= 1")
        if self.view_outlier_ratio is not None and not (np.isfinite(self.view_outlier_ratio)
                                                        and self.view_outlier_ratio > 1.5):
            raise ValueError(f"view_outlier_ratio = {self.view_outlier_ratio!r}: expected None (off) or a number > 1.5")
        if self.fps is not None and not (np.isfinite(self.fps) and 0 < self.fps <= MAX_FRAME_RATE_HZ):
            raise ValueError(f"fps = {self.fps!r}: expected a positive frame rate (frames/s), at most "
                             f"{MAX_FRAME_RATE_HZ:g}, or None")
        if self.smoothing_hz is not None and not (np.isfinite(self.smoothing_hz) and self.smoothing_hz > 0):
            raise ValueError(f"smoothing_hz = {self.smoothing_hz!r}: expected a positive cut-off (Hz) or None (off)")
        if self.smoothing_hz is not None and self.fps is not None:
            check_smoothing(self.smoothing_hz, self.fps)
        if self.max_residual_mm is not None and not (np.isfinite(self.max_residual_mm) and self.max_residual_mm > 0):
            raise ValueError(f"max_residual_mm = {self.max_residual_mm!r}: expected a positive limit in mm at the "
                             "bone, or None (from the detector's metadata)")
        if not (np.isfinite(self.max_residual_crop_px) and self.max_residual_crop_px > 0):
            raise ValueError(f"max_residual_crop_px = {self.max_residual_crop_px!r}: expected a positive number")
        if self.min_similarity is not None:
            from fluororeg.core.refine import check_min_similarity

            check_min_similarity(self.min_similarity)
        if not (np.isfinite(self.mirror_gap) and 0 <= self.mirror_gap < 1):
            raise ValueError(f"mirror_gap = {self.mirror_gap!r}: expected a number in [0, 1)")
        from fluororeg.io.autoscoper import check_volume_flip

        check_volume_flip(self.autoscoper_flip)
        self.registration_options()  # the solver's own checks, before any work

    def registration_options(self):
        """The core's :class:`~fluororeg.core.registration.RegistrationOptions` for these settings
        (solver, init mode and view-agreement check; ``joint_ratio`` min(2.5, the outlier ratio))."""
        from fluororeg.core.registration import RegistrationOptions
        from fluororeg.core.threads import num_threads as process_threads

        ratio = self.view_outlier_ratio
        # 'triangulate' is the pipeline's: it hands the core one start per frame (its 'given').
        init = "paper" if self.init == "triangulate" else self.init
        return RegistrationOptions(mode=self.mode, loss=self.loss, loss_scale_mm=self.loss_scale_mm,
                                   mirror=self.mirror, min_visible=self.min_visible, init=init,
                                   view_outlier_ratio=ratio, view_joint_ratio=2.5 if ratio is None else min(2.5, ratio),
                                   num_threads=process_threads(self.num_threads),
                                   max_residual_mm=self.residual_limit_mm())

    def residual_limit_mm(self, detector=None) -> float | None:
        """The gate's limit, mm at the bone (None: no gate): ``max_residual_mm`` when set, else
        from ``detector``'s metadata (see the field), else ``max_residual_crop_px`` crop pixels."""
        if not self.quality_gate:
            return None
        if self.max_residual_mm is not None:
            return float(self.max_residual_mm)
        from fluororeg.pipeline.quality import max_residual_from_detector

        default = self.max_residual_crop_px * self.crop_pixel_mm
        from_meta = max_residual_from_detector(detector) if detector is not None else None
        if from_meta is None:
            return default
        # A poor detector's error must not make the gate lax: at most twice the default.
        if from_meta > 2 * default:
            warnings.warn(f"the detector's recorded validation error allows {from_meta:.1f} mm at the bone; the quality "
                          f"gate uses at most {2 * default:.1f} mm (2 x {self.max_residual_crop_px:g} crop pixels): "
                          "expect many frames flagged 'large_residual' / 'few_inliers'", stacklevel=2)
        return min(from_meta, 2 * default)


@dataclass
class RecordingResult:
    frames: np.ndarray         # [F]
    poses: np.ndarray          # [F, 6] deg, mm (NaN: not registered)
    status: np.ndarray         # [F] str
    batch: object              # fluororeg.core.registration.BatchResult (before smoothing)
    detections: np.ndarray     # [F, 2, N, 2] undistorted frame px (NaN: not detected)
    confidence: np.ndarray     # [F, 2, N]
    seconds: float             # wall-clock of the whole run
    out_dir: Path | None = None
    qc: dict | None = None     # fluororeg.pipeline.quality.qc_report
    # Wall-clock per stage, s: 'detect' (reading, crops, style, detection, the recentring pass's
    # registration, the input checks' per-frame figures of the frames read), 'input_checks'
    # (the checks on those figures), 'register' (landmark registration), 'refine', 'write'
    # (poses.csv, poses.tra, options.json, qc.json, qc.png and the worst frames' figures).
    stage_seconds: dict | None = None
    # The process's CPU time per stage, s (every thread; the same stages): against the wall-clock,
    # how busy the cores were (with the refinement's renders on a GPU, its host work).
    stage_cpu_seconds: dict | None = None

    @property
    def frames_per_s(self) -> float:
        return len(self.frames) / self.seconds if self.seconds > 0 else float("nan")


def run_subject_record(subject) -> dict:
    """What a run folder's options.json says of its subject: name, fingerprint and origin (mm, the
    model frame's origin in the CT: poses.csv's poses are in that frame), so that readers of
    poses.csv can tell a changed or another subject (:func:`fluororeg.io.poses.run_subject_elsewhere`)."""
    return {"subject": subject.name, "subject_fingerprint": subject.fingerprint,
            "subject_origin": [float(v) for v in subject.origin]}


def write_run_tra(path, frame_numbers, world_from_model, subject, flip=(0, 0, 0)) -> bool:
    """A run folder's ``poses.tra`` (``register``, ``track``): Autoscoper's ``world_from_volume``
    of each frame of the recording, a line per frame in its order (NaN: not registered), for the
    subject's CT loaded in Autoscoper with VolumeFlip ``flip``, with its sidecar (fluororeg reads
    it back in the model frame: ``evaluate --reference``, ``track --start``); the same file as
    ``fluororeg export --format tra`` writes. ``world_from_model`` [F, 4, 4]. A CT whose index axes
    and that volume frame differ in handedness has no such map: no file (False) and a warning
    naming the flip that has one."""
    from fluororeg.io.autoscoper import write_autoscoper_tra

    frames = np.asarray(frame_numbers, dtype=np.int64)
    try:
        write_autoscoper_tra(path, frames, world_from_model, subject, trial_frames=frames, flip=flip)
    except ValueError as exc:
        warnings.warn(f"{Path(path).name} is not written: {exc}", stacklevel=2)
        return False
    return True


def _training_image_size(detector) -> int:
    """The image size of the dataset the detector was trained on (its metadata), else its input size."""
    size = detector.model.meta.get("training_image_size") if hasattr(detector, "model") else None
    return int(size) if size else int(detector.input_size[0])


# The refinement's finest pixel at the bone is the crop's field of view over this many pixels:
# a head's 256 mm crop gives 2 mm (bench_refine's figures), a radius's 129 mm about 1 mm.
REFINE_PIXELS_PER_CROP = 128


def refine_pixel_mm(options: PipelineOptions, detector) -> float:
    """The refinement's finest pixel at the bone (mm) for ``refine_poses(pixel_mm=)``: the field of
    view of the detector's dataset (its crop pixel size, else ``options.crop_pixel_mm``, times its
    image size: sized to the bone, ``DatasetConfig.for_subject``) over
    :data:`REFINE_PIXELS_PER_CROP`, so it follows the bone's size, not the dataset's resolution."""
    crop_mm = getattr(detector, "crop_pixel_mm", None) or options.crop_pixel_mm
    return float(crop_mm) * _training_image_size(detector) / REFINE_PIXELS_PER_CROP


def subject_refine_pixel_mm(subject) -> float:
    """:func:`refine_pixel_mm` without a detector, from the bone alone: the field of view a dataset
    would give a crop of the bone (``CROP_MARGIN`` times the diameter of the sphere that holds it)
    over :data:`REFINE_PIXELS_PER_CROP`, the sphere about the bone's centroid
    (:func:`~fluororeg.dataset.generate.bone_radius_mm`), so that the subject's origin does not
    change it. (A dataset's crops are centred at the origin, the landmarks' centroid: there the two
    differ by a few per cent; a radius 1.04 mm here against 1.01 from its dataset. With the origin
    at the CT's corner, the dataset's field of view gave a radius 1.82 mm, and frame 99 of the
    wrist sample failed the gate.)"""
    from fluororeg.dataset.generate import CROP_MARGIN, bone_radius_mm

    return 2.0 * bone_radius_mm(subject) * CROP_MARGIN / REFINE_PIXELS_PER_CROP


def _registration_weights(det: np.ndarray, conf: np.ndarray, options: PipelineOptions) -> np.ndarray:
    """Per-landmark weights [..., 2, N]: the detector's confidences, or 1 for every detection."""
    return conf if options.use_confidence_weights else np.where(np.isfinite(det[..., 0]), 1.0, 0.0)


def _registration_kwargs(subject, options: PipelineOptions) -> dict:
    return dict(pairs=subject.pairs, mode=options.mode, loss=options.loss, loss_scale_mm=options.loss_scale_mm,
                mirror=options.mirror, min_visible=options.min_visible)


def register_detections(subject, views, det, conf, options: PipelineOptions, *, init: str | None = None):
    """Register detections [F, 2, N, 2] (undistorted frame px) with confidences [F, 2, N] as
    the pipeline does: one call to the core's batch registration with the options' settings
    (:meth:`PipelineOptions.registration_options`: robust loss, the check of the two views'
    agreement) from the ``init`` start (default ``options.init``): 'triangulate'
    (:func:`~fluororeg.core.registration.triangulated_poses`; frames without enough landmarks in
    both views start from the paper's start), 'paper', or 'previous' (frame after frame).
    Returns a :class:`~fluororeg.core.registration.BatchResult`."""
    from fluororeg.core.registration import register_frames, triangulated_poses

    init = options.init if init is None else init
    if init not in INITS:
        raise ValueError(f"init '{init}' is unknown: expected one of {INITS}")
    weights = _registration_weights(det, conf, options)
    opts = options.registration_options()
    if init != "triangulate":
        return register_frames(subject.landmarks_model, views, det, weights=weights, pairs=subject.pairs,
                               options=opts.replace(init=init))
    # NaN rows (too few landmarks seen in both views) start from the paper's start in the core.
    starts = triangulated_poses(subject.landmarks_model, views, np.where(weights[..., None] > 0, det, np.nan),
                                subject.mirror_permutation())
    return register_frames(subject.landmarks_model, views, det, weights=weights, pairs=subject.pairs,
                           init_poses=starts, options=opts.replace(init="paper"))


def _detect(images, boxes, fov, size, style, detector, translator, view, distortion, min_confidence, num_threads):
    """Detections of one view: undistorted frame px [n, N, 2] (NaN: dropped) and confidences [n, N]."""
    crops = view_crops(images, boxes, fov, size, style, num_threads=num_threads)
    if style == "translate":
        crops = translator.translate(crops)
    elif style == "invert":
        crops = 255 - crops
    xy, cf = detector.detect(crops)
    xy = np.stack([box.to_frame(p) for box, p in zip(boxes, xy)])  # raw (distorted) frame pixels
    keep = (cf >= min_confidence) & (xy[..., 0] >= -0.5) & (xy[..., 0] < view.width - 0.5) \
        & (xy[..., 1] >= -0.5) & (xy[..., 1] < view.height - 0.5)
    if fov is not None:  # only inside the intensifier's circular field of view
        keep &= np.hypot(xy[..., 0] - fov.cx, xy[..., 1] - fov.cy) <= fov.radius
    if distortion is not None:
        xy = distortion.undistort_points(xy.reshape(-1, 2)).reshape(xy.shape)
    xy[~keep] = np.nan
    return xy, np.where(keep, cf, 0.0)


def _detection_settings(recording, detector, translator, options: PipelineOptions, subject, fovs) -> dict:
    """What the saved detections of ``recording`` depend on beyond each chunk's own frames
    (JSON-able), for a safe resume: the networks, the geometry, the crops' fields of view (from
    the recording's first frame; with the geometry they fix the first pass's crop boxes), the
    options that shape detection. The frames themselves are checked per chunk
    (:func:`frame_hashes`)."""
    import hashlib

    from fluororeg.calibration.geometry_file import geometry_to_dict

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    settings = {"chunk_format": CHUNK_FORMAT,
                "geometry_sha256": digest(json.dumps(geometry_to_dict(recording.geometry), sort_keys=True).encode()),
                "crop_fields_of_view": [None if f is None else [float(f.cx), float(f.cy), float(f.radius)]
                                        for f in fovs],
                "detector_sha256": detector.model.digest,
                "translator_sha256": translator.model.digest if options.style == "translate" else None,
                "style": options.style, "crop_pixel_mm": options.crop_pixel_mm,
                "min_confidence": options.min_confidence, "recentre": options.recentre}
    if options.recentre:  # the first pass registers: its settings place the final crops
        settings.update(subject=subject.fingerprint, **_registration_kwargs(subject, options),
                        use_confidence_weights=options.use_confidence_weights,
                        view_outlier_ratio=options.view_outlier_ratio,
                        registration_limit_mm=options.residual_limit_mm())
        settings["pairs"] = [list(p) for p in settings["pairs"]]
    return settings


def _settings_digest(settings: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def frame_hashes(images, num_threads: int = 0) -> np.ndarray:
    """[n, 2] hex digests (the first 128 bits of SHA-256) of frames as read: ``images[k][i]`` is
    view k's image of the chunk's i-th frame; each digest covers the image's shape, dtype and
    bytes. Computed on ``num_threads`` threads (0: the process's count). SHA-256 rather than
    BLAKE2b: processors with SHA extensions hash 2.4 times faster with it (1.4 against 0.57
    GB/s on the development machine)."""
    import hashlib

    from fluororeg.core.threads import thread_map

    def digest(im) -> str:
        a = np.ascontiguousarray(im)
        h = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode())
        h.update(a.reshape(-1).view(np.uint8))  # the bytes as stored (any dtype, any byte order)
        return h.hexdigest()[:2 * FRAME_HASH_BYTES]

    n = len(images[0])
    out = np.empty((n, 2), dtype=f"U{2 * FRAME_HASH_BYTES}")
    if n:  # hashlib hashes large buffers without the GIL
        out[:] = np.reshape(thread_map(digest, [im for view in images for im in view], num_threads), (2, n)).T
    return out


def _chunk_name(sel) -> str:
    return f"chunk_{int(sel[0]):06d}_{int(sel[-1]):06d}.npz"


def _prepare_detection_cache(chunk_dir: Path, settings: dict, planned: set[str]) -> None:
    """Keep the saved detection chunks in ``chunk_dir`` only if they were made with ``settings``
    (``settings.json``); drop chunk files this run does not plan (``planned``: their names) and
    temporary files a killed run left."""
    chunk_dir.mkdir(parents=True, exist_ok=True)
    path = chunk_dir / "settings.json"
    try:
        saved = json.loads(path.read_text()) if path.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        saved = {}
    saved = saved if isinstance(saved, dict) or saved is None else {}
    chunks = sorted(chunk_dir.glob("chunk_*.npz"))
    if saved != settings and chunks:
        changed = sorted(k for k in set(settings) | set(saved or {}) if (saved or {}).get(k) != settings.get(k))
        warnings.warn(f"'{chunk_dir}': the saved detections were made with other settings "
                      f"({', '.join(changed) if saved is not None else 'unknown'}); detecting again", stacklevel=4)
        for chunk in chunks:
            chunk.unlink()
    else:
        for chunk in chunks:
            if chunk.name not in planned:  # another chunk size, frame selection or recording length
                chunk.unlink()
    for tmp in chunk_dir.glob(".chunk_*.tmp.npz"):
        tmp.unlink(missing_ok=True)
    if saved != settings:
        atomic_write_text(path, json.dumps(settings, indent=2))


def _load_chunk(path: Path, frames, hashes, settings_sha256: str, n_landmarks: int):
    """A saved chunk's (detections, confidence) when it is whole and was made from exactly these
    ``frames`` (their ``hashes``) with these settings; else ``(None, kind, why)``, ``kind``
    'damaged' (unreadable, wrong keys or shapes) or 'stale' (made from other frames or settings)."""
    n = len(frames)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return None, "damaged", f"unreadable: {exc}"
    if head != b"PK\x03\x04":
        return None, "damaged", "empty file" if not head else "not an .npz (zip) file"
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if files == {"detections", "confidence", "crop_boxes"}:
                return None, "stale", "an older fluororeg's chunk without frame hashes"
            if not set(CHUNK_KEYS) <= files:
                return None, "damaged", f"missing {sorted(set(CHUNK_KEYS) - files)}"
            arrays = {k: z[k] for k in CHUNK_KEYS}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a damaged cache entry, redone
        return None, "damaged", f"truncated or corrupt: {type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
    det, conf = arrays["detections"], arrays["confidence"]
    expected = {"detections": (n, 2, n_landmarks, 2), "confidence": (n, 2, n_landmarks), "crop_boxes": (n, 2, 4),
                "frames": (n,), "frame_hashes": (n, 2), "settings_sha256": ()}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            return None, "damaged", f"{key} has shape {arrays[key].shape}, expected {shape}"
    if det.dtype.kind != "f" or conf.dtype.kind != "f" or arrays["frames"].dtype.kind not in "iu":
        return None, "damaged", "unexpected data types"
    if str(arrays["settings_sha256"]) != settings_sha256:
        return None, "stale", "made with other settings"
    if not np.array_equal(arrays["frames"], np.asarray(frames)) or not np.array_equal(arrays["frame_hashes"], hashes):
        return None, "stale", "made from other frames"
    return (det, conf), None, None


def detect_recording(recording, detector, translator=None, options: PipelineOptions = PipelineOptions(),
                     frames=None, *, subject=None, out_dir=None, progress: bool = True, statistics=None,
                     fovs=None):
    """Detected landmarks [F, 2, N, 2] (undistorted frame pixels) and confidences [F, 2, N].
    ``subject`` is needed for ``options.recentre`` (its first pass registers). With ``out_dir``
    the detections are kept per chunk under ``out_dir/detections/`` (see the module docstring)
    and the folder is locked for this writer (:mod:`fluororeg.io.run_lock`). With
    ``statistics`` (a :class:`fluororeg.pipeline.quality.InputStatistics` of the ``frames``),
    the input checks' figures of the frames read are gathered there too. ``fovs``: the
    recording's fields of view when the caller has found them
    (:func:`~fluororeg.inference.crops.recording_fovs`; else found here).

    Chunks of ``options.chunk`` frames are read in order on this thread and worked on by up to
    :data:`DETECTION_WORKERS` threads at once (none when ``options.num_threads`` is 1), with
    their frames within :data:`DETECTION_MEMORY_BYTES`; the results do not depend on it."""
    if out_dir is None:
        return _detect_recording(recording, detector, translator, options, frames, subject, None, progress,
                                 statistics, fovs)
    from fluororeg.io.run_lock import run_folder_lock

    with run_folder_lock(out_dir, "register"):
        return _detect_recording(recording, detector, translator, options, frames, subject, out_dir, progress,
                                 statistics, fovs)


def _detect_recording(recording, detector, translator, options, frames, subject, out_dir, progress, statistics,
                      fovs):
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from fluororeg.core.threads import num_threads as _threads
    from fluororeg.io.atomic import atomic_path

    if options.style == "translate" and translator is None:
        raise ValueError("style='translate' needs a style translator (X-ray to DRR); or use style='invert'/'none'")
    if options.recentre and subject is None:
        raise ValueError("options.recentre needs the subject (its first pass registers the frames); pass subject=")
    views = recording.geometry.views
    distortion = recording.geometry.distortion or (None, None)
    frames = np.arange(len(recording)) if frames is None else np.asarray(frames)
    if statistics is not None and statistics.F != len(frames):
        raise ValueError(f"input statistics of {statistics.F} frames for {len(frames)} frames to detect: expected "
                         "one InputStatistics of the frames detected")
    # Crops of the dataset's image size (crop_pixel_mm is its pixel size): the translator
    # works at that size, and the detector resamples to its own input size as in training.
    size = translator.input_size[0] if options.style == "translate" else _training_image_size(detector)
    fovs, fixed = recording_crop_boxes(recording, size, options.crop_pixel_mm, fovs=fovs)
    N = len(detector.landmark_names)
    det = np.full((len(frames), 2, N, 2), np.nan)
    conf = np.zeros((len(frames), 2, N))
    chunk_dir = Path(out_dir) / "detections" if out_dir is not None else None
    starts = range(0, len(frames), options.chunk)
    settings_sha256 = ""
    if chunk_dir is not None:
        settings = _detection_settings(recording, detector, translator, options, subject, fovs)
        settings_sha256 = _settings_digest(settings)
        _prepare_detection_cache(chunk_dir, settings, {_chunk_name(frames[c0:c0 + options.chunk]) for c0 in starts})

    def work(c0: int, sel: np.ndarray, images: list) -> tuple:
        """One chunk (on a worker): its detections into det / conf; returns the input
        statistics' figures of its frames (or None) and what to tell of a saved chunk not used
        ((kind, why, path) or None)."""
        rows = slice(c0, c0 + len(sel))
        stacks = [frame_stack(images[k]) for k in range(2)]  # float32 [n, H, W] per view, made once
        figures = None if statistics is None else [statistics.figures(k, stacks[k]) for k in range(2)]
        path = chunk_dir / _chunk_name(sel) if chunk_dir is not None else None
        unused = None
        if path is not None:  # of the frames as read; on this thread (the workers hash chunks side by side)
            hashes = frame_hashes(images, 1)
            if path.exists():
                saved, kind, why = _load_chunk(path, sel, hashes, settings_sha256, N)
                if saved is not None:
                    det[rows], conf[rows] = saved
                    return figures, None
                unused = (kind, why, path)
        boxes = [(fixed[0], fixed[1])] * len(sel)
        if options.recentre:
            boxes = locate_bone_boxes(recording, stacks, subject, detector, options, fovs, fixed, size)
        for k in range(2):
            det[rows, k], conf[rows, k] = _detect(stacks[k], [b[k] for b in boxes], fovs[k], size, options.style,
                                                  detector, translator, views[k], distortion[k],
                                                  options.min_confidence, options.num_threads)
        if path is not None:
            with atomic_path(path, ".npz") as tmp:  # a killed run never leaves half a chunk
                np.savez(tmp, detections=det[rows], confidence=conf[rows],
                         crop_boxes=np.array([[b.as_tuple() for b in pair] for pair in boxes], np.float64),
                         frames=np.asarray(sel, np.int64), frame_hashes=hashes,
                         settings_sha256=np.array(settings_sha256))
        return figures, unused

    told_changed = False

    def finish(c0: int, sel: np.ndarray, result: tuple) -> None:
        """A chunk's end, in frame order (on this thread): what to tell, statistics, progress."""
        nonlocal told_changed
        figures, unused = result
        if unused is not None:
            kind, why, path = unused
            if kind == "damaged":
                warnings.warn(f"detection chunk '{path}' is damaged ({why}): detecting its frames again", stacklevel=4)
            elif not told_changed:  # said once: typically the recording's frames were replaced or reordered
                told_changed = True
                warnings.warn(f"'{chunk_dir}': saved detections no longer match this run ('{path.name}': {why}; "
                              "the recording's frames changed?): detecting again the chunks whose frames differ",
                              stacklevel=4)
        if statistics is not None:
            statistics.add(c0, figures, found=np.isfinite(det[c0:c0 + len(sel), :, :, 0]).any(axis=2))
        bar.update(len(sel))

    # Chunks are read here, in order (a video decodes frame after frame), and worked on by up to
    # `workers` threads at once: a chunk's Python steps run beside another's core and ONNX calls,
    # which release the GIL. One thread asked for: no worker, no overlap.
    threads = _threads(options.num_threads)
    workers = 1 if threads == 1 else min(DETECTION_WORKERS, threads)
    bar = tqdm(total=len(frames), unit="frame", disable=not progress, desc="detect")
    pending = deque()  # (c0, sel, future) of the chunks handed to the workers, in frame order
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fluororeg_detect") if threads > 1 else None
    try:
        for c0 in starts:
            sel = frames[c0:c0 + options.chunk]
            images = [recording.read(k, sel, options.num_threads) for k in range(2)]
            if pool is None:
                finish(c0, sel, work(c0, sel, images))
                continue
            if c0 == 0:  # the frames of the chunks in flight within DETECTION_MEMORY_BYTES
                chunk_bytes = sum(np.asarray(im).nbytes for view in images for im in view)
                workers = max(1, min(workers, DETECTION_MEMORY_BYTES // max(chunk_bytes, 1) - 1))
            pending.append((c0, sel, pool.submit(work, c0, sel, images)))
            del images
            while len(pending) > workers:  # the oldest chunk first: results are told in frame order
                c, chunk, future = pending.popleft()
                finish(c, chunk, future.result())
        while pending:
            c, chunk, future = pending.popleft()
            finish(c, chunk, future.result())
    except KeyboardInterrupt:  # interrupted: the chunks not started are dropped, those running end
        for *_, future in pending:
            future.cancel()
        raise
    finally:
        # Failed (a frame that cannot be read, say): the chunks already read are worked on and saved,
        # so a run resumed after the fix starts from them, however far the workers had got.
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()
    return det, conf


def locate_bone_boxes(recording, images, subject, detector, options: PipelineOptions, fovs, fixed, size: int) -> list:
    """The recentring pass: crop boxes [n] of (box view 1, box view 2) centred on the bone in
    the frames ``images`` ([view][n] raw frames of ``recording``): detection on the
    field-of-view crops ``fixed`` (without learning: Beer-Lambert inversion when the pipeline
    translates, else its own style), landmark registration, and the boxes around where that
    pose puts the model origin (:func:`~fluororeg.inference.crops.bone_crop_boxes`; the
    field-of-view crop where the bone is not located). The style translator is trained on
    crops made by this rule (:mod:`fluororeg.training.xray_crops`), as it will see them."""
    views = recording.geometry.views
    distortion = recording.geometry.distortion or (None, None)
    style = "log" if options.style == "translate" else options.style  # cheap, needs no translator
    n, N = len(images[0]), len(detector.landmark_names)
    det, conf = np.full((n, 2, N, 2), np.nan), np.zeros((n, 2, N))
    for k in range(2):
        det[:, k], conf[:, k] = _detect(images[k], [fixed[k]] * n, fovs[k], size, style, detector, None, views[k],
                                        distortion[k], options.min_confidence, options.num_threads)
    located = register_detections(subject, views, det, conf, options, init="triangulate")
    return bone_crop_boxes(recording, located.poses, fixed, size, options.crop_pixel_mm)


def register_recording(recording, subject, detector, translator=None, options: PipelineOptions = PipelineOptions(),
                       *, out_dir=None, progress: bool = True) -> RecordingResult:
    """Register every frame of ``recording`` (see the module docstring). With ``out_dir``,
    writes ``poses.csv`` and ``poses.tra`` there and keeps detections for resuming; the folder
    is locked for this writer while it works (:mod:`fluororeg.io.run_lock`: a second writer is
    refused at once)."""
    if out_dir is None:
        return _register_recording(recording, subject, detector, translator, options, None, progress)
    from fluororeg.io.run_lock import run_folder_lock

    with run_folder_lock(out_dir, "register"):
        return _register_recording(recording, subject, detector, translator, options, out_dir, progress)


def _register_recording(recording, subject, detector, translator, options, out_dir, progress) -> RecordingResult:
    from fluororeg.core.refine import min_similarity_or_default
    from fluororeg.io.atomic import atomic_path
    from fluororeg.io.poses import write_poses_csv

    from fluororeg.pipeline import quality

    t0 = time.perf_counter()
    detector.check_subject(subject)
    n_landmarks = len(detector.landmark_names)
    if options.min_visible > n_landmarks:  # no frame could ever pass: said before any work
        raise ValueError(f"min_visible = {options.min_visible}: the detector finds {n_landmarks} landmarks; expected at "
                         f"most {n_landmarks}")
    quality.check_geometry(recording.geometry.views)  # absurd geometry: refused before any work
    refined_on = None  # where refinement renders: 'auto' made concrete, once
    if options.refine:  # so is a GPU that is not there
        from fluororeg.core.render import check_device_usable

        refined_on = check_device_usable(options.refine_device)
    limit_mm = options.residual_limit_mm(detector)
    if limit_mm != options.max_residual_mm:
        import dataclasses

        options = dataclasses.replace(options, max_residual_mm=limit_mm) if limit_mm is not None else options
    fps = options.fps if options.fps is not None else recording.frame_rate_hz
    if options.smoothing_hz is not None:  # before any work: a bad setting must not cost a whole run
        needed = check_smoothing(options.smoothing_hz, fps, n_frames=len(recording))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # The outputs of an earlier run go first: whatever this run leaves (finished or not), the
        # folder never shows poses of other settings or another recording beside its own.
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
            for tmp in out.glob(f".{name}.*.tmp*"):  # left by a run killed while writing it
                tmp.unlink(missing_ok=True)
        for old in out.glob("qc_worst_*.png"):
            old.unlink(missing_ok=True)
    frames = np.arange(len(recording))
    stages, t_stage = {}, time.perf_counter()
    stages_cpu, c_stage = {}, time.process_time()

    def stage_done(name: str) -> None:
        nonlocal t_stage, c_stage
        now, cpu = time.perf_counter(), time.process_time()
        stages[name], t_stage = now - t_stage, now
        stages_cpu[name], c_stage = cpu - c_stage, cpu

    checks = options.quality_gate and options.input_checks
    fovs = recording_fovs(recording)  # for the crops and the input checks
    # The input checks' figures, gathered from the frames the detection pass reads.
    statistics = quality.InputStatistics(len(frames), fovs, num_threads=options.num_threads) if checks else None
    det, conf = detect_recording(recording, detector, translator, options, frames, subject=subject, out_dir=out,
                                 progress=progress, statistics=statistics, fovs=fovs)
    stage_done("detect")
    views = recording.geometry.views
    # Input checks (fluororeg.pipeline.quality): unusable frames are not registered.
    flags = np.full(len(frames), "", dtype=object)
    blank = np.zeros((len(frames), 2), bool)  # [F, 2] views whose image is blank or saturated
    constant_views = np.zeros(2, bool)
    if checks:
        stats = statistics.result()
        flags[:] = quality.input_statuses(stats)
        blank = quality.blank_views(stats)
        constant_views = quality.constant_detector(det, stats)
        if constant_views.any():
            warnings.warn(f"the detections in view(s) {[int(k) + 1 for k in np.flatnonzero(constant_views)]} are the "
                          "same in frames whose images differ: the detector ignores its input; no frame is "
                          "registered (status 'constant_detector')", stacklevel=2)
            flags[flags == ""] = "constant_detector"
    usable = flags == ""
    det_in = np.where(usable[:, None, None, None], det, np.nan)
    stage_done("input_checks")
    batch = register_detections(subject, views, det_in, np.where(usable[:, None, None], conf, 0.0), options,
                                init=options.init)
    if checks:
        ambiguous = quality.ambiguous_mirror(batch, quality.InputCheckOptions(mirror_gap=options.mirror_gap)) \
            & batch.ok & usable
        flags[ambiguous] = "ambiguous_mirror"
    batch = quality.apply_input_statuses(batch, flags.astype(str))
    # Frames that failed the gate keep their pose in ``batch`` (for inspection); the written
    # poses are those of registered frames only.
    poses, status = np.where(batch.ok[:, None], batch.poses, np.nan), batch.status
    stage_done("register")
    refine_columns = None
    if options.refine:  # intensity refinement of the landmark poses (fluororeg.pipeline.refine_stage); before smoothing
        from fluororeg.pipeline.refine_stage import refine_recording_poses

        # Every landmark pose is a start, also those the landmark gate held back: the image
        # similarity after refinement is the final gate.
        # A frame with one blank view is refined against the other alone ('one_view').
        poses, status, refine_columns = refine_recording_poses(
            recording, subject, batch.poses, status, failed_views=blank & (flags == "blank_view")[:, None],
            device=refined_on, pixel_mm=refine_pixel_mm(options, detector),
            min_similarity=options.min_similarity, progress=progress)
    stage_done("refine")
    smoothed = False
    if options.smoothing_hz is not None:
        n_registered = int(np.isfinite(poses).all(axis=1).sum())
        if n_registered >= needed:
            poses, smoothed = smooth_poses(poses, options.smoothing_hz, fps), True
        else:  # the registrations stand; a filter over so few frames would not
            warnings.warn(f"only {n_registered} frames are registered and smoothing needs at least {needed}: the "
                          "poses are written unsmoothed", stacklevel=2)
    if out is not None:
        from fluororeg.core.geometry import pose_matrix

        matrices = np.where(np.isfinite(poses).all(axis=1)[:, None, None], pose_matrix(np.nan_to_num(poses)), np.nan)
        frame_numbers = getattr(recording, "frame_numbers", frames)  # the lab's numbers (file names), kept
        # The gate's figures a lab can check: residual at the bone per view (mm) and inliers;
        # then the refinement's.
        extra = {"residual_bone_mm_view1": batch.rms_bone_mm[:, 0], "residual_bone_mm_view2": batch.rms_bone_mm[:, 1],
                 "inliers_view1": batch.inliers[:, 0], "inliers_view2": batch.inliers[:, 1], **(refine_columns or {})}
        with atomic_path(out / "poses.csv", ".csv") as table:  # the whole table appears at once
            write_poses_csv(table, frame_numbers, status, poses, matrices, batch.objective, batch.rms_mm,
                            batch.rms_px, batch.n_vis, batch.mirror_case, extra_columns=extra)
        write_run_tra(out / "poses.tra", frame_numbers, matrices, subject, options.autoscoper_flip)
        atomic_write_text(out / "options.json", json.dumps(dict(
            asdict(options), smoothed=smoothed, refined_on=refined_on,
            min_similarity_used=min_similarity_or_default(options.min_similarity) if options.refine else None,
            **run_subject_record(subject)), indent=2))
    frame_numbers = getattr(recording, "frame_numbers", frames)
    qc = quality.qc_report(frame_numbers, batch, status, limit_mm, constant_views=constant_views, detector=detector,
                           refine_columns=refine_columns, refine_seconds=stages["refine"],
                           min_similarity=options.min_similarity)
    if out is not None:
        # The worst frames are drawn at the pose each ended with (refined or landmark, registered or not).
        shown = np.where(np.isfinite(poses).all(axis=1)[:, None], poses, batch.poses)
        quality.write_qc(out, qc, recording=recording, subject=subject, poses=shown)
    stage_done("write")
    return RecordingResult(frames, poses, status, batch, det, conf, time.perf_counter() - t0, out, qc, stages,
                           stages_cpu)
