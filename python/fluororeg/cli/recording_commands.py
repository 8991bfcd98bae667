"""``fluororeg simulate`` (a dual-fluoroscope recording with ground truth) and ``fluororeg
calibrate`` (a distortion model from a bead plate, or the geometry file of both views)."""

from __future__ import annotations

import argparse
import io
import math
import time
import warnings

import numpy as np

from fluororeg.cli import common



def add_parser(subparsers) -> None:
    from fluororeg.simulation.simulate import SCENARIOS

    sm = subparsers.add_parser("simulate", help="simulate a dual-fluoroscope recording with ground truth")
    sm.add_argument("--subject", help=common.SUBJECT_HELP)
    sm.add_argument("--scenario", choices=sorted(SCENARIOS), default="walking")
    sm.add_argument("--n-frames", type=int, default=20, help="number of frame pairs (default 20)")
    common.add_deprecated_option(sm, "--frames", "--n-frames", dest="n_frames", type=int)
    sm.add_argument("--size", type=int, default=512, help="image width and height in pixels (default 512)")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--device", choices=common.DEVICES, default="cpu")
    common.add_quiet_option(sm)
    sm.add_argument("--out", default="out/recording", help="recording folder (default out/recording)")
    common.add_threads_option(sm)
    sm.set_defaults(handler=run_simulate, resumes=False)
    ca = subparsers.add_parser("calibrate", help="distortion model from a bead plate, or the geometry file")
    ca.add_argument("what", choices=["distortion", "geometry"])
    ca.add_argument("image", nargs="?", help="distortion: the bead-plate image")
    ca.add_argument("--out", required=True,
                    help="distortion: the model file (.json); geometry: the geometry file (.json)")
    ca.add_argument("--bead-radius", type=float, default=4.0, help="bead radius in pixels")
    ca.add_argument("--polarity", choices=["dark", "bright"], default="dark")
    ca.add_argument("--spacing-mm", type=float, help="bead spacing of the plate (mm)")
    ca.add_argument("--mayacam", nargs="+", help="geometry: two MayaCam camera files, 2.0 or 1.0 (view 1, view 2)")
    ca.add_argument("--pitch", type=float,
                    help="geometry: intensifier pixel pitch (mm/px), required: MayaCam files record none")
    ca.add_argument("--distortion", nargs=2, metavar=("D1", "D2"),
                    help="geometry: distortion models of the two views, attached to the geometry file")
    ca.add_argument("--bead-images", nargs=2, metavar=("IMG1", "IMG2"),
                    help="geometry: one image per view of a bead object: the views are estimated from the beads "
                         "(DLT + Ceres), starting from --mayacam or --guess")
    ca.add_argument("--beads", help="geometry, with --bead-images: the bead object's bead centres, a CSV of x, y, z "
                                    "(mm, world frame; one bead a line, '#' comments)")
    ca.add_argument("--guess", help="geometry, with --bead-images: a rough geometry.json of both views to start from "
                                    "(instead of --mayacam)")
    ca.add_argument("--field-of-view", choices=["auto", "none"], default="auto",
                    help="geometry, with --bead-images: find beads inside the intensifier's circular field of view "
                         "(auto) or anywhere in the image (none: images without a circular field)")
    ca.set_defaults(handler=run_calibrate, resumes=False)


