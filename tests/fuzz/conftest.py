"""Fuzz suite fixtures: the seed files (written by seeds.py in a subprocess), the seeded
Hypothesis settings and the session summary of outcomes (harness.py; see README.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import harness

HERE = Path(__file__).resolve().parent
from harness import EXAMPLES, FUZZ, fuzz_settings  # noqa: F401,E402 (re-exported)

#: Modules imported once in the parent, so each forked child starts with them loaded (pure
#: imports; the parent still runs no native computation before it forks).
PRELOAD = ["fluororeg.io.volume_formats", "fluororeg.io.recording", "fluororeg.io.poses", "fluororeg.io.autoscoper",
           "fluororeg.io.xmalab", "fluororeg.subject.subject", "fluororeg.calibration.formats",
           "fluororeg.calibration.geometry_file", "fluororeg.inference.onnx_model", "fluororeg.study.manifest",
           "fluororeg.core.render", "fluororeg.core.registration", "fluororeg.core.refine", "fluororeg.cli",
           "fluororeg.cli.register_commands", "fluororeg.cli.training_commands", "fluororeg.cli.dataset_commands",
           "fluororeg.cli.subject_commands", "fluororeg.cli.study_commands", "fluororeg.pipeline.register",
           "fluororeg.dataset.generate", "fluororeg.training.detector_train", "fluororeg.training.translator_train",
           "torch",
           "onnxruntime", "pydicom", "nibabel", "nrrd", "tifffile", "PIL.Image", "PIL.PngImagePlugin",
           "PIL.TiffImagePlugin", "av"]


@pytest.fixture(scope="session", autouse=True)
def preload():
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


@pytest.fixture(scope="session")
def seeds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "seeds"
    env = dict(os.environ)
    subprocess.run([sys.executable, str(HERE / "seeds.py"), str(out)], check=True, env=env, timeout=300)
    return out


class Scratch:
    """A fresh copy of a seed folder per example, with one file replaced by mutated bytes."""

    def __init__(self, root: Path):
        self.root = root
        self.n = 0

    def with_file(self, seed_dir: Path, rel: str, data: bytes) -> Path:
        self.n += 1
        d = self.root / f"x{self.n % 4}"
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(seed_dir, d)
        (d / rel).write_bytes(data)
        return d


@pytest.fixture
def scratch(tmp_path) -> Scratch:
    return Scratch(tmp_path)


def pytest_terminal_summary(terminalreporter):
    s = harness.summary()
    if not s["inputs"]:
        return
    path = Path(os.environ.get("FLUORO_FUZZ_SUMMARY", Path(tempfile.gettempdir()) / "fluororeg_fuzz_summary.json"))
    harness.write_summary(path)
    t = s["total"]
    tr = terminalreporter
    tr.write_sep("-", "fuzz summary")
    tr.write_line(f"{s['inputs']} inputs: {t['valid']} valid results, {t['clean']} clean errors, "
                  f"{t['failure']} failures (per target: {path})")
    for target, c in s["targets"].items():
        tr.write_line(f"  {target:<28} valid {c.get('valid', 0):>4}  clean {c.get('clean', 0):>4}  "
                      f"failure {c.get('failure', 0):>4}")
