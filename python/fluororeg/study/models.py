"""Building one subject's models for a study: the artificial dataset, the landmark detector
and (when a recording registers with style translation) the X-ray-to-DRR style translator.

:func:`build_subject_models` is the one place that does it (the study's task graph calls it
once per subject). Each stage is skipped when its outputs are complete and were made from the
same inputs and settings: a stage writes ``stages/<stage>.json`` with a fingerprint (sha256 of
the subject's fingerprint, the stage's configuration and the fingerprints of the stages it
builds on; for the style translator also the identities of the X-ray recordings it learns
from) when it starts and marks it complete when it ends. An interrupted stage with the same
fingerprint resumes (dataset shards and training checkpoints are kept); a stage whose
fingerprint changed (other settings, another CT) starts over in a clean folder.

Prebuilt models named in the manifest (``detector = "x.onnx"``, ``translator = "y.onnx"``)
replace the corresponding stages; the dataset is built only when a model must be trained.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from fluororeg.io.atomic import atomic_write_text
from fluororeg.study.manifest import (RecordingSpec, SubjectSpec, dataset_config, detector_config, pipeline_options,
                                      style_config, uses_translator)

__all__ = ["build_subject_models", "stage_fingerprint"]


def stage_fingerprint(*parts) -> str:
    """sha256 hex digest of JSON-able parts (sorted keys): what a stage's outputs depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class _Stage:
    """A resumable, fingerprinted stage writing into ``paths`` (files or folders)."""

    def __init__(self, root: Path, name: str, fingerprint: str, paths: list[Path], outputs: list[Path]):
        self.stamp = root / "stages" / f"{name}.json"
        self.name, self.fingerprint, self.paths, self.outputs = name, fingerprint, paths, outputs

    def _saved(self) -> dict | None:
        try:
            return json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return None

    def done(self) -> bool:
        saved = self._saved()
        return bool(saved and saved.get("fingerprint") == self.fingerprint and saved.get("complete")
                    and all(p.exists() for p in self.outputs))

    def start(self) -> bool:
        """Begin (or continue) the stage; True when it continues an interrupted run of it (same
        fingerprint: its shards and checkpoints are kept)."""
        saved = self._saved()
        resumed = saved is not None and saved.get("fingerprint") == self.fingerprint
        if not resumed:
            # Made from other inputs or settings (or by something else): start over, cleanly.
            for p in self.paths:
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.stamp.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.stamp, json.dumps({"stage": self.name, "fingerprint": self.fingerprint,
                                                  "complete": False}, indent=2))
        return resumed

    def finish(self, seconds: float, **info) -> None:
        atomic_write_text(self.stamp, json.dumps({"stage": self.name, "fingerprint": self.fingerprint,
                                                  "complete": True, "seconds": round(seconds, 3), **info}, indent=2))


def _run_stage(stage: _Stage, build, report: dict) -> None:
    if stage.done():
        report[stage.name] = "skipped (complete, same inputs and settings)"
        return
    resumed = stage.start()
    t0 = time.perf_counter()
    build()
    stage.finish(time.perf_counter() - t0)
    report[stage.name] = f"{'resumed and built' if resumed else 'built'} in {time.perf_counter() - t0:.1f} s"


