"""The end-to-end demo (``fluororeg demo``): from nothing but the default example subject to
registered poses, an evaluation against ground truth, a report and overlays.

Steps: the example subject (CT fetched and cached on first use) -> simulated X-ray recordings:
one to learn the X-ray style from, one to register (another seed and motion, poses not used in
training) -> the training workflow (:mod:`fluororeg.training.workflow`): a small artificial
dataset of cone-beam DRRs (the simulated fluoroscopes' perspective), the landmark detector
(fast CPU preset, time-limited), the style translator (fast preset, a bounded number of steps;
of its snapshots, the one that registers the training recording best,
:mod:`fluororeg.training.translator_selection`) -> registration of the test recording with style
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

from fluororeg.io.run_lock import locks_folder

__all__ = ["DemoSettings", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    n_train: int = 3000
    n_test: int = 200
    detector_epochs: int = 60            # work, the same on any machine (the fast preset's 60)
    detector_time_cap_minutes: float = 0.0  # an explicit wall-clock cap (0: none); a cut is recorded
    max_detector_val_px: float = 3.0     # refuse a detector worse than this on its validation share
    # (the fast preset reaches 1.4 px on the cone-beam dataset, benchmarks/bench_training.py)
    allow_undertrained: bool = False     # carry on with a worse detector, with a prominent warning
    style_steps: int = 600
    train_frames: int = 24
    test_frames: int = 20
    image_size: int = 512
    scenario: str = "walking"
    seed: int = 0
    # Threads per process for torch, onnxruntime (intra-op) and the C++ core; 0: the process's
    # count (fluororeg.core.threads: --threads, OMP_NUM_THREADS, else the CPUs it may run on).
    num_threads: int = 0
    device: str = "auto"  # training (torch) and inference (onnxruntime): 'auto' (CUDA when present), 'cpu', 'cuda'
    quick: bool = False   # tiny everything (for tests): seconds, meaningless accuracy

    @classmethod
    def quick_settings(cls) -> "DemoSettings":
        return cls(n_train=48, n_test=8, detector_epochs=1, style_steps=4, train_frames=3, test_frames=4,
                   image_size=192, quick=True, allow_undertrained=True)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


@locks_folder("out", "demo")  # one demo per output folder at a time
def run_demo(out="out/demo", settings: DemoSettings = DemoSettings(), subject=None) -> Path:
    """Run the demo into ``out``; returns the path of ``report.md``."""
    from PIL import Image

    from fluororeg.core.threads import num_threads
    from fluororeg.dataset.generate import DatasetConfig, source_distance_range
    from fluororeg.io.recording import open_recording
    from fluororeg.pipeline.evaluate import evaluate_poses, recordings_bar_chart, write_evaluation
    from fluororeg.pipeline.register import PipelineOptions, register_recording
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording
    from fluororeg.training.detector_config import DetectorConfig, preset
    from fluororeg.training.translator_config import TranslatorConfig
    from fluororeg.training.workflow import WorkflowPaths, WorkflowSettings, train_models
    from fluororeg.viz.overlay import overlay_pair, save_overlay_gif

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

    step("train")
    # Cone-beam DRRs from the fluoroscopes' source distances: the perspective the frames show.
    ds_cfg = DatasetConfig(n_train=settings.n_train, n_test=settings.n_test, image_size=size,
                           pixel_mm=2.0 * 128 / size, seed=settings.seed, shard_size=512 if not q else 32,
                           projection="cone", source_distance_mm=source_distance_range(views))
    snapshot_every = max(1, settings.style_steps // 6)
    threads = num_threads(settings.num_threads or (1 if settings.quick else 0))  # tiny networks: 1 is fastest
    if q:
        det_cfg = DetectorConfig(arch="heatmap", width=8, input_size=64, epochs=settings.detector_epochs,
                                 batch_size=16, num_threads=1, seed=settings.seed)
        style_cfg = TranslatorConfig(image_size=size, gen_width=8, gen_blocks=1, disc_width=8, steps=settings.style_steps,
                                log_every=2, checkpoint_every=2, snapshot_every=snapshot_every, seed=settings.seed)
    else:
        det_cfg = preset("fast", epochs=settings.detector_epochs, time_limit_minutes=settings.detector_time_cap_minutes,
                         seed=settings.seed)
        style_cfg = TranslatorConfig.preset("fast", image_size=size, steps=settings.style_steps, log_every=50,
                                       checkpoint_every=200, snapshot_every=snapshot_every, seed=settings.seed)
    workflow = WorkflowSettings(dataset=ds_cfg, detector=det_cfg, style=style_cfg,
                                num_threads=threads, device=settings.device)
    # The style snapshot is chosen on the training recording: its true poses stand in for the
    # few frames a lab registers by hand to check its models.
    models = train_models(subject, WorkflowPaths.under(out), workflow, xray_recordings=[rec_paths["train"]],
                          validation_recording=rec_paths["train"],
                          reference_poses=np.load(rec_paths["train"] / "truth.npz")["poses"],
                          progress=not q, say=_say)
    detector, translator = models.detector, models.translator
    undertrained = detector.undertrained(settings.max_detector_val_px)
    if undertrained and not settings.allow_undertrained:
        raise RuntimeError(f"{undertrained}. Train longer (DemoSettings.detector_epochs; delete {out / 'models'} and "
                           "rerun: the training resumes) or pass allow_undertrained=True to carry on regardless")
    if undertrained:
        _say(f"WARNING: UNDERTRAINED DETECTOR: {undertrained}; the registration errors below reflect it")
    done("train")

    step("register")
    rec = open_recording(rec_paths["test"])
    truth = np.load(rec_paths["test"] / "truth.npz")
    results, summaries = {}, {}
    styles = (("with style translation (CycleGAN)", "translate", "translated"),
              ("Beer-Lambert log inversion (no learning)", "log", "log"),
              ("grey-level inversion only", "invert", "inverted"))
    for label, style, key in styles:
        _say(f"registering the test recording ({label})")
        opts = PipelineOptions(style=style, crop_pixel_mm=2.0 * 128 / size, num_threads=threads)
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
    style_meta = translator.meta
    training = {"detector": detector.training, "undertrained": undertrained,
                "style": {"step": int(style_meta.get("training_step", 0)), "total_steps": int(style_meta.get("total_steps", 0))}}
    report = {"subject": subject.name, "settings": settings.__dict__, "training": training, "summaries": summaries,
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
    t = detector.training or {}
    lines += ["", "Trained models (the figures the registration results above rest on):", "",
              "| model | work | validation error | notes |", "|---|---|---|---|",
              f"| landmark detector | {t.get('epochs')} of {t.get('epochs_planned')} epochs, {t.get('steps')} steps "
              f"(model of epoch {t.get('model_epoch')}) | {t.get('val_mean_px')} px = {t.get('val_mean_mm')} mm "
              f"at the bone | {'CUT SHORT by the time cap; ' if t.get('cut_short') else ''}seed {t.get('seed')} |",
              f"| style translator | snapshot of step {training['style']['step']} of {training['style']['total_steps']} "
              "| see below | |"]
    if undertrained:
        lines += ["", f"**WARNING: undertrained detector**: {undertrained}."]
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
