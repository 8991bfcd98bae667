"""The onnxruntime style translator (no torch): translation in batches, and the checks of the
model and the images. The models are built with the onnx helper API (tests/inference/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.inference.translator import INPUT_NORMALISATION, StyleTranslator

SIZE = 32


def test_translator_runs_in_batches(onnx_builders, tmp_path):
    path = onnx_builders.inverting_translator(tmp_path / "x2d.onnx", SIZE)
    tr = StyleTranslator(path, device="cpu", num_threads=1, direction="xray_to_drr", batch_size=2)
    assert tr.meta["input_normalisation"] == INPUT_NORMALISATION and tr.input_size == (SIZE, SIZE)
    imgs = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE)).astype(np.uint8)
    out = tr.translate(imgs)
    assert out.shape == imgs.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - (255 - imgs.astype(int))).max() <= 1  # x -> -x is g -> 255 - g
    np.testing.assert_array_equal(tr.translate(imgs[0]), out[0])
    np.testing.assert_array_equal(tr.translate(imgs.astype(np.float32)), out)


def test_translator_rejects_models_and_images_that_do_not_fit(onnx_builders, tmp_path):
    x2d = onnx_builders.inverting_translator(tmp_path / "x2d.onnx", SIZE)
    d2x = onnx_builders.inverting_translator(tmp_path / "d2x.onnx", SIZE, direction="drr_to_xray")
    with pytest.raises(ValueError, match="translates drr_to_xray"):
        StyleTranslator(d2x, device="cpu", num_threads=1, direction="xray_to_drr")
    with pytest.raises(ValueError, match="direction"):
        StyleTranslator(x2d, device="cpu", num_threads=1, direction="sideways")
    tr = StyleTranslator(x2d, device="cpu", num_threads=1)
    with pytest.raises(ValueError, match="64 x 64 px but the model takes 32 x 32"):
        tr.translate(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        tr.translate(np.full((1, SIZE, SIZE), 300.0))
    with pytest.raises(ValueError, match="shape"):
        tr.translate(np.zeros((1, 1, SIZE, SIZE), np.uint8))
    with pytest.raises(FileNotFoundError):
        StyleTranslator(tmp_path / "none.onnx", device="cpu", num_threads=1)
    other = onnx_builders.inverting_translator(tmp_path / "det.onnx", SIZE, kind="landmark_detector")
    with pytest.raises(ValueError, match="expected 'style_generator'"):
        StyleTranslator(other, device="cpu", num_threads=1)
    half = onnx_builders.inverting_translator(tmp_path / "half.onnx", SIZE, halve=True)
    with pytest.raises(ValueError, match="output shape"):
        StyleTranslator(half, device="cpu", num_threads=1)
    bad = onnx_builders.inverting_translator(tmp_path / "norm.onnx", SIZE, normalisation="x / 255")
    with pytest.raises(ValueError, match="normalisation"):
        StyleTranslator(bad, device="cpu", num_threads=1)
