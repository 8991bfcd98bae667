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

``--independent``: instead, the recordings rendered by an independent renderer (plastimatch,
other intensifier effects, views 112 deg apart; ``benchmarks/independent_recordings.py``, built
here when missing) of the example subject, the same with a rotated CT header and the headsq CT
(only with ``--headsq-models``: a detector, and optionally a translator, trained on headsq;
``--subjects`` picks some of the three). Reports, per style
and overall and split by "bone inside both fields" (every landmark inside both fields of view):
``angle_err_deg_median``, ``position_err_mm_median`` (Eq. 3), ``false_ok_frames`` (frames more
than 5 deg or 5 mm off that carry a registered status), ``success_rate_2mm`` (frames with mean
landmark TRE < 2 mm; unregistered frames count as failures),
``rotated_header_angle_err_deg_median``, with refinement the landmark registration's own figures
(``landmark_*``; ``landmark_twin_frames``: landmark poses nearer the truth's depth-reversed twin
than the truth, ``landmark_registered_twin_frames`` those of them its gate passed, which the depth
check does not refine from their twins), ``detection_err_px_xray`` (median distance of detected
landmarks inside the field to their true undistorted projections, 512 px frames) and
``detection_err_px_drr`` (the same on the first 500 DRRs of the test split of ``--dataset``, in
its image pixels, 128 px for the default dataset). The top-level keys are those of the style ``register``
uses by default with the translator: translation, or the no-learning style its snapshot
selection found better (``headline_style``); every style's figures are under ``by_style``.

    python benchmarks/bench_pipeline.py --independent --models out/pipeline_models --json out/bench/pipeline_independent.json
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
    p.add_argument("--independent", action="store_true",
                   help="register the plastimatch-rendered recordings of benchmarks/independent_recordings.py")
    p.add_argument("--independent-dir", default="out/independent", help="where those recordings are (built if missing)")
    p.add_argument("--frames", type=int, default=24, help="--independent: frame pairs per recording (--quick: 6)")
    p.add_argument("--headsq-models", help="--independent: folder with detector.onnx (and optionally "
                                           "style/xray_to_drr.onnx) trained on the headsq subject (without it headsq "
                                           "is skipped)")
    p.add_argument("--subjects", nargs="+", choices=("example", "example_rotated_header", "headsq"),
                   help="--independent: only these subjects (default: all three)")
    p.add_argument("--selection", metavar="RUN",
                   help="--independent: instead, how well the label-free snapshot criterion ranks the snapshots of "
                        "the translator run RUN and the no-learning styles against their true landmark error, on the "
                        "example subject's independent recordings")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="--independent: landmark registration only (default: register's default, with intensity "
                        "refinement)")
    p.add_argument("--dataset", default="out/dataset_cone",
                   help="--independent: the detector's dataset, whose test split gives detection_err_px_drr")
    args = p.parse_args()
    if args.independent and args.selection:
        run_selection(args)
        return
    if args.independent:
        run_independent(args)
        return
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


# ------------------------------------------------------------------------------------ --independent
STYLES = {"translate": "with style translation", "log": "without (log inversion)",
          "invert": "without (grey-level inversion)"}


