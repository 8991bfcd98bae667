"""The onnxruntime landmark detector (no torch): coordinates in the pixels of the given images,
resampling of other sizes, and the checks of the model and the subject. The models are built
with the onnx helper API (tests/inference/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fluororeg.inference.detector import LandmarkDetector, resample_square


def spot(shape, x, y, sigma=1.2, peak=255.0):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def test_numpy_resampling_is_area_averaging_for_any_factor():
    rng = np.random.default_rng(0)
    img = rng.random((2, 96, 96)).astype(np.float32)
    # 96 -> 40: the exact area average of the image seen at 480 px (5 x 5 copies per pixel), 12 x 12 per output pixel
    fine = np.repeat(np.repeat(img, 5, axis=1), 5, axis=2)
    ref = fine.reshape(2, 40, 12, 40, 12).mean(axis=(2, 4))
    assert np.allclose(resample_square(img, 40), ref, atol=1e-5)
    assert np.allclose(resample_square(img, 32), img.reshape(2, 32, 3, 32, 3).mean(axis=(2, 4)), atol=1e-6)
    assert np.allclose(resample_square(np.full((1, 50, 50), 7.0, np.float32), 32), 7.0)


def test_a_bright_spot_is_found_where_it_is(onnx_builders, tmp_path):
    names = ["a", "b", "c"]
    det = LandmarkDetector(onnx_builders.spot_detector(tmp_path / "d.onnx", 32, names), device="cpu", num_threads=1)
    assert det.input_size == (32, 32) and det.landmark_names == names
    xy, conf = det.detect(spot((32, 32), 20.0, 9.0).astype(np.uint8))
    assert xy.shape == (3, 2) and conf.shape == (3,)
    assert np.allclose(xy, [20.0, 9.0], atol=0.3) and np.all((conf > 0) & (conf <= 1))
    # Another size of the same extent, and a non-square image (padded to a square, centred).
    xy2, _ = det.detect(spot((64, 64), 40.5, 18.5).astype(np.uint8))
    assert np.allclose(xy2, [40.5, 18.5], atol=0.6)
    xy3, _ = det.detect(spot((32, 48), 30.0, 12.0).astype(np.uint8))
    assert np.allclose(xy3, [30.0, 12.0], atol=0.6)


def test_detect_resizes_other_image_sizes_consistently(onnx_builders, tmp_path):
    det = LandmarkDetector(onnx_builders.spot_detector(tmp_path / "h.onnx", 64, ["a", "b"], sharpness=8.0))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    xy, _ = det.detect(img)
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)  # the same image at 128 x 128
    xy2, _ = det.detect(big)
    assert np.allclose(xy2, (xy + 0.5) * 2 - 0.5, atol=1e-3)
    # A non-square image is padded (centred) to a square.
    wide = np.zeros((64, 96), np.uint8)
    wide[:, 16:80] = img
    xy3, _ = det.detect(wide)
    assert xy3.shape == xy.shape and np.all(np.isfinite(xy3))
    with pytest.raises(ValueError, match="shape"):
        det.detect(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        det.detect(np.zeros((8, 8), bool).astype(object))


def test_detector_checks_the_subject_and_the_model(onnx_builders, subject, tmp_path):
    names = list(subject.landmark_names)
    path = onnx_builders.spot_detector(tmp_path / "r.onnx", 32, names, pairs=subject.pairs,
                                       fingerprint=subject.fingerprint)
    assert LandmarkDetector(path, subject=subject).crop_pixel_mm is None  # the subject it was made for; an older export
    with_crop = onnx_builders.spot_detector(tmp_path / "c.onnx", 32, names, crop_pixel_mm=1.25)
    assert LandmarkDetector(with_crop).crop_pixel_mm == 1.25  # the training dataset's pixel size at the bone
    other_names = SimpleNamespace(name="x", landmark_names=["a"] * len(names), fingerprint=subject.fingerprint)
    with pytest.raises(ValueError, match="trained for landmarks"):
        LandmarkDetector(path, subject=other_names)
    other_fp = SimpleNamespace(name="x", landmark_names=names, fingerprint="0" * 16)
    with pytest.raises(ValueError, match="fingerprint"):
        LandmarkDetector(path, subject=other_fp)
    # A model of another kind, or one whose outputs do not fit its landmark list.
    bad = onnx_builders.spot_detector(tmp_path / "g.onnx", 32, names, kind="style_generator")
    with pytest.raises(ValueError, match="expected 'landmark_detector'"):
        LandmarkDetector(bad)
    wrong = onnx_builders.spot_detector(tmp_path / "w.onnx", 32, names, n_outputs=len(names) + 1)
    with pytest.raises(ValueError, match="output 'landmarks'"):
        LandmarkDetector(wrong)
    with pytest.raises(FileNotFoundError):
        LandmarkDetector(tmp_path / "none.onnx")
