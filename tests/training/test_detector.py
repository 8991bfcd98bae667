"""The landmark detector: networks, augmentation, short real trainings on CPU (the loss falls),
resume, ONNX export (torch and onnxruntime agree) and evaluation. Inference alone:
tests/inference/test_landmark_detector.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fluororeg.dataset.generate import DatasetConfig, DatasetReader, generate_dataset  # noqa: E402
from fluororeg.inference.detector import LandmarkDetector, resample_square  # noqa: E402
from fluororeg.training.augment import AugmentConfig, augment_batch  # noqa: E402
from fluororeg.training.detector_checkpoint import load_detector_checkpoint  # noqa: E402
from fluororeg.training.detector_config import DetectorConfig, preset  # noqa: E402
from fluororeg.training.detector_eval import evaluate_detector, metrics  # noqa: E402
from fluororeg.training.detector_export import export_detector  # noqa: E402
from fluororeg.training.detector_loss import masked_loss  # noqa: E402
from fluororeg.training.detector_network import build_model, count_parameters  # noqa: E402
from fluororeg.training.detector_train import train_detector  # noqa: E402

TINY = DatasetConfig(n_train=96, n_test=16, image_size=64, pixel_mm=4.0, shard_size=48, seed=5,
                     segmented_share=0.3)


def tiny_config(**kw) -> DetectorConfig:
    base = dict(arch="resnet", width=8, blocks=(1, 1, 1, 1), input_size=64, epochs=6, batch_size=16, lr=3e-3,
                patience=100, val_fraction=0.15, augment=AugmentConfig.off(), num_threads=2)
    base.update(kw)
    return DetectorConfig(**base)


@pytest.fixture(scope="module")
def tiny_dataset(subject, tmp_path_factory):
    root = tmp_path_factory.mktemp("detds") / "ds"
    generate_dataset(subject, root, TINY, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """One short training per architecture (shared by the export and inference tests)."""
    runs = {}
    for arch in ("resnet", "heatmap"):
        run = tmp_path_factory.mktemp(f"run_{arch}")
        cfg = tiny_config(arch=arch, epochs=6 if arch == "resnet" else 8, heatmap_stride=4,
                          lr=3e-3 if arch == "resnet" else 2e-3)
        runs[arch] = (run, cfg, train_detector(tiny_dataset, run, cfg, progress=False))
    return runs


# ----------------------------------------------------------------------------- networks
def test_paper_network_has_about_11_million_parameters_and_66_outputs():
    model = build_model(preset("paper"), 33)
    n = count_parameters(model)
    assert 10.5e6 < n < 11.8e6, n
    lm, conf = model.eval()(torch.zeros(2, 1, 128, 128))
    assert lm.shape == (2, 33, 2) and conf.shape == (2, 33)


@pytest.mark.parametrize("stride", [2, 4])
def test_heatmap_network_soft_argmax_and_confidence(stride):
    cfg = DetectorConfig(arch="heatmap", width=8, input_size=32, heatmap_stride=stride)
    model = build_model(cfg, 3).eval()
    lm, conf = model(torch.randn(4, 1, 32, 32))
    assert lm.shape == (4, 3, 2) and conf.shape == (4, 3)
    assert torch.all(lm.abs() <= 1.0) and torch.all((conf >= 0) & (conf <= 1))
    # Its grid: cell centres in network coordinates of the input, symmetric about 0.
    g = model.grid.numpy()
    assert len(g) == 32 // stride and np.allclose(g, -g[::-1])
    assert np.isclose(g[0], ((stride - 1) / 2 - 15.5) / 15.5)


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="arch"):
        DetectorConfig(arch="vgg")
    with pytest.raises(ValueError, match="input_size"):
        DetectorConfig(input_size=100)
    for minutes in (-5.0, float("nan")):
        with pytest.raises(ValueError, match="time_limit_minutes"):
            DetectorConfig(time_limit_minutes=minutes)
    # Whole numbers (60.0 from a manifest too); inf was int()'s OverflowError (a study manifest's
    # epochs = inf, met by a randomised fuzz run).
    for bad in (float("inf"), float("nan"), 2.5, 0, True, "8"):
        with pytest.raises(ValueError, match=r"epochs=.*: expected an integer >= 1"):
            DetectorConfig(epochs=bad)
    assert type(DetectorConfig(epochs=60.0).epochs) is int and DetectorConfig(epochs=60.0).epochs == 60
    with pytest.raises(ValueError, match="preset"):
        preset("slow")
    cfg = preset("fast", epochs=3)
    assert cfg.epochs == 3 and cfg.input_size == 64
    assert DetectorConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DetectorConfig.from_json({"arch": "resnet", "colour": 1})


def test_numpy_resampling_matches_area_averaging():
    rng = np.random.default_rng(0)
    img = rng.random((2, 96, 96)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(img)[:, None], size=(32, 32), mode="area")[:, 0].numpy()
    assert np.allclose(resample_square(img, 32), ref, atol=1e-5)
    odd = resample_square(img, 40)  # non-integer factor: still averages (constant stays constant)
    assert odd.shape == (2, 40, 40)
    assert np.allclose(resample_square(np.full((1, 50, 50), 7.0, np.float32), 32), 7.0)


# ----------------------------------------------------------------------------- augmentation
def test_augmentation_ranges_reproducibility_and_off():
    x = torch.rand(16, 1, 32, 32)
    lm = torch.rand(16, 3, 2) * 2 - 1
    vis = torch.ones(16, 3, dtype=torch.bool)
    cfg = AugmentConfig(p_curve=1, p_contrast=1, p_blur=1, p_noise=1, p_fov=1, p_edge_cut=1, p_occlusion=1,
                        p_heel=1, p_scatter=1, p_distortion=0)
    a, la, va = augment_batch(x, lm, vis, cfg, generator=torch.Generator().manual_seed(1))
    b, _, _ = augment_batch(x, lm, vis, cfg, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and not torch.allclose(a, x)
    assert torch.equal(la, lm) and torch.equal(va, vis)  # photometric ops keep targets
    same, _, _ = augment_batch(x, lm, vis, AugmentConfig.off())
    assert torch.equal(same, x)
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(p_blur=1.5)
    with pytest.raises(ValueError, match="range"):
        AugmentConfig(gamma=(2.0, 1.0))


def test_flip_mirrors_the_image_and_swaps_pairs():
    x = torch.rand(4, 1, 8, 8)
    lm = torch.tensor([[[-0.5, 0.1], [0.5, 0.2], [0.0, 0.3]]]).repeat(4, 1, 1)
    vis = torch.tensor([[True, False, True]]).repeat(4, 1)
    cfg = AugmentConfig(enabled=True, **{k: 0.0 for k in ("p_curve", "p_contrast", "p_blur", "p_noise", "p_fov",
                                                          "p_edge_cut", "p_occlusion", "p_heel", "p_scatter",
                                                          "p_distortion")}, p_flip=1.0)
    a, la, va = augment_batch(x, lm, vis, cfg, perm=np.array([1, 0, 2]))
    assert torch.allclose(a, torch.flip(x, dims=[3]))
    assert torch.allclose(la[0], torch.tensor([[-0.5, 0.2], [0.5, 0.1], [0.0, 0.3]]))
    assert va[0].tolist() == [False, True, True]
    with pytest.raises(ValueError, match="perm"):
        augment_batch(x, lm, vis, cfg)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", ["resnet", "heatmap"])
def test_short_training_lowers_the_loss_and_writes_log_plot_checkpoints(trained, arch):
    run, cfg, res = trained[arch]
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == cfg.epochs
    assert min(losses[-2:]) < 0.7 * losses[0], losses
    assert res.best_checkpoint.is_file() and res.last_checkpoint.is_file()
    assert res.log_path.is_file() and res.plot_path.is_file()
    rows = res.log_path.read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step,train_seconds") and len(rows) == cfg.epochs + 1


def test_mirror_loss_is_the_smaller_of_both_labellings():
    pred = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5]]])
    target = torch.tensor([[[-1.0, 0.0], [1.0, 0.0], [0.0, 0.5]]])
    vis = torch.ones(1, 3, dtype=torch.bool)
    plain = masked_loss(pred, target, vis)
    mirror = masked_loss(pred, target, vis, torch.tensor([1, 0, 2]))
    assert float(plain) == pytest.approx(8 / 6) and float(mirror) == 0.0
    # Invisible landmarks do not count.
    vis2 = torch.tensor([[False, False, True]])
    assert float(masked_loss(pred, target, vis2)) == 0.0


def test_training_resumes_from_its_last_checkpoint(subject, tiny_dataset, tmp_path):
    cfg = tiny_config(epochs=3)

    class Stop(Exception):
        pass

    def stop_after_two(row, model):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train_detector(tiny_dataset, tmp_path, cfg, progress=False, on_epoch_end=stop_after_two)
    state = load_detector_checkpoint(tmp_path, "last")[2]
    assert state["epoch"] == 2
    res = train_detector(tiny_dataset, tmp_path, cfg, progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.epochs_done == 3
    assert len(res.log_path.read_text().strip().splitlines()) == 4
    # A finished run resumes to nothing; another configuration in the folder is refused.
    again = train_detector(tiny_dataset, tmp_path, cfg, progress=False)
    assert again.epochs_done == 3 and len(again.history) == 3
    with pytest.raises(ValueError, match="another configuration"):
        train_detector(tiny_dataset, tmp_path, tiny_config(epochs=4), progress=False)
    # So is a dataset of another configuration (here one sample, another seed), and a dataset
    # too small to leave a training sample after validation fails clearly in a new run.
    one = generate_dataset(subject, tmp_path / "one", dataclasses.replace(TINY, n_train=1, n_test=0, seed=6),
                           progress=False)
    with pytest.raises(ValueError, match="dataset of another configuration"):
        train_detector(one, tmp_path, cfg, progress=False)
    with pytest.raises(ValueError, match="holds 1 sample\\(s\\), all taken for validation"):
        train_detector(one, tmp_path / "new", cfg, progress=False)


def test_graceful_stop_saves_and_resume_continues(tiny_dataset, tmp_path, monkeypatch):
    from fluororeg.training import common

    class StopNow(common.GracefulStop):
        def __enter__(self):
            super().__enter__()
            self.stop_requested = True  # as if Ctrl-C came during the first step
            return self

    monkeypatch.setattr(common, "GracefulStop", StopNow)
    cfg = tiny_config(epochs=2)
    res = train_detector(tiny_dataset, tmp_path, cfg, progress=False)
    assert res.interrupted and res.epochs_done == 0 and res.last_checkpoint.is_file()
    monkeypatch.undo()
    res = train_detector(tiny_dataset, tmp_path, cfg, progress=False)
    assert not res.interrupted and res.epochs_done == 2


# ----------------------------------------------------------------------------- export / inference
@pytest.mark.parametrize("arch", ["resnet", "heatmap"])
def test_onnx_export_matches_torch_and_carries_metadata(trained, tiny_dataset, tmp_path, arch):
    run, cfg, _ = trained[arch]
    path = export_detector(run, tmp_path / f"{arch}.onnx")
    det = LandmarkDetector(path, device="cpu")
    meta = det.model.meta
    reader = DatasetReader(tiny_dataset, "test")
    assert meta["fluororeg_kind"] == "landmark_detector" and meta["input_size"] == "64,64"
    assert meta["landmark_names"] == reader.landmark_names
    assert meta["subject_fingerprint"] == reader.meta["subject_fingerprint"]
    assert "127.5" in meta["input_normalisation"] and "landmarks" in meta["output"]
    model = load_detector_checkpoint(run)[0]
    images = np.stack([reader[i]["image"] for i in range(8)])
    x = torch.from_numpy(images).float()[:, None] / 127.5 - 1.0
    with torch.no_grad():
        lm_t, conf_t = model(x)
    out = det.model.run(x.numpy())
    assert np.max(np.abs(out["landmarks"] - lm_t.numpy())) < 1e-4
    assert np.max(np.abs(out["confidence"] - conf_t.numpy())) < 1e-4
    # detect(): pixels of the given image (same size as the network here).
    xy, conf = det.detect(images)
    assert xy.shape == (8, len(meta["landmark_names"]), 2) and conf.shape == xy.shape[:2]
    assert np.allclose(xy, lm_t.numpy() * 31.5 + 31.5, atol=1e-3)
    xy1, conf1 = det.detect(images[0])
    assert xy1.shape == xy.shape[1:] and np.allclose(xy1, xy[0], atol=1e-4)


def test_evaluation_with_torch_and_onnx_agree(trained, tiny_dataset, tmp_path):
    run, _, _ = trained["resnet"]
    m_torch = evaluate_detector(run, tiny_dataset, "test")
    m_onnx = evaluate_detector(export_detector(run, tmp_path / "r.onnx"), tiny_dataset, "test")
    for key in ("log10_mse", "log10_mse_all", "mean_px", "median_px", "mean_px_mirror", "mirrored_share"):
        assert key in m_torch
    assert m_torch["n_images"] == TINY.n_test
    assert m_onnx["mean_px"] == pytest.approx(m_torch["mean_px"], abs=0.02)
    assert m_onnx["log10_mse"] == pytest.approx(m_torch["log10_mse"], abs=0.01)
    assert m_torch["mean_px_mirror"] <= m_torch["mean_px"] + 1e-9


def test_metrics_of_a_perfect_and_a_mirrored_prediction():
    t = np.array([[[-0.5, 0.0], [0.5, 0.0], [0.0, 0.5]]])
    vis = np.ones((1, 3), bool)
    perm = np.array([1, 0, 2])
    m = metrics(t.copy(), np.ones((1, 3)), t, vis, perm, 65)
    assert m["mean_px"] == 0 and m["log10_mse"] < -20
    m = metrics(t[:, perm], np.ones((1, 3)), t, vis, perm, 65)
    assert m["mean_px"] == pytest.approx(2 / 3 * 32) and m["mean_px_mirror"] == 0 and m["mirrored_share"] == 1


def test_export_records_the_training_figures_and_a_time_cap_cut(trained, tiny_dataset, tmp_path):
    run, cfg, res = trained["resnet"]
    det = LandmarkDetector(export_detector(run, tmp_path / "r.onnx"))
    t = det.training
    assert t["epochs"] == t["epochs_planned"] == cfg.epochs and t["steps"] == res.steps > 0
    assert t["model_epoch"] == res.best_epoch and t["cut_short"] is False
    assert t["val_mean_px"] == pytest.approx(res.history[res.best_epoch - 1]["val_mean_px"], abs=1e-3)
    assert t["val_mean_mm"] == pytest.approx(t["val_mean_px"] * TINY.pixel_mm, abs=1e-2)
    assert len(t["dataset_fingerprint"]) == 16
    assert det.undertrained(max_val_px=1e6) is None and "validation error" in det.undertrained(max_val_px=0.0)
    # A wall-clock cap that ends the run early says so, and the export records it.
    capped = tiny_config(epochs=50, time_limit_minutes=1e-4)
    with pytest.warns(UserWarning, match="CUT SHORT"):
        cut = train_detector(tiny_dataset, tmp_path / "cut", capped, progress=False)
    assert cut.cut_short and cut.epochs_done < 50
    det = LandmarkDetector(export_detector(tmp_path / "cut", tmp_path / "cut.onnx"))
    assert det.training["cut_short"] is True and "cut short" in det.undertrained(max_val_px=1e6)
