"""Fault injection: ``register``, ``dataset``, ``train-detector`` and ``train-translator``
(``train-style``) run as CLI subprocesses with tiny settings, killed with SIGINT and SIGKILL at
seeded random points, then run again to completion: the outputs equal an uninterrupted run's
(poses.csv within 1e-9, dataset arrays identical, exported model weights within 1e-6).

The training commands take their tiny settings from a driver that replaces the ``fast`` presets
(the CLI code path is otherwise the real one). Each command is killed once per signal by
default; ``FLUORO_FAULT_KILLS=N`` kills it N times per signal before the final run. The
training commands take ~1.5 min each on 2 cores (torch's start-up in every run), so they are
marked ``slow`` and skipped by default: run them with ``FLUORO_RUN_SLOW=1`` or ``-m slow``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import harness

ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("FLUORO_FAULT_KILLS", "1"))
SEED = int(os.environ.get("FLUORO_FAULT_SEED", "17"))  # where in a run the kills land

DRIVER = """
import sys
import torch
torch.set_num_threads(1)
from fluororeg.training import detector_config, translator_config
from fluororeg.training.augment import AugmentConfig
detector_config.PRESETS["fast"] = dict(arch="heatmap", width=8, blocks=(1, 1, 1, 1), input_size=32, epochs=4,
                                       batch_size=8, lr=3e-3, schedule="onecycle", patience=100, val_fraction=0.2,
                                       augment=AugmentConfig.light(), num_threads=1)
translator_config.PRESETS["fast"] = dict(image_size=32, gen_width=4, gen_blocks=1, disc_width=4, disc_layers=2,
                                         batch_size=2, lr=1e-3, steps=12, log_every=2, checkpoint_every=3, seed=1)
from fluororeg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env():
    import fluororeg

    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(fluororeg.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def _cmd(args, training: bool):
    return [sys.executable, "-c", DRIVER, *args] if training else [sys.executable, "-m", "fluororeg", *args]


def run_to_end(args, training=False, timeout=300) -> float:
    t0 = time.monotonic()
    p = subprocess.run(_cmd(args, training), capture_output=True, text=True, env=_env(), timeout=timeout)
    assert p.returncode == 0, f"{args[0]} failed: {p.stderr[-2000:]}"
    return time.monotonic() - t0


_STARTUP_S: dict[bool, float] = {}


def startup_s(training: bool) -> float:
    """Seconds from a command's start until fluororeg's own code runs (the interpreter, the
    imports, the parser): ``--version``, timed once per kind of command line. A Ctrl-C before
    then meets the interpreter's own handling (Python prints its traceback), which is not what
    these tests check."""
    if training not in _STARTUP_S:
        t0 = time.monotonic()
        subprocess.run(_cmd(["--version"], training), capture_output=True, env=_env(), timeout=120, check=True)
        _STARTUP_S[training] = time.monotonic() - t0
    return _STARTUP_S[training]


def run_and_kill(args, sig, share: float, whole_s: float, training=False) -> int:
    """Start the command, wait until it has begun its work (its --out folder exists: the
    interpreter start and imports are over; a resumed run's folder is there from the start, so
    for it :func:`startup_s`), then ``share`` of the rest of an uninterrupted run's time, and send
    ``sig``; its exit status."""
    out = Path(args[args.index("--out") + 1])
    start_s = startup_s(training) if out.exists() else 0.0  # timed before this run, not beside it
    t0 = time.monotonic()
    p = subprocess.Popen(_cmd(args, training), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    while p.poll() is None and not out.exists() and time.monotonic() - t0 < 120:
        time.sleep(0.02)
    while p.poll() is None and time.monotonic() - t0 < start_s:
        time.sleep(0.02)
    delay_s = share * max(whole_s - (time.monotonic() - t0), 0.05)
    try:
        p.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"{args[0]} did not stop within 120 s of {sig.name}")
    # 130: the CLI's Ctrl-C exit; -SIGINT: the signal came after main returned (interpreter
    # shutdown; the rerun checks that the output is complete and right).
    if sig == signal.SIGINT and p.returncode not in (0, 130, -signal.SIGINT):
        raise AssertionError(f"{args[0]} after SIGINT: exit {p.returncode}, stderr {err.decode()[-1500:]}")
    if sig == signal.SIGINT:
        assert b"Traceback" not in err, err.decode()[-1500:]
    return p.returncode


def interrupted_runs(name, args_for, compare, whole_s, training=False, seed=SEED):
    """Kill a fresh run KILLS times per signal at seeded random points, finish it, compare."""
    rng = random.Random(seed)
    for sig in (signal.SIGINT, signal.SIGKILL):
        out = args_for(sig.name)
        codes = []
        for _ in range(KILLS):
            codes.append(run_and_kill(out, sig, rng.uniform(0.05, 0.9), whole_s, training))
        run_to_end(out, training)
        target = f"fault {name} {sig.name}"
        try:
            compare(sig.name)
        except AssertionError as exc:
            harness.COUNTS[target]["failure"] += KILLS
            harness.FAILURES[target].append({"input": f"{name} killed by {sig.name} (exits {codes})",
                                             "detail": str(exc)})
            raise
        harness.COUNTS[target]["valid"] += KILLS


@pytest.fixture(scope="module")
def lab(subject, tmp_path_factory):
    """A subject folder, a simulated recording, a spot detector and an uninterrupted dataset."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_builders", ROOT / "tests" / "inference" / "conftest.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    spot_detector = builders.spot_detector  # tests/inference/conftest.py (onnx helper API, no torch)

    from fluororeg.simulation.simulate import default_dual_views, simulate_recording
    from fluororeg.subject.subject import save_subject

    root = tmp_path_factory.mktemp("faults")
    rec = simulate_recording(subject, root / "rec", n_frames=12, views=default_dual_views(128, 128, 2.4), seed=3)
    subject_dir = save_subject(subject, root / "subject")
    det = spot_detector(root / "det.onnx", 32, list(subject.landmark_names), pairs=subject.pairs,
                        fingerprint=subject.fingerprint)
    return {"root": root, "rec": rec, "subject": subject_dir, "det": det}


DATASET_ARGS = ["--n-train", "160", "--n-test", "8", "--size", "32", "--pixel-mm", "8", "--shard-size", "16",
                "--seed", "7", "--device", "cpu", "--quiet"]


def dataset_args(lab, out):
    return ["dataset", "--subject", str(lab["subject"]), "--out", str(out), *DATASET_ARGS]


@pytest.fixture(scope="module")
def dataset(lab):
    out = lab["root"] / "ds_whole"
    seconds = run_to_end(dataset_args(lab, out))
    return out, seconds


def _h5_arrays(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def same_dataset(a: Path, b: Path):
    """The same shard files holding identical arrays."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*.h5"))
    fb = sorted(p.relative_to(b) for p in b.rglob("*.h5"))
    assert fa == fb and fa, f"shard files differ: {fa} vs {fb}"
    for rel in fa:
        x, y = _h5_arrays(a / rel), _h5_arrays(b / rel)
        assert sorted(x) == sorted(y), rel
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{rel}:{k}")