def build_subject_models(spec: SubjectSpec, recordings: list[tuple[RecordingSpec, str | None]], out_dir, *,
                         threads: int = 1) -> dict:
    """Build (or reuse) the models of one subject into ``out_dir`` (``OUT/subjects/NAME``).

    ``recordings``: the subject's recordings as (spec, computed geometry path or None); their
    geometry gives the cone-beam dataset's source distances (``source_distance_mm = "auto"``)
    and their frames the style translator's X-ray domain. ``threads``: native threads for
    torch, onnxruntime and the C++ core. Returns ``{"detector": path, "translator": path or
    None, "stages": {stage: what happened}}``.
    """
    from fluororeg.study.inputs import load_study_subject, open_study_recording, recording_identity

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subject = load_study_subject(spec)
    rec_specs = [r for r, _ in recordings]
    need_translator = spec.translator is None and uses_translator(spec, rec_specs)
    report: dict[str, str] = {}
    result = {"detector": str(spec.detector) if spec.detector is not None else None,
              "translator": str(spec.translator) if spec.translator is not None else None, "stages": report}
    if spec.detector is not None:
        report["detector"] = f"prebuilt: {spec.detector}"
    if spec.translator is not None:
        report["style"] = f"prebuilt: {spec.translator}"
    if spec.detector is not None and not need_translator:
        report["dataset"] = "not needed (prebuilt models)"
        return result

    opened = {}

    def recording(r: RecordingSpec, geometry):
        if r.name not in opened:
            opened[r.name] = open_study_recording(r, geometry)
        return opened[r.name]

    # ---- dataset
    auto = None
    if recordings:
        from fluororeg.dataset.generate import source_distance_range

        ranges = [source_distance_range(recording(r, g).geometry.views) for r, g in recordings]
        auto = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
    ds_cfg = dataset_config(spec.dataset, source_distance_auto=auto)
    ds_root = out / "dataset"
    ds_fp = stage_fingerprint("dataset", subject.fingerprint, ds_cfg.to_json())

    def build_dataset():
        from fluororeg.dataset.generate import generate_dataset

        generate_dataset(subject, ds_root, ds_cfg, device=spec.device, progress=False, num_threads=threads)

    _run_stage(_Stage(out, "dataset", ds_fp, [ds_root], [ds_root / "dataset.json"]), build_dataset, report)

    # ---- detector
    if spec.detector is None:
        det_cfg = detector_config(spec.detector_training, threads)
        cfg_json = det_cfg.to_json()
        cfg_json.pop("num_threads", None)  # how fast, not what: not part of the fingerprint
        det_fp = stage_fingerprint("detector", ds_fp, cfg_json)
        run_dir, onnx = out / "detector_run", out / "detector.onnx"

        def build_detector():
            from fluororeg.training.detector_export import export_detector
            from fluororeg.training.detector_train import train_detector

            res = train_detector(ds_root, run_dir, det_cfg, progress=False, device=spec.device)
            if res.interrupted:
                raise KeyboardInterrupt("detector training was interrupted")
            export_detector(run_dir, onnx)

        _run_stage(_Stage(out, "detector", det_fp, [run_dir, onnx], [onnx]), build_detector, report)
        result["detector"] = str(onnx)

    # ---- style translator
    if need_translator:
        style_cfg, every = style_config(spec.style_training, ds_cfg.image_size)
        crop_mm = pipeline_options(spec.register, ds_cfg.pixel_mm, threads).crop_pixel_mm
        from dataclasses import asdict

        identities = sorted((r.name, recording_identity(recording(r, g))) for r, g in recordings)
        # crops centred on the bone the subject's detector locates (its file digest is part of what)
        from fluororeg.study.inputs import file_digest

        det_digest = file_digest(result["detector"])
        style_fp = stage_fingerprint("style", ds_fp, asdict(style_cfg), every, crop_mm, identities, det_digest)
        run_dir, onnx_dir = out / "style_run", out / "style"
        x2d = onnx_dir / "xray_to_drr.onnx"

        def build_style():
            from fluororeg.training.xray_crops import xray_training_crops
            from fluororeg.training.translator_export import export_translator
            from fluororeg.training.translator_train import train_translator

            from fluororeg.inference.detector import LandmarkDetector

            recs = [recording(r, g) for r, g in recordings]
            locate = (subject, LandmarkDetector(result["detector"], subject=subject, num_threads=threads))
            crops = xray_training_crops(recs, size=style_cfg.image_size, crop_pixel_mm=crop_mm, every=every,
                                        locate=locate)
            summary = train_translator(crops, ds_root, run_dir, style_cfg, progress=False, num_threads=threads,
                                  device=spec.device)
            if summary["stopped"] or summary["step"] < summary["total_steps"]:  # a partial run is never final
                raise KeyboardInterrupt("style training was interrupted")
            export_translator(run_dir, onnx_dir)

        _run_stage(_Stage(out, "style", style_fp, [run_dir, onnx_dir], [x2d]), build_style, report)
        result["translator"] = str(x2d)
    return result