def run_simulate(args: argparse.Namespace) -> int:
    from fluororeg.io.limits import MAX_FRAME_PIXELS, MAX_FRAMES
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    if args.n_frames < 1:
        raise ValueError(f"--n-frames {args.n_frames}: expected at least 1")
    if args.n_frames > MAX_FRAMES:
        raise ValueError(f"--n-frames {args.n_frames}: expected 1 to {MAX_FRAMES:,} frame pairs")
    if args.size < 128:
        raise ValueError(f"--size {args.size}: expected at least 128 pixels (the calibration plates' beads must be "
                         "resolved)")
    max_size = math.isqrt(MAX_FRAME_PIXELS)  # frames fluororeg reads back (below render's MAX_IMAGE_SIDE)
    if args.size > max_size:
        raise ValueError(f"--size {args.size}: expected 128 to {max_size} pixels")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: expected a whole number >= 0")
    subject = common.load_subject_arg(args.subject)
    views = default_dual_views(args.size, args.size, pitch=409.6 / args.size)  # a 16-inch (41 cm) intensifier
    t0 = time.perf_counter()
    out = simulate_recording(subject, args.out, scenario=args.scenario, n_frames=args.n_frames, views=views,
                             seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"simulated {args.n_frames} frame pairs ({args.scenario}) of {subject.name} in "
          f"{time.perf_counter() - t0:.1f} s -> {out} (ground truth in truth.npz / truth.json)")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    if args.what == "distortion":
        from fluororeg.calibration.distortion import fit_distortion

        if args.image is None:
            raise ValueError("calibrate distortion needs the bead-plate image: fluororeg calibrate distortion "
                             "PLATE_IMAGE --out MODEL.json")
        fit = fit_distortion(args.image, radius_px=args.bead_radius, polarity=args.polarity,
                             spacing_mm=args.spacing_mm)
        fit.model.save(args.out)
        r = fit.report
        print(f"distortion model from {r.get('n_matched', '?')} beads: residual RMS {fit.model.rms_px:.3f} px, "
              f"max {fit.model.max_px:.3f} px -> {args.out}")
    else:
        from fluororeg.calibration.geometry_file import save_geometry

        geo = _geometry_from_beads(args) if args.bead_images else _geometry_from_mayacam(args)
        save_geometry(args.out, geo)
        n_dist = sum(d is not None for d in geo.distortion)
        print(f"geometry of 2 views (system centre {np.round(geo.system_centre, 1).tolist()} mm, {n_dist} distortion "
              f"model{'s' if n_dist != 1 else ''}) -> {args.out}")
    return 0


def _geometry_from_mayacam(args: argparse.Namespace):
    from fluororeg.calibration.geometry_file import geometry_from_mayacam

    if not args.mayacam or len(args.mayacam) != 2:
        raise ValueError("calibrate geometry needs --mayacam CAM1 CAM2 (two MayaCam files, 2.0 or 1.0) or "
                         "--bead-images IMG1 IMG2 --beads BEADS.csv")
    if args.pitch is None:
        raise ValueError("calibrate geometry needs --pitch MM: MayaCam files record no pixel pitch (mm per "
                         "intensifier pixel: the field of view over the image width, or a bead plate's pitch)")
    return geometry_from_mayacam(args.mayacam, pitch_u=args.pitch, distortion=args.distortion)


def _geometry_from_beads(args: argparse.Namespace):
    """Both views estimated from one bead-object image each, started from a rough geometry."""
    from fluororeg.calibration.beads import load_image
    from fluororeg.calibration.geometry_file import geometry_from_bead_images, load_geometry

    if not args.beads:
        raise ValueError("--bead-images needs --beads BEADS.csv: the bead centres (x, y, z mm) of the object")
    from fluororeg.io.limits import read_text

    text = read_text(args.beads, "--beads file", encoding="utf-8-sig")
    try:
        with warnings.catch_warnings():  # an empty file: refused below, by its shape
            warnings.simplefilter("ignore", UserWarning)
            beads = np.loadtxt(io.StringIO(text), delimiter=",", comments="#", ndmin=2)
    except ValueError as exc:
        raise ValueError(f"--beads {args.beads}: expected lines of x, y, z numbers (mm): {exc}") from None
    if beads.ndim != 2 or beads.shape[1] != 3 or len(beads) < 6 or not np.isfinite(beads).all():
        raise ValueError(f"--beads {args.beads}: expected at least 6 lines of finite x, y, z (mm), got an array "
                         f"of shape {beads.shape}")
    if (args.guess is None) == (args.mayacam is None):
        raise ValueError("--bead-images starts from a rough geometry: give exactly one of --guess geometry.json "
                         "and --mayacam CAM1 CAM2 (with --pitch)")
    guesses = load_geometry(args.guess).views if args.guess else _geometry_from_mayacam(args).views
    images = [load_image(path) for path in args.bead_images]
    return geometry_from_bead_images(images, beads, guesses, distortion=args.distortion, radius_px=args.bead_radius,
                                     polarity=args.polarity, fov=None if args.field_of_view == "none" else "auto")
