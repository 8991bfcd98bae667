"""``fluororeg dataset`` (the subject's artificial DRR-landmark dataset) and ``fluororeg
contact-sheet`` (a PNG grid of its samples)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fluororeg.cli import common


def add_parser(subparsers) -> None:
    d = subparsers.add_parser(
        "dataset", help="generate the artificial DRR-landmark dataset of a subject",
        description="Generate the artificial DRR-landmark dataset of a subject. The crop pixel size (--pixel-mm) "
                    "and the pose ranges are derived from the bone's size and shape (DatasetConfig.for_subject: the "
                    "bone fits every crop; a bone without symmetric pairs is seen from all around); an option "
                    "given explicitly (--pixel-mm, --azimuth) wins over the derived value. The crop pixel size is "
                    "stored in dataset.json and travels with the detector into register.")
    d.add_argument("--subject", help=common.SUBJECT_HELP)
    d.add_argument("--out", default="out/dataset", help="dataset folder (default out/dataset); a rerun resumes")
    d.add_argument("--n-train", type=int, default=9251)
    d.add_argument("--n-test", type=int, default=500)
    d.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    d.add_argument("--pixel-mm", type=float,
                   help="pixel size at the bone at scale 1, mm (default: derived from the bone's size and --size)")
    d.add_argument("--segmented-share", type=float, default=2139 / 9751,
                   help="share of bone-segmented images (default 2139/9751, as the paper)")
    d.add_argument("--shard-size", type=int, default=512)
    d.add_argument("--projection", choices=["parallel", "cone"], default=None,
                   help="parallel-beam DRRs (the paper's, default) or cone-beam DRRs from a point source")
    d.add_argument("--source-distance", type=float, nargs=2, metavar=("LO", "HI"),
                   help="cone beam: range of source-to-object distances in mm (implies --projection cone)")
    d.add_argument("--geometry", help="geometry.json of the lab's fluoroscopes: cone beam with their "
                                      "source distances to the beams' crossing +-15%% (implies --projection cone)")
    d.add_argument("--cone-method", choices=["auto", "shear_warp", "march"], default="auto",
                   help="cone beam: perspective shear-warp (about 1%% from fine line integrals, ten times faster "
                        "on the CPU), ray marching (the reference quality, fast on CUDA) or auto (default: "
                        "shear-warp on the CPU, ray marching on CUDA)")
    d.add_argument("--azimuth", type=float, nargs=2, metavar=("LO", "HI"),
                   help="viewing azimuths in deg (default: derived from the subject: -90 90, its front half, for a "
                        "subject with symmetric pairs; -180 180 for a bone without)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", choices=common.DEVICES, default="auto",
                   help="where DRRs are rendered (auto: CUDA when a device is usable)")
    common.add_quiet_option(d)
    common.add_threads_option(d)
    d.set_defaults(handler=run_dataset, resumes=True)
    c = subparsers.add_parser("contact-sheet", help="PNG grid of dataset samples with landmarks and masks")
    c.add_argument("dataset", help="dataset folder")
    c.add_argument("--split", choices=["train", "test"], default="train")
    c.add_argument("--count", type=int, default=64)
    c.add_argument("--seed", type=int, default=None, help="random samples instead of the first ones")
    c.add_argument("--out", help="PNG path (default <dataset>/contact_sheet_<split>.png)")
    c.set_defaults(handler=run_contact_sheet, resumes=False)


def run_dataset(args: argparse.Namespace) -> int:
    import dataclasses

    from fluororeg.dataset.generate import DatasetConfig, generate_dataset, source_distance_range

    if args.projection == "parallel" and (args.geometry or args.source_distance):
        raise ValueError("--geometry and --source-distance describe a cone beam: drop --projection parallel")
    projection, sod = args.projection or "parallel", DatasetConfig.source_distance_mm
    if args.geometry is not None:
        from fluororeg.calibration.geometry_file import load_geometry

        projection, sod = "cone", source_distance_range(load_geometry(args.geometry).views)
    if args.source_distance is not None:
        projection, sod = "cone", tuple(args.source_distance)
    from fluororeg.core.render import MAX_IMAGE_SIDE

    if not 8 <= args.size <= MAX_IMAGE_SIDE:
        raise ValueError(f"--size {args.size}: expected 8 to {MAX_IMAGE_SIDE} pixels")
    if args.pixel_mm is not None and not (args.pixel_mm > 0 and args.pixel_mm < float("inf")):
        raise ValueError(f"--pixel-mm {args.pixel_mm}: expected a positive pixel size in mm")
    subject = common.load_subject_arg(args.subject)
    # Sized to the bone (pixel size, pose ranges); the options given explicitly win.
    derived = DatasetConfig.for_subject(subject, image_size=args.size)
    poses = derived.poses if args.azimuth is None else dataclasses.replace(derived.poses,
                                                                          azimuth_deg=tuple(args.azimuth))
    pixel_mm = derived.pixel_mm if args.pixel_mm is None else args.pixel_mm
    config = DatasetConfig(n_train=args.n_train, n_test=args.n_test, image_size=args.size,
                           pixel_mm=pixel_mm, segmented_share=args.segmented_share, seed=args.seed,
                           shard_size=args.shard_size, poses=poses, projection=projection,
                           source_distance_mm=sod, cone_method=args.cone_method)
    beam = "parallel-beam" if config.projection == "parallel" else \
        "cone-beam (sources {:.0f}-{:.0f} mm from the object)".format(*config.source_distance_mm)
    print(f"subject {subject.name}: {len(subject.landmark_names)} landmarks, {len(subject.pairs)} pairs; "
          f"generating {config.n_train} train + {config.n_test} test {beam} samples into {args.out}\n"
          f"crop pixel {config.pixel_mm:.3g} mm ({'as given' if args.pixel_mm is not None else 'from the bone size'}), "
          f"azimuth {config.poses.azimuth_deg[0]:g}..{config.poses.azimuth_deg[1]:g} deg "
          f"({'as given' if args.azimuth is not None else 'from the subject'})\n"
          + (f"orientation: {subject.orientation.describe()}" if subject.pairs else
             "orientation: all around the bone's long axis (no symmetric pairs)"))
    t0 = time.perf_counter()
    generate_dataset(subject, args.out, config, device=args.device, progress=not args.quiet)  # holds the lock
    print(f"done in {time.perf_counter() - t0:.1f} s; look at it with: fluororeg contact-sheet {args.out}")
    return 0


def run_contact_sheet(args: argparse.Namespace) -> int:
    from fluororeg.dataset.generate import DatasetReader
    from fluororeg.viz.contact_sheet import dataset_contact_sheet

    reader = DatasetReader(args.dataset, args.split)
    out = args.out or str(Path(args.dataset) / f"contact_sheet_{args.split}.png")
    print(f"wrote {dataset_contact_sheet(reader, out, n=args.count, seed=args.seed)}")
    return 0
