"""Geometry files from a lab's calibrations: MayaCam files need the pixel pitch (no silent
default) and take the views' distortion models; both views from bead-object images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fluororeg.calibration.distortion import DistortionModel, save_distortion
from fluororeg.calibration.geometry_file import (geometry_from_bead_images, geometry_from_mayacam, load_geometry,
                                                 save_geometry, with_distortion)
from fluororeg.calibration.synthetic import bead_image
from fluororeg.core.geometry import ConeView, rotation_matrix
from fluororeg.core.render import project_cone

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "autoscoper_sample"
CAMS = [SAMPLE / "Calibration" / f"xr_calib_wrist_cam0{k}.txt" for k in (1, 2)]
CUBE = (np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                  if (i != 0) + (j != 0) + (k != 0) != 2], float) * 50) @ rotation_matrix([15, 20, 15]).T


def _model(w, h):
    coef = np.zeros((3, 2))
    coef[1, 0] = 2.0  # a small shear-free stretch: x' = x + 2 * xn
    return DistortionModel(1, w, h, np.array([(w - 1) / 2, (h - 1) / 2]), w / 2, coef, -coef)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="autoscoper sample data not found")
def test_mayacam_geometry_needs_pitch_and_takes_distortion(tmp_path):
    for bad in (None, 0.0, -0.2, float("nan")):
        with pytest.raises(ValueError, match="no pixel pitch"):
            geometry_from_mayacam(CAMS, bad)
    save_distortion(_model(1760, 1760), tmp_path / "d.json")
    geo = geometry_from_mayacam(CAMS, 0.2, distortion=[tmp_path / "d.json", None])
    assert isinstance(geo.distortion[0], DistortionModel) and geo.distortion[1] is None
    save_geometry(tmp_path / "g.json", geo)
    again = load_geometry(tmp_path / "g.json")
    np.testing.assert_allclose(again.distortion[0].coef, geo.distortion[0].coef)
    with pytest.raises(ValueError, match="2 views"):
        geometry_from_mayacam(CAMS, 0.2, distortion=[None])
    with pytest.raises(ValueError, match="fitted on 100 x 100"):
        with_distortion(geo, [_model(100, 100), None])


def test_geometry_from_bead_images():
    views = (ConeView.looking_at([-900, 0, 0], [0, 0, 0], distance_to_intensifier=1400, pitch=0.3, width=768, height=768),
             ConeView.looking_at([500, -800, 60], [0, 0, 0], distance_to_intensifier=1300, pitch=0.3, width=768,
                                 height=768))
    images, guesses = [], []
    for k, v in enumerate(views):
        images.append(bead_image(768, 768, project_cone(CUBE, v, np.zeros(6))[0][0], radius_px=6, seed=k))
        guesses.append(ConeView(v.source + [8, -5, 6], v.intensifier_centre + [0, 5, -10], v.u, v.v, 0.3, 0.3, 768, 768))
    geo = geometry_from_bead_images(images, CUBE, guesses, radius_px=6, fov=None, names=("cam01", "cam02"))
    assert geo.names == ("cam01", "cam02")
    test_pts = np.random.default_rng(1).uniform(-60, 60, (30, 3))
    for est, v in zip(geo.views, views):
        err = project_cone(test_pts, est, np.zeros(6))[0][0] - project_cone(test_pts, v, np.zeros(6))[0][0]
        assert np.abs(err).max() < 0.3
    with pytest.raises(ValueError, match="view 2"):
        geometry_from_bead_images([images[0], np.full((768, 768), 180.0)], CUBE, guesses, radius_px=6, fov=None)


def test_geometry_from_bead_images_on_the_command_line(tmp_path):
    """calibrate geometry --bead-images: both views from bead-object images and the bead list,
    started from a rough geometry file; a missing bead list is a one-line error."""
    import tifffile

    from fluororeg.calibration.geometry_file import DualGeometry
    from fluororeg.cli import main

    views = (ConeView.looking_at([-900, 0, 0], [0, 0, 0], distance_to_intensifier=1400, pitch=0.3, width=768, height=768),
             ConeView.looking_at([500, -800, 60], [0, 0, 0], distance_to_intensifier=1300, pitch=0.3, width=768,
                                 height=768))
    paths, guesses = [], []
    for k, v in enumerate(views):
        img = bead_image(768, 768, project_cone(CUBE, v, np.zeros(6))[0][0], radius_px=6, seed=k)
        paths.append(tmp_path / f"beads_view{k + 1}.tif")
        tifffile.imwrite(paths[-1], img.astype(np.float32))
        guesses.append(ConeView(v.source + [8, -5, 6], v.intensifier_centre + [0, 5, -10], v.u, v.v, 0.3, 0.3, 768, 768))
    save_geometry(tmp_path / "rough.json", DualGeometry(tuple(guesses)))
    np.savetxt(tmp_path / "beads.csv", CUBE, delimiter=",", header="x, y, z (mm)")
    argv = ["calibrate", "geometry", "--bead-images", *map(str, paths), "--guess", str(tmp_path / "rough.json"),
            "--bead-radius", "6", "--field-of-view", "none", "--out", str(tmp_path / "geometry.json")]
    assert main(argv[:-2] + ["--out", str(tmp_path / "x.json")]) == 2  # no --beads
    assert main(argv[:5] + ["--beads", str(tmp_path / "beads.csv")] + argv[5:]) == 0
    geo = load_geometry(tmp_path / "geometry.json")
    test_pts = np.random.default_rng(1).uniform(-60, 60, (30, 3))
    for est, v in zip(geo.views, views):
        err = project_cone(test_pts, est, np.zeros(6))[0][0] - project_cone(test_pts, v, np.zeros(6))[0][0]
        assert np.abs(err).max() < 0.3
