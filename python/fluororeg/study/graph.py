"""The study's task graph: what runs, on what it depends, and the task functions themselves.

:func:`build_graph` turns a :class:`~fluororeg.study.manifest.Study` into :class:`Task`
entries in dependency order (plain data, no Dask: :mod:`fluororeg.study.run` submits them):

* ``calibrate/<recording>`` (only recordings given by calibration files): the geometry file
  ``OUT/recordings/<name>/geometry.json`` from MayaCam files and bead plates;
* ``models/<subject>``: :func:`fluororeg.study.models.build_subject_models` (dataset,
  detector, style translator; each stage skipped when complete), after the calibrations of
  the subject's recordings;
* ``register/<recording>``: :func:`fluororeg.pipeline.register.register_recording` into
  ``OUT/recordings/<name>/`` (resumable per chunk), after its subject's models.

Every task function limits its native threads (torch, onnxruntime, the C++ core) to the
study's ``threads_per_task`` and returns a small JSON-able dict. A register task whose
``study_result.json`` says it finished with the same subject, networks, options and recording
returns that result without work; otherwise the registration resumes from its saved
detection chunks.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.study.manifest import RecordingSpec, Study, SubjectSpec, dataset_config, pipeline_options

__all__ = ["Dep", "Task", "build_graph", "calibrate_task", "models_task", "register_task", "limit_threads",
           "RESULT_FILE"]

RESULT_FILE = "study_result.json"


@dataclass(frozen=True)
class Dep:
    """A placeholder in a task's arguments for the result of the task ``key``."""

    key: str


@dataclass
class Task:
    key: str                    # "register/<name>", unique in the study
    kind: str                   # "calibrate" | "models" | "register"
    label: str                  # the subject's or recording's name
    func: Callable
    args: tuple                 # may hold Dep placeholders (also inside lists)
    deps: tuple = ()
    gpu: bool = False           # needs the Dask resource GPU=1 (device = "cuda")
    info: dict = field(default_factory=dict)


def build_graph(study: Study, out) -> list[Task]:
    """The study's tasks in dependency order (see the module docstring)."""
    out = Path(out)
    threads = study.threads_per_task
    tasks: list[Task] = []
    for r in study.recordings:
        if r.calibration is not None and r.geometry is None:
            tasks.append(Task(f"calibrate/{r.name}", "calibrate", r.name, calibrate_task, (r, str(out), threads)))
    calibrated = {t.label for t in tasks}

    def geometry_arg(r: RecordingSpec):
        return Dep(f"calibrate/{r.name}") if r.name in calibrated else None

    for s in study.subjects:
        recs = study.recordings_of(s.name)
        geoms = [geometry_arg(r) for r in recs]
        deps = tuple(g.key for g in geoms if g is not None)
        tasks.append(Task(f"models/{s.name}", "models", s.name, models_task, (s, recs, geoms, str(out), threads),
                          deps, gpu=s.device == "cuda"))
    for r in study.recordings:
        s = study.subject(r.subject)
        g = geometry_arg(r)
        deps = (f"models/{s.name}",) + ((g.key,) if g is not None else ())
        tasks.append(Task(f"register/{r.name}", "register", r.name, register_task,
                          (r, s, Dep(f"models/{s.name}"), g, str(out), threads), deps, gpu=r.device == "cuda",
                          info={"subject": s.name}))
    return tasks


# ====================================================================== task functions
def limit_threads(threads: int) -> None:
    """Pin this process's native thread pools to ``threads`` (one task per core): BLAS/OpenMP
    through the environment (workers also get it at start), torch where it is loaded."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def calibrate_task(spec: RecordingSpec, out_root: str, threads: int) -> str:
    """The geometry file of a recording given by calibration files (reused when the files are
    unchanged). Returns its path."""
    from fluororeg.calibration.geometry_file import save_geometry
    from fluororeg.study.inputs import calibrated_geometry, file_digest
    from fluororeg.study.models import stage_fingerprint

    limit_threads(threads)
    cal = spec.calibration
    folder = Path(out_root) / "recordings" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    path, stamp = folder / "geometry.json", folder / "geometry.stage.json"
    files = list(cal.mayacam) + list(cal.plates or ())
    fp = stage_fingerprint("calibrate", [file_digest(p) for p in files], asdict(cal))
    try:
        if json.loads(stamp.read_text()).get("fingerprint") == fp and path.is_file():
            return str(path)
    except (OSError, ValueError):
        pass
    save_geometry(path, calibrated_geometry(spec))
    atomic_write_text(stamp, json.dumps({"fingerprint": fp, "files": [str(p) for p in files]}, indent=2))
    return str(path)


def models_task(spec: SubjectSpec, recordings: list, geometries: list, out_root: str, threads: int) -> dict:
    """Build the subject's models (:func:`fluororeg.study.models.build_subject_models`)."""
    from fluororeg.study.models import build_subject_models

    limit_threads(threads)
    t0 = time.perf_counter()
    result = build_subject_models(spec, list(zip(recordings, geometries)), Path(out_root) / "subjects" / spec.name,
                                  threads=threads)
    return dict(result, subject=spec.name, seconds=time.perf_counter() - t0)


