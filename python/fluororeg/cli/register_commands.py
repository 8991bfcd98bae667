"""``fluororeg register`` (every frame of a recording), ``overlay`` (poses drawn on the X-rays),
``evaluate`` (Eq. 3 errors against reference poses) and ``select-translator`` (the style
translator's snapshot that registers a recording best)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fluororeg.cli import common

DEPRECATED_COMMANDS = {"select-style": "select-translator"}
CROP_PIXEL_HELP = ("crop pixel size at the bone (mm; default: the detector's, i.e. its training dataset's pixel size; "
                   f"a value more than {100 * 0.10:.0f} %% from the detector's is an error)")
CROP_PIXEL_TOLERANCE = 0.10  # a --crop-pixel-mm this far (relative) from the detector's own is refused
DEFAULT_CROP_PIXEL_MM = 2.0   # for a detector exported before its metadata carried crop_pixel_mm


def crop_pixel_mm_for(given: float | None, detector) -> float:
    """The crop pixel size (mm at the bone) to register with: the detector's own (its training
    dataset's), or ``given`` (``--crop-pixel-mm``) when it agrees with it within 10 %; a
    ``ValueError`` when it does not (crops at another scale than the training images' make the
    detector miss). A detector without the value (an older export): ``given``, else 2 mm."""
    model = getattr(detector, "crop_pixel_mm", None)
    if given is not None and not (np.isfinite(given) and given > 0):
        raise ValueError(f"--crop-pixel-mm {given}: expected a positive pixel size in mm")
    if model is None:
        if given is None:
            print(f"note: detector '{detector.path}' records no crop pixel size (an older export): using "
                  f"{DEFAULT_CROP_PIXEL_MM:g} mm; pass --crop-pixel-mm (its dataset's pixel_mm) if it was trained "
                  "at another one", file=sys.stderr)
            return DEFAULT_CROP_PIXEL_MM
        return float(given)
    if given is None:
        return float(model)
    if abs(given - model) > CROP_PIXEL_TOLERANCE * model:
        raise ValueError(f"--crop-pixel-mm {given:g} disagrees with the {model:g} mm the detector '{detector.path}' was "
                         f"trained at (more than {100 * CROP_PIXEL_TOLERANCE:.0f} %): leave --crop-pixel-mm out to use "
                         "the detector's, or train a detector on a dataset of that pixel size")
    return float(given)


def _reference_by_frame(path, frame_numbers, subject_folder, recording=None, pose_frame: str = "model") -> np.ndarray:
    """Reference poses [len(frame_numbers), 6] matched by frame number. A .tra or XMALab CSV that
    fluororeg exported is read through its sidecar (bone frame, each line's frame number); a
    foreign one in the subject's volume frame (its autoscoper.json gives the VolumeFlip) with
    the recording's frame numbers as its lines'. A CSV's poses are in ``pose_frame`` ('model' or
    'ct', :func:`~fluororeg.io.poses.read_reference_poses`); a Slicer .tfm places the CT."""
    from fluororeg.io.autoscoper import read_pose_sidecar
    from fluororeg.io.poses import _is_xmalab, read_reference_poses

    kwargs = {}
    path = Path(path)
    body_file = path.suffix.lower() == ".tra" or (path.suffix.lower() == ".csv" and path.is_file() and _is_xmalab(path))
    if body_file and path.is_file() and read_pose_sidecar(path) is not None:
        body_file = False  # the sidecar knows the bone frame and the lines' frame numbers
    if subject_folder is not None and (body_file or pose_frame == "ct" or path.suffix.lower() == ".tfm"):
        kwargs["subject"] = common.load_subject_arg(subject_folder)
    if subject_folder is not None and body_file:
        kwargs["flip"] = common.subject_volume_flip_arg(subject_folder)
    if recording is not None and body_file:
        kwargs["trial_frames"] = recording.frame_numbers
    return read_reference_poses(path, frames=np.asarray(frame_numbers), pose_frame=pose_frame, **kwargs)


def _in_subjects_model_frame(poses: np.ndarray, path: Path, subject) -> np.ndarray:
    """A run's poses.csv [F, 6] in ``subject``'s model frame: a run made before the subject's
    landmarks moved (its origin, their centroid, moved with them) recorded its origin in the
    options.json beside it, and its poses are moved to the subject's origin (said on stderr)."""
    from fluororeg.core.geometry import model_poses_from_physical, physical_poses_from_model
    from fluororeg.io.poses import run_subject_elsewhere

    record = run_subject_elsewhere(path, subject)
    if record is None:
        return poses
    shift = float(np.linalg.norm(record["subject_origin"] - subject.origin))
    print(f"note: '{path}' was registered with subject {record['subject']!r} whose origin lay {shift:.2f} mm from "
          f"{subject.name!r}'s (its landmarks moved since?): its poses are moved to this subject's origin",
          file=sys.stderr)
    out = poses.copy()
    finite = np.isfinite(poses).all(axis=1)
    if finite.any():
        out[finite] = model_poses_from_physical(physical_poses_from_model(poses[finite], record["subject_origin"]),
                                                subject.origin)
    return out


