"""``fluororeg train-detector`` (the landmark detector) and ``fluororeg train-translator`` (the
X-ray-to-DRR style translator, a CycleGAN); both need torch and resume after Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fluororeg.cli import common
from fluororeg.io.run_lock import run_folder_lock

DEPRECATED_COMMANDS = {"train-style": "train-translator"}


def add_parser(subparsers) -> None:
    td = subparsers.add_parser("train-detector", help="train the landmark detector on a dataset (torch)")
    td.add_argument("dataset")
    td.add_argument("--out", required=True, help="run folder (a rerun resumes)")
    td.add_argument("--preset", choices=["fast", "paper"], default="fast")
    td.add_argument("--minutes", type=float,
                    help="an explicit wall-clock cap in minutes (default: none; the budget is --epochs, the same on "
                         "any machine); a run it cuts short says so and its model records cut_short")
    td.add_argument("--epochs", type=int)
    td.add_argument("--restart", action="store_true", help="start over instead of resuming")
    td.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: torch's CUDA when present")
    common.add_threads_option(td)
    common.add_quiet_option(td)
    td.set_defaults(handler=run_train_detector, resumes=True)
    tt = subparsers.add_parser("train-translator", aliases=list(DEPRECATED_COMMANDS),
                               help="train the X-ray-to-DRR style translator (torch; train-style: deprecated)")
    tt.add_argument("--xray", nargs="+", required=True, help="recording folder(s) with X-ray frames")
    tt.add_argument("--drr", required=True, help="dataset folder (DRR domain)")
    tt.add_argument("--out", required=True, help="run folder (a rerun resumes)")
    tt.add_argument("--preset", choices=["fast", "paper"], default="fast")
    tt.add_argument("--steps", type=int)
    tt.add_argument("--every", type=int, default=1, help="use every n-th frame")
    tt.add_argument("--detector", help="exported landmark detector (.onnx) of --subject: the X-ray crops are centred on "
                                       "the bone it locates, as `register` crops them before translating (recommended; "
                                       "default: centred on the field of view)")
    tt.add_argument("--subject", help=common.SUBJECT_HELP + " (with --detector)")
    tt.add_argument("--crop-pixel-mm", type=float,
                    help="pixel size (mm at the bone) of the X-ray crops (default: the --drr dataset's, as register "
                         "crops with a detector trained on it)")
    tt.add_argument("--snapshot-every", type=int, default=0,
                    help="keep a translator snapshot every N steps (snapshots/) to choose from with select-translator")
    tt.add_argument("--restart", action="store_true",
                    help="start over: delete the run's checkpoint, snapshots and log first (default: resume)")
    tt.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: torch's CUDA when present")
    common.add_threads_option(tt)
    common.add_quiet_option(tt)
    tt.set_defaults(handler=run_train_translator, resumes=True)


def run_train_detector(args: argparse.Namespace) -> int:
    from fluororeg.training.detector_config import preset
    from fluororeg.training.detector_export import export_detector
    from fluororeg.training.detector_train import train_detector

    overrides = {}
    if args.minutes is not None:
        overrides["time_limit_minutes"] = args.minutes
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    cfg = preset(args.preset, **overrides)
    with run_folder_lock(args.out, "train-detector"):  # one writer per run folder, training and export
        result = train_detector(args.dataset, args.out, cfg, resume=not args.restart, progress=not args.quiet,
                                device=args.device)
        if result.interrupted:  # a partial run is never exported as the detector
            print(f"interrupted after {result.epochs_done} epoch(s): run the same command again to resume; "
                  "nothing exported")
            return 130
        path = export_detector(args.out, Path(args.out) / "detector.onnx")
    from fluororeg.inference.detector import LandmarkDetector

    detector = LandmarkDetector(path, device="cpu", num_threads=1)  # what register will read of it
    px = (detector.training or {}).get("val_mean_px")
    print(f"best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch}"
          + ("" if px is None else f", validation error {px:.2f} px") + f"; exported {path}")
    why = detector.undertrained()
    if why:  # said now, not first at register's refusal
        print(f"WARNING: {why}: register refuses it unless given --allow-undertrained; train again with more "
              "--epochs and --restart, or on a larger dataset", file=sys.stderr)
    return 0


def run_train_translator(args: argparse.Namespace) -> int:
    from fluororeg.training.translator_config import TranslatorConfig
    from fluororeg.training.translator_export import export_translator
    from fluororeg.training.translator_train import discard_run, train_translator
    from fluororeg.training.xray_crops import xray_training_crops

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps}: expected at least 1")
    if args.every < 1:
        raise ValueError(f"--every {args.every}: expected at least 1 (every n-th frame)")
    if args.subject and not args.detector:
        raise ValueError("--subject is used with --detector (to centre the crops on the bone): pass --detector too")
    cfg = TranslatorConfig.preset(args.preset, snapshot_every=args.snapshot_every,
                             **({"steps": args.steps} if args.steps is not None else {}))
    crop_pixel_mm = args.crop_pixel_mm
    if crop_pixel_mm is None:
        from fluororeg.dataset.generate import DatasetReader

        crop_pixel_mm = DatasetReader(args.drr, "train").crop_pixel_mm  # the DRRs' pixel size at the bone
    with run_folder_lock(args.out, "train-translator"):  # one writer per run folder, training and export
        locate = None
        if args.detector:
            from fluororeg.inference.detector import LandmarkDetector

            subject = common.load_subject_arg(args.subject)
            locate = (subject, LandmarkDetector(args.detector, subject=subject, device=args.device))
        crops = xray_training_crops(args.xray, size=cfg.image_size, crop_pixel_mm=crop_pixel_mm, every=args.every,
                                    locate=locate)
        print(f"{len(crops)} X-ray crops of {cfg.image_size} px from {len(args.xray)} recording(s), centred on "
              + ("the bone" if locate else "the field of view (pass --detector and --subject to centre them on the bone)"))
        if args.restart:
            discard_run(args.out)
        summary = train_translator(crops, args.drr, args.out, cfg, progress=not args.quiet, device=args.device)
        if summary["stopped"]:  # a partial run is never exported as the translator
            print(f"interrupted at step {summary['step']} of {summary['total_steps']}: run the same command again "
                  "to resume; nothing exported")
            return 130
        x2d, d2x = export_translator(args.out, Path(args.out) / "onnx")
    print(f"step {summary['step']} of {summary['total_steps']}; exported {x2d} and {d2x}")
    if args.snapshot_every:
        print(f"choose among the snapshots with: fluororeg select-translator {args.out} RECORDING "
              f"--subject DIR --detector MODEL.onnx --out {Path(args.out) / 'selected'}")
    return 0
