"""What the command modules share: the subject argument, device choices, deprecated aliases, the
``--threads`` and ``--allow-undertrained`` options, the format of fluororeg's warnings."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

DEVICES = ["auto", "cpu", "cuda"]    # where rendering runs (auto: CUDA when a device is usable)
NETWORK_DEVICES = ["auto", "cpu", "cuda"]  # where the networks run


EXAMPLE_SUBJECT = "example"  # ``--subject example``: the built-in example subject, asked for by name
SUBJECT_HELP = ("subject folder with subject.json (fluororeg subject init), or 'example' for the built-in example "
                "subject; required")


def load_subject_arg(folder: str | None):
    """The subject of ``--subject FOLDER`` (``--subject example``: the built-in example subject,
    unless a folder of that name holds a subject). Without ``--subject``: a ``ValueError`` that
    says to pass one (no silent default: a detector or dataset of the wrong bone helps no one)."""
    from pathlib import Path

    from fluororeg.subject.subject import example_subject, load_subject

    if folder is None:
        raise ValueError("no subject given: pass --subject DIR (a subject folder from `fluororeg subject init` or "
                         "`fluororeg import autoscoper`), or --subject example to use the built-in example subject")
    if folder == EXAMPLE_SUBJECT and not (Path(folder) / "subject.json").is_file():
        return example_subject()
    return load_subject(folder)


def subject_volume_flip_arg(folder) -> tuple[int, int, int]:
    """The VolumeFlip Autoscoper loads ``--subject``'s CT with (its folder's autoscoper.json; none for
    the built-in example subject): the volume frame of the .tra files written and read for it."""
    from pathlib import Path

    from fluororeg.io.autoscoper import subject_volume_flip

    if folder is None or (folder == EXAMPLE_SUBJECT and not (Path(folder) / "subject.json").is_file()):
        return (0, 0, 0)
    return subject_volume_flip(folder)


def deprecation_note(old: str, new: str) -> None:
    """One line on stderr: ``old`` still works for this release; use ``new``."""
    print(f"fluororeg: {old} is deprecated and will be removed in the next release: use {new}", file=sys.stderr)


class _DeprecatedOption(argparse.Action):
    def __init__(self, option_strings, dest, replacement: str = "", **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecation_note(option_string, self.replacement)
        setattr(namespace, self.dest, values)


def add_deprecated_option(parser: argparse.ArgumentParser, old: str, replacement: str, dest: str, **kwargs) -> None:
    """``old`` as a hidden, deprecated spelling of the option ``replacement`` (same ``dest``): it
    still works for one release and prints a one-line note to stderr when used."""
    parser.add_argument(old, dest=dest, action=_DeprecatedOption, replacement=replacement, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars; the lines saying what was done and where the results are
    still print."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (the lines saying what was done and where still print)")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the process's thread count for torch, onnxruntime and the C++ core
    (:mod:`fluororeg.core.threads`); :func:`fluororeg.cli.main` applies it before the command runs."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for torch, onnxruntime and the C++ core (default: OMP_NUM_THREADS, else the "
                             "CPUs this process may run on); 1 keeps jobs that share the cores efficient")


def add_allow_undertrained_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-undertrained", action="store_true",
                        help="use a detector whose recorded training figures fall short (validation error above "
                             "3 px, training cut short by a time cap, or no figures): warn prominently instead of "
                             "refusing")


def check_detector_trained(detector, allow: bool) -> str | None:
    """Refuse (``ValueError``) a detector whose metadata says it is under-trained
    (:meth:`~fluororeg.inference.detector.LandmarkDetector.undertrained`), unless ``allow``:
    then print a prominent warning to stderr and return the reason (None: a trusted detector)."""
    reason = detector.undertrained()
    if reason is None:
        return None
    if not allow:
        raise ValueError(f"{reason}: refusing to register with it (poses from it are not to be trusted); train it "
                         "longer (a rerun of train-detector resumes), or pass --allow-undertrained to go on with a "
                         "warning")
    print(f"WARNING: UNDERTRAINED DETECTOR (--allow-undertrained): {reason}", file=sys.stderr)
    return reason


def warnings_in_plain_words(command: str):
    """``warnings.formatwarning`` for a command: fluororeg's own warnings as one line naming the
    command (not Python's file, line and source line), everyone else's as Python writes them.
    (The format, not ``showwarning``: a caller recording warnings still gets them.) Set by
    :func:`fluororeg.cli.main` for each command, and in a study's local workers."""
    package = str(Path(__file__).resolve().parents[1])
    written = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if not str(Path(filename).resolve()).startswith(package):
            return written(message, category, filename, lineno, line)
        return f"fluororeg {command}: warning: {' '.join(str(message).split())}\n"

    return format_warning