def add_parser(subparsers) -> None:
    rg = subparsers.add_parser("register", help="register every frame of a recording")
    rg.add_argument("recording", help="recording folder (recording.json)")
    rg.add_argument("--subject", help=common.SUBJECT_HELP)
    rg.add_argument("--detector", required=True, help="exported detector (.onnx)")
    rg.add_argument("--translator", help="exported X-ray-to-DRR style translator (.onnx)")
    rg.add_argument("--style", choices=["translate", "log", "invert", "none"],
                    help="image style fed to the detector; default: translate with --translator (unless its "
                         "snapshot selection found a no-learning style better: then that one, said on stderr), else "
                         "log (Beer-Lambert inversion)")
    rg.add_argument("--init", choices=["triangulate", "paper", "previous"], default="triangulate",
                    help="Eq. 2's start: the landmarks triangulated from both views and rigidly fitted (default; "
                         "no assumption on the CT's axes), the paper's (system centre, theta 0: only when the CT's "
                         "axes agree with the world's), or the previous frame's pose")
    rg.add_argument("--mode", choices=["least_squares", "frobenius"], default="least_squares")
    rg.add_argument("--loss", choices=["none", "huber", "cauchy"],
                    help="robust loss per landmark (default: cauchy; none with --mode frobenius, which has none)")
    rg.add_argument("--loss-scale", type=float, default=6.0,
                    help="robust loss scale in mm at the bone (default 6: about twice a good detector's error)")
    rg.add_argument("--min-visible", type=int, default=6)
    rg.add_argument("--crop-pixel-mm", type=float, help=CROP_PIXEL_HELP)
    rg.add_argument("--view-outlier-ratio", type=float, default=4.0,
                    help="a view whose residual exceeds this many times the recording's typical one is checked: the "
                         "frame rests on the other view ('one_view') or is left out ('views_disagree'); 0 turns it off")
    rg.add_argument("--max-residual-mm", type=float,
                    help="quality gate: the largest RMS residual per view at the bone, mm (default: twice the "
                         "detector's recorded validation error, else 2.5 crop pixels; 0 turns the gate and the "
                         "input checks off)")
    rg.add_argument("--no-recentre", action="store_true",
                    help="crop around the field-of-view centre only (default: locate the bone, then crop around it)")
    rg.add_argument("--smoothing-hz", type=float,
                    help="smooth the poses with a zero-phase low-pass filter of this cut-off (Hz; default: off)")
    common.add_deprecated_option(rg, "--smooth-hz", "--smoothing-hz", dest="smoothing_hz", type=float)
    rg.add_argument("--fps", type=float,
                    help="the recording's frame rate for --smoothing-hz (default: frame_rate_hz in recording.json, "
                         "or the videos' rate)")
    rg.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                    help="refine the landmark poses by intensity (cone-beam DRRs of the CT against both X-rays, "
                         "gradient correlation); its similarity is then the final quality gate (default: on; "
                         "--no-refine: landmark registration only)")
    rg.add_argument("--min-similarity", type=float,
                    help="the refinement's gate: the least image similarity of a registered frame (default 0.6; "
                         "true poses reach 0.92-0.99 on simulated head recordings but 0.60-0.62 on Autoscoper's "
                         "real wrist frames, and a head's false near-mirror pose 0.51-0.55: lower it only after "
                         "checking overlays)")
    rg.add_argument("--device", choices=common.NETWORK_DEVICES, default="auto")
    rg.add_argument("--refine-device", choices=["cpu", "cuda", "auto"], default="auto",
                    help="where the refinement renders (default: auto, the GPU when one is usable: the same "
                         "per-ray code, the CPU's poses to rounding; options.json's refined_on says which ran)")
    common.add_allow_undertrained_option(rg)
    common.add_threads_option(rg)
    rg.add_argument("--out", required=True, help="run folder: poses.csv, poses.tra, options.json, qc.json, qc.png "
                                                 "(a rerun resumes its detections)")
    common.add_quiet_option(rg)
    rg.set_defaults(handler=run_register, resumes=True)
    tr = subparsers.add_parser("track", help="register every frame from poses known for a few (no detector): "
                                             "intensity refinement and tracking")
    tr.add_argument("recording", help="recording folder (recording.json)")
    tr.add_argument("--subject", help=common.SUBJECT_HELP)
    tr.add_argument("--start", required=True,
                    help="the poses of some frames, matched by frame number: a poses.csv (or a CSV with frame, "
                         "theta_x_deg .. tau_z_mm; see --start-frame), an Autoscoper .tra (one line per frame of "
                         "the recording, in its order, NaN where none; the subject's volume frame), an XMALab "
                         "rigid-body CSV, or a 3D Slicer .tfm whose name ends in its frame number "
                         "(<subject>_0099.tfm); the other frames start from a neighbour's refined pose")
    tr.add_argument("--start-frame", choices=["model", "ct"], default="model",
                    help="the bone frame of a CSV's poses: model (fluororeg's, as in poses.csv: the CT's frame "
                         "moved to the subject's origin) or ct (the CT's own physical frame, world_from_physical: "
                         "a bone placed by hand)")
    tr.add_argument("--min-similarity", type=float,
                    help="the refinement's gate (default 0.6; see register --min-similarity)")
    tr.add_argument("--pixel-mm", type=float,
                    help="the refinement's finest pixel at the bone, mm (default: sized to the bone, a crop's "
                         "field of view of it over 128 px: about 2.3 for a head, 1 for a radius)")
    tr.add_argument("--refine-device", choices=["cpu", "cuda", "auto"], default="auto",
                    help="where the refinement renders (see register --refine-device)")
    common.add_threads_option(tr)
    tr.add_argument("--out", required=True, help="run folder: poses.csv, poses.tra, options.json, qc.json, qc.png")
    common.add_quiet_option(tr)
    tr.set_defaults(handler=run_track, resumes=False)
    ov = subparsers.add_parser("overlay", help="draw registered poses (landmarks, bone outline) on the X-rays: "
                                               "PNG + video")
    ov.add_argument("recording", help="recording folder (recording.json)")
    ov.add_argument("poses", help="poses.csv written by `fluororeg register`")
    ov.add_argument("--subject", help=common.SUBJECT_HELP)
    ov.add_argument("--frames", type=int, nargs="+",
                    help="frame numbers (the recording's, as in poses.csv) to save as PNG (default: first, middle, "
                         "last)")
    ov.add_argument("--video",
                    help="file name of the whole recording's overlay: .mp4/.mkv/.avi (H.264) or .gif; 'none' skips it "
                         "(default: overlay.mp4, or none when --frames picks frames)")
    ov.add_argument("--fps", type=float, help="video frame rate (default 10)")
    ov.add_argument("--out", required=True, help="output folder")
    common.add_quiet_option(ov)
    ov.set_defaults(handler=run_overlay, resumes=False)
    ev = subparsers.add_parser("evaluate", help="Eq. 3 errors of poses against a reference")
    ev.add_argument("poses", help="poses.csv from fluororeg register")
    ev.add_argument("--reference", required=True,
                    help="reference poses, matched by frame number: a poses CSV (see --reference-frame), a "
                         "simulation's truth.npz, an Autoscoper .tra, an XMALab rigid-body CSV or a 3D Slicer .tfm "
                         "whose name ends in its frame number")
    ev.add_argument("--reference-frame", choices=["model", "ct"], default="model",
                    help="the bone frame of a reference CSV's poses (as track --start-frame)")
    ev.add_argument("--subject", help="subject folder (needed for --with-landmarks; for an Autoscoper .tra or "
                                      "XMALab CSV that fluororeg did not write: its CT sets the volume frame; for a "
                                      ".tfm or --reference-frame ct: its origin sets the model frame)")
    ev.add_argument("--recording", help="the recording the reference's lines follow (an Autoscoper .tra or XMALab "
                                        "CSV that fluororeg did not write: line n = the recording's n-th frame)")
    ev.add_argument("--with-landmarks", action="store_true", help="also the mean landmark distance")
    ev.add_argument("--out", required=True, help="folder: evaluation.csv (per frame), evaluation_summary.json, "
                                                 "evaluation_errors.png")
    ev.set_defaults(handler=run_evaluate, resumes=False)
    ss = subparsers.add_parser("select-translator", aliases=list(DEPRECATED_COMMANDS),
                               help="choose the style translator's snapshot by registration quality "
                                    "(select-style: deprecated)")
    ss.add_argument("run", help="translator training run folder (with snapshots/)")
    ss.add_argument("recording", help="validation recording folder (recording.json)")
    ss.add_argument("--detector", required=True, help="exported detector (.onnx)")
    ss.add_argument("--reference", help="reference poses (pose CSV or truth.npz): score by landmark error; "
                                        "default: by refinement disagreement (no labels needed: landmark poses "
                                        "against their intensity-refined poses)")
    ss.add_argument("--subject", help=common.SUBJECT_HELP)
    ss.add_argument("--max-frames", type=int, default=64, help="evenly spaced frames to score (default 64)")
    ss.add_argument("--crop-pixel-mm", type=float, help=CROP_PIXEL_HELP)
    ss.add_argument("--max-residual-mm", type=float,
                    help="quality gate: the largest RMS residual per view at the bone, mm (default: twice the "
                         "detector's recorded validation error, else 2.5 crop pixels; 0 turns the gate and the "
                         "input checks off)")
    ss.add_argument("--device", choices=common.NETWORK_DEVICES, default="auto")
    common.add_allow_undertrained_option(ss)
    common.add_threads_option(ss)
    ss.add_argument("--out", required=True, help="where the chosen translator and the table go")
    common.add_quiet_option(ss)
    ss.set_defaults(handler=run_select_translator, resumes=False)


