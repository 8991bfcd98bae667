"""The train-everything workflow, written once: dataset -> landmark detector -> style translator
-> snapshot selection.

Used by the demo (:mod:`fluororeg.demo`, ``fluororeg demo``) and by
``benchmarks/prepare_pipeline_models.py``. Every stage reuses what an earlier run left:

1. the artificial dataset (:func:`fluororeg.dataset.generate.generate_dataset` resumes a
   partial dataset and refuses one of another configuration) in ``paths.dataset``;
2. the landmark detector: trained into ``paths.runs / 'detector'`` (resumed from its last
   checkpoint) and exported to ``paths.models / 'detector.onnx'`` - or, with
   ``detector_run``, a finished run exported instead;
3. the style translator: X-ray crops of ``xray_recordings`` by the one crop rule
   (:func:`fluororeg.training.xray_crops.xray_training_crops`, at the dataset's pixel size),
   CycleGAN training into ``paths.runs / 'style'`` (resumed), generator snapshots every
   ``style.snapshot_every`` steps;
4. snapshot selection (:mod:`fluororeg.training.translator_selection`): the snapshot that registers
   ``validation_recording`` best (by the landmark error to ``reference`` poses, or by the
   reprojection residual without them) is exported to ``paths.models / 'style'``.

A stage counts as done when its exported model exists (the exports are atomic).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from fluororeg.dataset.generate import DatasetConfig, DatasetReader, generate_dataset
from fluororeg.inference.detector import LandmarkDetector
from fluororeg.inference.translator import StyleTranslator
from fluororeg.training.detector_config import DetectorConfig
from fluororeg.training.detector_export import export_detector
from fluororeg.training.detector_train import train_detector
from fluororeg.training.translator_config import TranslatorConfig
from fluororeg.training.translator_export import export_translator
from fluororeg.training.translator_selection import SnapshotScore, select_translator_snapshot
from fluororeg.training.translator_train import train_translator
from fluororeg.training.xray_crops import xray_training_crops

__all__ = ["WorkflowSettings", "WorkflowPaths", "TrainedModels", "train_models"]


@dataclass(frozen=True)
class WorkflowSettings:
    """What the workflow trains: the dataset, the detector and the style translator's settings.
    ``dataset=None`` uses the dataset already in ``WorkflowPaths.dataset`` as it is."""

    dataset: DatasetConfig | None
    detector: DetectorConfig
    style: TranslatorConfig
    xray_every: int = 1              # every n-th frame of the X-ray recordings is a training crop
    device: str = "auto"             # training and inference: 'auto' (CUDA when present), 'cpu' or 'cuda'
    num_threads: int = 0             # per process: torch, onnxruntime (intra-op) and the C++ core (0: defaults)
    style_num_threads: int | None = None  # torch threads for the style training (None: num_threads or torch's)
    select_max_frames: int = 64      # frames of the validation recording scored per snapshot
    export_last_style: bool = False  # also export the last step's generators to models/style_last

    def __post_init__(self):
        if self.dataset is not None and not isinstance(self.dataset, DatasetConfig):
            raise TypeError(f"dataset must be a DatasetConfig or None, got {type(self.dataset).__name__}")
        if not isinstance(self.detector, DetectorConfig):
            raise TypeError(f"detector must be a DetectorConfig, got {type(self.detector).__name__}")
        if not isinstance(self.style, TranslatorConfig):
            raise TypeError(f"style must be a TranslatorConfig, got {type(self.style).__name__}")
        if self.dataset is not None and self.style.image_size != self.dataset.image_size:
            raise ValueError(f"style.image_size {self.style.image_size} differs from the dataset's image_size "
                             f"{self.dataset.image_size}: the translator works on the dataset's images")
        if self.style.snapshot_every < 1:
            raise ValueError("style.snapshot_every must be >= 1: the workflow selects among the snapshots")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise ValueError(f"num_threads {self.num_threads!r}: expected an integer >= 0 (0: the libraries' defaults)")
        if not isinstance(self.xray_every, int) or self.xray_every < 1:
            raise ValueError(f"xray_every {self.xray_every!r}: expected an integer >= 1")


@dataclass(frozen=True)
class WorkflowPaths:
    dataset: Path   # the artificial dataset's folder
    runs: Path      # training runs: runs/detector, runs/style
    models: Path    # exported models: detector.onnx, style/{xray_to_drr,drr_to_xray}.onnx (+ selection.*)

    @classmethod
    def under(cls, out) -> "WorkflowPaths":
        """The demo's layout: ``out/dataset``, ``out/runs``, ``out/models``."""
        out = Path(out)
        return cls(out / "dataset", out / "runs", out / "models")

    @property
    def detector_onnx(self) -> Path:
        return Path(self.models) / "detector.onnx"

    @property
    def style_dir(self) -> Path:
        return Path(self.models) / "style"

    @property
    def translator_onnx(self) -> Path:
        return self.style_dir / "xray_to_drr.onnx"