def _frame_metrics(fr: dict, mask: np.ndarray | None = None) -> dict:
    """The --independent figures over the frames of ``fr`` (concatenated per-frame arrays)
    selected by ``mask``."""
    m = np.ones(len(fr["angle"]), bool) if mask is None else mask
    ang, pos, tre, reg = fr["angle"][m], fr["position"][m], fr["tre"][m], fr["registered"][m]
    det = np.concatenate([d for d, keep in zip(fr["det_err"], m) if keep]) if m.any() else np.zeros(0)
    med = lambda v: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    off = (ang > 5.0) | (pos > 5.0)
    out = {"frames": int(m.sum()), "registered": int(reg.sum()),
            "angle_err_deg_median": med(ang), "position_err_mm_median": med(pos),
            "false_ok_frames": int(np.sum(reg & off)),
            "success_rate_2mm": float(np.mean(np.nan_to_num(tre, nan=np.inf) < 2.0)) if m.any() else float("nan"),
            "landmark_tre_mm_median": med(tre),
            "frames_over_10deg_or_10mm": int(np.sum(reg & ((ang > 10.0) | (pos > 10.0)))),
            "detection_err_px_xray": float(np.median(det)) if det.size else float("nan")}
    if "lm_angle" in fr:  # the landmark registration's own figures (before refinement, its own gate)
        la, lp, lreg = fr["lm_angle"][m], fr["lm_position"][m], fr["lm_registered"][m]
        lm_off = (la > 5.0) | (lp > 5.0)
        out.update(landmark_registered=int(lreg.sum()), landmark_angle_err_deg_median=med(np.where(lreg, la, np.nan)),
                   landmark_position_err_mm_median=med(np.where(lreg, lp, np.nan)),
                   landmark_false_ok_frames=int(np.sum(lreg & lm_off)),
                   landmark_pose_angle_err_deg_median=med(la), landmark_pose_position_err_mm_median=med(lp))
        # Landmark poses nearer the truth's depth-reversed twin than the truth (by rotation): the
        # depth check refines the held-back ones from their twins, not those the gate passed.
        twin_angle = fr["lm_twin_angle"][m]
        registered_twin_angle = np.where(lreg, twin_angle, np.nan)
        out.update(landmark_twin_frames=int(np.sum(twin_angle < la)),
                   landmark_registered_twin_frames=int(np.sum((twin_angle < la) & lreg)),
                   landmark_registered_twin_angle_deg_min=float(np.nanmin(registered_twin_angle))
                   if np.isfinite(registered_twin_angle).any() else float("nan"))
        # Refinement from the landmark poses: frames ending within 1 deg and 1 mm of the truth,
        # of those that had a landmark pose to start from (registered or held back by its gate).
        started = np.isfinite(la)
        out["converged_fraction"] = float(np.mean(reg[started] & (ang[started] < 1.0) & (pos[started] < 1.0))) \
            if started.any() else float("nan")
    return out


def _drr_detection_error(detector, dataset: Path, limit: int = 500) -> float:
    """Median detection error (px) of ``detector`` on the first ``limit`` DRRs of the dataset's
    test split, over the visible landmarks."""
    from fluororeg.dataset.generate import DatasetReader

    reader = DatasetReader(dataset, "test")
    errs, seen = [], 0
    for batch in reader.batches(64, shuffle=False):
        xy, _ = detector.detect(batch["image"])
        d = np.linalg.norm(xy - batch["landmarks_px"], axis=-1)
        errs.append(d[batch["visible"].astype(bool)])
        seen += len(xy)
        if seen >= limit:
            break
    return float(np.median(np.concatenate(errs))) if errs else float("nan")