def _pipeline_loss(loss: str | None, mode: str) -> str | None:
    """``--loss`` as PipelineOptions takes it: by default Cauchy, which the Frobenius objective has not."""
    if loss is None:
        loss = "cauchy" if mode == "least_squares" else "none"
    return None if loss == "none" else loss


def _gate_options(args: argparse.Namespace) -> dict:
    """PipelineOptions' quality-gate fields from ``--max-residual-mm`` (None: the default; 0: off)."""
    value = args.max_residual_mm
    if value is None:
        return {}
    if value == 0:
        return {"quality_gate": False}
    return {"max_residual_mm": value}


def _subject_recording_detector(args: argparse.Namespace):
    """The subject, recording and detector that ``--subject``, RECORDING and ``--detector`` name."""
    from fluororeg.io.recording import open_recording
    from fluororeg.inference.detector import LandmarkDetector

    rec = open_recording(args.recording)
    subject = common.load_subject_arg(args.subject)
    return subject, rec, LandmarkDetector(args.detector, subject=subject, device=args.device)


def run_register(args: argparse.Namespace) -> int:
    from fluororeg.pipeline.register import PipelineOptions, register_recording
    from fluororeg.inference.translator import StyleTranslator

    if args.view_outlier_ratio != 0 and not args.view_outlier_ratio > 1.5:
        raise ValueError(f"--view-outlier-ratio {args.view_outlier_ratio}: expected 0 (off) or a number > 1.5")
    subject, rec, detector = _subject_recording_detector(args)
    translator = StyleTranslator(args.translator, direction="xray_to_drr", device=args.device) if args.translator else None
    style = args.style or ("translate" if translator is not None else "log")
    if args.style is None and translator is not None:  # a translator that does not help is not used: said
        style, why = translator.preferred_style()
        if why:
            print(f"note: not translating with '{args.translator}': {why}; registering with --style {style} "
                  "(pass --style translate to translate anyway)", file=sys.stderr)
    opts = PipelineOptions(style=style, init=args.init, smoothing_hz=args.smoothing_hz, fps=args.fps,
                           loss=_pipeline_loss(args.loss, args.mode), loss_scale_mm=args.loss_scale, mode=args.mode,
                           min_visible=args.min_visible, recentre=not args.no_recentre,
                           view_outlier_ratio=None if args.view_outlier_ratio == 0 else args.view_outlier_ratio,
                           refine=args.refine, refine_device=args.refine_device,
                           min_similarity=args.min_similarity,
                           crop_pixel_mm=crop_pixel_mm_for(args.crop_pixel_mm, detector),
                           autoscoper_flip=common.subject_volume_flip_arg(args.subject), **_gate_options(args))
    common.check_detector_trained(detector, args.allow_undertrained)  # after the options' own checks
    res = register_recording(rec, subject, detector, translator, opts, out_dir=args.out, progress=not args.quiet)
    _say_registered(args, res.status, res.poses, f"{res.seconds:.1f} s ({res.frames_per_s:.1f} frame pairs/s)")
    _say_qc(args, res.qc)
    return 0


