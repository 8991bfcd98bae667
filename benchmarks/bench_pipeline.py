"""End-to-end evaluation: simulated recordings of the example subject per motion scenario
(poses and seeds not used in training) registered by ``fluororeg register``'s pipeline, with
style translation (CycleGAN) and without it (Beer-Lambert log inversion; plain grey-level
inversion); the paper's Eq. 3 errors (mean, SD, median) per scenario and frame pairs per
second end to end (reading frames, crops, translation, detection, registration). Errors are
reported over all frames and, as ``*_median_inside*``, over the frames whose landmarks all lie
inside both circular fields of view (the aim's condition: the skull well inside both).

    python benchmarks/bench_pipeline.py --quick --json out/bench/pipeline.json [--models out/demo/models]

The trained networks come from ``--models`` (default: the demo's, ``out/demo/models``; run
``fluororeg demo`` first); ``--detector`` / ``--translator`` replace one of them (e.g. a
detector trained longer by ``benchmarks/bench_training.py``). --quick: two scenarios of 12 frame
pairs instead of four of 40.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluororeg.pipeline.evaluate import evaluate_poses
from fluororeg.inference.detector import LandmarkDetector
from fluororeg.inference.translator import StyleTranslator
from fluororeg.pipeline.register import PipelineOptions, register_recording
from fluororeg.io.recording import open_recording
from fluororeg.simulation.simulate import default_dual_views, simulate_recording
from fluororeg.subject.subject import example_subject

from _common import parser, report


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="out/demo/models", help="folder with detector.onnx and style/xray_to_drr.onnx")
    p.add_argument("--work", default="out/bench_pipeline", help="where the simulated recordings go")
    p.add_argument("--detector", help="detector ONNX (default <models>/detector.onnx)")
    p.add_argument("--translator", help="X-ray-to-DRR generator ONNX (default <models>/style/xray_to_drr.onnx)")
    args = p.parse_args()
    models = Path(args.models)
    det_path = Path(args.detector or models / "detector.onnx")
    gen_path = Path(args.translator or models / "style" / "xray_to_drr.onnx")
    for path in (det_path, gen_path):
        if not path.exists():
            raise SystemExit(f"{path} not found: run `fluororeg demo` first or pass --models/--detector/--translator")
    subject = example_subject()
    detector = LandmarkDetector(det_path, subject=subject)
    translator = StyleTranslator(gen_path, direction="xray_to_drr")
    crop_mm = 2.0 * 128 / translator.input_size[0]
    scenarios = ["walking", "axial_rotation"] if args.quick else ["walking", "flexion_extension", "lateral_bending",
                                                                     "axial_rotation"]
    n_frames = 12 if args.quick else 40
    views = default_dual_views(512, 512, pitch=0.8)  # a 16-inch intensifier: the skull well inside
    results, rows = {"detector": str(det_path), "translator": str(gen_path), "scenarios": {}}, []
    styles = {"translate": "with style translation", "log": "without (log inversion)",
              "invert": "without (grey-level inversion)"}
    all_ang, all_pos, fps, all_inside = {k: [] for k in styles}, {k: [] for k in styles}, [], []
    for k, scen in enumerate(scenarios):
        folder = Path(args.work) / f"{scen}_{n_frames}"
        if not (folder / "recording.json").exists():
            simulate_recording(subject, folder, scenario=scen, n_frames=n_frames, views=views, seed=1000 + k)
        rec = open_recording(folder)
        truth_file = np.load(folder / "truth.npz")
        truth = truth_file["poses"]
        # Frames with every landmark inside both circular fields of view: the aim's condition.
        inside = truth_file["in_fov"].all(axis=(1, 2))
        all_inside.append(inside)
        entry = {"frames_skull_inside_both_fovs": int(inside.sum())}
        for style, label in styles.items():
            res = register_recording(rec, subject, detector, translator if style == "translate" else None,
                                     PipelineOptions(style=style, crop_pixel_mm=crop_mm), progress=False)
            ev = evaluate_poses(res.poses, truth)
            names, counts = np.unique(res.status, return_counts=True)
            s = dict(ev.summary(), frames_per_s=res.frames_per_s,
                     status_counts={str(n): int(c) for n, c in zip(names, counts)})
            entry[style] = s
            all_ang[style].append(ev.angle_err_deg)
            all_pos[style].append(ev.position_err_mm)
            if style == "translate":
                fps.append(res.frames_per_s)
            rows.append((f"{scen} {label}: angle median / position median",
                         s["angle_err_deg_median"], f"deg / {s['position_err_mm_median']:.3g} mm "
                         f"(mean {s['angle_err_deg_mean']:.3g} +- {s['angle_err_deg_sd']:.3g} deg, "
                         f"{s['position_err_mm_mean']:.3g} +- {s['position_err_mm_sd']:.3g} mm; "
                         f"{s['registered']}/{s['frames']} registered: "
                         + ", ".join(f"{c} {n}" for n, c in s["status_counts"].items()) + ")"))
        results["scenarios"][scen] = entry
    inside = np.concatenate(all_inside)
    results["frames"], results["frames_skull_inside_both_fovs"] = int(len(inside)), int(inside.sum())
    for style in styles:
        a = np.concatenate(all_ang[style])
        pos = np.concatenate(all_pos[style])
        key = {"translate": "", "log": "_without_style", "invert": "_grey_inversion"}[style]
        results[f"angle_err_deg_median{key}"] = float(np.nanmedian(a))
        results[f"position_err_mm_median{key}"] = float(np.nanmedian(pos))
        results[f"angle_err_deg_mean{key}"] = float(np.nanmean(a))
        results[f"position_err_mm_mean{key}"] = float(np.nanmean(pos))
        results[f"angle_err_deg_median_inside{key}"] = float(np.nanmedian(a[inside])) if inside.any() else float("nan")
        results[f"position_err_mm_median_inside{key}"] = float(np.nanmedian(pos[inside])) if inside.any() else float("nan")
        results[f"registered_share{key}"] = float(np.mean(np.isfinite(a)))
    results["frames_per_s"] = float(np.mean(fps))
    rows += [("all scenarios, with style: angle error median", results["angle_err_deg_median"], "deg"),
             ("all scenarios, with style: position error median", results["position_err_mm_median"], "mm"),
             ("all scenarios, log inversion: angle error median", results["angle_err_deg_median_without_style"], "deg"),
             ("all scenarios, log inversion: position error median", results["position_err_mm_median_without_style"], "mm"),
             ("all scenarios, grey inversion: angle error median", results["angle_err_deg_median_grey_inversion"], "deg"),
             ("all scenarios, grey inversion: position error median", results["position_err_mm_median_grey_inversion"],
              "mm"),
             ("end to end (with style translation)", results["frames_per_s"], "frame pairs/s"),
             (f"skull inside both fields of view ({results['frames_skull_inside_both_fovs']} of {results['frames']} "
              "frames), with style: angle / position median", results["angle_err_deg_median_inside"],
              f"deg / {results['position_err_mm_median_inside']:.3g} mm"),
             ("  same frames, log inversion: angle / position median", results["angle_err_deg_median_inside_without_style"],
              f"deg / {results['position_err_mm_median_inside_without_style']:.3g} mm"),
             ("  same frames, grey inversion: angle / position median", results["angle_err_deg_median_inside_grey_inversion"],
              f"deg / {results['position_err_mm_median_inside_grey_inversion']:.3g} mm")]
    report(f"bench_pipeline ({len(scenarios)} scenarios x {n_frames} frame pairs)", rows, results, args.json)


if __name__ == "__main__":
    main()
