"""The end-to-end demo (``fluororeg demo``): from nothing but the default example subject to
registered poses, an evaluation against ground truth, a report and overlays.

Steps: the example subject (CT fetched and cached on first use) -> a small artificial dataset
of cone-beam DRRs (the simulated fluoroscopes' perspective) -> the landmark detector (fast CPU
preset, time-limited) -> simulated X-ray recordings: one to learn the X-ray style from, one to
register (another seed and motion, poses not used in training) -> the style translator (fast
preset, a bounded number of steps; of its snapshots, the one that registers the training
recording best, :mod:`fluororeg.training.style_selection`) -> registration of the test recording with style
translation and, for comparison, with a physics-based Beer-Lambert inversion and with a plain
grey-level inversion -> Eq. 3 evaluation of each -> ``report.md`` (+ JSON), plots and overlays
(PNG of the first frame pair, GIF of the recording). Everything lands in one folder; reruns reuse
what is already there (dataset, trained networks, recordings).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DemoSettings", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    n_train: int = 3000
    n_test: int = 200
    detector_minutes: float = 4.0
    style_steps: int = 600
    train_frames: int = 24
    test_frames: int = 20
    image_size: int = 512
    scenario: str = "walking"
    seed: int = 0
    quick: bool = False   # tiny everything (for tests): seconds, meaningless accuracy

    @classmethod
    def quick_settings(cls) -> "DemoSettings":
        return cls(n_train=48, n_test=8, detector_minutes=0.05, style_steps=4, train_frames=3, test_frames=4,
                   image_size=192, quick=True)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(out="out/demo", settings: DemoSettings = DemoSettings(), subject=None) -> Path:
    """Run the demo into ``out``; returns the path of ``report.md``."""
    from PIL import Image

    from fluororeg.dataset.generate import DatasetConfig, generate_dataset, source_distance_range
    from fluororeg.pipeline.evaluate import evaluate_poses, recordings_bar_chart, write_evaluation
    from fluororeg.training.detector import DetectorConfig, LandmarkDetector, export_detector, preset, train_detector
    from fluororeg.training.style import StyleConfig, StyleTranslator, train_style
    from fluororeg.viz.overlay import overlay_pair, save_overlay_gif
    from fluororeg.pipeline.register import PipelineOptions, register_recording, xray_training_crops
    from fluororeg.io.recording import open_recording
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording
    from fluororeg.training.style_selection import select_style_snapshot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings = {}

    def step(name):
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = time.perf_counter() - timings[name]

    if subject is None:
        from fluororeg.subject.subject import example_subject

        _say("loading the example subject (the first run fetches the Cranium CT with apt-get)")
        subject = example_subject()
    _say(f"subject {subject.name}: {len(subject.landmark_names)} landmarks, {len(subject.pairs)} symmetric pairs")
    q = settings.quick
    size = 64 if q else 128

    # a 16-inch (41 cm) intensifier: the skull stays mostly inside the field of view
    views = default_dual_views(settings.image_size, settings.image_size, pitch=409.6 / settings.image_size)

    step("dataset")
    # Cone-beam DRRs from the fluoroscopes' source distances: the perspective the frames show.
    ds_cfg = DatasetConfig(n_train=settings.n_train, n_test=settings.n_test, image_size=size,
                           pixel_mm=2.0 * 128 / size, seed=settings.seed, shard_size=512 if not q else 32,
                           projection="cone", source_distance_mm=source_distance_range(views))
    _say(f"artificial dataset: {settings.n_train} + {settings.n_test} cone-beam DRRs -> {out / 'dataset'}")
    generate_dataset(subject, out / "dataset", ds_cfg, progress=not q)
    done("dataset")

    step("detector")
    det_onnx = out / "models" / "detector.onnx"
    if not det_onnx.exists():
        if q:
            cfg = DetectorConfig(arch="heatmap", width=8, input_size=64, epochs=1, batch_size=16, num_threads=1)
        else:
            cfg = preset("fast", time_limit_minutes=settings.detector_minutes)
        _say(f"training the landmark detector ({cfg.arch}, {cfg.input_size} px input, "
             f"{settings.detector_minutes:g} min limit)")
        train_detector(out / "dataset", out / "runs" / "detector", cfg, progress=not q)
        export_detector(out / "runs" / "detector", det_onnx)
    detector = LandmarkDetector(det_onnx, subject=subject)
    done("detector")

    step("simulate")
    rec_paths = {}
    for name, scen, n, seed in (("train", "axial_rotation", settings.train_frames, settings.seed + 100),
                                ("test", settings.scenario, settings.test_frames, settings.seed + 1)):
        p = out / f"recording_{name}"
        if not (p / "recording.json").exists():
            _say(f"simulating the {name} recording ({scen}, {n} frame pairs of {settings.image_size} px)")
            simulate_recording(subject, p, scenario=scen, n_frames=n, views=views, seed=seed)
        rec_paths[name] = p
    done("simulate")

    step("style")
    x2d = out / "models" / "style" / "xray_to_drr.onnx"
    if not x2d.exists():
        crops = xray_training_crops(rec_paths["train"], size=size, crop_pixel_mm=2.0 * 128 / size)
        snapshot_every = max(1, settings.style_steps // 6)
        if q:
            cfg = StyleConfig(image_size=size, gen_width=8, gen_blocks=1, disc_width=8, steps=settings.style_steps,
                              log_every=2, checkpoint_every=2, snapshot_every=snapshot_every)
        else:
            cfg = StyleConfig.preset("fast", image_size=size, steps=settings.style_steps, log_every=50,
                                     checkpoint_every=200, snapshot_every=snapshot_every)
        _say(f"training the style translator ({len(crops)} X-ray crops, {settings.style_steps} steps)")
        train_style(crops, out / "dataset", out / "runs" / "style", cfg, progress=not q, num_threads=None if not q else 1)
        # The snapshot whose translations register best; the training recording's true poses
        # stand in for the few frames a lab registers by hand to check its models.
        _say("choosing the style translator's snapshot by registering the training recording with each")
        best, _ = select_style_snapshot(out / "runs" / "style", open_recording(rec_paths["train"]), subject, detector,
                                        out / "models" / "style",
                                        reference=np.load(rec_paths["train"] / "truth.npz")["poses"],
                                        # ranked by landmark error to the truth, gated frames included
                                        options=PipelineOptions(crop_pixel_mm=2.0 * 128 / size, quality_gate=False),
                                        progress=not q)
        _say(f"style snapshot of step {best.step}: median landmark error {best.score:.2f} mm")
    translator = StyleTranslator(x2d, direction="xray_to_drr")
    done("style")

    step("register")
    rec = open_recording(rec_paths["test"])
    truth = np.load(rec_paths["test"] / "truth.npz")
    results, summaries = {}, {}
    styles = (("with style translation (CycleGAN)", "translate", "translated"),
              ("Beer-Lambert log inversion (no learning)", "log", "log"),
              ("grey-level inversion only", "invert", "inverted"))
    for label, style, key in styles:
        _say(f"registering the test recording ({label})")
        opts = PipelineOptions(style=style, crop_pixel_mm=2.0 * 128 / size)
        res = register_recording(rec, subject, detector, translator if style == "translate" else None, opts,
                                 out_dir=out / f"registration_{key}", progress=not q)
        ev = evaluate_poses(res.poses, truth["poses"], landmarks=subject.landmarks_model)
        write_evaluation(ev, out / f"registration_{key}")
        results[key], summaries[label] = res, dict(ev.summary(), frames_per_s=res.frames_per_s)
    done("register")
    recordings_bar_chart(summaries, out / "errors_bar_chart.png")

    # Overlays of the style with the lowest median angle error.
    best_label = min(summaries, key=lambda k: np.nan_to_num(summaries[k]["angle_err_deg_median"], nan=np.inf))
    res = results[next(key for label, _, key in styles if label == best_label)]
    pairs = []
    for i in range(len(rec)):
        frame = rec.frame(i)
        pairs.append(overlay_pair(frame, subject, rec.geometry.views, res.poses[i],
                                  detected=None, distortion=rec.geometry.distortion, label=f"frame {i}"))
    Image.fromarray(pairs[0]).save(out / "overlay_frame0.png")
    save_overlay_gif(pairs, out / "overlay.gif")

    total = time.perf_counter() - t_start
    report = {"subject": subject.name, "settings": settings.__dict__, "summaries": summaries,
              "timings_s": timings, "total_s": total}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = ["# fluororeg demo report", "",
             f"Subject: {subject.name} ({len(subject.landmark_names)} landmarks). Test recording: "
             f"{settings.scenario}, {len(rec)} simulated frame pairs (poses not used in training).", "",
             "| registration | frames registered | angle error (deg) mean +- SD / median | "
             "position error (mm) mean +- SD / median | frames/s |", "|---|---|---|---|---|"]
    for label, s in summaries.items():
        lines.append(f"| {label} | {s['registered']}/{s['frames']} | {s['angle_err_deg_mean']:.2f} +- "
                     f"{s['angle_err_deg_sd']:.2f} / {s['angle_err_deg_median']:.2f} | "
                     f"{s['position_err_mm_mean']:.2f} +- {s['position_err_mm_sd']:.2f} / "
                     f"{s['position_err_mm_median']:.2f} | {s['frames_per_s']:.1f} |")
    selection = out / "models" / "style" / "selection.json"
    if selection.exists():
        chosen = json.loads(selection.read_text())["best"]
        lines += ["", f"Style translator: the snapshot of step {chosen['step']} of {settings.style_steps}, chosen by its "
                      f"median landmark error on the training recording ({chosen['score']:.2f} mm; all snapshots in "
                      "`models/style/selection.csv`)."]
    lines += ["", "Errors are the paper's Eq. 3 (infinity norms) against the simulation's ground truth.", "",
              "Files: `registration_translated/poses.csv` (+ `.tra`), `registration_*/evaluation*.{csv,json,png}`, "
              "`errors_bar_chart.png`, `overlay_frame0.png`, `overlay.gif` (poses of: " + best_label + "), "
              "trained models in `models/`.", "",
              "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; total {total:.1f}."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    _say(f"done in {total / 60:.1f} min. Report: {path}; overlays: {out / 'overlay_frame0.png'}, {out / 'overlay.gif'}")
    return path