def _say_qc(args: argparse.Namespace, qc: dict | None) -> None:
    """The QC summary `register` and `track` print, and where its files are."""
    if qc is not None:
        from fluororeg.pipeline.quality import format_qc

        print(format_qc(qc))
        print(f"QC -> {Path(args.out) / 'qc.json'}, {Path(args.out) / 'qc.png'}")


def run_track(args: argparse.Namespace) -> int:
    from fluororeg.io.recording import open_recording
    from fluororeg.pipeline.track import TrackOptions, track_recording

    options = TrackOptions(pixel_mm=args.pixel_mm, min_similarity=args.min_similarity,
                           refine_device=args.refine_device, autoscoper_flip=common.subject_volume_flip_arg(args.subject))
    subject = common.load_subject_arg(args.subject)
    rec = open_recording(args.recording)
    start = _reference_by_frame(args.start, rec.frame_numbers, args.subject, rec,  # matched by frame number
                                pose_frame=args.start_frame)
    from fluororeg.io.poses import _is_xmalab

    start_path = Path(args.start)
    if start_path.suffix.lower() == ".csv" and args.start_frame == "model" and not _is_xmalab(start_path):
        start = _in_subjects_model_frame(start, start_path, subject)  # a run's poses.csv, its subject since changed
    given = np.isfinite(start).all(axis=1)
    if not given.any():
        raise ValueError(f"'{args.start}' has no pose for any of the recording's frames "
                         f"({rec.frame_numbers[0]}..{rec.frame_numbers[-1]}; rows are matched by frame number)")
    if not args.quiet:
        shown = ", ".join(str(f) for f in rec.frame_numbers[given][:5]) + (" ..." if given.sum() > 5 else "")
        print(f"tracking {len(rec)} frame pairs from the poses of {int(given.sum())} (frames {shown})", file=sys.stderr)
    res = track_recording(rec, subject, start, options, out_dir=args.out, progress=not args.quiet)
    _say_registered(args, res.status, res.poses, f"{res.seconds:.1f} s")
    _say_qc(args, res.qc)
    held = np.isfinite(res.poses[given]).all(axis=1)
    if not held.any() and Path(args.start).suffix.lower() == ".csv":  # not one given pose held: the wrong frame?
        statuses = ", ".join(sorted(set(res.status[given].tolist())))
        other = "ct" if args.start_frame == "model" else "model"
        print(f"note: no given pose passed its refinement ({statuses}). If '{args.start}' holds its poses in the "
              f"other bone frame, pass --start-frame {other} (model: fluororeg's, as in poses.csv; ct: the CT's own "
              "frame, as a bone placed by hand in Autoscoper or 3D Slicer)", file=sys.stderr)
    return 0


