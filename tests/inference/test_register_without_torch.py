"""``fluororeg register`` runs on inference alone: ONNX models (built with the onnx helper API),
the compiled core and onnxruntime, and never imports torch (checked in a fresh interpreter)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import fluororeg

SCRIPT = """
import sys
from fluororeg.cli import main
rc = main(sys.argv[1:])
assert 'torch' not in sys.modules, 'the register command imported torch'
sys.exit(rc)
"""


def test_register_command_needs_no_torch(subject, onnx_builders, tmp_path):
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording
    from fluororeg.subject.subject import save_subject

    rec = simulate_recording(subject, tmp_path / "rec", n_frames=3, views=default_dual_views(128, 128, 2.4), seed=3)
    subject_dir = save_subject(subject, tmp_path / "subject")
    det = onnx_builders.spot_detector(tmp_path / "det.onnx", 32, list(subject.landmark_names), pairs=subject.pairs,
                                      fingerprint=subject.fingerprint)
    tr = onnx_builders.inverting_translator(tmp_path / "x2d.onnx", 32)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(fluororeg.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "reg"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "register", str(rec), "--subject", str(subject_dir),
                           "--detector", str(det), "--translator", str(tr), "--device", "cpu", "--min-visible", "4",
                           "--out", str(out), "--quiet", "--allow-undertrained"],  # a hand-built net: no figures
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered" in proc.stdout and "frame pairs" in proc.stdout
    with (out / "poses.csv").open() as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    assert len(rows) == 1 + 3  # header and one row per frame
    assert (out / "poses.tra").exists() and (out / "detections" / "settings.json").exists()
