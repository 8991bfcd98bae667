"""Registering a recording from poses known for a few of its frames: intensity refinement and
tracking alone, no landmark detector.

When the detector does not reach a lab's frames (real fluoroscopy far from the DRRs it was
trained on: on Autoscoper's wrist sample a detector trained on the radius's DRRs registered no
frame, ``benchmarks/bench_real_wrist.py``), poses given for some frames seed the refinement: a
bone placed by hand in Autoscoper or 3D Slicer, a previous run's ``poses.csv``, an XMALab
export (:func:`fluororeg.io.poses.read_reference_poses`). Those frames are refined from their
pose; every other frame from its neighbour's refined pose, forward and then backward
(:func:`fluororeg.pipeline.refine_stage.refine_recording_poses` with ``track=True``). The
refinement's similarity is the gate, as in ``register``: a frame is registered (``ok`` from its
given pose, ``tracked`` from a neighbour's) when its refinement passes; otherwise it has no pose
and says why (``low_similarity``, ``moved_far``, ``no_overlap``), or ``no_start`` when no
neighbour passed to start from.

Outputs in ``out_dir``: ``poses.csv`` (the landmark columns are empty, or 0 for the counts;
``start``: ``given`` or ``neighbour``; the refinement's columns), ``poses.tra`` (Autoscoper's,
:func:`fluororeg.pipeline.register.write_run_tra`), ``options.json``, and the QC as ``register``
writes it without its landmark figures (``qc.json``, ``qc.png``: the similarity per view and
frame; ``qc_worst_<frame>.png``: the frames that failed the gate, or passed lowest, drawn at
their refined or given pose); the folder is locked while the run writes, and an earlier run's
results are replaced.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["TrackOptions", "TrackResult", "NO_START_STATUS", "track_recording"]

NO_START_STATUS = "no_start"  # a frame with no given pose whose neighbours gave none to start from
TRACK_RESULT_FILES = ("poses.csv", "poses.tra", "poses.tra.fluororeg.json", "options.json", "qc.json", "qc.png")


@dataclass(frozen=True)
class TrackOptions:
    # The refinement's finest pixel at the bone, mm (None: sized to the subject's bone as
    # register sizes it, pipeline.register.subject_refine_pixel_mm).
    pixel_mm: Optional[float] = None
    # The refinement's gate (None: RefineOptions' 0.6; see PipelineOptions.min_similarity).
    min_similarity: Optional[float] = None
    refine_device: str = "auto"  # 'cpu', 'cuda' or 'auto' (CUDA when usable)
    autoscoper_flip: tuple = (0, 0, 0)  # as PipelineOptions.autoscoper_flip: poses.tra's volume frame

    def __post_init__(self):
        from fluororeg.core.refine import check_min_similarity, check_pixel_mm
        from fluororeg.io.autoscoper import check_volume_flip

        check_volume_flip(self.autoscoper_flip)

        if self.pixel_mm is not None:
            check_pixel_mm(self.pixel_mm)
        if self.min_similarity is not None:
            check_min_similarity(self.min_similarity)
        if self.refine_device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"refine_device '{self.refine_device}' is unknown: expected 'cpu', 'cuda' or 'auto'")


@dataclass
class TrackResult:
    frames: np.ndarray      # [F] the recording's frame numbers
    poses: np.ndarray       # [F, 6] deg, mm; NaN: not registered
    status: np.ndarray      # [F] str
    columns: dict           # the refinement's columns (refine_stage.REFINE_COLUMNS) and 'start'
    seconds: float
    qc: dict                # pipeline.quality.qc_report (no landmark path: the refinement's figures)


def track_recording(recording, subject, start_poses, options: TrackOptions = TrackOptions(), *,
                    out_dir=None, progress: bool = False) -> TrackResult:
    """Register every frame of ``recording`` from ``start_poses`` [F, 6] (deg, mm, world_from_model;
    a NaN row: no pose given for that frame), at least one given (see the module docstring);
    ``progress``: a progress bar of the frames refined."""
    from fluororeg.pipeline.quality import check_geometry

    start = np.asarray(start_poses, dtype=np.float64)
    F = len(recording)
    if start.shape != (F, 6):
        raise ValueError(f"start_poses have shape {start.shape}, expected ({F}, 6): one pose (deg, mm) or a NaN "
                         "row per frame of the recording")
    given = np.isfinite(start).all(axis=1)
    if not given.any():
        raise ValueError("no frame has a start pose: give the pose of at least one frame of the recording")
    if np.isinf(start).any():
        raise ValueError("start_poses hold an infinite value: expected finite poses or NaN rows")
    check_geometry(recording.geometry.views)
    if out_dir is None:
        return _track(recording, subject, start, given, options, None, progress)
    from fluororeg.io.run_lock import run_folder_lock

    with run_folder_lock(out_dir, "track"):
        return _track(recording, subject, start, given, options, Path(out_dir), progress)


def _track(recording, subject, start, given, options: TrackOptions, out: Optional[Path],
           progress: bool) -> TrackResult:
    from fluororeg.core.geometry import pose_matrix
    from fluororeg.core.render import check_device_usable
    from fluororeg.io.atomic import atomic_write_text
    from fluororeg.io.poses import write_poses_csv
    from fluororeg.pipeline.quality import qc_report, write_qc
    from fluororeg.pipeline.refine_stage import TWIN_COLUMNS, refine_recording_poses
    from fluororeg.core.refine import min_similarity_or_default
    from fluororeg.pipeline.register import run_subject_record, subject_refine_pixel_mm, write_run_tra

    t0 = time.perf_counter()
    device = check_device_usable(options.refine_device)
    pixel_mm = float(options.pixel_mm) if options.pixel_mm is not None else subject_refine_pixel_mm(subject)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in TRACK_RESULT_FILES:  # an earlier run's results never mix with this one's
            (out / name).unlink(missing_ok=True)
    F = len(start)
    status = np.where(given, "ok", NO_START_STATUS)
    t_refine = time.perf_counter()
    poses, status, columns = refine_recording_poses(recording, subject, start, status, track=True, device=device,
                                                    pixel_mm=pixel_mm, min_similarity=options.min_similarity,
                                                    progress=progress)
    refine_seconds = time.perf_counter() - t_refine
    columns = {"start": np.where(given, "given", "neighbour").astype(object),
               **{k: v for k, v in columns.items() if k not in ("landmark_status", *TWIN_COLUMNS)}}
    frames = np.asarray(getattr(recording, "frame_numbers", np.arange(F)))
    qc = qc_report(frames, None, status, None, refine_columns=columns, refine_seconds=refine_seconds,
                   min_similarity=options.min_similarity)
    if out is not None:
        registered = np.isfinite(poses).all(axis=1)
        matrices = np.where(registered[:, None, None], pose_matrix(np.nan_to_num(poses)), np.nan)
        nan2 = np.full((F, 2), np.nan)
        write_poses_csv(out / "poses.csv", frames, status, poses, matrices, np.full(F, np.nan), nan2, nan2,
                        np.zeros(F, int), np.zeros(F, int), extra_columns=columns)
        write_run_tra(out / "poses.tra", frames, matrices, subject, options.autoscoper_flip)
        atomic_write_text(out / "options.json", json.dumps(dict(asdict(options), pixel_mm_used=pixel_mm,
                                                                min_similarity_used=min_similarity_or_default(options.min_similarity),
                                                                refined_on=device,
                                                                frames_given=int(given.sum()),
                                                                **run_subject_record(subject)), indent=2))
        # The worst frames drawn at their pose: the refined one, else the given one (NaN: the frame alone).
        shown = np.where(np.isfinite(poses).all(axis=1)[:, None], poses, start)
        write_qc(out, qc, recording=recording, subject=subject, poses=shown)
    return TrackResult(frames, poses, status, columns, time.perf_counter() - t0, qc)
