"""The ``fluororeg`` command line.

    fluororeg render [--ct PATH] [--count N] [--size PX] [--pixel-mm MM] [--out DIR]
    fluororeg subject init --ct CT [--landmarks FILE] --out DIR | subject check [DIR]
    fluororeg dataset [--subject DIR] [--out DIR] [--n-train N] [--n-test N] [--seed S]
                      [--projection parallel|cone] [--geometry geometry.json] [--source-distance LO HI]
    fluororeg contact-sheet DATASET [--split train|test] [--count N] [--out PNG]
    fluororeg simulate [--subject DIR] [--scenario NAME] [--frames N] [--size PX] [--out DIR]
    fluororeg train-detector DATASET --out RUN [--preset fast|paper] [--minutes M]
    fluororeg train-style --xray REC... --drr DATASET --out RUN [--preset fast|paper] [--steps N] [--snapshot-every N]
    fluororeg select-style RUN RECORDING --detector MODEL.onnx [--reference POSES] --out DIR
    fluororeg calibrate distortion PLATE_IMAGE --out MODEL.json
    fluororeg calibrate geometry --mayacam CAM1 CAM2 --pitch MM --out geometry.json
    fluororeg register RECORDING --detector MODEL.onnx [--translator MODEL.onnx] --out DIR
    fluororeg overlay RECORDING POSES.csv --out DIR [--frames I ...] [--video overlay.mp4|.gif|none]
    fluororeg evaluate POSES.csv --reference TRUTH [--subject DIR] --out DIR
    fluororeg demo [--out DIR] [--quick]
    fluororeg info

``render`` renders parallel-beam DRRs (the paper's artificial radiographs) of a CT at random
poses, or cone-beam DRRs through a default dual-fluoroscope layout (``--geometry cone``), and
saves the line integrals (``drrs.npz``), 8-bit PNGs and a contact sheet. Without ``--ct`` it
uses the default example subject (the InVesalius "Cranium" head CT, fetched and cached on
first use).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _load_ct(path: str | None):
    from fluororeg.core.volume import load_volume

    if path is None:
        from fluororeg.subject.example import cranium_volume

        vol = cranium_volume()
        name = "cranium (default example subject)"
    else:
        vol = load_volume(path)
        name = path
    return vol.translated(-vol.center), name


def _contact_sheet(images: np.ndarray, columns: int = 8) -> np.ndarray:
    n, h, w = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    sheet = np.zeros((rows * (h + 2), columns * (w + 2)), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = img
    return sheet


def cmd_render(args: argparse.Namespace) -> int:
    from PIL import Image

    from fluororeg.core import render as R
    from fluororeg.core.geometry import ParallelCamera

    if args.count < 1:
        raise ValueError(f"--count {args.count}: expected at least 1")
    if args.size < 8:
        raise ValueError(f"--size {args.size}: expected at least 8 pixels")
    t0 = time.perf_counter()
    ct, name = _load_ct(args.ct)
    mu = ct.hu_to_attenuation()
    print(f"CT: {name}, {ct.data.shape[::-1]} voxels (x, y, z) of {np.round(ct.spacing, 3).tolist()} mm")
    rng = np.random.default_rng(args.seed)
    n = args.count
    poses = np.concatenate([rng.uniform(-args.max_angle, args.max_angle, (n, 3)),
                            rng.uniform(-10.0, 10.0, (n, 3))], axis=1)
    t1 = time.perf_counter()
    if args.geometry == "parallel":
        scales = rng.uniform(0.9, 1.1, n)
        drrs = R.render_parallel(mu, poses, ParallelCamera(args.size, args.size, args.pixel_mm), scales,
                                 device=args.device)
        extra = {"scales": scales, "pixel_mm": args.pixel_mm}
    else:
        from fluororeg.simulation.simulate import default_dual_views

        views = default_dual_views(args.size, args.size, pitch=300.0 / args.size)
        view_list = [views[i % 2] for i in range(n)]
        drrs = R.render_cone(mu, view_list, poses, device=args.device)
        extra = {"views": np.stack([v.packed() for v in view_list])}
    elapsed = time.perf_counter() - t1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "drrs.npz", drrs=drrs, poses_deg_mm=poses, geometry=args.geometry, **extra)
    images = R.to_uint8(drrs)
    for i, img in enumerate(images):
        Image.fromarray(img).save(out / f"drr_{i:04d}.png")
    Image.fromarray(_contact_sheet(images)).save(out / "contact_sheet.png")
    print(f"rendered {n} {args.geometry}-beam DRRs of {args.size}x{args.size} in {elapsed * 1e3:.1f} ms "
          f"({n / elapsed:.0f} DRR/s) on {args.device}")
    print(f"wrote {out / 'drrs.npz'}, {n} PNGs and {out / 'contact_sheet.png'} "
          f"(total {time.perf_counter() - t0:.1f} s)")
    return 0


def _subject(folder: str | None):
    from fluororeg.subject.subject import example_subject, load_subject

    return example_subject() if folder is None else load_subject(folder)


def cmd_dataset(args: argparse.Namespace) -> int:
    from fluororeg.dataset.generate import DatasetConfig, PoseRanges, generate_dataset, source_distance_range

    if args.projection == "parallel" and (args.geometry or args.source_distance):
        raise ValueError("--geometry and --source-distance describe a cone beam: drop --projection parallel")
    projection, sod = args.projection or "parallel", DatasetConfig.source_distance_mm
    if args.geometry is not None:
        from fluororeg.calibration.geometry_file import load_geometry

        projection, sod = "cone", source_distance_range(load_geometry(args.geometry).views)
    if args.source_distance is not None:
        projection, sod = "cone", tuple(args.source_distance)
    poses = PoseRanges() if args.azimuth is None else PoseRanges(azimuth_deg=tuple(args.azimuth))
    config = DatasetConfig(n_train=args.n_train, n_test=args.n_test, image_size=args.size,
                           pixel_mm=args.pixel_mm, segmented_share=args.segmented_share, seed=args.seed,
                           shard_size=args.shard_size, poses=poses, projection=projection,
                           source_distance_mm=sod)
    subject = _subject(args.subject)
    beam = "parallel-beam" if config.projection == "parallel" else \
        "cone-beam (sources {:.0f}-{:.0f} mm from the object)".format(*config.source_distance_mm)
    print(f"subject {subject.name}: {len(subject.landmark_names)} landmarks, {len(subject.pairs)} pairs; "
          f"generating {config.n_train} train + {config.n_test} test {beam} samples into {args.out}")
    t0 = time.perf_counter()
    try:
        generate_dataset(subject, args.out, config, device=args.device, progress=not args.quiet)
    except KeyboardInterrupt:
        return 130
    print(f"done in {time.perf_counter() - t0:.1f} s; look at it with: fluororeg contact-sheet {args.out}")
    return 0


def cmd_contact_sheet(args: argparse.Namespace) -> int:
    from fluororeg.dataset.generate import DatasetReader, contact_sheet

    reader = DatasetReader(args.dataset, args.split)
    out = args.out or str(Path(args.dataset) / f"contact_sheet_{args.split}.png")
    print(f"wrote {contact_sheet(reader, out, n=args.count, seed=args.seed)}")
    return 0


def _pairs_from_names(names) -> list[tuple[str, str]]:
    """(left, right) pairs of landmarks named ``<stem>_L`` / ``<stem>_R`` (or _left / _right)."""
    pairs = []
    for n in names:
        for left, right in (("_L", "_R"), ("_left", "_right")):
            if n.endswith(left) and n[:-len(left)] + right in names:
                pairs.append((n, n[:-len(left)] + right))
    return pairs


def cmd_subject_init(args: argparse.Namespace) -> int:
    from fluororeg.subject.landmarks import load_landmarks
    from fluororeg.subject.subject import make_subject, propose_landmarks, save_subject
    from fluororeg.core.volume import load_volume

    if (Path(args.out) / "subject.json").exists() and not args.force:
        raise FileExistsError(f"'{args.out}' already holds a subject (subject.json): choose another --out, or pass "
                              "--force to overwrite it and its landmarks")
    if args.pairs is not None and not args.landmarks:
        raise ValueError("--pairs names landmarks of --landmarks; proposed landmarks come with their own pairs")
    ct = load_volume(args.ct)
    if args.landmarks:
        landmarks = load_landmarks(args.landmarks)
        if args.pairs is not None:
            pairs = []
            for text in args.pairs:
                if text.count(":") != 1:
                    raise ValueError(f"--pairs {text!r}: expected LEFT:RIGHT landmark names")
                pairs.append(tuple(text.split(":")))
            how = f"{len(landmarks)} landmarks from {args.landmarks}, {len(pairs)} pairs as given"
        else:
            pairs = _pairs_from_names(landmarks.names)
            how = f"{len(landmarks)} landmarks from {args.landmarks}, {len(pairs)} pairs by their _L/_R names"
    else:
        landmarks, pairs = propose_landmarks(ct, args.propose, min(args.propose // 3, 13))
        how = f"{len(landmarks)} proposed landmarks ({len(pairs)} symmetric pairs); check and move them in 3D Slicer"
    subject = make_subject(args.name or Path(args.out).name, ct, landmarks, pairs, threshold_hu=args.threshold_hu)
    path = save_subject(subject, args.out)
    print(f"wrote {path}: {how}. Check it with: fluororeg subject check {args.out}")
    return 0


def cmd_subject_check(args: argparse.Namespace) -> int:
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from fluororeg.core import render as R
    from fluororeg.dataset.generate import PoseRanges
    from fluororeg.core.geometry import ParallelCamera, euler_from_matrix

    if not (np.isfinite(args.max_off_bone_mm) and args.max_off_bone_mm >= 0):
        raise ValueError(f"--max-off-bone-mm {args.max_off_bone_mm}: expected a distance >= 0 in mm")
    subject = _subject(args.folder)
    ct, lm = subject.ct, subject.landmarks_model
    print(f"subject {subject.name}: CT {ct.data.shape[::-1]} voxels (x, y, z) of {np.round(ct.spacing, 3).tolist()} mm, "
          f"{len(lm)} landmarks, {len(subject.pairs)} symmetric pairs, fingerprint {subject.fingerprint}")
    # Landmarks belong on the bone: distance of each to the bone mask (0 inside it).
    mask = np.asarray(subject.mask.data).astype(bool)
    dist_mm = ndimage.distance_transform_edt(~mask, sampling=tuple(float(v) for v in subject.mask.spacing[::-1]))
    ijk = np.round(subject.mask.physical_to_voxel(subject.landmarks.positions)).astype(int)[:, ::-1]  # k, j, i
    ijk = np.clip(ijk, 0, np.array(mask.shape) - 1)
    d = dist_mm[tuple(ijk.T)]
    far = [(n, float(v)) for n, v in zip(subject.landmark_names, d) if v > args.max_off_bone_mm]
    for n, v in far:
        print(f"  warning: landmark {n} lies {v:.1f} mm from the bone mask (more than {args.max_off_bone_mm:g} mm)")
    print(f"landmarks on bone: {len(lm) - len(far)} of {len(lm)} within {args.max_off_bone_mm:g} mm of the mask")
    # Front and side DRRs with the landmarks (blue left, red right, green midline).
    ranges = PoseRanges()
    R0 = ranges.base_rotation()
    side = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]) @ R0  # 90 deg about image y
    poses = np.zeros((2, 6))
    poses[:, :3] = euler_from_matrix(np.stack([R0, side]))
    extent = float(np.max(np.abs(lm))) * 2.6
    cam = ParallelCamera(256, 256, max(extent / 256, 0.5))
    drr = R.render_parallel(subject.attenuation_model(), poses, cam)
    xy, _ = R.project_parallel(lm, poses, cam)
    left = {a for a, _ in subject.pairs}
    right = {b for _, b in subject.pairs}
    tiles = []
    for k in range(2):
        img = Image.fromarray(R.to_uint8(drr[k])).convert("RGB").resize((512, 512))
        draw = ImageDraw.Draw(img)
        for i, (x, y) in enumerate(xy[k]):
            col = (80, 160, 255) if i in left else (255, 80, 80) if i in right else (80, 255, 80)
            X, Y = 2 * x + 1, 2 * y + 1
            draw.ellipse([X - 4, Y - 4, X + 4, Y + 4], outline=col, width=2)
        tiles.append(np.asarray(img))
    out = Path(args.sheet) if args.sheet else Path(args.folder or ".") / "subject_check.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out)
    print(f"wrote {out} (front and side DRRs; blue: left, red: right, green: midline)")
    return 0 if not far or not args.strict else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    if args.frames < 1:
        raise ValueError(f"--frames {args.frames}: expected at least 1")
    if args.size < 128:
        raise ValueError(f"--size {args.size}: expected at least 128 pixels (the calibration plates' beads must be "
                         "resolved)")
    subject = _subject(args.subject)
    views = default_dual_views(args.size, args.size, pitch=409.6 / args.size)  # a 16-inch (41 cm) intensifier
    t0 = time.perf_counter()
    out = simulate_recording(subject, args.out, scenario=args.scenario, n_frames=args.frames, views=views,
                             seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"simulated {args.frames} frame pairs ({args.scenario}) of {subject.name} in "
          f"{time.perf_counter() - t0:.1f} s -> {out} (ground truth in truth.npz / truth.json)")
    return 0


def cmd_train_detector(args: argparse.Namespace) -> int:
    from fluororeg.training.detector_config import preset
    from fluororeg.training.detector_export import export_detector
    from fluororeg.training.detector_train import train_detector

    overrides = {}
    if args.minutes is not None:
        overrides["time_limit_minutes"] = args.minutes
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    cfg = preset(args.preset, **overrides)
    result = train_detector(args.dataset, args.out, cfg, resume=not args.restart, progress=not args.quiet,
                            device=args.device)
    if result.interrupted:  # a partial run is never exported as the detector
        print(f"interrupted after {result.epochs_done} epoch(s): run again to resume; nothing exported")
        return 130
    path = export_detector(args.out, Path(args.out) / "detector.onnx")
    print(f"best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch}; "
          f"{'interrupted: run again to resume; ' if result.interrupted else ''}exported {path}")
    return 130 if result.interrupted else 0


def cmd_train_style(args: argparse.Namespace) -> int:
    from fluororeg.training.style_config import StyleConfig
    from fluororeg.training.style_export import export_generators
    from fluororeg.training.style_train import discard_run, train_style
    from fluororeg.training.xray_crops import xray_training_crops

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps}: expected at least 1")
    if args.every < 1:
        raise ValueError(f"--every {args.every}: expected at least 1 (every n-th frame)")
    cfg = StyleConfig.preset(args.preset, snapshot_every=args.snapshot_every,
                             **({"steps": args.steps} if args.steps is not None else {}))
    crops = xray_training_crops(args.xray, size=cfg.image_size, crop_pixel_mm=args.crop_pixel_mm, every=args.every)
    print(f"{len(crops)} X-ray crops of {cfg.image_size} px from {len(args.xray)} recording(s)")
    if args.restart:
        discard_run(args.out)
    summary = train_style(crops, args.drr, args.out, cfg, progress=not args.quiet, device=args.device)
    if summary["stopped"]:  # a partial run is never exported as the translator
        print(f"interrupted at step {summary['step']} of {summary['total_steps']}: run again to resume; nothing exported")
        return 130
    x2d, d2x = export_generators(args.out, Path(args.out) / "onnx")
    print(f"step {summary['step']} of {summary['total_steps']}; exported {x2d} and {d2x}")
    if args.snapshot_every:
        print(f"choose among the snapshots with: fluororeg select-style {args.out} RECORDING --detector MODEL.onnx "
              f"--out {Path(args.out) / 'selected'}")
    return 0


def cmd_select_style(args: argparse.Namespace) -> int:
    from fluororeg.inference.detector import LandmarkDetector
    from fluororeg.pipeline.register import PipelineOptions
    from fluororeg.io.poses import read_reference_poses
    from fluororeg.io.recording import open_recording
    from fluororeg.training.style_selection import select_style_snapshot

    subject = _subject(args.subject)
    rec = open_recording(args.recording)
    detector = LandmarkDetector(args.detector, subject=subject, device=args.device)
    reference = read_reference_poses(args.reference, frames=np.arange(len(rec))) if args.reference else None
    best, scores = select_style_snapshot(args.run, rec, subject, detector, args.out, reference=reference,
                                         options=PipelineOptions(crop_pixel_mm=args.crop_pixel_mm),
                                         max_frames=args.max_frames, progress=not args.quiet)
    unit = "mm landmark error" if reference is not None else "mm residual"
    for s in scores:
        mark = "  <- best" if s.step == best.step else ""
        print(f"step {s.step:7d}: {s.score:8.3f} {unit}, {100 * s.registered_share:5.1f} % registered{mark}")
    print(f"exported step {best.step} -> {Path(args.out) / 'xray_to_drr.onnx'}; table in "
          f"{Path(args.out) / 'selection.csv'}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.what == "distortion":
        from fluororeg.calibration.distortion import fit_distortion

        fit = fit_distortion(args.image, radius_px=args.bead_radius, polarity=args.polarity,
                             spacing_mm=args.spacing_mm)
        fit.model.save(args.out)
        r = fit.report
        print(f"distortion model from {r.get('n_matched', '?')} beads: residual RMS {fit.model.rms_px:.3f} px, "
              f"max {fit.model.max_px:.3f} px -> {args.out}")
    else:
        from fluororeg.calibration.geometry_file import geometry_from_mayacam, save_geometry

        if not args.mayacam or len(args.mayacam) != 2:
            raise ValueError("calibrate geometry needs --mayacam CAM1 CAM2 (two MayaCam 2.0 files)")
        geo = geometry_from_mayacam(args.mayacam, pitch_u=args.pitch)
        save_geometry(args.out, geo)
        print(f"geometry of 2 views (system centre {np.round(geo.system_centre, 1).tolist()} mm) -> {args.out}")
    return 0


def _pipeline_loss(loss: str | None, mode: str) -> str | None:
    """``--loss`` as PipelineOptions takes it: by default Cauchy, which the Frobenius objective has not."""
    if loss is None:
        loss = "cauchy" if mode == "least_squares" else "none"
    return None if loss == "none" else loss


def cmd_register(args: argparse.Namespace) -> int:
    from fluororeg.inference.detector import LandmarkDetector
    from fluororeg.inference.translator import StyleTranslator
    from fluororeg.pipeline.register import PipelineOptions, register_recording
    from fluororeg.io.recording import open_recording

    if args.view_outlier_ratio != 0 and not args.view_outlier_ratio > 1.5:
        raise ValueError(f"--view-outlier-ratio {args.view_outlier_ratio}: expected 0 (off) or a number > 1.5")
    subject = _subject(args.subject)
    rec = open_recording(args.recording)
    detector = LandmarkDetector(args.detector, subject=subject, device=args.device)
    translator = StyleTranslator(args.translator, direction="xray_to_drr", device=args.device) if args.translator else None
    style = args.style or ("translate" if translator is not None else "log")
    opts = PipelineOptions(style=style, init=args.init, smoothing_hz=args.smooth_hz, fps=args.fps,
                           loss=_pipeline_loss(args.loss, args.mode), loss_scale_mm=args.loss_scale, mode=args.mode,
                           min_visible=args.min_visible, recentre=not args.no_recentre,
                           view_outlier_ratio=None if args.view_outlier_ratio == 0 else args.view_outlier_ratio)
    res = register_recording(rec, subject, detector, translator, opts, out_dir=args.out, progress=not args.quiet)
    registered = int(np.isfinite(res.poses).all(axis=1).sum())
    names, counts = np.unique(res.status, return_counts=True)
    breakdown = ", ".join(f"{c} {n}" for n, c in zip(names, counts))
    print(f"registered {registered} of {len(res.frames)} frame pairs ({breakdown}) in {res.seconds:.1f} s "
          f"({res.frames_per_s:.1f} frame pairs/s) -> {Path(args.out) / 'poses.csv'} and poses.tra; check them with: "
          "fluororeg overlay "
          f"{args.recording} {Path(args.out) / 'poses.csv'} --out {Path(args.out) / 'overlays'}")
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from PIL import Image

    from fluororeg.viz.overlay import overlay_pair, save_overlay_video
    from fluororeg.io.poses import read_poses_csv
    from fluororeg.io.recording import open_recording

    subject = _subject(args.subject)
    rec = open_recording(args.recording)
    table = read_poses_csv(args.poses)
    frames, poses = np.asarray(table["frame"], int), table["poses"]
    if len(frames) and (frames.min() < 0 or frames.max() >= len(rec)):
        raise ValueError(f"{args.poses} has frames {frames.min()}..{frames.max()}, but the recording has "
                         f"{len(rec)} frames (0..{len(rec) - 1})")
    pose_of = dict(zip(frames.tolist(), poses))
    nan_pose = np.full(6, np.nan)

    def pair(i):
        pose = pose_of.get(i, nan_pose)
        status = "" if np.isfinite(pose).all() else "  (not registered)"
        return overlay_pair(rec.frame(i), subject, rec.geometry.views, pose,
                            distortion=rec.geometry.distortion, label=f"frame {i}{status}")

    chosen = args.frames if args.frames is not None else sorted({0, len(rec) // 2, len(rec) - 1})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in chosen:
        if not 0 <= i < len(rec):
            raise ValueError(f"--frames {i}: expected frame numbers 0..{len(rec) - 1}")
        Image.fromarray(pair(i)).save(out / f"overlay_frame_{i:05d}.png")
    written = [str(out / f"overlay_frame_{i:05d}.png") for i in chosen]
    if args.video != "none":
        from tqdm import tqdm

        fps = 10.0 if args.fps is None else args.fps
        frames_iter = (pair(i) for i in tqdm(range(len(rec)), unit="frame", desc="overlay", disable=args.quiet))
        written.append(str(save_overlay_video(frames_iter, out / args.video, fps=fps)))
    print("wrote " + ", ".join(written))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fluororeg.pipeline.evaluate import evaluate_poses, write_evaluation
    from fluororeg.io.poses import read_poses_csv, read_reference_poses

    table = read_poses_csv(args.poses)
    ref = read_reference_poses(args.reference, frames=table["frame"])  # matched by frame number
    if not np.isfinite(ref).all(axis=1).any():
        raise ValueError(f"'{args.reference}' has no pose for any of the {len(ref)} frames of '{args.poses}' "
                         "(rows are matched by their frame numbers)")
    landmarks = _subject(args.subject).landmarks_model if args.with_landmarks else None
    ev = evaluate_poses(table["poses"], ref, landmarks=landmarks, frames=table["frame"])
    paths = write_evaluation(ev, args.out)
    s = ev.summary()
    print(f"{s['registered']}/{s['frames']} frames with a reference registered: angle error "
          f"{s['angle_err_deg_mean']:.2f} +- "
          f"{s['angle_err_deg_sd']:.2f} deg (median {s['angle_err_deg_median']:.2f}), position error "
          f"{s['position_err_mm_mean']:.2f} +- {s['position_err_mm_sd']:.2f} mm (median "
          f"{s['position_err_mm_median']:.2f}) -> {paths['csv']}, {paths['plot']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fluororeg.demo import DemoSettings, run_demo

    settings = DemoSettings.quick_settings() if args.quick else DemoSettings()
    run_demo(args.out, settings)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import fluororeg

    print(f"fluororeg {fluororeg.__version__}")
    print(f"CUDA backend built: {fluororeg.cuda_built()}; CUDA device usable: {fluororeg.has_cuda()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluororeg", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render DRRs of a CT (default: the example subject)")
    r.add_argument("--ct", help="CT file or DICOM folder (default: the example subject's CT)")
    r.add_argument("--geometry", choices=["parallel", "cone"], default="parallel")
    r.add_argument("--count", type=int, default=32, help="number of DRRs (default 32)")
    r.add_argument("--size", type=int, default=128, help="image width and height in pixels (default 128)")
    r.add_argument("--pixel-mm", type=float, default=2.0, help="parallel beam: pixel size in mm (default 2)")
    r.add_argument("--max-angle", type=float, default=30.0, help="random rotations within +- this (deg)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    r.add_argument("--out", default="out/render", help="output folder (default out/render)")
    r.set_defaults(func=cmd_render)
    d = sub.add_parser("dataset", help="generate the artificial DRR-landmark dataset of a subject")
    d.add_argument("--subject", help="subject folder with subject.json (default: the example subject)")
    d.add_argument("--out", default="out/dataset", help="dataset folder (default out/dataset); a rerun resumes")
    d.add_argument("--n-train", type=int, default=9251)
    d.add_argument("--n-test", type=int, default=500)
    d.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    d.add_argument("--pixel-mm", type=float, default=2.0, help="pixel size at scale 1, mm (default 2)")
    d.add_argument("--segmented-share", type=float, default=2139 / 9751,
                   help="share of bone-segmented images (default 2139/9751, as the paper)")
    d.add_argument("--shard-size", type=int, default=512)
    d.add_argument("--projection", choices=["parallel", "cone"], default=None,
                   help="parallel-beam DRRs (the paper's, default) or cone-beam DRRs from a point source")
    d.add_argument("--source-distance", type=float, nargs=2, metavar=("LO", "HI"),
                   help="cone beam: range of source-to-object distances in mm (implies --projection cone)")
    d.add_argument("--geometry", help="geometry.json of the lab's fluoroscopes: cone beam with their "
                                      "source distances to the beams' crossing +-15%% (implies --projection cone)")
    d.add_argument("--azimuth", type=float, nargs=2, metavar=("LO", "HI"),
                   help="viewing azimuths in deg (default -90 90: the subject's front half)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_dataset)
    sj = sub.add_parser("subject", help="set up a subject folder (CT + landmarks) and check it")
    sjs = sj.add_subparsers(dest="subject_command", required=True)
    si = sjs.add_parser("init", help="write a subject folder from a CT and landmarks (or proposed landmarks)")
    si.add_argument("--ct", required=True, help="CT file or DICOM folder (Hounsfield units)")
    si.add_argument("--landmarks", help="landmarks (.mrk.json, .fcsv or .csv); pairs from _L/_R names. "
                                        "Without it, a symmetric set is proposed on the bone surface")
    si.add_argument("--pairs", nargs="+", metavar="LEFT:RIGHT",
                    help="symmetric landmark pairs by name (default: from <stem>_L / <stem>_R names)")
    si.add_argument("--propose", type=int, default=33, help="number of proposed landmarks (default 33)")
    si.add_argument("--threshold-hu", type=float, default=300.0, help="bone mask threshold (default 300 HU)")
    si.add_argument("--name", help="subject name (default: the folder's name)")
    si.add_argument("--out", required=True, help="subject folder to write")
    si.add_argument("--force", action="store_true", help="overwrite an existing subject folder")
    si.set_defaults(func=cmd_subject_init)
    sc = sjs.add_parser("check", help="load and validate a subject folder; PNG of its landmarks on DRRs")
    sc.add_argument("folder", nargs="?", help="subject folder (default: the example subject)")
    sc.add_argument("--max-off-bone-mm", type=float, default=3.0, help="warn for landmarks farther from the bone")
    sc.add_argument("--strict", action="store_true", help="exit 1 when a landmark is off the bone")
    sc.add_argument("--sheet", help="PNG path (default <folder>/subject_check.png, or ./subject_check.png)")
    sc.set_defaults(func=cmd_subject_check)
    c = sub.add_parser("contact-sheet", help="PNG grid of dataset samples with landmarks and masks")
    c.add_argument("dataset", help="dataset folder")
    c.add_argument("--split", choices=["train", "test"], default="train")
    c.add_argument("--count", type=int, default=64)
    c.add_argument("--seed", type=int, default=None, help="random samples instead of the first ones")
    c.add_argument("--out", help="PNG path (default <dataset>/contact_sheet_<split>.png)")
    c.set_defaults(func=cmd_contact_sheet)
    from fluororeg.simulation.simulate import SCENARIOS

    sm = sub.add_parser("simulate", help="simulate a dual-fluoroscope recording with ground truth")
    sm.add_argument("--subject", help="subject folder (default: the example subject)")
    sm.add_argument("--scenario", choices=sorted(SCENARIOS), default="walking")
    sm.add_argument("--frames", type=int, default=20)
    sm.add_argument("--size", type=int, default=512, help="image width and height in pixels (default 512)")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    sm.add_argument("--quiet", action="store_true")
    sm.add_argument("--out", default="out/recording", help="recording folder (default out/recording)")
    sm.set_defaults(func=cmd_simulate)
    td = sub.add_parser("train-detector", help="train the landmark detector on a dataset (torch)")
    td.add_argument("dataset")
    td.add_argument("--out", required=True, help="run folder (a rerun resumes)")
    td.add_argument("--preset", choices=["fast", "paper"], default="fast")
    td.add_argument("--minutes", type=float, help="training time limit (default: the preset's)")
    td.add_argument("--epochs", type=int)
    td.add_argument("--restart", action="store_true", help="start over instead of resuming")
    td.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: torch's CUDA when present")
    td.add_argument("--quiet", action="store_true")
    td.set_defaults(func=cmd_train_detector)
    ts = sub.add_parser("train-style", help="train the X-ray-to-DRR style translator (torch)")
    ts.add_argument("--xray", nargs="+", required=True, help="recording folder(s) with X-ray frames")
    ts.add_argument("--drr", required=True, help="dataset folder (DRR domain)")
    ts.add_argument("--out", required=True, help="run folder (a rerun resumes)")
    ts.add_argument("--preset", choices=["fast", "paper"], default="fast")
    ts.add_argument("--steps", type=int)
    ts.add_argument("--every", type=int, default=1, help="use every n-th frame")
    ts.add_argument("--crop-pixel-mm", type=float, default=2.0)
    ts.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: torch's CUDA when present")
    ts.add_argument("--snapshot-every", type=int, default=0,
                    help="keep the generators every N steps (snapshots/) to choose from with select-style")
    ts.add_argument("--restart", action="store_true",
                    help="start over: delete the run's checkpoint, snapshots and log first (default: resume)")
    ts.add_argument("--quiet", action="store_true")
    ts.set_defaults(func=cmd_train_style)
    ss = sub.add_parser("select-style", help="choose the style translator's snapshot by registration quality")
    ss.add_argument("run", help="style training run folder (with snapshots/)")
    ss.add_argument("recording", help="validation recording folder (recording.json)")
    ss.add_argument("--detector", required=True, help="exported detector (.onnx)")
    ss.add_argument("--reference", help="reference poses (pose CSV or truth.npz): score by landmark error; "
                                        "default: by reprojection residual (no labels needed)")
    ss.add_argument("--subject", help="subject folder (default: the example subject)")
    ss.add_argument("--max-frames", type=int, default=64, help="evenly spaced frames to score (default 64)")
    ss.add_argument("--crop-pixel-mm", type=float, default=2.0)
    ss.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ss.add_argument("--out", required=True, help="where the chosen generators and the table go")
    ss.add_argument("--quiet", action="store_true")
    ss.set_defaults(func=cmd_select_style)
    ca = sub.add_parser("calibrate", help="distortion model from a bead plate, or the geometry file")
    ca.add_argument("what", choices=["distortion", "geometry"])
    ca.add_argument("image", nargs="?", help="distortion: the bead-plate image")
    ca.add_argument("--out", required=True)
    ca.add_argument("--bead-radius", type=float, default=4.0, help="bead radius in pixels")
    ca.add_argument("--polarity", choices=["dark", "bright"], default="dark")
    ca.add_argument("--spacing-mm", type=float, help="bead spacing of the plate (mm)")
    ca.add_argument("--mayacam", nargs="+", help="geometry: two MayaCam 2.0 camera files")
    ca.add_argument("--pitch", type=float, default=0.2, help="geometry: detector pixel pitch (mm)")
    ca.set_defaults(func=cmd_calibrate)
    rg = sub.add_parser("register", help="register every frame of a recording")
    rg.add_argument("recording", help="recording folder (recording.json)")
    rg.add_argument("--subject", help="subject folder (default: the example subject)")
    rg.add_argument("--detector", required=True, help="exported detector (.onnx)")
    rg.add_argument("--translator", help="exported X-ray-to-DRR generator (.onnx)")
    rg.add_argument("--style", choices=["translate", "log", "invert", "none"],
                    help="default: translate with --translator, else log (Beer-Lambert inversion)")
    rg.add_argument("--init", choices=["paper", "previous"], default="paper")
    rg.add_argument("--mode", choices=["least_squares", "frobenius"], default="least_squares")
    rg.add_argument("--loss", choices=["none", "huber", "cauchy"],
                    help="robust loss per landmark (default: cauchy; none with --mode frobenius, which has none)")
    rg.add_argument("--loss-scale", type=float, default=6.0,
                    help="robust loss scale in mm at the bone (default 6: about twice a good detector's error)")
    rg.add_argument("--min-visible", type=int, default=6)
    rg.add_argument("--view-outlier-ratio", type=float, default=4.0,
                    help="a view whose residual exceeds this many times the recording's typical one is checked: the "
                         "frame rests on the other view ('one_view') or is left out ('views_disagree'); 0 turns it off")
    rg.add_argument("--no-recentre", action="store_true",
                    help="crop around the field-of-view centre only (default: locate the bone, then crop around it)")
    rg.add_argument("--smooth-hz", type=float,
                    help="smooth the poses with a zero-phase low-pass filter of this cut-off (Hz; default: off)")
    rg.add_argument("--fps", type=float,
                    help="the recording's frame rate for --smooth-hz (default: frame_rate_hz in recording.json, or "
                         "the videos' rate)")
    rg.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rg.add_argument("--out", required=True)
    rg.add_argument("--quiet", action="store_true")
    rg.set_defaults(func=cmd_register)
    ov = sub.add_parser("overlay", help="draw registered poses (landmarks, bone outline) on the X-rays: PNG + video")
    ov.add_argument("recording", help="recording folder (recording.json)")
    ov.add_argument("poses", help="poses.csv written by `fluororeg register`")
    ov.add_argument("--subject", help="subject folder (default: the example subject)")
    ov.add_argument("--frames", type=int, nargs="+", help="frames to save as PNG (default: first, middle, last)")
    ov.add_argument("--video", default="overlay.mp4",
                    help="file name of the whole recording's overlay: .mp4/.mkv/.avi (H.264) or .gif; 'none' skips it")
    ov.add_argument("--fps", type=float, help="video frame rate (default 10)")
    ov.add_argument("--out", required=True, help="output folder")
    ov.add_argument("--quiet", action="store_true")
    ov.set_defaults(func=cmd_overlay)
    ev = sub.add_parser("evaluate", help="Eq. 3 errors of poses against a reference")
    ev.add_argument("poses", help="poses.csv from fluororeg register")
    ev.add_argument("--reference", required=True, help="reference poses: a poses CSV or a simulation's truth.npz")
    ev.add_argument("--subject", help="subject folder (for --with-landmarks)")
    ev.add_argument("--with-landmarks", action="store_true", help="also the mean landmark distance")
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=cmd_evaluate)
    de = sub.add_parser("demo", help="the end-to-end demo on the example subject (minutes on a CPU)")
    de.add_argument("--out", default="out/demo")
    de.add_argument("--quick", action="store_true", help="tiny settings (seconds; meaningless accuracy)")
    de.set_defaults(func=cmd_demo)
    i = sub.add_parser("info", help="version and backends")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, OSError, ArithmeticError, RuntimeError, ImportError) as exc:
        print(f"fluororeg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