def _say_registered(args: argparse.Namespace, status, poses, took: str) -> None:
    """The one line `register` and `track` end with: frames registered (a pose in poses.csv), by
    status, how long it took, where the files are and how to check them."""
    registered = int(np.isfinite(poses).all(axis=1).sum())
    names, counts = np.unique(status, return_counts=True)
    breakdown = ", ".join(f"{c} {n}" for n, c in zip(names, counts))
    out = Path(args.out)
    print(f"registered {registered} of {len(status)} frame pairs ({breakdown}) in {took} -> {out / 'poses.csv'} "
          f"and poses.tra; check them with: fluororeg overlay {args.recording} {out / 'poses.csv'} "
          f"--subject {args.subject} --out {out / 'overlays'}")
    if registered == 0:  # the run finished (exit status 0), but a script reading its log should see this
        print(f"fluororeg {args.command}: warning: no frame was registered: poses.csv and poses.tra hold no pose "
              f"(the statuses above and {out / 'qc.json'} say why)", file=sys.stderr)


def run_overlay(args: argparse.Namespace) -> int:
    from PIL import Image

    from fluororeg.io.poses import read_poses_csv
    from fluororeg.io.recording import open_recording
    from fluororeg.viz.overlay import overlay_pair, save_overlay_video

    subject = common.load_subject_arg(args.subject)
    rec = open_recording(args.recording)
    table = read_poses_csv(args.poses)
    frames, poses, statuses = np.asarray(table["frame"], int), table["poses"], table["status"]
    numbers = rec.frame_numbers  # [F] the recording's own frame numbers; poses.csv rows carry them
    unknown = sorted(set(frames.tolist()) - set(numbers.tolist()))
    if unknown:
        raise ValueError(f"{args.poses} has frames {unknown[:5]}{' ...' if len(unknown) > 5 else ''} that the "
                         f"recording '{args.recording}' does not have (its frames: {numbers[:10].tolist()}"
                         f"{' ...' if len(numbers) > 10 else ''})")
    row_of = {int(f): r for r, f in enumerate(frames)}
    nan_pose = np.full(6, np.nan)

    def pair(i):  # i: position in the recording
        number = int(numbers[i])
        r = row_of.get(number)
        pose = nan_pose if r is None else poses[r]
        status = "not in poses" if r is None else str(statuses[r])
        return overlay_pair(rec.frame(i), subject, rec.geometry.views, pose,
                            distortion=rec.geometry.distortion, frame=number, status=status)

    chosen = args.frames if args.frames is not None else \
        [int(numbers[i]) for i in sorted({0, len(rec) // 2, len(rec) - 1})]
    positions = []
    for f in chosen:
        try:
            positions.append(rec.index_of(f))
        except ValueError as exc:
            raise ValueError(f"--frames {f}: {exc}; --frames takes the recording's frame numbers") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f, i in zip(chosen, positions):
        Image.fromarray(pair(i)).save(out / f"overlay_frame_{f:05d}.png")
    written = [str(out / f"overlay_frame_{f:05d}.png") for f in chosen]
    video = args.video or ("overlay.mp4" if args.frames is None else "none")
    if video != "none":
        from tqdm import tqdm

        fps = 10.0 if args.fps is None else args.fps
        frames_iter = (pair(i) for i in tqdm(range(len(rec)), unit="frame", desc="overlay", disable=args.quiet))
        written.append(str(save_overlay_video(frames_iter, out / video, fps=fps)))
    print("wrote " + ", ".join(written))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from fluororeg.io.autoscoper import read_pose_sidecar
    from fluororeg.io.poses import _is_xmalab, read_poses_csv
    from fluororeg.io.recording import open_recording
    from fluororeg.pipeline.evaluate import evaluate_poses, write_evaluation

    if args.with_landmarks and args.subject is None:
        common.load_subject_arg(None)  # the one-line error: --with-landmarks needs --subject
    table = read_poses_csv(args.poses)
    rec = open_recording(args.recording) if args.recording else None
    ref = _reference_by_frame(args.reference, table["frame"], args.subject, rec,  # matched by frame number
                              pose_frame=args.reference_frame)
    if not np.isfinite(ref).all(axis=1).any():
        path = Path(args.reference)  # a foreign .tra / XMALab file: lines, not frame numbers
        lines = rec is None and read_pose_sidecar(path) is None and (
            path.suffix.lower() == ".tra" or (path.suffix.lower() == ".csv" and _is_xmalab(path)))
        raise ValueError(f"'{args.reference}' has no pose for any of the {len(ref)} frames of '{args.poses}' "
                         "(rows are matched by their frame numbers)"
                         + ("; without --recording, line n of a .tra or XMALab file is read as frame number n: pass "
                            "--recording, the trial's frames in order, to number its lines" if lines else ""))
    landmarks = common.load_subject_arg(args.subject).landmarks_model if args.with_landmarks else None
    ev = evaluate_poses(table["poses"], ref, landmarks=landmarks, frames=table["frame"])
    paths = write_evaluation(ev, args.out)
    s = ev.summary()
    if not s["registered"]:  # honest, not "nan +- nan"
        print(f"0/{s['frames']} frames with a reference registered in '{args.poses}': no errors to report "
              f"-> {paths['csv']}, {paths['plot']}")
        return 0
    print(f"{s['registered']}/{s['frames']} frames with a reference registered: angle error "
          f"{s['angle_err_deg_mean']:.2f} +- "
          f"{s['angle_err_deg_sd']:.2f} deg (median {s['angle_err_deg_median']:.2f}), position error "
          f"{s['position_err_mm_mean']:.2f} +- {s['position_err_mm_sd']:.2f} mm (median "
          f"{s['position_err_mm_median']:.2f}) -> {paths['csv']}, {paths['plot']}")
    return 0


def run_select_translator(args: argparse.Namespace) -> int:
    from fluororeg.pipeline.register import PipelineOptions
    from fluororeg.training.translator_selection import select_translator_snapshot

    subject, rec, detector = _subject_recording_detector(args)
    # [F, 6] in the recording's order, matched by its frame numbers (not positions)
    reference = _reference_by_frame(args.reference, rec.frame_numbers, args.subject, rec) if args.reference else None
    if reference is not None and not np.isfinite(reference).all(axis=1).any():
        raise ValueError(f"'{args.reference}' has no pose for any frame of '{args.recording}' (frames "
                         f"{rec.frame_numbers[:10].tolist()}{' ...' if len(rec) > 10 else ''}; matched by frame number)")
    from fluororeg.io.run_lock import run_folder_lock

    crop = crop_pixel_mm_for(args.crop_pixel_mm, detector)
    common.check_detector_trained(detector, args.allow_undertrained)
    with run_folder_lock(args.out, "select-translator"):  # one writer per output folder
        best, scores, verdict = select_translator_snapshot(
            args.run, rec, subject, detector, args.out, reference=reference,
            options=PipelineOptions(crop_pixel_mm=crop, **_gate_options(args)), max_frames=args.max_frames,
            progress=not args.quiet)
    unit = "mm landmark error" if reference is not None else "mm refinement disagreement"
    from fluororeg.inference.translator import preferred_style

    chosen, why = preferred_style(verdict)
    for s in scores:
        mark = "  <- best snapshot" if s.style == "translate" and s.step == best.step else \
            ("  <- better than translating" if s.style == chosen and chosen != "translate" else "")
        print(f"{s.name:>12}: {s.score:8.3f} {unit}, {100 * s.registered_share:5.1f} % registered{mark}")
    print(f"exported step {best.step} -> {Path(args.out) / 'xray_to_drr.onnx'}; table in "
          f"{Path(args.out) / 'selection.csv'}")
    if why:
        print(f"note: translation does not help here: `fluororeg register --translator` will register with style "
              f"'{chosen}' instead (it says so); {why}")
    return 0
