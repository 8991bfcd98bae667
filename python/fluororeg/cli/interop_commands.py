"""Commands for a lab's own data (``fluororeg --help`` lists them with the others)::

    fluororeg recording init VIEW1 VIEW2 --geometry geometry.json --out DIR [--fps HZ]
    fluororeg import autoscoper TRIAL.cfg --out DIR --pitch MM --intensity raw:1:-1024
                                [--volume NAME] [--landmarks FILE | --n-landmarks N]
                                [--distortion D1.json D2.json] [--fps HZ]
    fluororeg export POSES.csv --format tra|xmalab|slicer --subject DIR --out FILE
                     [--recording DIR] [--flip FX FY FZ] [--frame N]
    fluororeg calibrate geometry --mayacam CAM1 CAM2 --pitch MM [--distortion D1.json D2.json] --out geometry.json
    fluororeg subject init --ct radius.tif --voxel-size SX SY SZ --intensity raw:1:-1024 --pairs-count 0 --out DIR

:func:`add_parsers` adds them to the main parser's subcommands (and the extra options to
``calibrate geometry`` and ``subject init``); each runs through a ``run_*`` function.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["add_parsers", "run_recording_init", "run_import_autoscoper", "run_export", "run_calibrate_geometry",
           "run_subject_init"]


def run_recording_init(args: argparse.Namespace) -> int:
    from fluororeg.io.recording import init_recording, open_recording

    path = init_recording(args.views, args.geometry, args.out, frame_rate_hz=args.fps)
    rec = open_recording(args.out)
    fn = rec.frame_numbers
    print(f"wrote {path}: {len(rec)} frame pairs, frames {fn[0]}..{fn[-1]} (numbers from the file names, kept in "
          f"every result){'' if rec.frame_rate_hz is None else f', {rec.frame_rate_hz:g} frames/s'}")
    return 0


def run_import_autoscoper(args: argparse.Namespace) -> int:
    from fluororeg.io.autoscoper import import_autoscoper_trial

    volume = int(args.volume) if args.volume is not None and args.volume.isdigit() else (args.volume or 0)
    out = import_autoscoper_trial(args.cfg, args.out, pitch_mm=args.pitch, intensity=args.intensity, volume=volume,
                                  n_landmarks=args.n_landmarks, landmarks=args.landmarks, threshold_hu=args.threshold_hu,
                                  frame_rate_hz=args.fps, distortion=args.distortion)
    subj = out["subject_object"]
    print(f"subject {subj.name}: {len(subj.landmarks)} landmarks, no symmetric pairs -> {out['subject']}\n"
          f"recording: {len(out['trial'].image_folders)} views -> {out['recording']}\n"
          f"check the landmarks with: fluororeg subject check {out['subject']}")
    return 0


def _poses_for_export(args):
    from fluororeg.io.poses import read_poses_csv

    table = read_poses_csv(args.poses)
    frames = np.asarray(table["frame"], dtype=np.int64)
    M = table["matrices"]
    registered = np.isfinite(M).all(axis=(1, 2))
    return frames, np.where(registered[:, None, None], M, np.nan), registered


def run_export(args: argparse.Namespace) -> int:
    from fluororeg.io.autoscoper import autoscoper_info, write_autoscoper_tra
    from fluororeg.io.poses import write_slicer_tfm
    from fluororeg.io.recording import open_recording
    from fluororeg.io.xmalab import write_xmalab_rigid_body_csv
    from fluororeg.subject.subject import load_subject

    subject = load_subject(args.subject)
    info = autoscoper_info(args.subject)
    flip = tuple(args.flip) if args.flip is not None else (info["flip"] if info else (0, 0, 0))
    frames, M, registered = _poses_for_export(args)
    trial_frames = open_recording(args.recording).frame_numbers if args.recording else None
    out = Path(args.out)
    if args.format == "tra":
        write_autoscoper_tra(out, frames, M, subject, trial_frames=trial_frames, flip=flip)
        what = "Autoscoper .tra (volume frame; load it in Autoscoper for this volume)"
    elif args.format == "xmalab":
        write_xmalab_rigid_body_csv(out, frames, M, subject, trial_frames=trial_frames, flip=flip)
        what = "XMALab rigid-body CSV"
    else:
        chosen = [int(args.frame)] if args.frame is not None else frames[registered].tolist()
        if not chosen:
            raise ValueError(f"'{args.poses}' has no registered frame to export")
        many = len(chosen) > 1
        if many:
            out.mkdir(parents=True, exist_ok=True)
        for f in chosen:
            hit = np.nonzero(frames == f)[0]
            if not len(hit) or not registered[hit[0]]:
                raise ValueError(f"frame {f} has no pose in '{args.poses}'")
            write_slicer_tfm(out / f"{subject.name}_{f:04d}.tfm" if many else out, M[hit[0]], subject)
        what = f"3D Slicer transform{'s' if many else ''} ({len(chosen)} frame{'s' if many else ''})"
    print(f"{int(registered.sum())} of {len(frames)} frames registered -> {out}: {what}")
    return 0


def run_calibrate_geometry(args: argparse.Namespace) -> int:
    from fluororeg.calibration.geometry_file import geometry_from_mayacam, save_geometry

    if not args.mayacam or len(args.mayacam) != 2:
        raise ValueError("calibrate geometry needs --mayacam CAM1 CAM2 (two MayaCam files, 2.0 or 1.0)")
    if args.pitch is None:
        raise ValueError("calibrate geometry needs --pitch MM: MayaCam files record no pixel pitch (mm per detector "
                         "pixel: the intensifier's field of view over the image width, or a bead plate's pitch)")
    geo = geometry_from_mayacam(args.mayacam, pitch_u=args.pitch, distortion=args.distortion)
    save_geometry(args.out, geo)
    n_dist = sum(d is not None for d in geo.distortion)
    print(f"geometry of 2 views (system centre {np.round(geo.system_centre, 1).tolist()} mm, {n_dist} distortion "
          f"model{'s' if n_dist != 1 else ''}) -> {args.out}")
    return 0


def run_subject_init(args: argparse.Namespace) -> int:
    from fluororeg.cli import app
    from fluororeg.io.volume_formats import load_volume
    from fluororeg.subject.landmarks import load_landmarks
    from fluororeg.subject.proposal import propose_landmarks
    from fluororeg.subject.subject import make_subject, save_subject

    if (Path(args.out) / "subject.json").exists() and not args.force:
        raise FileExistsError(f"'{args.out}' already holds a subject (subject.json): choose another --out, or pass "
                              "--force to overwrite it and its landmarks")
    if args.pairs is not None and not args.landmarks:
        raise ValueError("--pairs names landmarks of --landmarks; proposed landmarks come with their own pairs")
    ct = load_volume(args.ct, voxel_size_mm=args.voxel_size, intensity=args.intensity, flip=args.flip or (0, 0, 0))
    if args.landmarks:
        landmarks = load_landmarks(args.landmarks)
        if args.pairs is not None:
            bad = [t for t in args.pairs if t.count(":") != 1]
            if bad:
                raise ValueError(f"--pairs {bad[0]!r}: expected LEFT:RIGHT landmark names")
            pairs = [tuple(t.split(":")) for t in args.pairs]
        else:
            pairs = app._pairs_from_names(landmarks.names)
        how = f"{len(landmarks)} landmarks from {args.landmarks}, {len(pairs)} pairs"
    else:
        n_pairs = min(args.propose // 3, 13) if args.pairs_count is None else args.pairs_count
        landmarks, pairs = propose_landmarks(ct, args.propose, n_pairs)
        how = (f"{len(landmarks)} proposed landmarks ({len(pairs)} symmetric pairs"
               f"{'; none: no mirror search' if not pairs else ''}); check and move them in 3D Slicer")
    ct_name = "ct.nrrd" if Path(args.ct).suffix.lower() in (".tif", ".tiff") else "ct.nii.gz"
    subject = make_subject(args.name or Path(args.out).name, ct, landmarks, pairs, threshold_hu=args.threshold_hu)
    path = save_subject(subject, args.out, ct_filename=ct_name)
    print(f"wrote {path}: {how}. Check it with: fluororeg subject check {args.out}")
    return 0


def _subcommand(parser: argparse.ArgumentParser, name: str):
    """The sub-parser ``name`` of ``parser``'s subcommands, or None."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps them here
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:  # noqa: SLF001
            return action.choices[name]
    return None


