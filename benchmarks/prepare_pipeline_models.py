"""Train the networks `bench_pipeline.py` evaluates, longer than the demo does (CPU, ~45 min).

    python benchmarks/prepare_pipeline_models.py --out out/pipeline_models
    python benchmarks/bench_pipeline.py --models out/pipeline_models --json out/bench/pipeline.json

1. The example subject's artificial dataset of cone-beam DRRs at the default fluoroscopes'
   source distances (``--dataset``; generated if missing, about 3 min).
2. The landmark detector: the fast preset on that dataset (``--detector-run``: a finished
   training run to reuse instead, e.g. one of ``bench_training.py --dataset out/dataset_cone``).
3. The X-ray domain: simulated recordings in intensifier styles *other* than the default one
   that bench_pipeline's test recordings use (other noise, response curve, vignetting and
   blur) and other motions and seeds, so neither the test poses nor the test style is seen
   in training.
4. The style translator: the fast CycleGAN preset for ``--style-steps`` steps, keeping its
   generators every 500 steps; the snapshot that registers a held-out validation recording
   best (another motion and seed, a training style) is exported
   (:mod:`fluororeg.training.translator_selection`): by the landmark error to that recording's true poses
   (``--select reference``, like a lab's few manual registrations) or by the label-free
   reprojection residual (``--select residual``). The last step's generators go to
   ``<out>/style_last`` for comparison.

The sequence of 1, 2 and 4 is :func:`fluororeg.training.workflow.train_models`. Writes
``<out>/detector.onnx``, ``<out>/style/{xray_to_drr,drr_to_xray}.onnx`` and
``<out>/style/selection.csv``. Reruns reuse what exists (dataset, recordings, runs resume from
their last checkpoints).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

# Training styles: none of them is bench_pipeline's (the FluoroStyle defaults).
TRAIN_STYLES = (
    dict(photons=800.0, gamma=0.5, vignetting=0.25, blur_px=1.4),
    dict(photons=3000.0, gamma=0.75, vignetting=0.45, blur_px=0.7),
    dict(photons=1200.0, gamma=0.55, vignetting=0.3, blur_px=1.2),
)
TRAIN_MOTIONS = ("flexion_extension", "lateral_bending", "axial_rotation")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/pipeline_models")
    p.add_argument("--dataset", default="out/dataset_cone", help="cone-beam dataset folder (generated if missing)")
    p.add_argument("--detector-run", help="a finished detector training run folder to export instead of training")
    p.add_argument("--detector-epochs", type=int, default=60, help="detector training work (the fast preset's 60)")
    p.add_argument("--detector-minutes", type=float, default=0.0,
                   help="an explicit wall-clock cap on the intensifier's training (0: none; a cut is recorded)")
    p.add_argument("--style-steps", type=int, default=6000)
    p.add_argument("--frames", type=int, default=40, help="frame pairs per X-ray training recording")
    p.add_argument("--select", choices=["reference", "residual"], default="reference",
                   help="how the style snapshot is chosen on the validation recording")
    args = p.parse_args()

    from fluororeg.dataset.generate import DatasetConfig, source_distance_range
    from fluororeg.simulation.simulate import FluoroStyle, default_dual_views, simulate_recording
    from fluororeg.subject.subject import example_subject
    from fluororeg.training.detector_config import preset
    from fluororeg.training.translator_config import TranslatorConfig
    from fluororeg.training.workflow import WorkflowPaths, WorkflowSettings, train_models

    out, dataset = Path(args.out), Path(args.dataset)
    subject = example_subject()
    views = default_dual_views(512, 512, pitch=0.8)

    recordings = []
    for k, (motion, style) in enumerate(zip(TRAIN_MOTIONS, TRAIN_STYLES)):
        folder = out / "xray_recordings" / f"{motion}_{k}"
        if not (folder / "recording.json").exists():
            print(f"[prepare] simulating X-ray recording {folder} ({style})", flush=True)
            simulate_recording(subject, folder, scenario=motion, n_frames=args.frames, views=views,
                               style=replace(FluoroStyle(), **style), seed=200 + k)
        recordings.append(folder)

    validation = out / "xray_validation" / "walking"
    if not (validation / "recording.json").exists():
        simulate_recording(subject, validation, scenario="walking", n_frames=args.frames, views=views,
                           style=replace(FluoroStyle(), **TRAIN_STYLES[0]), seed=300)

    settings = WorkflowSettings(
        dataset=None if (dataset / "dataset.json").exists()
        else DatasetConfig(projection="cone", source_distance_mm=source_distance_range(views)),
        detector=preset("fast", epochs=args.detector_epochs, time_limit_minutes=args.detector_minutes),
        style=TranslatorConfig.preset("fast", steps=args.style_steps, log_every=100, checkpoint_every=250,
                                 snapshot_every=500),
        export_last_style=True)
    reference = np.load(validation / "truth.npz")["poses"] if args.select == "reference" else None
    train_models(subject, WorkflowPaths(dataset=dataset, runs=out / "runs", models=out), settings,
                 xray_recordings=recordings, validation_recording=validation, reference_poses=reference,
                 detector_run=args.detector_run)
    print(f"[prepare] models in {out}", flush=True)


if __name__ == "__main__":
    main()