@dataclass
class TrainedModels:
    detector: LandmarkDetector
    translator: StyleTranslator
    selection: SnapshotScore | None  # None: the translator existed already (selection.json has the choice)
    paths: WorkflowPaths


def _say(msg: str) -> None:
    print(f"[train] {msg}", flush=True)


def train_models(subject, paths: WorkflowPaths, settings: WorkflowSettings, *, xray_recordings,
                 validation_recording, reference_poses=None, detector_run=None, pipeline_options=None,
                 progress: bool = True, say: Callable[[str], None] = _say) -> TrainedModels:
    """Run the workflow (see the module docstring) for ``subject``.

    ``xray_recordings``: the recordings (folders or Recording objects) whose frames teach the
    translator the X-ray domain. ``validation_recording``: a recording folder or Recording to
    select the style snapshot on; ``reference_poses`` [F, 6] its poses (deg, mm; None: select by
    the label-free residual). ``detector_run``: a finished detector training run to export
    instead of training one. ``pipeline_options``: the registration options the selection
    registers with (default: style 'translate' at the dataset's pixel size).
    """
    from fluororeg.io.recording import Recording, open_recording
    from fluororeg.pipeline.register import PipelineOptions

    if not isinstance(paths, WorkflowPaths):
        raise TypeError(f"paths must be WorkflowPaths, got {type(paths).__name__}")
    if not isinstance(settings, WorkflowSettings):
        raise TypeError(f"settings must be WorkflowSettings, got {type(settings).__name__}")

    ds = settings.dataset
    if ds is not None:
        say(f"artificial dataset: {ds.n_train} + {ds.n_test} {ds.projection}-beam DRRs -> {paths.dataset}")
        generate_dataset(subject, paths.dataset, ds, progress=progress)
    ds_meta = DatasetReader(paths.dataset, "train").meta
    crop_pixel_mm = float(ds_meta["config"]["pixel_mm"])  # X-ray crops at the DRRs' pixel size

    if not paths.detector_onnx.exists():
        if detector_run is None:
            cfg = settings.detector
            limit = f", {cfg.time_limit_minutes:g} min limit" if cfg.time_limit_minutes > 0 else ""
            say(f"training the landmark detector ({cfg.arch}, {cfg.input_size} px input, "
                f"up to {cfg.epochs} epochs{limit})")
            detector_run = Path(paths.runs) / "detector"
            if settings.num_threads:
                cfg = replace(cfg, num_threads=settings.num_threads)
            result = train_detector(paths.dataset, detector_run, cfg, progress=progress, device=settings.device)
            if result.interrupted:
                raise KeyboardInterrupt("detector training was interrupted; run again to resume it")
        export_detector(detector_run, paths.detector_onnx)
    threads = settings.num_threads
    detector = LandmarkDetector(paths.detector_onnx, subject=subject, num_threads=threads, device=settings.device)

    selection = None
    if not paths.translator_onnx.exists():
        cfg = settings.style
        # Centred on the bone as the pipeline will crop them (located with the detector just trained).
        crops = xray_training_crops(xray_recordings, size=cfg.image_size, crop_pixel_mm=crop_pixel_mm,
                                    every=settings.xray_every, locate=(subject, detector))
        steps = cfg.total_steps(len(crops), len(DatasetReader(paths.dataset, "train")))
        say(f"training the style translator ({len(crops)} X-ray crops, {steps} steps)")
        style_run = Path(paths.runs) / "style"
        summary = train_translator(crops, paths.dataset, style_run, cfg, progress=progress,
                              num_threads=settings.style_num_threads or threads or None, device=settings.device)
        if summary["stopped"] or summary["step"] < summary["total_steps"]:  # a partial run is never final
            raise KeyboardInterrupt(f"style training stopped at step {summary['step']} of {summary['total_steps']}; "
                                    "run again to resume it")
        if settings.export_last_style:
            export_translator(style_run, Path(paths.models) / "style_last")
        say("choosing the style translator's snapshot by registering the validation recording with each")
        rec = validation_recording if isinstance(validation_recording, Recording) \
            else open_recording(validation_recording)
        # ranked by the landmark error (or residual) of every frame: the quality gate stays off here
        options = pipeline_options if pipeline_options is not None \
            else PipelineOptions(crop_pixel_mm=crop_pixel_mm, num_threads=threads, quality_gate=False)
        reference = None if reference_poses is None else np.asarray(reference_poses, float)
        selection, _, _ = select_translator_snapshot(style_run, rec, subject, detector, paths.style_dir, reference=reference,
                                             options=options, max_frames=settings.select_max_frames,
                                             progress=progress)
        say(f"style snapshot of step {selection.step}: score {selection.score:.2f} "
            f"({'median landmark error, mm' if reference is not None else 'median refinement disagreement, mm'})")
    translator = StyleTranslator(paths.translator_onnx, direction="xray_to_drr", num_threads=threads,
                                 device=settings.device)
    return TrainedModels(detector, translator, selection, paths)
