"""``fluororeg subject init`` (a subject folder from a CT and landmarks, or proposed landmarks)
and ``fluororeg subject check`` (validation, landmarks off the bone, a sheet of DRRs)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fluororeg.cli import common



def add_parser(subparsers) -> None:
    sj = subparsers.add_parser("subject", help="set up a subject folder (CT + landmarks) and check it")
    sjs = sj.add_subparsers(dest="subject_command", required=True)
    si = sjs.add_parser("init", help="write a subject folder from a CT and landmarks (or proposed landmarks)")
    si.add_argument("--ct", required=True, help="CT file, DICOM folder or multi-page TIFF stack")
    si.add_argument("--voxel-size", type=float, nargs=3, metavar=("SX", "SY", "SZ"),
                    help="voxel size (mm) of a TIFF-stack CT (column, row, page spacing)")
    si.add_argument("--intensity", help="what the CT's values mean: hu (default for CT files), raw:SLOPE:OFFSET "
                                        "or mu:SLOPE:OFFSET[:MU_WATER]; required for a TIFF stack")
    si.add_argument("--flip", type=int, nargs=3, metavar=("FX", "FY", "FZ"),
                    help="Autoscoper VolumeFlip of a TIFF-stack CT (default 0 0 0)")
    si.add_argument("--landmarks", help="landmarks (.mrk.json, .fcsv or .csv); pairs from _L/_R names. "
                                        "Without it, a symmetric set is proposed on the bone surface")
    si.add_argument("--pairs", nargs="+", metavar="LEFT:RIGHT",
                    help="symmetric landmark pairs by name (default: from <stem>_L / <stem>_R names)")
    si.add_argument("--propose", type=int, default=33, help="number of proposed landmarks (default 33)")
    si.add_argument("--pairs-count", type=int,
                    help="symmetric pairs among proposed landmarks (default: a third of them, at most 13; "
                         "0 for a bone that is not left-right symmetric: no mirror search)")
    si.add_argument("--threshold-hu", type=float, default=300.0, help="bone mask threshold (default 300 HU)")
    si.add_argument("--superior", type=float, nargs=3, metavar=("X", "Y", "Z"),
                    help="the subject's superior direction in the CT's LPS frame (with --anterior): overrides the "
                         "orientation measured from the CT (see subject check)")
    si.add_argument("--anterior", type=float, nargs=3, metavar=("X", "Y", "Z"),
                    help="the subject's anterior direction in the CT's LPS frame (with --superior)")
    si.add_argument("--name", help="subject name (default: the folder's name)")
    si.add_argument("--out", required=True, help="subject folder to write")
    si.add_argument("--force", action="store_true", help="overwrite an existing subject folder")
    si.set_defaults(handler=run_init, resumes=False)
    sc = sjs.add_parser("check", help="load and validate a subject folder; PNG of its landmarks on DRRs")
    sc.add_argument("folder", nargs="?", help="subject folder (default: the example subject)")
    sc.add_argument("--max-off-bone-mm", type=float, default=3.0, help="warn for landmarks farther from the bone")
    sc.add_argument("--strict", action="store_true", help="exit 1 when a landmark is off the bone")
    sc.add_argument("--sheet", help="PNG path (default <folder>/subject_check.png, or ./subject_check.png)")
    sc.set_defaults(handler=run_check, resumes=False)


def _parse_pairs(texts: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for text in texts:
        if text.count(":") != 1:
            raise ValueError(f"--pairs {text!r}: expected LEFT:RIGHT landmark names")
        pairs.append(tuple(text.split(":")))
    return pairs


# subject init's bounds: voxel sizes (mm) of any CT, and the least bone threshold (HU) above fat's
MIN_VOXEL_MM, MAX_VOXEL_MM = 1e-3, 50.0
MIN_BONE_THRESHOLD_HU = -50.0


def run_init(args: argparse.Namespace) -> int:
    from fluororeg.io.volume_formats import is_tiff_stack, load_volume
    from fluororeg.subject.landmarks import load_landmarks
    from fluororeg.subject.sides import pairs_from_names
    from fluororeg.subject.subject import make_subject, save_subject
    from fluororeg.subject.proposal import propose_landmarks

    if (Path(args.out) / "subject.json").exists() and not args.force:
        raise FileExistsError(f"'{args.out}' already holds a subject (subject.json): choose another --out, or pass "
                              "--force to overwrite it and its landmarks")
    if args.pairs is not None and not args.landmarks:
        raise ValueError("--pairs names landmarks of --landmarks; proposed landmarks come with their own pairs")
    if args.voxel_size is not None and not all(MIN_VOXEL_MM <= v <= MAX_VOXEL_MM for v in args.voxel_size):
        raise ValueError(f"--voxel-size {' '.join(f'{v:g}' for v in args.voxel_size)}: expected {MIN_VOXEL_MM:g} to "
                         f"{MAX_VOXEL_MM:g} mm per voxel (a micro-CT to a coarse clinical CT)")
    if not args.threshold_hu >= MIN_BONE_THRESHOLD_HU:  # also refuses nan
        raise ValueError(f"--threshold-hu {args.threshold_hu:g}: below soft tissue (fat is about -100 HU), the whole "
                         f"body would be bone; expected a bone threshold of at least {MIN_BONE_THRESHOLD_HU:g} HU "
                         "(200-400 HU for cortical bone)")
    if is_tiff_stack(args.ct):
        missing = [opt for opt, v in (("--voxel-size SX SY SZ", args.voxel_size), ("--intensity", args.intensity))
                   if v is None]
        if missing:
            raise ValueError(f"--ct '{args.ct}' is a TIFF stack, which records neither its voxel size nor what its "
                             f"grey levels mean: give {' and '.join(missing)} (e.g. --voxel-size 0.5 0.5 0.5 "
                             "--intensity raw:1:-1024; an Autoscoper trial's .cfg holds the voxel size: `fluororeg "
                             "import autoscoper` reads it)")
    elif args.voxel_size is not None or args.flip is not None:
        raise ValueError(f"--voxel-size and --flip are for a TIFF-stack CT; --ct '{args.ct}' records its own voxel "
                         "size and orientation")
    ct = load_volume(args.ct, voxel_size_mm=args.voxel_size, intensity=args.intensity, flip=args.flip or (0, 0, 0))
    if args.landmarks:
        landmarks = load_landmarks(args.landmarks)
        if args.pairs is not None:
            pairs = _parse_pairs(args.pairs)
            how = f"{len(landmarks)} landmarks from {args.landmarks}, {len(pairs)} pairs as given"
        else:
            pairs = pairs_from_names(landmarks.names)
            how = f"{len(landmarks)} landmarks from {args.landmarks}, {len(pairs)} pairs by their _L/_R names"
    else:
        n_pairs = min(args.propose // 3, 13) if args.pairs_count is None else args.pairs_count
        landmarks, pairs = propose_landmarks(ct, args.propose, n_pairs)
        how = (f"{len(landmarks)} proposed landmarks ({len(pairs)} symmetric pairs"
               f"{'; none: no mirror search' if not pairs else ''}); check and move them in 3D Slicer")
    ct_name = "ct.nrrd" if Path(args.ct).suffix.lower() in (".tif", ".tiff") else "ct.nii.gz"
    if (args.superior is None) != (args.anterior is None):
        raise ValueError("--superior and --anterior go together (the subject's anatomical axes)")
    orientation = None if args.superior is None else {"superior": list(args.superior), "anterior": list(args.anterior)}
    subject = make_subject(args.name or Path(args.out).name, ct, landmarks, pairs, threshold_hu=args.threshold_hu,
                           orientation=orientation)
    path = save_subject(subject, args.out, ct_filename=ct_name)
    print(f"wrote {path}: {how}. Check it with: fluororeg subject check {args.out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from fluororeg.subject.check import landmark_distances_to_bone
    from fluororeg.viz.contact_sheet import subject_check_sheet

    if not (np.isfinite(args.max_off_bone_mm) and args.max_off_bone_mm >= 0):
        raise ValueError(f"--max-off-bone-mm {args.max_off_bone_mm}: expected a distance >= 0 in mm")
    subject = common.load_subject_arg(args.folder or common.EXAMPLE_SUBJECT)  # check: the example by default
    ct, n = subject.ct, len(subject.landmark_names)
    print(f"subject {subject.name}: CT {ct.data.shape[::-1]} voxels (x, y, z) of {np.round(ct.spacing, 3).tolist()} mm, "
          f"{n} landmarks, {len(subject.pairs)} symmetric pairs, fingerprint {subject.fingerprint}")
    distances = landmark_distances_to_bone(subject)
    far = [(name, float(d)) for name, d in zip(subject.landmark_names, distances) if d > args.max_off_bone_mm]
    for name, d in far:
        print(f"  warning: landmark {name} lies {d:.1f} mm from the bone mask (more than {args.max_off_bone_mm:g} mm)")
    print(f"landmarks on bone: {n - len(far)} of {n} within {args.max_off_bone_mm:g} mm of the mask")
    if subject.pairs:
        print(f"orientation the dataset uses: {subject.orientation.describe()}")
    else:
        print("orientation: not used (no symmetric pairs: the dataset views the bone from all around its long axis)")
    body = subject.body_mask()
    above = np.asarray(ct.data) >= -500.0
    print(f"body mask (what DRRs show): {100 * body.mean():.1f} % of the CT; objects not connected to the body "
          f"(table, head holder) removed: {100 * (above & ~body).mean():.2f} % of the CT")
    out = subject_check_sheet(subject, Path(args.sheet) if args.sheet else Path(args.folder or ".") / "subject_check.png")
    print(f"wrote {out} (front and side DRRs; blue: left, red: right, green: midline)")
    return 0 if not far or not args.strict else 1
