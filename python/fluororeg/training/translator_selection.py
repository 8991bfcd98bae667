"""Choosing the style translator's training snapshot by what the detector makes of it.

A CycleGAN's adversarial, cycle and content losses do not tell when its translations start to
move bone structures by a pixel or two, which is what landmark detection is sensitive to:
measured on the example subject, a translator trained 8,000 steps registered worse than the
same run at 4,000 steps (7.9 deg against 3.7 deg median error) although its cycle and content
losses were lower. So :func:`~fluororeg.training.translator_train.train_translator` keeps generator snapshots
(``snapshot_every``) and this module scores each one the way the pipeline uses it: translate
the crops of a validation recording, detect, register (:func:`fluororeg.pipeline.register.detect_recording`
and :func:`fluororeg.pipeline.register_detections`), on up to ``max_frames`` evenly spaced frames.

Score (lower is better), per frame, median over the frames (a frame without a pose counts as
infinitely bad):

- with ``reference`` poses [F, 6] (deg, mm; manual registrations or a simulation's truth;
  NaN rows are skipped): the mean distance between the subject's landmarks placed by the
  estimated and by the reference pose, mm;
- without: the registration's reprojection residual, the mean of both views' RMS in mm on the
  detector. No labels are needed, so a lab can select on its own recording; a translation
  that makes the detector fail in one view raises that view's residual.

:func:`select_translator_snapshot` exports the best snapshot's generators and writes the table.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text

__all__ = ["SnapshotScore", "snapshot_paths", "score_snapshots", "select_translator_snapshot"]

_SNAPSHOT = re.compile(r"step_(\d+)\.pt$")


@dataclass(frozen=True)
class SnapshotScore:
    step: int                  # training step of the snapshot
    path: Path                 # its checkpoint file
    score: float               # what is minimised (see the module docstring)
    registered_share: float    # frames with a pose, of those scored
    residual_mm: float         # median of the mean per-view RMS reprojection error, mm on the intensifier
    landmark_err_mm: float     # median mean landmark distance to the reference (NaN: no reference)
    angle_err_deg: float       # median Eq. 3 angle error (NaN: no reference)
    position_err_mm: float     # median Eq. 3 position error (NaN: no reference)


def snapshot_paths(run_dir) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the generator snapshots of a style training run, by step."""
    folder = Path(run_dir) / "snapshots"
    found = sorted((int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _SNAPSHOT.search(p.name)))
    if not found:
        raise FileNotFoundError(f"'{folder}' holds no generator snapshots (step_NNNNNN.pt): train with "
                                "TranslatorConfig(snapshot_every=...) or `fluororeg train-style --snapshot-every N`")
    return found


def _scored_frames(n: int, max_frames: int) -> np.ndarray:
    if not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise ValueError(f"max_frames = {max_frames!r}: expected an integer >= 1")
    return np.unique(np.round(np.linspace(0, n - 1, min(n, int(max_frames)))).astype(int))


def score_snapshots(run_dir, recording, subject, detector, *, reference=None, options=None, max_frames: int = 64,
                    work_dir=None, progress: bool = True) -> list[SnapshotScore]:
    """Score every snapshot of ``run_dir`` on ``recording`` (a :class:`~fluororeg.io.recording.Recording`)
    with ``detector`` (a :class:`~fluororeg.inference.detector.LandmarkDetector` for ``subject``).
    ``reference``: poses [F, 6] for all F frames of the recording, or None. ``options``: the
    :class:`~fluororeg.pipeline.register.PipelineOptions` to register with (style 'translate').
    ``work_dir`` keeps the exported ONNX files (default: a temporary folder)."""
    from tqdm import tqdm

    from fluororeg.inference.translator import StyleTranslator
    from fluororeg.training.translator_export import export_translator
    from fluororeg.pipeline.register import PipelineOptions, detect_recording, register_detections
    from fluororeg.core.registration import mean_landmark_distance, pose_errors

    options = PipelineOptions() if options is None else options
    if options.style != "translate":
        raise ValueError(f"options.style = '{options.style}': scoring translators needs style='translate'")
    detector.check_subject(subject)
    frames = _scored_frames(len(recording), max_frames)
    if reference is not None:
        reference = np.asarray(reference, dtype=float)
        if reference.shape != (len(recording), 6):
            raise ValueError(f"reference poses have shape {reference.shape}: expected ({len(recording)}, 6), one "
                             "pose (deg, mm) per frame of the recording")
        frames = frames[np.isfinite(reference[frames]).all(axis=1)]
        if frames.size == 0:
            raise ValueError("the reference has no pose for any of the scored frames")
    snapshots = snapshot_paths(run_dir)
    views = recording.geometry.views
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        for step, path in tqdm(snapshots, desc="snapshots", unit="snapshot", disable=not progress):
            x2d, _ = export_translator(path, root / f"step_{step:06d}")
            translator = StyleTranslator(x2d, direction="xray_to_drr", num_threads=options.num_threads)
            det, conf = detect_recording(recording, detector, translator, options, frames, subject=subject,
                                         progress=False)
            batch = register_detections(subject, views, det, conf, options)
            ok = batch.ok
            residual = np.where(ok, batch.rms_mm.mean(axis=1), np.inf)
            if reference is not None:
                ref = reference[frames]
                est = np.where(ok[:, None], batch.poses, ref)  # placeholders; unregistered frames are inf below
                lm_err = np.where(ok, mean_landmark_distance(subject.landmarks_model, est, ref), np.inf)
                ang, pos = pose_errors(est, ref)
                ang, pos = np.where(ok, ang, np.inf), np.where(ok, pos, np.inf)
                score = float(np.median(lm_err))
                extra = (score, float(np.median(ang)), float(np.median(pos)))
            else:
                score = float(np.median(residual))
                extra = (float("nan"),) * 3
            scores.append(SnapshotScore(step, path, score, float(ok.mean()), float(np.median(residual)), *extra))
    return scores


def select_translator_snapshot(run_dir, recording, subject, detector, out_dir, **kwargs) -> tuple[SnapshotScore, list]:
    """Score the snapshots (:func:`score_snapshots`, same keyword arguments), export the best
    one's generators to ``out_dir`` (``xray_to_drr.onnx``, ``drr_to_xray.onnx``) and write
    ``out_dir/selection.csv`` (one row per snapshot) and ``selection.json`` (the choice).
    Returns ``(best, scores)``."""
    from fluororeg.training.translator_export import export_translator

    scores = score_snapshots(run_dir, recording, subject, detector, **kwargs)
    finite = [s for s in scores if np.isfinite(s.score)]
    if not finite:
        raise RuntimeError(f"no snapshot of '{run_dir}' registered more than half of the scored frames; "
                           "check the detector, the recording and its geometry")
    best = min(finite, key=lambda s: (s.score, -s.step))
    out = Path(out_dir)
    export_translator(best.path, out)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(asdict(best)))
    writer.writeheader()
    writer.writerows({**asdict(s), "path": str(s.path)} for s in scores)
    atomic_write_text(out / "selection.csv", table.getvalue())
    criterion = "median landmark error to the reference (mm)" if kwargs.get("reference") is not None \
        else "median reprojection residual (mm on the intensifier)"
    best_json = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)  # strict JSON: no NaN tokens
                 for k, v in {**asdict(best), "path": str(best.path)}.items()}
    atomic_write_text(out / "selection.json", json.dumps({"run_dir": str(run_dir), "criterion": criterion,
                                                          "best": best_json}, indent=2, allow_nan=False))
    return best, scores