def run_independent(args) -> None:
    import copy
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from independent_recordings import QUICK_FRAMES, SCENARIO_NAMES, build, recording_folder

    from fluororeg.core.geometry import depth_reversed_poses
    from fluororeg.core.refine import bone_centre
    from fluororeg.pipeline.quality import REGISTERED_STATUSES
    from fluororeg.simulation.subjects import independent_subjects

    models = Path(args.models)
    det_path = Path(args.detector or models / "detector.onnx")
    gen_path = Path(args.translator or models / "style" / "xray_to_drr.onnx")
    for path in (det_path, gen_path):
        if not path.exists():
            raise SystemExit(f"{path} not found: run benchmarks/prepare_pipeline_models.py (or `fluororeg demo`) "
                             "first or pass --models/--detector/--translator")
    n_frames = QUICK_FRAMES if args.quick else args.frames
    scenarios = list(SCENARIO_NAMES)
    subjects = independent_subjects()
    results: dict = {"detector": str(det_path), "translator": str(gen_path), "frames_per_recording": n_frames,
                     "recordings_dir": args.independent_dir, "skipped": {}, "by_subject": {}}
    # models per subject: the example's networks also serve the rotated header (same CT data and
    # landmarks, another header: the detector sees the same images, so its subject check is
    # pointed at the rotated subject's fingerprint); headsq needs its own.
    base_detector = LandmarkDetector(det_path, subject=subjects["example"])
    base_translator = StyleTranslator(gen_path, direction="xray_to_drr")
    rotated_detector = copy.copy(base_detector)
    rotated_detector.subject_fingerprint = subjects["example_rotated_header"].fingerprint
    nets = {"example": (base_detector, base_translator), "example_rotated_header": (rotated_detector, base_translator)}
    if "headsq" in subjects:
        if args.headsq_models:
            hm = Path(args.headsq_models)
            gen = hm / "style" / "xray_to_drr.onnx"  # optional: without it headsq has no translated rows
            nets["headsq"] = (LandmarkDetector(hm / "detector.onnx", subject=subjects["headsq"]),
                              StyleTranslator(gen, direction="xray_to_drr") if gen.exists() else None)
        else:
            results["skipped"]["headsq"] = "no detector trained on headsq (--headsq-models)"
    else:
        results["skipped"]["headsq"] = "shared headsq CT not found"
    if args.subjects:
        nets = {k: v for k, v in nets.items() if k in args.subjects}
        results["skipped"].update({k: "not in --subjects" for k in subjects if k not in args.subjects})
    build(args.independent_dir, n_frames, tuple(nets), scenarios)

    keys = ("angle", "position", "tre", "registered", "det_err", "inside", "subject", "lm_angle", "lm_position",
            "lm_registered", "lm_twin_angle", "refine_s")
    per_style = {st: {k: [] for k in keys} for st in STYLES}
    fps = []
    for name, (detector, translator) in nets.items():
        subject = subjects[name]
        crop_mm = detector.crop_pixel_mm or 2.0  # the detector's training images' pixel size at the bone
        centre = bone_centre(subject.attenuation_model(), subject.mask_model())  # [3] mm, the depth check's
        entry = {}
        for scen in scenarios:
            folder = recording_folder(args.independent_dir, name, scen, n_frames)
            rec = open_recording(folder)
            truth = np.load(folder / "truth.npz")
            inside = truth["in_fov"].all(axis=(1, 2))
            twins = depth_reversed_poses(truth["poses"], rec.geometry.views, centre)  # [F, 6] the truth's twins
            entry[scen] = {"frames_bone_inside_both_fields": int(inside.sum()),
                           "render_seconds_per_image": json.loads((folder / "truth.json").read_text())
                           .get("render_seconds_per_image")}
            for style in STYLES:
                if style == "translate" and translator is None:
                    continue
                res = register_recording(rec, subject, detector, translator if style == "translate" else None,
                                         PipelineOptions(style=style, crop_pixel_mm=crop_mm, refine=args.refine),
                                         progress=False)
                ev = evaluate_poses(res.poses, truth["poses"], landmarks=subject.landmarks_model)
                lm = evaluate_poses(res.batch.poses, truth["poses"], landmarks=subject.landmarks_model)
                registered = np.isin(res.status, REGISTERED_STATUSES)
                acc = per_style[style]
                acc["lm_angle"].append(lm.angle_err_deg)
                acc["lm_position"].append(lm.position_err_mm)
                acc["lm_registered"].append(np.asarray(res.batch.ok, bool))
                acc["lm_twin_angle"].append(evaluate_poses(res.batch.poses, twins).angle_err_deg)
                if args.refine:
                    acc["refine_s"].append(np.atleast_1d(float(res.qc["refined"]["seconds_per_frame"] or np.nan)))
                ok = truth["in_fov"] & np.isfinite(res.detections[..., 0])       # [F, 2, L]
                dist = np.linalg.norm(res.detections - truth["landmarks_px"], axis=-1)
                acc["angle"].append(ev.angle_err_deg)
                acc["position"].append(ev.position_err_mm)
                acc["tre"].append(ev.landmark_err_mm)
                acc["registered"].append(registered)
                acc["det_err"].extend(dist[f][ok[f]] for f in range(len(dist)))
                acc["inside"].append(inside)
                acc["subject"].append(np.full(len(inside), name, dtype=object))
                names, counts = np.unique(res.status, return_counts=True)
                entry[scen][style] = dict(ev.summary(), frames_per_s=res.frames_per_s,
                                          status_counts={str(n): int(c) for n, c in zip(names, counts)})
                if style == "translate":
                    fps.append(res.frames_per_s)
        results["by_subject"][name] = entry

    drr_err = float("nan")
    if Path(args.dataset, "dataset.json").exists():
        drr_err = _drr_detection_error(base_detector, Path(args.dataset))
    else:
        results["skipped"]["detection_err_px_drr"] = f"dataset {args.dataset} not found"
    rows = []
    results["by_style"] = {}
    for style, label in STYLES.items():
        acc = per_style[style]
        if not acc["angle"]:  # no subject had a translator
            continue
        fr = {k: (np.concatenate(v) if k != "det_err" else v) for k, v in acc.items() if len(v) or k == "det_err"}
        overall = _frame_metrics(fr)
        rot = fr["subject"] == "example_rotated_header"
        overall["rotated_header_angle_err_deg_median"] = _frame_metrics(fr, rot)["angle_err_deg_median"]
        overall["detection_err_px_drr"] = drr_err
        block = dict(overall, bone_inside_both_fields=_frame_metrics(fr, fr["inside"]),
                     bone_not_inside_both_fields=_frame_metrics(fr, ~fr["inside"]),
                     subjects={n: _frame_metrics(fr, fr["subject"] == n) for n in nets})
        results["by_style"][style] = block
        rows.append((f"{label}: angle / position median", overall["angle_err_deg_median"],
                     f"deg / {overall['position_err_mm_median']:.3g} mm; {overall['false_ok_frames']} false ok of "
                     f"{overall['frames']}; TRE < 2 mm in {100 * overall['success_rate_2mm']:.0f} %; rotated header "
                     f"{overall['rotated_header_angle_err_deg_median']:.3g} deg"))
        if args.refine:
            ins = block["bone_inside_both_fields"]
            block.update(refined_angle_err_deg_median=ins["angle_err_deg_median"],
                         refined_position_err_mm_median=ins["position_err_mm_median"],
                         refine_s_per_frame_cpu=float(np.nanmedian(fr["refine_s"])) if "refine_s" in fr else float("nan"))
            rows.append(("  landmark registration alone: angle / position median", overall["landmark_angle_err_deg_median"],
                         f"deg / {overall['landmark_position_err_mm_median']:.3g} mm over its {overall['landmark_registered']}"
                         f" registered frames; {overall['landmark_false_ok_frames']} false ok; refinement from its poses "
                         f"ends within 1 deg / 1 mm in {100 * overall['converged_fraction']:.0f} %"))
            rows.append(("  landmark poses nearer the truth's depth-reversed twin: all / registered",
                         overall["landmark_twin_frames"], f"/ {overall['landmark_registered_twin_frames']} (registered "
                         f"poses at least {overall['landmark_registered_twin_angle_deg_min']:.0f} deg from the twin)"))
        ins = block["bone_inside_both_fields"]
        rows.append((f"  bone inside both fields ({ins['frames']} frames): angle / position median",
                     ins["angle_err_deg_median"], f"deg / {ins['position_err_mm_median']:.3g} mm; "
                     f"{ins['false_ok_frames']} false ok; TRE < 2 mm in {100 * ins['success_rate_2mm']:.0f} %"))
        rows.append(("  detection error on X-ray frames (median)", overall["detection_err_px_xray"], "px (512 px frames)"))
    # The headline keys: the style register uses by default with this translator (translation,
    # or the no-learning style its snapshot selection found better), else log inversion.
    headline = base_translator.preferred_style()[0] if "translate" in results["by_style"] else "log"
    results["headline_style"] = headline
    results.update({k: results["by_style"][headline][k] for k in
                    ("angle_err_deg_median", "position_err_mm_median", "false_ok_frames", "success_rate_2mm",
                     "rotated_header_angle_err_deg_median", "detection_err_px_xray", "detection_err_px_drr",
                     "refined_angle_err_deg_median", "refined_position_err_mm_median",
                     "landmark_angle_err_deg_median", "converged_fraction", "refine_s_per_frame_cpu")
                    if k in results["by_style"][headline]})
    results["frames_per_s"] = float(np.mean(fps)) if fps else float("nan")
    rows.append(("detection error on the DRR test split (median)", drr_err, "px (the dataset's DRRs)"))
    rows.append(("end to end (with style translation)", results["frames_per_s"], "frame pairs/s"))
    report(f"bench_pipeline --independent ({len(nets)} subjects x {len(scenarios)} scenarios x {n_frames} frame pairs)",
           rows, results, args.json)


