"""Choosing the style translator's training snapshot, and whether to translate at all, by what
the detector makes of it.

A CycleGAN's adversarial, cycle and content losses do not tell when its translations start to
move bone structures by a pixel or two, which is what landmark detection is sensitive to:
measured on the example subject, a translator trained 8,000 steps registered worse than the
same run at 4,000 steps (7.9 deg against 3.7 deg median error) although its cycle and content
losses were lower. So :func:`~fluororeg.training.translator_train.train_translator` keeps generator snapshots
(``snapshot_every``) and this module scores each one the way the pipeline uses it: translate
the crops of a validation recording, detect, register (:func:`fluororeg.pipeline.register.detect_recording`
and :func:`fluororeg.pipeline.register_detections`), on up to ``max_frames`` evenly spaced frames.
The no-learning styles (``baselines``: Beer-Lambert log inversion, grey-level inversion) are
scored on the same frames the same way, so a translator is only chosen where it helps.

Score (lower is better), per frame, median over the frames (a frame without a pose counts as
infinitely bad):

- with ``reference`` poses [F, 6] (deg, mm; manual registrations or a simulation's truth;
  NaN rows are skipped): the mean distance between the subject's landmarks placed by the
  estimated and by the reference pose, mm;
- without (no labels: a lab selects on its own recording): the *refinement disagreement*, the
  mean distance between the landmarks placed by the landmark pose and by the intensity-refined
  pose started from it (:func:`fluororeg.core.refine.refine_poses`, the images against DRRs of
  the CT), mm; a frame whose refinement fails its gate counts as infinitely bad. Refinement
  converges to the image evidence, independent of the detector, so this estimates each
  candidate's landmark error without a reference. Measured on independent-renderer recordings
  (``benchmarks/bench_pipeline.py --independent --selection``): it ranks candidates like their
  true landmark error, where the reprojection residual (``residual_mm``, the former criterion)
  did not (the demo's snapshots: the lowest residual had the highest true error).

:func:`select_translator_snapshot` exports the best snapshot's generators, writes the table,
and records in the exported generator's metadata (``selection``) whether translation beat the
no-learning styles; ``fluororeg register`` then uses the better no-learning style instead, and
says so, when it did not.
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


BASELINE_STYLES = ("log", "invert")  # the no-learning styles a translator has to beat


@dataclass(frozen=True)
class SnapshotScore:
    step: int                  # training step of the snapshot; -1 for a no-learning style
    path: Path | None          # its checkpoint file (None for a no-learning style)
    score: float               # what is minimised (see the module docstring)
    registered_share: float    # frames whose landmark pose passed the landmark gate, of those scored
    residual_mm: float         # median of the mean per-view RMS reprojection error, mm on the intensifier
    landmark_err_mm: float     # median mean landmark distance to the reference (NaN: no reference)
    angle_err_deg: float       # median Eq. 3 angle error (NaN: no reference)
    position_err_mm: float     # median Eq. 3 position error (NaN: no reference)
    style: str = "translate"   # 'translate' (a snapshot) or the no-learning style
    refined_share: float = float("nan")          # frames whose refinement passed its gate (label-free score)
    refine_disagreement_mm: float = float("nan")  # median landmark distance landmark vs refined pose, mm

    @property
    def name(self) -> str:
        return f"step {self.step}" if self.style == "translate" else f"style {self.style}"


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
                    work_dir=None, progress: bool = True, baselines=BASELINE_STYLES) -> list[SnapshotScore]:
    """Score every snapshot of ``run_dir``, and the no-learning ``baselines`` styles, on
    ``recording`` (a :class:`~fluororeg.io.recording.Recording`) with ``detector`` (a
    :class:`~fluororeg.inference.detector.LandmarkDetector` for ``subject``). ``reference``:
    poses [F, 6] for all F frames of the recording, or None (the label-free refinement
    disagreement). ``options``: the :class:`~fluororeg.pipeline.register.PipelineOptions` to
    register with (style 'translate'). ``work_dir`` keeps the exported ONNX files (default: a
    temporary folder). Snapshots first (by step), then the baselines."""
    from dataclasses import replace

    from tqdm import tqdm

    from fluororeg.core.refine import refine_poses
    from fluororeg.core.registration import mean_landmark_distance, pose_errors
    from fluororeg.inference.translator import StyleTranslator
    from fluororeg.pipeline.refine_stage import recording_images
    from fluororeg.pipeline.register import (PipelineOptions, detect_recording, refine_pixel_mm,
                                             register_detections)
    from fluororeg.training.translator_export import export_translator

    options = PipelineOptions() if options is None else options
    if options.style != "translate":
        raise ValueError(f"options.style = '{options.style}': scoring translators needs style='translate'")
    unknown = sorted(set(baselines) - set(BASELINE_STYLES))
    if unknown:
        raise ValueError(f"baseline style {unknown[0]!r} is unknown: expected some of {BASELINE_STYLES}")
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
    images = None  # the scored frames as refinement sees them, read once (label-free score only)

    def score(style: str, translator, step: int, path) -> SnapshotScore:
        nonlocal images
        det, conf = detect_recording(recording, detector, translator, replace(options, style=style), frames,
                                     subject=subject, progress=False)
        batch = register_detections(subject, views, det, conf, options)
        ok = batch.ok
        residual = np.where(ok, batch.rms_mm.mean(axis=1), np.inf)
        refined_share, disagreement = float("nan"), float("nan")
        if reference is not None:
            ref = reference[frames]
            est = np.where(ok[:, None], batch.poses, ref)  # placeholders; unregistered frames are inf below
            lm_err = np.where(ok, mean_landmark_distance(subject.landmarks_model, est, ref), np.inf)
            ang, pos = pose_errors(est, ref)
            ang, pos = np.where(ok, ang, np.inf), np.where(ok, pos, np.inf)
            value = float(np.median(lm_err))
            extra = (value, float(np.median(ang)), float(np.median(pos)))
        else:
            if images is None:
                images = recording_images(recording, frames)
            start = np.asarray(batch.poses, np.float64)  # every landmark pose, also those its gate held back
            res = refine_poses(subject.attenuation_model(), views, images[0], start, bone=subject.mask_model(),
                               image_masks=images[1], pixel_mm=refine_pixel_mm(options, detector))  # as register does
            far = mean_landmark_distance(subject.landmarks_model, np.nan_to_num(start), np.nan_to_num(res.poses))
            per_frame = np.where(res.converged & np.isfinite(start).all(axis=1), far, np.inf)
            value = disagreement = float(np.median(per_frame))
            refined_share = float(res.converged.mean())
            extra = (float("nan"),) * 3
        return SnapshotScore(step, path, value, float(ok.mean()), float(np.median(residual)), *extra, style=style,
                             refined_share=refined_share, refine_disagreement_mm=disagreement)

    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        for step, path in tqdm(snapshots, desc="snapshots", unit="snapshot", disable=not progress):
            x2d, _ = export_translator(path, root / f"step_{step:06d}")
            translator = StyleTranslator(x2d, direction="xray_to_drr", num_threads=options.num_threads)
            scores.append(score("translate", translator, step, path))
    for style in baselines:
        scores.append(score(style, None, -1, None))
    return scores


def select_translator_snapshot(run_dir, recording, subject, detector, out_dir,
                               **kwargs) -> tuple[SnapshotScore, list, dict]:
    """Score the snapshots and the no-learning styles (:func:`score_snapshots`, same keyword
    arguments), export the best snapshot's generators to ``out_dir`` (``xray_to_drr.onnx``,
    ``drr_to_xray.onnx``) and write ``out_dir/selection.csv`` (one row per candidate) and
    ``selection.json`` (the choice). The exported generators carry the verdict in their
    metadata (``selection``: criterion, scores, ``use_style``: ``'translate'``, or the
    no-learning style that scored better, which ``fluororeg register`` then uses).
    Returns ``(best snapshot, scores, verdict)`` (verdict: that metadata,
    :func:`fluororeg.inference.translator.preferred_style` reads it)."""
    from fluororeg.training.translator_export import export_translator

    scores = score_snapshots(run_dir, recording, subject, detector, **kwargs)
    snaps = [s for s in scores if s.style == "translate" and np.isfinite(s.score)]
    if not snaps:
        shares = ", ".join(f"{s.name} {s.registered_share:.0%}"
                           + ("" if not np.isfinite(s.refined_share) else f" ({s.refined_share:.0%} refined)")
                           for s in scores)
        raise RuntimeError(f"no snapshot of '{run_dir}' registered more than half of the scored frames (landmark "
                           f"gate passed: {shares}); check the detector, the recording and its geometry (register "
                           "with --style log shows each frame's status)")
    best = min(snaps, key=lambda s: (s.score, -s.step))
    plain = [s for s in scores if s.style != "translate" and np.isfinite(s.score)]
    best_plain = min(plain, key=lambda s: s.score) if plain else None
    use_style = "translate" if best_plain is None or best.score <= best_plain.score else best_plain.style
    criterion = "median landmark error to the reference (mm)" if kwargs.get("reference") is not None \
        else "median refinement disagreement (mm between the landmarks at the landmark pose and at the refined pose)"
    strict = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v  # noqa: E731  (JSON: no NaN)
    verdict = {"criterion": criterion, "use_style": use_style, "snapshot_step": best.step,
               "snapshot_score": strict(best.score),
               "baseline_scores": {s.style: strict(s.score) for s in scores if s.style != "translate"}}
    out = Path(out_dir)
    export_translator(best.path, out, extra_metadata={"selection": verdict})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(asdict(best)))
    writer.writeheader()
    writer.writerows({**asdict(s), "path": "" if s.path is None else str(s.path)} for s in scores)
    atomic_write_text(out / "selection.csv", table.getvalue())
    best_json = {k: strict(v) for k, v in {**asdict(best), "path": str(best.path)}.items()}
    atomic_write_text(out / "selection.json", json.dumps({"run_dir": str(run_dir), **verdict, "best": best_json},
                                                         indent=2, allow_nan=False))
    return best, scores, verdict
