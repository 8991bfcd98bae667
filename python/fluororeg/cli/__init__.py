"""The ``fluororeg`` command line (``fluororeg --help``; ``python -m fluororeg`` is the same).

    fluororeg render [--ct PATH] [--beam parallel|cone] [--count N] [--size PX] [--pixel-mm MM] [--out DIR]
    fluororeg subject init --ct CT [--landmarks FILE] --out DIR | subject check [DIR]
    fluororeg dataset --subject DIR [--out DIR] [--n-train N] [--n-test N] [--seed S] [--pixel-mm MM]
                      [--projection parallel|cone] [--geometry geometry.json] [--source-distance LO HI]
    fluororeg contact-sheet DATASET [--split train|test] [--count N] [--out PNG]
    fluororeg simulate --subject DIR [--scenario NAME] [--n-frames N] [--size PX] [--out DIR]
    fluororeg calibrate distortion PLATE_IMAGE --out MODEL.json
    fluororeg calibrate geometry --mayacam CAM1 CAM2 --pitch MM [--distortion D1 D2] --out geometry.json
    fluororeg recording init VIEW1 VIEW2 --geometry geometry.json --out DIR [--fps HZ]
    fluororeg import autoscoper TRIAL.cfg --out DIR --pitch MM --intensity MAPPING
    fluororeg export POSES.csv --format tra|xmalab|slicer --subject DIR --out FILE
    fluororeg train-detector DATASET --out RUN [--preset fast|paper] [--minutes M] [--epochs N]
    fluororeg train-translator --xray REC... --drr DATASET --out RUN [--preset fast|paper] [--steps N]
                               [--crop-pixel-mm MM] [--snapshot-every N]
    fluororeg select-translator RUN RECORDING --subject DIR --detector MODEL.onnx [--reference POSES] --out DIR
    fluororeg register RECORDING --subject DIR --detector MODEL.onnx [--translator MODEL.onnx]
                       [--style translate|log|invert|none] [--crop-pixel-mm MM] [--smoothing-hz F] --out DIR
    fluororeg overlay RECORDING POSES.csv --subject DIR --out DIR [--frames N ...] [--video overlay.mp4|.gif|none]
    fluororeg evaluate POSES.csv --reference TRUTH [--subject DIR] [--recording DIR] --out DIR
    fluororeg study init|check|run MANIFEST ...   (many subjects and recordings on Dask: docs/study.md)
    fluororeg demo [--out DIR] [--quick]
    fluororeg info | --version

``--subject example`` names the built-in example subject; commands that work on a subject do
not fall back to it silently. Each command lives in its own module (``add_parser(subparsers)``
and ``run(args)``); this one assembles the parser and turns errors into one line on stderr and a non-zero exit status (2;
running out of memory too; 130 after Ctrl-C, with how to resume). Spellings deprecated for one release, which still work
and print a note: ``render --geometry parallel|cone`` (``--beam``), ``simulate --frames N``
(``--n-frames``), ``register --smooth-hz`` (``--smoothing-hz``), ``train-style``
(``train-translator``) and ``select-style`` (``select-translator``).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from fluororeg.cli import (
    dataset_commands,
    demo_command,
    info_command,
    interop_commands,
    recording_commands,
    register_commands,
    render_command,
    study_commands,
    subject_commands,
    training_commands,
)
from fluororeg.cli.common import deprecation_note, warnings_in_plain_words

__all__ = ["main", "build_parser"]

COMMAND_MODULES = (render_command, subject_commands, dataset_commands, recording_commands, interop_commands,
                   training_commands, register_commands, study_commands, demo_command, info_command)
DEPRECATED_COMMANDS = {**training_commands.DEPRECATED_COMMANDS, **register_commands.DEPRECATED_COMMANDS}


def _version() -> str:
    from fluororeg import __version__

    return __version__


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the command and the offending argument (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fluororeg", description="fluororeg: automatic registration of a CT bone "
                                "model to every frame of a dual-fluoroscope X-ray recording.")
    p.add_argument("--version", action="version", version=f"fluororeg {_version()}")
    subparsers = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return p


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:  # not "[Errno 17] File exists: ..."
        names = f"'{exc.filename}'" + (f" -> '{exc.filename2}'" if exc.filename2 is not None else "")
        return f"{names}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt lies in ``exc``'s chain of causes and contexts. Python 3.11
    wraps one raised while a class is being made (Ctrl-C during a module's import, such as
    matplotlib's when the QC figures are drawn) in a RuntimeError; an error raised while an
    interrupt was being handled has it as its context. Either way the user pressed Ctrl-C."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _empty_argument(argv: list[str]) -> str | None:
    """What is wrong with the first empty argument of ``argv`` (an option's value or a
    positional argument, empty or blank: typically an unset shell variable, ``--translator
    "$MODEL"``), or None. An empty name is never a file or a setting: it is refused rather than
    read as the option's absence or as the working folder."""
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if token.startswith("--") and eq and not value.strip():
            return f"{name} is empty: expected a value (an unset shell variable?)"
        if not token.strip():
            before = argv[i - 1] if i > 0 else ""
            option = len(before) > 1 and before[0] == "-" and (before[1].isalpha() or before[1] == "-")
            return f"{before if option else f'argument {i + 1}'} is empty: expected a value (an unset shell variable?)"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # the commands' modules are imported here (SciPy among them: about a second)
        args = build_parser().parse_args(argv)
    except BaseException as exc:  # Ctrl-C, or an extension module's import made it "initialization failed"
        if not _caused_by_interrupt(exc):
            raise
        print("fluororeg: interrupted before the command started: run it again", file=sys.stderr)
        return 130
    empty = _empty_argument(argv)
    if empty is not None:
        print(f"fluororeg {args.command}: error: {empty}", file=sys.stderr)
        return 2
    if args.command in DEPRECATED_COMMANDS:
        deprecation_note(args.command, DEPRECATED_COMMANDS[args.command])
    written = warnings.formatwarning  # catch_warnings restores the filters, not the format
    warnings.formatwarning = warnings_in_plain_words(args.command)
    try:
        return _run(args)
    finally:
        warnings.formatwarning = written


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "threads", None) is not None:
            from fluororeg.core.threads import set_num_threads

            set_num_threads(args.threads)
        return args.handler(args)
    except KeyboardInterrupt:
        return _interrupted(args)
    except MemoryError:
        print(f"fluororeg {args.command}: error: out of memory while running {args.command!r}; the input may be too "
              f"large (fluororeg.io.limits has the sizes fluororeg reads)", file=sys.stderr)
        return 2
    except (ValueError, TypeError, LookupError, OSError, ArithmeticError, RuntimeError, ImportError,
            EOFError) as exc:
        if _caused_by_interrupt(exc):
            return _interrupted(args)
        print(f"fluororeg {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: says how to go on; exit status 130."""
    how = "run the same command again to resume" if args.resumes else "run the same command again to start over"
    print(f"fluororeg {args.command}: interrupted: {how}", file=sys.stderr)
    return 130
