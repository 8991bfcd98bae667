"""Commands for a lab's own data (``fluororeg --help`` lists them with the others)::

    fluororeg recording init VIEW1 VIEW2 --geometry geometry.json --out DIR [--fps HZ]
    fluororeg import autoscoper TRIAL.cfg --out DIR --pitch MM --intensity raw:1:-1024
                                [--volume NAME] [--landmarks FILE | --n-landmarks N]
                                [--distortion D1.json D2.json] [--fps HZ]
    fluororeg export POSES.csv --format tra|xmalab|slicer --subject DIR --out FILE
                     [--recording DIR] [--flip FX FY FZ] [--frame N]

(``calibrate geometry --distortion`` and ``subject init --voxel-size/--intensity/--flip/--pairs-count``
for TIFF stacks and bones without pairs are options of those commands.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fluororeg.cli import common

__all__ = ["add_parser", "run_recording_init", "run_import_autoscoper", "run_export"]


def run_recording_init(args: argparse.Namespace) -> int:
    from fluororeg.io.recording import init_recording, open_recording

    if (Path(args.out) / "recording.json").exists() and not args.force:
        raise FileExistsError(f"'{args.out}' already holds a recording (recording.json): choose another --out, or "
                              "pass --force to replace it")
    path = init_recording(args.views, args.geometry, args.out, frame_rate_hz=args.fps)
    rec = open_recording(args.out)
    fn = rec.frame_numbers
    print(f"wrote {path}: {len(rec)} frame pairs, frames {fn[0]}..{fn[-1]} (numbers from the file names, kept in "
          f"every result){'' if rec.frame_rate_hz is None else f', {rec.frame_rate_hz:g} frames/s'}")
    return 0


def run_import_autoscoper(args: argparse.Namespace) -> int:
    from fluororeg.io.autoscoper import import_autoscoper_trial

    held = [f"{part}/{name}" for part, name in (("subject", "subject.json"), ("recording", "recording.json"))
            if (Path(args.out) / part / name).exists()]
    if held and not args.force:
        raise FileExistsError(f"'{args.out}' already holds {' and '.join(held)} (a lab may have moved its landmarks): "
                              "choose another --out, or pass --force to replace them")
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
    from fluororeg.io.autoscoper import write_autoscoper_tra
    from fluororeg.io.poses import run_subject_elsewhere, write_slicer_tfm
    from fluororeg.io.recording import open_recording
    from fluororeg.io.xmalab import write_xmalab_rigid_body_csv
    from fluororeg.subject.subject import load_subject

    if args.frame is not None and args.format != "slicer":
        raise ValueError(f"--frame {args.frame} applies to --format slicer (one transform per frame); a {args.format} "
                         "file holds every frame of the trial")
    subject = load_subject(args.subject)
    flip = tuple(args.flip) if args.flip is not None else common.subject_volume_flip_arg(args.subject)
    record = run_subject_elsewhere(args.poses, subject)
    if record is not None:
        raise ValueError(f"'{args.poses}' was registered with subject {record['subject']!r} (origin "
                         f"{np.round(record['subject_origin'], 3).tolist()} mm, options.json beside it), not with "
                         f"'{args.subject}' (origin {np.round(subject.origin, 3).tolist()} mm): another subject, or "
                         "its landmarks moved since; export with the subject folder the run used")
    frames, M, registered = _poses_for_export(args)
    trial_frames = open_recording(args.recording).frame_numbers if args.recording else None
    out = Path(args.out)
    if out.resolve() == Path(args.poses).resolve():
        raise ValueError(f"--out '{args.out}' is the poses file being exported: choose another name")
    if args.format in ("tra", "xmalab"):
        out.parent.mkdir(parents=True, exist_ok=True)
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
        (out if many else out.parent).mkdir(parents=True, exist_ok=True)
        for f in chosen:
            hit = np.nonzero(frames == f)[0]
            if not len(hit) or not registered[hit[0]]:
                raise ValueError(f"frame {f} has no pose in '{args.poses}'")
            write_slicer_tfm(out / f"{subject.name}_{f:04d}.tfm" if many else out, M[hit[0]], subject)
        what = f"3D Slicer transform{'s' if many else ''} ({len(chosen)} frame{'s' if many else ''})"
    print(f"{int(registered.sum())} of {len(frames)} frames registered -> {out}: {what}")
    return 0


def add_parser(subparsers) -> None:
    """``recording init``, ``import autoscoper`` and ``export``."""
    rc = subparsers.add_parser("recording", help="recording folders for a lab's own image sequences")
    rcs = rc.add_subparsers(dest="recording_command", required=True)
    ri = rcs.add_parser("init", help="write recording.json for two image folders / videos and a geometry file")
    ri.add_argument("views", nargs=2, help="the two views' image folders, multi-page TIFFs, videos or .cine files")
    ri.add_argument("--geometry", required=True, help="geometry file (fluororeg calibrate geometry)")
    ri.add_argument("--out", required=True, help="recording folder to write (the images stay where they are)")
    ri.add_argument("--fps", type=float, help="acquisition frame rate (frames/s), if known")
    ri.add_argument("--force", action="store_true", help="replace an existing recording.json in --out")
    ri.set_defaults(handler=run_recording_init, resumes=False)

    im = subparsers.add_parser("import", help="import another tool's trial (Autoscoper .cfg) as subject + recording")
    im.add_argument("source", choices=["autoscoper"])
    im.add_argument("cfg", help="Autoscoper trial .cfg")
    im.add_argument("--out", required=True, help="folder for subject/ and recording/")
    im.add_argument("--pitch", type=float, required=True,
                    help="intensifier pixel pitch (mm/px): MayaCam files record none")
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
    im.add_argument("--force", action="store_true", help="replace the subject and recording an earlier import left "
                                                         "in --out (and the landmarks moved in it)")
    im.set_defaults(handler=run_import_autoscoper, resumes=False)

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
    ex.set_defaults(handler=run_export, resumes=False)
