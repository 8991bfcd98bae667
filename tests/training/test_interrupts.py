"""Interrupted training resumes to the result of an uninterrupted run; Ctrl-C never leaves a
partial model exported as final (the commands exit 130)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fluororeg.dataset.generate import DatasetConfig, generate_dataset  # noqa: E402
from fluororeg.training import common  # noqa: E402
from fluororeg.training.augment import AugmentConfig  # noqa: E402
from fluororeg.training.detector_config import DetectorConfig  # noqa: E402
from fluororeg.training.detector_train import train_detector  # noqa: E402

TINY = DatasetConfig(n_train=40, n_test=4, image_size=32, pixel_mm=8.0, shard_size=20, seed=7)


@pytest.fixture(scope="module")
def dataset(subject, tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "ds"
    generate_dataset(subject, root, TINY, progress=False)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stop_after(n_steps: int):
    """A GracefulStop that reports a Ctrl-C after ``n_steps`` training steps."""

    class StopAfter(common.GracefulStop):
        def __enter__(self):
            super().__enter__()
            self._reads = 0
            return self

        @property
        def stop_requested(self):
            self._reads += 1
            return self._reads >= n_steps

        @stop_requested.setter
        def stop_requested(self, value):
            pass

    return StopAfter


def tiny_detector(**kw):
    base = dict(arch="heatmap", width=8, blocks=(1, 1, 1, 1), input_size=32, epochs=3, batch_size=8, lr=3e-3,
                schedule="onecycle", patience=100, val_fraction=0.2, augment=AugmentConfig.light(), num_threads=1)
    return DetectorConfig(**{**base, **kw})


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_detector_interrupted_mid_epoch_resumes_to_the_same_result(dataset, tmp_path, monkeypatch):
    cfg = tiny_detector()
    whole = train_detector(dataset, tmp_path / "whole", cfg, progress=False)
    monkeypatch.setattr(common, "GracefulStop", stop_after(2))  # Ctrl-C in the middle of the first epoch
    part = train_detector(dataset, tmp_path / "part", cfg, progress=False)
    assert part.interrupted and part.epochs_done == 0 and part.steps == 2
    assert not part.best_checkpoint.exists()  # nothing trained: no best model to export
    monkeypatch.undo()
    done = train_detector(dataset, tmp_path / "part", cfg, progress=False)
    assert not done.interrupted and done.epochs_done == whole.epochs_done == 3 and done.steps == whole.steps
    a = common.load_checkpoint(whole.last_checkpoint)
    b = common.load_checkpoint(done.last_checkpoint)
    assert_same_weights(a["model"], b["model"])
    assert [round(h["val_loss"], 9) for h in done.history] == [round(h["val_loss"], 9) for h in whole.history]


def test_style_interrupted_resumes_to_the_same_result(dataset, tmp_path, monkeypatch):
    import numpy as np

    from fluororeg.training.translator_config import TranslatorConfig
    from fluororeg.training.translator_train import train_translator

    cfg = TranslatorConfig(image_size=32, gen_width=4, gen_blocks=1, disc_width=4, disc_layers=2, batch_size=2, lr=1e-3,
                      steps=8, log_every=2, checkpoint_every=4, seed=1)
    crops = np.random.default_rng(0).integers(0, 256, (6, 32, 32)).astype(np.uint8)
    whole = train_translator(crops, dataset, tmp_path / "whole", cfg, progress=False)
    monkeypatch.setattr(common, "GracefulStop", stop_after(3))
    part = train_translator(crops, dataset, tmp_path / "part", cfg, progress=False)
    assert part["stopped"] and 0 < part["step"] < 8
    monkeypatch.undo()
    done = train_translator(crops, dataset, tmp_path / "part", cfg, progress=False)
    assert not done["stopped"] and done["step"] == whole["step"] == 8
    a = common.load_checkpoint(whole["checkpoint"])
    b = common.load_checkpoint(done["checkpoint"])
    for key in ("G_xd", "G_dx", "D_x", "D_d"):
        assert_same_weights(a["nets"][key], b["nets"][key])


def test_commands_exit_130_and_export_nothing_after_ctrl_c(dataset, subject, tmp_path, monkeypatch):
    from fluororeg.cli import main
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    monkeypatch.setattr(common, "GracefulStop", stop_after(1))
    run = tmp_path / "det"
    assert main(["train-detector", str(dataset), "--out", str(run), "--epochs", "1", "--quiet"]) == 130
    assert not (run / "detector.onnx").exists() and (run / "checkpoint_last.pt").exists()
    rec = simulate_recording(subject, tmp_path / "rec", n_frames=1, views=default_dual_views(128, 128, 2.4), seed=1)
    ds128 = generate_dataset(subject, tmp_path / "ds128", DatasetConfig(n_train=4, n_test=0, image_size=128,
                                                                        shard_size=4, seed=1), progress=False)
    style_run = tmp_path / "style"
    assert main(["train-style", "--xray", str(rec), "--drr", str(ds128), "--out", str(style_run), "--steps", "5",
                 "--quiet"]) == 130
    assert not (style_run / "onnx").exists() and (style_run / "checkpoint_last.pt").exists()


def test_a_slow_data_loader_gives_the_same_detector(dataset, tmp_path, monkeypatch):
    """Budgets are work (epochs, steps), not time: a throttled data pipeline (here: every
    augmented batch takes 20 ms longer) trains the same network to the same validation error."""
    import time

    from fluororeg.training import detector_train

    cfg = tiny_detector(epochs=2)
    normal = train_detector(dataset, tmp_path / "normal", cfg, progress=False)
    augment = detector_train.augment_batch

    calls = []

    def slow_augment(*args, **kwargs):
        calls.append(1)
        time.sleep(0.02)
        return augment(*args, **kwargs)

    monkeypatch.setattr(detector_train, "augment_batch", slow_augment)
    slow = train_detector(dataset, tmp_path / "slow", cfg, progress=False)
    assert len(calls) == slow.steps == normal.steps
    assert [h["val_mean_px"] for h in slow.history] == pytest.approx([h["val_mean_px"] for h in normal.history],
                                                                      abs=1e-6)