def run_selection(args) -> None:
    """Rank correlation (Spearman) between each candidate's label-free score (refinement
    disagreement; and the former reprojection residual) and its true median landmark error,
    over the snapshots of ``args.selection`` and the no-learning styles, per recording."""
    import sys

    from scipy.stats import spearmanr

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from independent_recordings import QUICK_FRAMES, SCENARIO_NAMES, build, recording_folder

    from fluororeg.simulation.subjects import independent_subjects
    from fluororeg.training.translator_selection import score_snapshots

    det_path = Path(args.detector or Path(args.models) / "detector.onnx")
    subject = independent_subjects()["example"]
    detector = LandmarkDetector(det_path, subject=subject)
    n_frames = QUICK_FRAMES if args.quick else args.frames
    scenarios = list(SCENARIO_NAMES[:2] if args.quick else SCENARIO_NAMES)
    build(args.independent_dir, n_frames, ("example",), scenarios)
    results, rows = {"detector": str(det_path), "run": args.selection, "recordings": {}}, []
    rho_new, rho_old, regret = [], [], []
    for scen in scenarios:
        folder = recording_folder(args.independent_dir, "example", scen, n_frames)
        rec, truth = open_recording(folder), np.load(folder / "truth.npz")["poses"]
        opts = PipelineOptions(crop_pixel_mm=detector.crop_pixel_mm or 2.0, quality_gate=False)
        free = score_snapshots(args.selection, rec, subject, detector, options=opts, progress=False)
        true = score_snapshots(args.selection, rec, subject, detector, options=opts, reference=truth, progress=False)
        names = [c.name for c in free]
        f = np.array([c.score for c in free])
        r = np.array([c.residual_mm for c in free])
        t = np.array([c.score for c in true])
        big = lambda v: np.where(np.isfinite(v), v, 1e9)  # noqa: E731  (inf: worst, ranked last)
        rn, ro = float(spearmanr(big(f), big(t))[0]), float(spearmanr(big(r), big(t))[0])
        chosen = int(np.argmin(big(f)))
        rho_new.append(rn), rho_old.append(ro), regret.append(float(t[chosen] - np.min(t)))
        results["recordings"][scen] = {"candidates": names, "refine_disagreement_mm": f.tolist(),
                                       "residual_mm": r.tolist(), "true_landmark_err_mm": t.tolist(),
                                       "spearman_refine_disagreement": rn, "spearman_residual": ro,
                                       "chosen": names[chosen], "chosen_true_err_mm": float(t[chosen]),
                                       "best_true": names[int(np.argmin(big(t)))], "best_true_err_mm": float(np.min(t))}
        rows.append((f"{scen}: rank correlation with the true error, refinement disagreement / residual", rn,
                     f"/ {ro:.2f}; chosen {names[chosen]} ({t[chosen]:.2f} mm true), best {names[int(np.argmin(big(t)))]} "
                     f"({np.min(t):.2f} mm)"))
    results.update(selection_rank_correlation=float(np.mean(rho_new)),
                   selection_rank_correlation_residual=float(np.mean(rho_old)),
                   selection_regret_mm=float(np.mean(regret)))
    rows.append(("mean rank correlation: refinement disagreement", results["selection_rank_correlation"],
                 f"(residual: {results['selection_rank_correlation_residual']:.2f}); mean true error lost by the "
                 f"choice {results['selection_regret_mm']:.2f} mm"))
    report(f"bench_pipeline --independent --selection ({len(scenarios)} recordings x {n_frames} frame pairs)", rows,
           results, args.json)


if __name__ == "__main__":
    main()
