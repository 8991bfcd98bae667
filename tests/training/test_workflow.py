"""The train-everything workflow: each stage interrupted once and rerun ends where an
uninterrupted run ends; a partial stage is never exported as finished."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from interrupts import ctrl_c_at_check  # noqa: E402 (tests/interrupts.py)

from fluororeg.dataset.generate import DatasetConfig  # noqa: E402
from fluororeg.training import common  # noqa: E402
from fluororeg.training.detector_config import DetectorConfig  # noqa: E402
from fluororeg.training.translator_config import TranslatorConfig  # noqa: E402
from fluororeg.training.workflow import WorkflowPaths, WorkflowSettings, train_models  # noqa: E402


def test_interrupted_stages_resume_to_the_uninterrupted_result(subject, tmp_path, monkeypatch):
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    rec = simulate_recording(subject, tmp_path / "rec", n_frames=2, views=default_dual_views(128, 128, 2.4), seed=2)
    truth = np.load(rec / "truth.npz")["poses"]
    settings = WorkflowSettings(
        dataset=DatasetConfig(n_train=40, n_test=2, image_size=32, pixel_mm=8.0, shard_size=20, seed=3),
        detector=DetectorConfig(arch="heatmap", width=8, blocks=(1, 1, 1, 1), input_size=32, epochs=2, batch_size=8,
                                val_fraction=0.2, seed=3),
        style=TranslatorConfig(image_size=32, gen_width=4, gen_blocks=1, disc_width=4, disc_layers=2, batch_size=2,
                          steps=4, log_every=2, checkpoint_every=2, snapshot_every=2, seed=3),
        num_threads=1, device="cpu", select_max_frames=2)

    def run(out):
        return train_models(subject, WorkflowPaths.under(out), settings, xray_recordings=[rec],
                            validation_recording=rec, reference_poses=truth, progress=False, say=lambda msg: None)

    whole = run(tmp_path / "whole")
    paths = WorkflowPaths.under(tmp_path / "part")
    monkeypatch.setattr(common, "GracefulStop", ctrl_c_at_check("detector_train.py", 2))
    with pytest.raises(KeyboardInterrupt, match="detector"):
        run(tmp_path / "part")
    assert not paths.detector_onnx.exists()
    monkeypatch.setattr(common, "GracefulStop", ctrl_c_at_check("translator_train.py", 2))
    with pytest.raises(KeyboardInterrupt, match="style"):
        run(tmp_path / "part")
    assert paths.detector_onnx.exists() and not paths.translator_onnx.exists()
    monkeypatch.undo()
    part = run(tmp_path / "part")
    a, b = whole.detector.training, part.detector.training
    for key in ("epochs", "steps", "model_epoch", "dataset_fingerprint"):
        assert a[key] == b[key], key
    assert b["val_mean_px"] == pytest.approx(a["val_mean_px"], abs=1e-3)
    chosen = [json.loads((p.style_dir / "selection.json").read_text())["best"] for p in (whole.paths, paths)]
    assert chosen[0]["step"] == chosen[1]["step"]
    assert chosen[1]["score"] == pytest.approx(chosen[0]["score"], abs=1e-3)
