"""Intensifier looks in the detector's training augmentation: distortion moves the labels with the
image, the photometric effects keep shapes and ranges, all seeded; the independent recordings'
effects are different code."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fluororeg.training.augment import AugmentConfig, augment_batch  # noqa: E402
from fluororeg.training.detector_config import DetectorConfig, preset  # noqa: E402

ALL_OFF = {k: 0.0 for k in ("p_curve", "p_contrast", "p_blur", "p_noise", "p_fov", "p_edge_cut", "p_occlusion",
                            "p_flip", "p_heel", "p_scatter", "p_distortion")}


def _dots(n, size, rng):
    """Images [n, 1, size, size] of one Gaussian dot each (sigma 1.2 px) and its position [n, 1, 2]
    in network coordinates."""
    half = (size - 1) / 2
    pos = rng.uniform(-0.7, 0.7, (n, 1, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    px = pos * half + half
    img = np.exp(-((xx[None] - px[:, 0, 0, None, None]) ** 2 + (yy[None] - px[:, 0, 1, None, None]) ** 2) / (2 * 1.2 ** 2))
    return torch.from_numpy(img[:, None].astype(np.float32)), torch.from_numpy(pos.astype(np.float32))


def _centroid_px(img):
    """Intensity centroid (x, y) in pixels of each image [n, 1, H, W] (background removed)."""
    a = img[:, 0].numpy().astype(np.float64)
    a = np.clip(a - 0.05, 0, None)
    yy, xx = np.mgrid[0:a.shape[1], 0:a.shape[2]]
    s = a.sum(axis=(1, 2))
    return np.stack([(a * xx).sum(axis=(1, 2)) / s, (a * yy).sum(axis=(1, 2)) / s], axis=1)


def test_distortion_moves_labels_with_the_image():
    size = 64
    half = (size - 1) / 2
    x, pos = _dots(24, size, np.random.default_rng(0))
    vis = torch.ones(24, 1, dtype=torch.bool)
    cfg = AugmentConfig(**{**ALL_OFF, "p_distortion": 1.0}, distortion_k=(-0.12, 0.15), distortion_twist=(-0.1, 0.1))
    a, la, va = augment_batch(x, pos, vis, cfg, generator=torch.Generator().manual_seed(3))
    assert va.all() and torch.isfinite(la).all()
    moved_px = (la[:, 0].numpy() - pos[:, 0].numpy()) * half
    assert np.sum(np.linalg.norm(moved_px, axis=1) > 1.0) >= 5    # the warp really moves the dots
    err = np.linalg.norm(_centroid_px(a) - (la[:, 0].numpy() * half + half), axis=1)
    assert err.max() < 0.5, err                                   # the label follows the image
    # Without the label update the error would be the displacement: the test can fail.
    assert np.max(np.linalg.norm(_centroid_px(a) - (pos[:, 0].numpy() * half + half), axis=1)) > 1.0


def test_distortion_out_of_the_image_is_not_visible():
    x = torch.zeros(2, 1, 32, 32)
    lm = torch.tensor([[[0.99, 0.99]], [[0.0, 0.0]]])
    vis = torch.ones(2, 1, dtype=torch.bool)
    cfg = AugmentConfig(**{**ALL_OFF, "p_distortion": 1.0}, distortion_k=(-0.3, -0.3), distortion_twist=(0, 0),
                        distortion_jitter=0.0)
    _, la, va = augment_batch(x, lm, vis, cfg, generator=torch.Generator().manual_seed(0))
    assert la[0, 0, 0] > 1.0 and not va[0, 0]    # barrel warp (k < 0) pushes the corner out
    assert torch.allclose(la[1], lm[1]) and va[1, 0]  # the centre stays


@pytest.mark.parametrize("name", ["p_heel", "p_scatter", "p_noise", "p_blur", "p_fov"])
def test_photometric_effects_keep_shapes_ranges_and_labels(name):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 48, 48, generator=g) * 0.5 + 0.25
    lm = torch.rand(8, 4, 2, generator=g) * 2 - 1
    vis = torch.ones(8, 4, dtype=torch.bool)
    cfg = AugmentConfig(**{**ALL_OFF, name: 1.0})
    a, la, va = augment_batch(x, lm, vis, cfg, generator=torch.Generator().manual_seed(1))
    b, _, _ = augment_batch(x, lm, vis, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)                                  # seeded
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, x) and torch.equal(la, lm) and torch.equal(va, vis)


def test_heel_is_a_ramp_scatter_is_low_frequency_and_the_field_can_be_bright():
    x = torch.full((64, 1, 32, 32), 0.5)
    heel, _, _ = augment_batch(x, config=AugmentConfig(**{**ALL_OFF, "p_heel": 1.0}),
                               generator=torch.Generator().manual_seed(0))
    d = heel - x
    assert torch.allclose(d.mean(dim=(2, 3)), torch.zeros(64, 1), atol=1e-4)   # a ramp about the centre
    assert float(d.abs().amax()) > 0.02
    step = torch.zeros(4, 1, 32, 32)
    step[..., 16:] = 0.5
    sc, _, _ = augment_batch(step, config=AugmentConfig(**{**ALL_OFF, "p_scatter": 1.0}),
                             generator=torch.Generator().manual_seed(0))
    glow = sc - step
    assert float(glow.min()) >= 0 and float(glow.mean()) > 0.005              # additive
    assert float(glow[..., 1:].sub(glow[..., :-1]).abs().max()) < 0.05        # smooth: no edge of its own
    fov, _, _ = augment_batch(x, config=AugmentConfig(**{**ALL_OFF, "p_fov": 1.0}, fov_bright_share=1.0,
                                                      fov_radius=(0.3, 0.3), fov_jitter=0.0),
                              generator=torch.Generator().manual_seed(0))
    assert float(fov[:, :, 0, 0].min()) >= 0.9                                 # outside the circle: bright
    assert torch.allclose(fov[:, :, 16, 16], x[:, :, 16, 16])


def test_detector_config_carries_the_options_and_checks_them():
    cfg = DetectorConfig(augment={"p_scatter": 0.5, "scatter_strength": [0.1, 0.2], "p_distortion": 0.1})
    assert cfg.augment.p_scatter == 0.5 and cfg.augment.scatter_strength == (0.1, 0.2)
    assert DetectorConfig.from_json(cfg.to_json()).augment == cfg.augment
    fast = preset("fast").augment
    assert fast.p_distortion == AugmentConfig().p_distortion / 2 and fast.fov_bright_share == AugmentConfig().fov_bright_share
    with pytest.raises(ValueError, match="p_heel"):
        AugmentConfig(p_heel=2.0)
    with pytest.raises(ValueError, match="distortion"):
        AugmentConfig(distortion_k=(-0.5, 0.5))
    with pytest.raises(ValueError, match="fov_bright_share"):
        AugmentConfig(fov_bright_share=1.5)


def test_augmentation_is_not_the_test_recordings_intensifier():
    """The independent recordings' effects must stay different code (issue 13)."""
    from fluororeg.training import augment

    src = inspect.getsource(augment)
    assert "plastimatch" not in src.split('"""', 2)[2]   # nothing imported from the recordings' simulator
