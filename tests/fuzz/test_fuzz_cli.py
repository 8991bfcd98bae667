"""The command line against bad arguments and damaged files: every ``fluororeg <cmd>`` run
with at least one bad value (a missing, empty, damaged or wrong-kind file, a directory,
/dev/null, a negative, zero, non-finite or non-numeric number) must exit non-zero with exactly
one line on stderr and no traceback (the ``check`` commands list problems on stdout instead:
exit non-zero, no traceback, at most one line on stderr). The runs are forked children calling
``fluororeg.cli.main`` (stderr captured, memory and time limited, harness.py); one real
subprocess run per test checks the same through ``python -m fluororeg``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import harness
from harness import fuzz_settings

BAD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e309", "abc", "99999999999999999999", "", "1,5", "0x10"]

# Templates: the command and its arguments; {kind} slots are filled from the valid or bad pools.
TEMPLATES = [
    "render --ct {ct} --count {int} --size {int} --pixel-mm {num} --out {out}",
    "subject check {subject}",
    "subject init --ct {ct} --landmarks {landmarks} --out {out} --threshold-hu {num}",
    "dataset --subject {subject} --n-train {int} --n-test {int} --size {int} --out {out} --quiet",
    "simulate --subject {subject} --n-frames {int} --size {int} --out {out} --quiet",
    "calibrate geometry --mayacam {cam} {cam} --pitch {num} --out {out}",
    "calibrate distortion {image} --out {out} --bead-radius {num}",
    "recording init {view} {view} --geometry {geometry} --out {out} --fps {num}",
    "import autoscoper {cfg} --out {out} --pitch {num} --intensity hu",
    "export {poses} --format tra --subject {subject} --out {out} --frame {int}",
    "evaluate {poses} --reference {poses} --subject {subject} --out {out}",
    "overlay {recording} {poses} --subject {subject} --frames {int} --out {out} --quiet",
    "register {recording} --subject {subject} --detector {detector} --style log --min-visible {int} "
    "--loss-scale {num} --out {out} --quiet",
    "train-detector {dataset} --out {out} --epochs {int} --minutes {num} --quiet",
    "train-translator --xray {recording} --drr {dataset} --out {out} --steps {int} --quiet",
    "select-translator {out} {recording} --detector {detector} --max-frames {int} --out {out} --quiet",
    "contact-sheet {dataset} --count {int} --out {out}",
    "study check {study}",
]


def valid_files(seeds: Path) -> dict[str, list[str]]:
    return {"ct": [str(seeds / "volumes" / "ct.mha"), str(seeds / "volumes" / "ct.nii.gz")],
            "landmarks": [str(seeds / "landmarks" / "lm.fcsv")], "subject": [str(seeds / "subject")],
            "cam": [str(seeds / "calibration" / "cam1.txt")], "image": [str(seeds / "recording" / "view1" / "frame_0000.png")],
            "view": [str(seeds / "recording" / "view1")], "geometry": [str(seeds / "recording" / "geometry.json")],
            "cfg": [str(seeds / "trial" / "trial.cfg")], "poses": [str(seeds / "poses" / "poses.csv")],
            "recording": [str(seeds / "recording")], "detector": [str(seeds / "detector.onnx")],
            "dataset": [str(seeds / "recording")], "study": [str(seeds / "study" / "study.toml")]}


def bad_files(seeds: Path, tmp: Path) -> list[str]:
    empty = tmp / "empty.json"
    empty.write_bytes(b"")
    garbage = tmp / "garbage.mha"
    garbage.write_bytes(bytes(range(256)) * 4)
    return [str(tmp / "missing"), "/dev/null", str(tmp), str(empty), str(garbage), str(seeds / "detector.onnx"),
            str(seeds / "poses" / "poses.tra"), str(seeds / "volumes" / "ct.raw"), "", "-", "--help-me"]


@st.composite
def command_lines(draw, seeds: Path, tmp: Path):
    template = draw(st.sampled_from(TEMPLATES))
    valid = valid_files(seeds)
    bad = bad_files(seeds, tmp)
    parts = template.split()
    slots = [i for i, p in enumerate(parts) if p.startswith("{") and p != "{out}"]
    forced = draw(st.sampled_from(slots))
    argv = []
    for i, p in enumerate(parts):
        if not p.startswith("{"):
            argv.append(p)
            continue
        kind = p[1:-1]
        make_bad = i == forced or draw(st.integers(0, 4)) == 0
        if kind == "out":
            argv.append(str(tmp / "out") if draw(st.integers(0, 5)) else draw(st.sampled_from(["/dev/null/x",
                                                                                              str(tmp / "empty.json")])))
        elif kind in ("num", "int"):
            argv.append(draw(st.sampled_from(BAD_NUMBERS)) if make_bad else ("2" if kind == "int" else "0.5"))
        else:
            argv.append(draw(st.sampled_from(bad)) if make_bad else valid[kind][0])
    return argv


def run_cli(argv: list[str], err_path: str) -> tuple:
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    sys.stderr = open(2, "w", closefd=False)  # pytest's capture object replaced by fd 2
    import warnings

    warnings.simplefilter("default")
    from fluororeg.cli import main

    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    sys.stderr.flush()
    return code


def cli_contract(argv, err_path: Path):
    """Run in the child: main(argv) with stderr to a file, then the contract on it. The child
    works in err_path's folder: what a command writes to the working folder by default (say
    subject check's sheet) stays out of the checkout."""
    os.chdir(err_path.parent)
    code = run_cli(argv, str(err_path))
    err = err_path.read_text(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code in (0, None):
        return "exit 0"  # a valid run (the check below accepts it)
    if argv[1:2] == ["check"] and "Traceback" not in err and len(lines) <= 1:
        return "error"  # 'subject check' / 'study check' list the problems on stdout and exit 1
    if "Traceback" in err or len(lines) != 1 or not lines[0].startswith("fluororeg"):
        raise AssertionError(f"exit {code} with stderr {err[-300:]!r}")
    return "error"


def test_cli_bad_arguments_exit_nonzero_with_one_line(seeds, tmp_path):
    target = "CLI fluororeg <cmd>"

    @fuzz_settings(1.6)
    @given(command_lines(seeds, tmp_path))
    def one(argv):
        harness.fuzz_call(target, cli_contract, argv, tmp_path / "stderr.txt", describe="fluororeg " + " ".join(
            repr(a) if (not a or " " in a) else a for a in argv), timeout_s=60,
            outcome_of=lambda r: "clean" if r == "error" else "valid")

    one()
    harness.assert_no_failures(target)


def test_cli_as_a_process_prints_one_line_and_no_traceback(seeds, tmp_path):
    garbage = tmp_path / "bad.mha"
    garbage.write_bytes(b"NDims = 3\nDimSize = 99999 99999 99999\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-m", "fluororeg", "subject", "init", "--ct", str(garbage), "--landmarks",
                          str(seeds / "landmarks" / "lm.csv"), "--out", str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=120, env=env)
    harness.COUNTS["CLI process"]["clean" if run.returncode != 0 and "Traceback" not in run.stderr
                                  and len(run.stderr.strip().splitlines()) == 1 else "failure"] += 1
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("fluororeg subject: error:"), run.stderr