def _register_fingerprint(subject, detector, translator, options, recording, reference) -> str:
    from fluororeg.study.inputs import file_digest, recording_identity
    from fluororeg.study.models import stage_fingerprint

    opts = asdict(options)
    opts.pop("num_threads")  # how fast, not what
    return stage_fingerprint("register", subject.fingerprint, detector.model.digest,
                             translator.model.digest if translator is not None else None, opts,
                             recording_identity(recording), file_digest(reference) if reference else None)


def register_task(spec: RecordingSpec, subject_spec: SubjectSpec, models: dict, geometry: str | None,
                  out_root: str, threads: int) -> dict:
    """Register one recording into ``OUT/recordings/<name>/`` and return its summary (frames,
    statuses, residuals, errors against the reference where there is one)."""
    from fluororeg.io.autoscoper import subject_volume_flip
    from fluororeg.pipeline.register import register_recording
    from fluororeg.study.inputs import load_study_subject, open_study_recording, reference_path
    from fluororeg.inference.detector import LandmarkDetector
    from fluororeg.inference.translator import StyleTranslator

    limit_threads(threads)
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out_root) / "recordings" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    subject = load_study_subject(subject_spec)
    recording = open_study_recording(spec, geometry)
    ds = dataset_config(subject_spec.dataset)
    # poses.tra in the volume frame Autoscoper loads the subject's CT in (its folder's autoscoper.json)
    options = dataclasses.replace(pipeline_options(spec.register, ds.pixel_mm, threads),
                                  autoscoper_flip=subject_volume_flip(subject_spec.folder))
    onnx_device = "cuda" if spec.device == "cuda" else "cpu"
    detector = LandmarkDetector(models["detector"], subject=subject, device=onnx_device, num_threads=threads)
    translator = None
    if options.style == "translate":
        if not models.get("translator"):
            raise ValueError(f"recording {spec.name!r} registers with style='translate' but subject "
                             f"{subject_spec.name!r} has no style translator")
        translator = StyleTranslator(models["translator"], device=onnx_device, direction="xray_to_drr",
                                     num_threads=threads)
    reference = reference_path(spec)
    fp = _register_fingerprint(subject, detector, translator, options, recording, reference)
    stamp = out / RESULT_FILE
    try:
        saved = json.loads(stamp.read_text())
        if saved.get("fingerprint") == fp and (out / "poses.csv").is_file():
            return dict(saved["summary"], skipped=True, task_seconds=time.perf_counter() - t0)
    except (OSError, ValueError, KeyError):
        pass
    stamp.unlink(missing_ok=True)
    res = register_recording(recording, subject, detector, translator, options, out_dir=out, progress=False)
    summary = _summarise(spec, subject, res, reference, out)
    atomic_write_text(stamp, json.dumps({"fingerprint": fp, "summary": summary}, indent=2))
    return dict(summary, skipped=False, task_seconds=time.perf_counter() - t0,
                task_cpu_seconds=time.process_time() - cpu0)  # CPU time of the worker process (all threads)


def _stat(values: np.ndarray, fn) -> float | None:
    v = values[np.isfinite(values)]
    return float(fn(v)) if len(v) else None


def _summarise(spec: RecordingSpec, subject, res, reference, out: Path) -> dict:
    """JSON-able summary of a registered recording (and its evaluation against the reference)."""
    poses = np.asarray(res.poses)
    registered = np.all(np.isfinite(poses), axis=1)
    from fluororeg.core.registration import STATUSES

    counts = {s: int(np.sum(res.status == s)) for s in STATUSES}
    for s in np.unique(res.status):
        counts.setdefault(str(s), int(np.sum(res.status == s)))
    with warnings.catch_warnings():  # frames without a residual in one or both views
        warnings.simplefilter("ignore", RuntimeWarning)
        rms_mm = np.nanmean(np.asarray(res.batch.rms_mm, float), axis=1)  # [F] mm, mean of both views
        rms_px = np.nanmean(np.asarray(res.batch.rms_px, float), axis=1)  # [F] px
    rms_mm[~registered], rms_px[~registered] = np.nan, np.nan
    summary: dict[str, Any] = {
        "recording": spec.name, "subject": spec.subject, "out": str(out), "frames": int(len(poses)),
        "registered": int(registered.sum()), "status": counts,
        "residual_mm_median": _stat(rms_mm, np.median), "residual_mm_mean": _stat(rms_mm, np.mean),
        "residual_mm_sd": _stat(rms_mm, np.std), "residual_px_median": _stat(rms_px, np.median),
        "register_seconds": float(res.seconds),
        "reference": str(reference) if reference is not None else None, "evaluation": None,
    }
    if reference is not None:
        from fluororeg.pipeline.evaluate import evaluate_poses, write_evaluation
        from fluororeg.study.inputs import reference_poses

        ev = evaluate_poses(poses, reference_poses(reference, len(poses)), landmarks=subject.landmarks_model)
        write_evaluation(ev, out)
        s = ev.summary()
        summary["evaluation"] = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in s.items()}
    return summary
