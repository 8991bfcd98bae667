"""Pixel <-> network coordinates and the mirror permutation (NumPy only)."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.inference.coordinates import convert_norm, norm_to_px, px_to_norm


def test_network_coordinates_follow_the_design_convention():
    # n = (p - (N-1)/2) / ((N-1)/2): pixel centres 0 and N-1 are -1 and +1.
    assert px_to_norm([0.0, 31.5, 63.0], 64) == pytest.approx([-1.0, 0.0, 1.0])
    p = np.random.default_rng(0).uniform(-5, 70, (10, 3, 2))
    assert np.allclose(norm_to_px(px_to_norm(p, 64), 64), p)


def test_convert_norm_keeps_the_physical_position():
    # Pixel p of a 128 image is pixel (p + 0.5) / 2 - 0.5 of its 64 downsampling.
    p128 = np.array([0.0, 10.0, 63.5, 127.0])
    n128 = (p128 - 63.5) / 63.5
    n64 = convert_norm(n128, 128, 64)
    assert np.allclose(n64 * 31.5 + 31.5, (p128 + 0.5) / 2 - 0.5)
    assert np.allclose(convert_norm(n64, 64, 128), n128)
