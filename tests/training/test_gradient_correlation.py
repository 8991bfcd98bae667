"""Gradient correlation (Sobel, valid interior): NumPy reference and the torch loss version."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.training.gradient_correlation import gradient_correlation, sobel_gradients


def structure(n=128, seed=0):
    """A smooth image with blobs and edges (like a radiograph), float64 in about [0, 255]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    img = 100 * ((xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.1)
    img = img + 60 * ((xx - 0.3) ** 2 + (yy - 0.6) ** 2 < 0.02) + 40 * (xx > 0.7)
    img = img + gaussian_filter(rng.normal(0, 30, (n, n)), 3)
    return gaussian_filter(img, 1.0)


def test_identical_negated_and_affine_intensity():
    a = structure()
    assert gradient_correlation(a, a) == pytest.approx(1.0, abs=1e-12)
    assert gradient_correlation(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert gradient_correlation(a, 255 - a) == pytest.approx(-1.0, abs=1e-12)
    for s, c in ((0.3, 40.0), (2.5, -100.0), (1.0, 1e4)):
        assert gradient_correlation(a, s * a + c) == pytest.approx(1.0, abs=1e-10)
    # integer input works the same as float
    u8 = np.clip(a, 0, 255).astype(np.uint8)
    assert gradient_correlation(u8, u8) == pytest.approx(1.0)


def test_unrelated_noise_is_about_zero():
    rng = np.random.default_rng(1)
    values = [gradient_correlation(rng.normal(size=(128, 128)), rng.normal(size=(128, 128))) for _ in range(5)]
    assert max(abs(v) for v in values) < 0.05
    # structure vs noise too
    assert abs(gradient_correlation(structure(), rng.normal(size=(128, 128)))) < 0.05


def test_shifted_structure_correlates_less():
    a = structure()
    g = [gradient_correlation(a, np.roll(a, s, axis=1)) for s in (0, 1, 3, 8)]
    assert g[0] == pytest.approx(1.0)
    assert g[0] > g[1] > g[2] > g[3]
    # mild noise lowers it a little, not to zero
    noisy = a + np.random.default_rng(2).normal(0, 3, a.shape)
    assert 0.5 < gradient_correlation(a, noisy) < 0.999


def test_sobel_direction_and_interior():
    ramp = np.tile(np.arange(10.0), (6, 1))  # increases along x (columns)
    gx, gy = sobel_gradients(ramp)
    assert gx.shape == (4, 8)
    np.testing.assert_allclose(gx, 8.0)
    np.testing.assert_allclose(gy, 0.0)
    # one direction only: GC with itself is 1/2 (the flat y direction contributes 0)
    stripes = np.tile(np.sin(np.arange(32) / 3.0), (32, 1))
    assert gradient_correlation(stripes, stripes) == pytest.approx(0.5)


def test_mask_restricts_the_pixels():
    a = structure()
    b = a.copy()
    b[:, 64:] = np.random.default_rng(3).normal(0, 50, (128, 64))
    mask = np.zeros(a.shape, bool)
    mask[:, :62] = True
    assert gradient_correlation(a, b, mask) == pytest.approx(1.0)
    assert gradient_correlation(a, b) < 0.9
    with pytest.raises(ValueError, match="mask shape"):
        gradient_correlation(a, b, mask[:10])
    with pytest.raises(ValueError, match="mask keeps 0"):
        gradient_correlation(a, b, np.zeros_like(mask))


def test_constant_images_give_zero_without_nan():
    a = structure()
    flat = np.full((128, 128), 7.0)
    with np.errstate(all="raise"):
        assert gradient_correlation(flat, flat) == 0.0
        assert gradient_correlation(a, flat) == 0.0
        assert gradient_correlation(flat, a) == 0.0


def test_bad_input():
    a = structure(32)
    with pytest.raises(ValueError, match="shapes differ"):
        gradient_correlation(a, a[:31])
    with pytest.raises(ValueError, match="2D"):
        gradient_correlation(a[None], a[None])
    with pytest.raises(ValueError, match="3 x 3"):
        gradient_correlation(a[:2], a[:2])
    bad = a.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gradient_correlation(a, bad)
    with pytest.raises(TypeError, match="numeric"):
        gradient_correlation(a > 0, a > 0)


def test_torch_matches_numpy_and_is_differentiable():
    torch = pytest.importorskip("torch")
    from fluororeg.training.gradient_correlation import gradient_correlation_torch

    rng = np.random.default_rng(4)
    a = np.stack([structure(64, s) / 127.5 - 1 for s in range(3)])
    b = np.stack([a[0], -a[1], rng.normal(size=(64, 64))])
    b[0] = np.roll(b[0], 2, axis=0)
    ref = [gradient_correlation(x, y) for x, y in zip(a, b)]
    ta = torch.tensor(a, dtype=torch.float64)[:, None]
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    got = gradient_correlation_torch(ta, tb[:, None])
    assert got.shape == (3,)
    np.testing.assert_allclose(got.detach().numpy(), ref, atol=1e-7)
    # float32 [n, H, W] and [H, W] forms
    got32 = gradient_correlation_torch(ta[:, 0].float(), torch.tensor(b, dtype=torch.float32))
    np.testing.assert_allclose(got32.numpy(), ref, atol=1e-5)
    assert gradient_correlation_torch(ta[0, 0], ta[0, 0]).ndim == 0
    # mask form agrees with the reference
    mask = np.zeros((64, 64), bool)
    mask[10:50, 5:40] = True
    np.testing.assert_allclose(gradient_correlation_torch(ta, tb[:, None].detach(), mask=torch.tensor(mask)).numpy(),
                               [gradient_correlation(x, y, mask) for x, y in zip(a, b)], atol=1e-7)
    # gradients flow and match finite differences of the reference
    got.sum().backward()
    g = tb.grad.numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    i, j = 20, 30
    h = 1e-5
    bp, bm = b[0].copy(), b[0].copy()
    bp[i, j] += h
    bm[i, j] -= h
    fd = (gradient_correlation(a[0], bp) - gradient_correlation(a[0], bm)) / (2 * h)
    assert g[0, i, j] == pytest.approx(fd, rel=1e-4, abs=1e-8)
    # ascending the gradient raises the correlation of the noise image with its target
    x = torch.tensor(rng.normal(size=(1, 1, 64, 64)), requires_grad=True)
    target = torch.tensor(a[:1, None])
    before = gradient_correlation_torch(target, x).item()
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        (-gradient_correlation_torch(target, x).sum()).backward()
        opt.step()
    assert gradient_correlation_torch(target, x).item() > before + 0.3


def test_torch_flat_and_bad_input():
    torch = pytest.importorskip("torch")
    from fluororeg.training.gradient_correlation import gradient_correlation_torch

    flat = torch.full((2, 1, 16, 16), 0.3, requires_grad=True)
    other = torch.randn(2, 1, 16, 16)
    gc = gradient_correlation_torch(flat, other)
    assert torch.all(gc == 0)
    gc.sum().backward()
    assert torch.all(torch.isfinite(flat.grad))
    with pytest.raises(ValueError, match="shapes differ"):
        gradient_correlation_torch(flat, other[:1])
    with pytest.raises(ValueError, match="expected"):
        gradient_correlation_torch(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError):
        gradient_correlation_torch(np.zeros((8, 8)), np.zeros((8, 8)))
