"""Bead detection inside the shadow of an acrylic calibration block: a darker rectangle whose
noise, relative to its brightness, is several times that of the open field. A global
threshold reports noise peaks there; the local normalisation must not."""

from __future__ import annotations

import numpy as np

from fluororeg.calibration.beads import detect_beads
from fluororeg.calibration.synthetic import _draw_beads


def _block_image(seed: int = 0, block_level: float = 0.18, noise: float = 2.0):
    rng = np.random.default_rng(seed)
    H = W = 400
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = 200.0 * (1 - 0.3 * (yy / H - 0.5))
    block = (xx >= 100) & (xx < 300) & (yy >= 90) & (yy < 310)
    img[block] *= block_level                              # the acrylic cube's shadow
    inside = np.array([[140.3, 131.7], [200.6, 128.2], [259.1, 135.4], [150.8, 200.2], [250.2, 199.7],
                       [140.1, 270.5], [201.4, 266.8], [258.7, 271.9]])
    outside = np.array([[40.2, 40.7], [360.5, 45.1], [45.6, 355.3], [355.4, 360.2]])
    centres = np.concatenate([inside, outside])
    _draw_beads(img, centres, 5.0, 0.5)
    img += rng.normal(0, noise, img.shape)                 # detector noise: the same in grey levels
    return img, centres


def _matched(found, truth, tol=1.5):
    d = np.linalg.norm(found[:, None, :] - truth[None, :, :], axis=2)
    return d.min(axis=1) < tol, d.min(axis=0) < tol


def test_no_noise_peaks_inside_a_dark_block():
    for seed in range(3):
        img, truth = _block_image(seed)
        det = detect_beads(img, radius_px=5.0, fov=None)
        is_bead, found_bead = _matched(det.xy, truth)
        assert is_bead.all(), f"seed {seed}: {int((~is_bead).sum())} noise peaks reported at {det.xy[~is_bead][:5]}"
        assert found_bead.all(), f"seed {seed}: missed beads at {truth[~found_bead]}"
        # sub-pixel centres (the beads in the shadow have a fifth of the open field's signal to noise)
        d = np.linalg.norm(det.xy[:, None] - truth[None], axis=2).min(axis=1)
        assert d.max() < 0.75


def test_block_edges_are_not_beads():
    img, truth = _block_image(1, block_level=0.3)
    det = detect_beads(img, radius_px=5.0, fov=None)
    is_bead, _ = _matched(det.xy, truth)
    assert is_bead.all(), det.xy[~is_bead]
