"""Temporal smoothing of pose sequences."""

import numpy as np
import pytest

from fluororeg.core.temporal import smooth_poses


def test_smoothing_removes_noise_keeps_motion_and_gaps():
    fps, F = 100.0, 300
    t = np.arange(F) / fps
    truth = np.stack([20 * np.sin(2 * np.pi * 0.5 * t), 5 * np.cos(2 * np.pi * 0.3 * t), 170 + 15 * np.sin(2 * np.pi * 0.4 * t),
                      10 * t, -3 * np.ones(F), 2 * np.sin(2 * np.pi * 1.0 * t)], axis=1)
    truth[:, 2] = (truth[:, 2] + 180) % 360 - 180  # crosses +-180
    rng = np.random.default_rng(0)
    noisy = truth + rng.normal(0, 1.0, truth.shape)
    noisy[:, 2] = (noisy[:, 2] + 180) % 360 - 180
    noisy[[50, 51, 120]] = np.nan  # frames without a pose
    out = smooth_poses(noisy, smoothing_hz=3.0, fps=fps)
    assert np.all(np.isnan(out[[50, 51, 120]])) and np.isfinite(out[52]).all()
    ok = np.isfinite(out[:, 0])
    diff = out[ok] - truth[ok]
    diff[:, :3] = (diff[:, :3] + 180) % 360 - 180
    inner = slice(20, -20)
    assert np.abs(diff[inner]).mean() < 0.4  # noise of 1.0 (SD) mostly removed
    raw = noisy[ok] - truth[ok]
    raw[:, :3] = (raw[:, :3] + 180) % 360 - 180
    assert np.abs(diff[inner]).mean() < 0.5 * np.abs(raw[inner]).mean()


def test_smoothing_errors():
    with pytest.raises(ValueError, match="smoothing_hz"):
        smooth_poses(np.zeros((50, 6)), smoothing_hz=60, fps=100)
    with pytest.raises(ValueError, match="shape"):
        smooth_poses(np.zeros((50, 5)), smoothing_hz=6, fps=100)
    with pytest.raises(ValueError, match="frames have a pose"):
        smooth_poses(np.full((50, 6), np.nan), smoothing_hz=6, fps=100)


def test_cutoff_hz_is_a_deprecated_name_of_smoothing_hz():
    rng = np.random.default_rng(1)
    poses = rng.normal(0, 1.0, (60, 6))
    with pytest.warns(DeprecationWarning, match="use smoothing_hz"):
        old = smooth_poses(poses, cutoff_hz=5.0, fps=50.0)
    np.testing.assert_array_equal(old, smooth_poses(poses, smoothing_hz=5.0, fps=50.0))
    with pytest.raises(TypeError, match="both smoothing_hz and its deprecated name"):
        smooth_poses(poses, smoothing_hz=5.0, cutoff_hz=5.0, fps=50.0)
