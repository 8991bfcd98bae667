"""One writer per output folder (fluororeg.io.run_lock): a second writer is refused at once,
naming the holder; a dead holder's lock is taken over; nested stages re-enter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from fluororeg.io.run_lock import LOCK_FILE_NAME, FolderInUseError, lock_holder, run_folder_lock

PYTHON_PATH = str(Path(__import__("fluororeg").__file__).parents[1])
HOLDER = """
import sys
from fluororeg.io.run_lock import run_folder_lock
with run_folder_lock(sys.argv[1], "holder"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """A subprocess that holds ``folder``'s lock until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": PYTHON_PATH + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    proc = hold_lock(out)
    try:
        with pytest.raises(FolderInUseError) as err:
            with run_folder_lock(out, "register"):
                pytest.fail("entered a folder another process holds")
        message = str(err.value)
        assert "\n" not in message and f"pid {proc.pid}" in message and str(out) in message
        assert "since" in message and "-c" in message  # the holder's command line and start time
        info = lock_holder(out)
        assert info["pid"] == proc.pid and info["what"] == "holder"
    finally:
        proc.stdin.close()
        proc.wait(10)
    with run_folder_lock(out, "register"):  # released when the holder finished
        assert lock_holder(out)["pid"] == os.getpid()
    assert lock_holder(out) is None  # emptied on release


def test_a_dead_holders_lock_is_taken_over_silently(tmp_path):
    out = tmp_path / "run"
    proc = hold_lock(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert lock_holder(out)["pid"] == proc.pid  # the dead process's details are still in the file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with run_folder_lock(out, "register"):
            assert json.loads((out / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()


def test_nested_stages_reenter_but_another_thread_is_refused(tmp_path):
    out = tmp_path / "run"
    errors = []

    def other_thread():
        try:
            with run_folder_lock(out, "other"):
                pass
        except FolderInUseError as exc:
            errors.append(str(exc))

    with run_folder_lock(out, "demo"):
        with run_folder_lock(out / ".", "register"):  # the same folder, another spelling
            t = threading.Thread(target=other_thread)
            t.start()
            t.join(10)
        assert lock_holder(out)["what"] == "demo"  # the inner stage did not release it
        assert len(errors) == 1 and "another thread of this process" in errors[0]
    with run_folder_lock(out, "again"):  # all released
        pass


def test_command_refused_with_exit_status_2(tmp_path, capsys):
    from fluororeg.cli import main

    out = tmp_path / "demo"
    proc = hold_lock(out)
    try:
        assert main(["demo", "--out", str(out), "--quick"]) == 2  # refused before any work
    finally:
        proc.stdin.close()
        proc.wait(10)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"pid {proc.pid}" in err and "in use" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE_NAME]


def test_library_training_functions_take_the_lock_too(tmp_path):
    pytest.importorskip("torch")
    from fluororeg.training.detector_train import train_detector
    from fluororeg.training.translator_train import train_translator

    out = tmp_path / "run"
    proc = hold_lock(out)
    try:  # refused before the (missing) dataset is even looked at
        with pytest.raises(FolderInUseError, match=f"pid {proc.pid}"):
            train_detector(tmp_path / "no_dataset", out, "fast")
        with pytest.raises(FolderInUseError, match=f"pid {proc.pid}"):
            train_translator(tmp_path / "no_xrays", tmp_path / "no_dataset", run_dir=out)
    finally:
        proc.stdin.close()
        proc.wait(10)