def same_onnx_weights(a: Path, b: Path, atol=1e-6):
    import onnx
    from onnx import numpy_helper

    wa = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(a)).graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(b)).graph.initializer}
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=atol, err_msg=k)


def test_dataset_killed_and_resumed_equals_an_uninterrupted_run(lab, dataset):
    whole, seconds = dataset
    interrupted_runs("dataset", lambda s: dataset_args(lab, lab["root"] / f"ds_{s}"),
                     lambda s: same_dataset(whole, lab["root"] / f"ds_{s}"), seconds)


def test_register_killed_and_resumed_equals_an_uninterrupted_run(lab):
    from fluororeg.io.poses import read_poses_csv

    def args(tag):
        return ["register", str(lab["rec"]), "--subject", str(lab["subject"]), "--detector", str(lab["det"]),
                "--style", "log", "--device", "cpu", "--min-visible", "4", "--out", str(lab["root"] / f"reg_{tag}"),
                "--quiet", "--allow-undertrained"]  # a hand-built test detector: no training figures

    seconds = run_to_end(args("whole"))

    def compare(tag):
        a = (lab["root"] / "reg_whole" / "poses.csv").read_bytes()
        b = (lab["root"] / f"reg_{tag}" / "poses.csv").read_bytes()
        if a == b:
            return
        ta, tb = read_poses_csv(lab["root"] / "reg_whole" / "poses.csv"), read_poses_csv(lab["root"] / f"reg_{tag}" / "poses.csv")
        np.testing.assert_array_equal(ta["status"], tb["status"])
        np.testing.assert_allclose(ta["poses"], tb["poses"], rtol=0, atol=1e-9, equal_nan=True)

    interrupted_runs("register", args, compare, seconds)


@pytest.mark.slow
def test_train_detector_killed_and_resumed_exports_the_same_weights(lab, dataset):
    pytest.importorskip("torch")
    ds, _ = dataset

    def args(tag):
        return ["train-detector", str(ds), "--out", str(lab["root"] / f"det_{tag}"), "--device", "cpu", "--quiet"]

    seconds = run_to_end(args("whole"), training=True)
    interrupted_runs("train-detector", args, lambda s: same_onnx_weights(
        lab["root"] / "det_whole" / "detector.onnx", lab["root"] / f"det_{s}" / "detector.onnx"), seconds, training=True)


@pytest.mark.slow
def test_train_translator_killed_and_resumed_exports_the_same_weights(lab, dataset):
    pytest.importorskip("torch")
    ds, _ = dataset

    def args(tag):
        return ["train-translator", "--xray", str(lab["rec"]), "--drr", str(ds), "--out",
                str(lab["root"] / f"style_{tag}"), "--device", "cpu", "--quiet"]

    seconds = run_to_end(args("whole"), training=True)

    def compare(tag):
        models = sorted(p.name for p in (lab["root"] / "style_whole" / "onnx").glob("*.onnx"))
        assert models
        for m in models:
            same_onnx_weights(lab["root"] / "style_whole" / "onnx" / m, lab["root"] / f"style_{tag}" / "onnx" / m)

    interrupted_runs("train-translator", args, compare, seconds, training=True)
