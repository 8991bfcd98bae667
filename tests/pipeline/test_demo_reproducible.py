"""The demo gives the same answer on a busy machine (issue 20): its stages at tiny settings run
once undisturbed and once slowed down (a throttled data pipeline and a competing CPU-bound
process) and interrupted once in every stage (Ctrl-C, then the same call again, as a user would
rerun the command); both end with the same detector, the same validation error and the same
registrations, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")

from fluororeg.demo import DemoSettings, run_demo  # noqa: E402
from fluororeg.training import common  # noqa: E402
from interrupts import ctrl_c_at_check  # noqa: E402 (tests/interrupts.py)
from outputs import reproducible_text  # noqa: E402 (tests/outputs.py)

REGISTRATIONS = ("registration_translated", "registration_log", "registration_inverted")


class InterruptOnce:
    """Wraps ``module.name`` so that its ``call``-th call raises KeyboardInterrupt (once)."""

    def __init__(self, monkeypatch, module, name: str, call: int, *, delay_s: float = 0.0):
        self.original, self.calls, self.fired = getattr(module, name), 0, False
        self.call, self.delay_s = call, delay_s
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)  # the throttle: a slow disk / a busy machine
        if self.calls == self.call and not self.fired:
            self.fired = True
            raise KeyboardInterrupt(f"test: Ctrl-C in {self.original.__name__}")
        return self.original(*args, **kwargs)


def _outputs(out):
    report = json.loads((out / "report.json").read_text())
    return (report["training"]["detector"], report["training"]["style"],
            {name: reproducible_text(out / name / "poses.csv") for name in REGISTRATIONS},  # all but times
            _weights(out / "models" / "detector.onnx"))


def _weights(path) -> dict[str, bytes]:
    """The network's weights (the file's metadata also holds training minutes, which differ)."""
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(str(path)).graph.initializer}


def test_a_slowed_down_and_interrupted_demo_gives_the_same_answer(subject, tmp_path, monkeypatch):
    import fluororeg.dataset.generate as generate
    import fluororeg.pipeline.register as register
    import fluororeg.simulation.simulate as simulate
    import fluororeg.training.detector_train as detector_train

    settings = DemoSettings.quick_settings()
    no_stop = common.GracefulStop
    quiet = tmp_path / "quiet"
    run_demo(quiet, settings, subject=subject)

    busy = tmp_path / "busy"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # competes for the cores throughout
    try:
        InterruptOnce(monkeypatch, detector_train, "augment_batch", call=10 ** 9, delay_s=0.05)  # throttle only
        stages = [  # one Ctrl-C inside each stage, in the demo's order
            lambda: InterruptOnce(monkeypatch, simulate.R, "render_cone", call=2),            # simulation
            lambda: InterruptOnce(monkeypatch, generate, "_project_samples", call=2),         # dataset
            lambda: monkeypatch.setattr(common, "GracefulStop", ctrl_c_at_check("detector_train.py", 2)),
            lambda: monkeypatch.setattr(common, "GracefulStop", ctrl_c_at_check("translator_train.py", 2)),
            lambda: InterruptOnce(monkeypatch, register, "view_crops", call=3),               # registration
        ]
        interrupted = []
        for arm in stages:
            arm()
            with pytest.raises(KeyboardInterrupt) as stop:
                run_demo(busy, settings, subject=subject)
            interrupted.append(str(stop.value))
            monkeypatch.setattr(common, "GracefulStop", no_stop)  # disarm the training stops
        run_demo(busy, settings, subject=subject)  # the rerun finishes every stage
    finally:
        hog.kill()
        hog.wait()
    for message, where in zip(interrupted, ("render_cone", "_project_samples", "detector", "style", "view_crops")):
        assert where in message, (where, message)

    a, b = _outputs(quiet), _outputs(busy)
    for key in ("val_mean_px", "val_mean_mm", "epochs", "steps", "model_epoch", "dataset_fingerprint"):
        assert a[0][key] == b[0][key], key
    assert a[1] == b[1]  # the style translator's step
    assert a[3] == b[3]  # the exported detector's weights, bit for bit
    for name in REGISTRATIONS:
        assert a[2][name] == b[2][name], name