def add_parsers(subparsers) -> None:
    """Add ``recording init``, ``import autoscoper`` and ``export`` to the main parser's
    ``subparsers``, and ``--distortion`` (and a required ``--pitch``) to an existing
    ``calibrate`` parser, ``--voxel-size``/``--intensity``/``--pairs-count`` to ``subject init``."""
    rc = subparsers.add_parser("recording", help="recording folders for a lab's own image sequences")
    rcs = rc.add_subparsers(dest="recording_command", required=True)
    ri = rcs.add_parser("init", help="write recording.json for two image folders / videos and a geometry file")
    ri.add_argument("views", nargs=2, help="the two views' image folders, multi-page TIFFs, videos or .cine files")
    ri.add_argument("--geometry", required=True, help="geometry file (fluororeg calibrate geometry)")
    ri.add_argument("--out", required=True, help="recording folder to write (the images stay where they are)")
    ri.add_argument("--fps", type=float, help="acquisition frame rate (frames/s), if known")
    ri.set_defaults(func=run_recording_init)

    im = subparsers.add_parser("import", help="import another tool's trial (Autoscoper .cfg) as subject + recording")
    im.add_argument("source", choices=["autoscoper"])
    im.add_argument("cfg", help="Autoscoper trial .cfg")
    im.add_argument("--out", required=True, help="folder for subject/ and recording/")
    im.add_argument("--pitch", type=float, required=True,
                    help="detector pixel pitch (mm/px): MayaCam files record none")
    im.add_argument("--intensity", required=True,
                    help="what the TIFF volume's values mean: hu, raw:SLOPE:OFFSET (HU = SLOPE*v + OFFSET, e.g. "
                         "raw:1:-1024) or mu:SLOPE:OFFSET[:MU_WATER] (attenuation 1/mm)")
    im.add_argument("--volume", help="volume to import: its file name stem or index (default: the first)")
    im.add_argument("--landmarks", help="landmarks of the volume (.mrk.json, .fcsv, .csv in Autoscoper's volume "
                                        "frame); default: proposed on the bone surface, without pairs")
    im.add_argument("--n-landmarks", type=int, default=12, help="number of proposed landmarks (default 12)")
    im.add_argument("--threshold-hu", type=float, default=300.0, help="bone mask threshold (default 300 HU)")
    im.add_argument("--distortion", nargs=2, metavar=("D1", "D2"),
                    help="distortion models of the two views (fluororeg calibrate distortion), for raw frames")
    im.add_argument("--fps", type=float, help="acquisition frame rate (frames/s), if known")
    im.set_defaults(func=run_import_autoscoper)

    ex = subparsers.add_parser("export", help="poses.csv as Autoscoper .tra, XMALab CSV or 3D Slicer .tfm")
    ex.add_argument("poses", help="a fluororeg poses.csv")
    ex.add_argument("--format", required=True, choices=["tra", "xmalab", "slicer"])
    ex.add_argument("--subject", required=True, help="the subject folder (its CT sets the bone frame)")
    ex.add_argument("--out", required=True, help="output file (slicer with several frames: a folder)")
    ex.add_argument("--recording", help="the recording: one line/row per its frames in order (as Autoscoper's "
                                        "trial from the same image folders); default: line n = frame number n")
    ex.add_argument("--flip", type=int, nargs=3, metavar=("FX", "FY", "FZ"),
                    help="Autoscoper VolumeFlip of the volume (default: the subject's autoscoper.json, else 0 0 0)")
    ex.add_argument("--frame", type=int, help="slicer: only this frame number")
    ex.set_defaults(func=run_export)

    ca = subparsers.choices.get("calibrate")
    if ca is not None:
        ca.add_argument("--distortion", nargs=2, metavar=("D1", "D2"),
                        help="geometry: distortion models of the two views, attached to the geometry file")
        ca.set_defaults(pitch=None)
        for action in ca._actions:  # noqa: SLF001 - the pitch has no default: MayaCam files record none
            if action.dest == "pitch":
                action.help = "geometry: detector pixel pitch (mm/px), required: MayaCam files record none"
        previous = ca.get_default("func")

        def dispatch(args, _previous=previous):
            return run_calibrate_geometry(args) if args.what == "geometry" else _previous(args)

        ca.set_defaults(func=dispatch)

    sj = subparsers.choices.get("subject")
    si = _subcommand(sj, "init") if sj is not None else None
    if si is not None:
        si.add_argument("--voxel-size", type=float, nargs=3, metavar=("SX", "SY", "SZ"),
                        help="voxel size (mm) of a TIFF-stack CT (column, row, page spacing)")
        si.add_argument("--intensity", help="what the CT's values mean: hu (default for CT files), raw:SLOPE:OFFSET "
                                            "or mu:SLOPE:OFFSET[:MU_WATER]; required for a TIFF stack")
        si.add_argument("--flip", type=int, nargs=3, metavar=("FX", "FY", "FZ"),
                        help="Autoscoper VolumeFlip of a TIFF-stack CT (default 0 0 0)")
        si.add_argument("--pairs-count", type=int,
                        help="symmetric pairs among proposed landmarks (default: a third of them, at most 13; "
                             "0 for a bone that is not left-right symmetric: no mirror search)")
        si.set_defaults(func=run_subject_init)
