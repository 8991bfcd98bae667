"""Calibration: bead detection, distortion fit, resection, MayaCam/DLT files, geometry file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from fluororeg import _core
from fluororeg.calibration import (DistortionModel, DualGeometry, PinholeCamera, calibrate_view,
                                   detect_beads, dlt_from_pinhole, dlt_resection, estimate_source,
                                   estimate_view, fit_distortion, geometry_from_mayacam, load_geometry, mayacam_view,
                                   pinhole_from_dlt, pinhole_from_view, project_dlt, read_dlt,
                                   read_mayacam, save_geometry, view_from_pinhole, write_dlt,
                                   write_mayacam)
from fluororeg.calibration.synthetic import AnalyticDistortion, bead_image, plate_image
from fluororeg.core.geometry import ConeView, rotation_matrix, system_centre
from fluororeg.core.render import project_cone

CALIB = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "autoscoper_sample" / "Calibration"
WRIST = [CALIB / f"xr_calib_wrist_cam0{i}.txt" for i in (1, 2)]


def _project(points, view):
    return project_cone(points, view, np.zeros(6))[0][0]


# ---- distortion ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plate():
    img, truth = plate_image(1024, spacing_px=40, radius_px=5, noise=2.0, missing=0.03, seed=1)
    return img, truth


@pytest.fixture(scope="module")
def plate_fit(plate):
    img, _ = plate
    return fit_distortion(img, radius_px=5, spacing_mm=2.0)


def test_bead_detection_subpixel_and_robust(plate):
    img, truth = plate
    det = detect_beads(img, radius_px=5)
    d, _ = cKDTree(truth["distorted"]).query(det.xy)
    assert d.max() < 0.3                     # no bead cut by the field of view survives
    assert np.sqrt(np.mean(d ** 2)) < 0.08   # sub-pixel centres despite noise and gradient
    # Beads well inside the field of view are all found (missing ones were never drawn).
    inner = np.linalg.norm(truth["distorted"] - truth["fov_centre"], axis=1) < truth["fov_radius"] - 20
    dd, _ = cKDTree(det.xy).query(truth["distorted"][inner])
    assert np.all(dd < 0.5)


def test_distortion_fit_residual_and_truth(plate, plate_fit):
    _, truth = plate
    m = plate_fit.model
    assert plate_fit.report["n_matched"] >= 350
    assert m.rms_px < 0.1, m.rms_px
    assert abs(m.pitch_mm - 2.0 / 40) < 1e-3     # 40 px per 2 mm spacing
    # Recovered correction against the true inverse distortion on a grid inside the FOV.
    g = np.stack(np.meshgrid(np.linspace(100, 924, 25), np.linspace(100, 924, 25)), -1).reshape(-1, 2)
    g = g[np.linalg.norm(g - truth["fov_centre"], axis=1) < truth["fov_radius"] - 30]
    err = np.linalg.norm(m.undistort_points(g) - truth["distortion"].undistort(g), axis=1)
    assert err.max() < 0.15, err.max()
    # The distortion was large: up to more than 10 px.
    assert np.linalg.norm(g - truth["distortion"].undistort(g), axis=1).max() > 10
    # Inverse map.
    assert np.abs(m.distort_points(m.undistort_points(g)) - g).max() < 1e-6


def test_distortion_point_maps_match_the_numpy_reference(plate_fit):
    """The core's UndistortPoints / DistortPoints against their NumPy reference, on the fitted
    strong (> 10 px) distortion of a 1024 px plate: points of any leading shape, every Newton
    iteration count; bad input refused with the value named."""
    from dataclasses import replace

    from fluororeg._reference import distortion as reference

    m = plate_fit.model
    rng = np.random.default_rng(3)
    pts = rng.uniform(50, 974, (7, 9, 2))
    np.testing.assert_allclose(m.undistort_points(pts), reference.undistort_points(m, pts), rtol=0, atol=1e-9)
    for iterations in (0, 1, 4):
        np.testing.assert_allclose(m.distort_points(pts, iterations=iterations),
                                   reference.distort_points(m, pts, iterations), rtol=0, atol=1e-9)
    assert m.undistort_points([512.0, 512.0]).shape == (2,) and m.distort_points(np.empty((0, 2))).shape == (0, 2)
    with pytest.raises(ValueError, match="non-finite"):
        m.distort_points([[1.0, np.nan]])
    with pytest.raises(ValueError, match="iterations -1"):
        m.distort_points(pts, iterations=-1)
    with pytest.raises(ValueError, match="positive finite scale"):  # the core's own check
        _core.undistort_points(m.order, m.centre, 0.0, m.coef, np.ascontiguousarray(pts.reshape(-1, 2)))
    with pytest.raises(ValueError, match=r"DistortionModel.scale = 0.0: expected a positive number"):
        replace(m, scale=0.0)
    with pytest.raises(ValueError, match=r"DistortionModel.centre = \[512.0, nan\]"):
        replace(m, centre=np.array([512.0, np.nan]))


def test_points_corrected_agree_with_image_corrected_then_detected(plate, plate_fit):
    img, _ = plate
    m = plate_fit.model
    corrected = m.undistort_image(img, order=1, fill=6.0)
    det0 = detect_beads(img, radius_px=5)
    det1 = detect_beads(corrected, radius_px=5)
    as_points = m.undistort_points(det0.xy)
    d, _ = cKDTree(det1.xy).query(as_points)
    close = d < 2.0
    assert close.sum() > 0.95 * len(det1)
    assert np.sqrt(np.mean(d[close] ** 2)) < 0.1 and np.median(d[close]) < 0.06


def test_distortion_save_load(tmp_path, plate_fit):
    m = plate_fit.model
    p = tmp_path / "dist.json"
    m.save(p)
    m2 = DistortionModel.load(p)
    q = np.array([[100.0, 200.0], [511.5, 511.5], [800.0, 300.0]])
    assert np.array_equal(m2.undistort_points(q), m.undistort_points(q))
    assert m2.rms_px == m.rms_px and m2.pitch_mm == m.pitch_mm
    p.write_text(json.dumps({"format": "fluororeg-distortion", "order": 5}))
    with pytest.raises(ValueError, match="width"):
        DistortionModel.load(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DistortionModel.load(p)


def test_bright_beads_and_analytic_distortion_identity_at_centre():
    d = AnalyticDistortion((100.0, 100.0), 100.0)
    c = np.array([[100.0, 100.0]])
    assert np.allclose(d.distort(c), c)
    p = np.array([[150.0, 60.0]])
    assert np.allclose(d.distort(d.undistort(p)), p)
    img = 255 - bead_image(200, 200, [[50.3, 60.7], [140.2, 120.9]], noise=1.0)
    det = detect_beads(img, radius_px=5, polarity="bright", fov=None)
    assert len(det) == 2
    assert np.abs(np.sort(det.xy, axis=0) - np.array([[50.3, 60.7], [140.2, 120.9]])).max() < 0.1


def test_distortion_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        fit_distortion(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="could not be read"):
        fit_distortion(bad)
    img = bead_image(256, 256, [[100, 100], [150, 120]])
    with pytest.raises(ValueError, match="only 2 beads found"):
        fit_distortion(img, radius_px=5, fov=None)
    with pytest.raises(ValueError, match="polarity"):
        detect_beads(img, polarity="grey")


# ---- pinhole, MayaCam, DLT -----------------------------------------------------------------
def test_real_wrist_mayacam_loads_and_projects_consistently():
    if not all(p.is_file() for p in WRIST):
        pytest.skip("../shared/data/autoscoper_sample not present")
    cams = [read_mayacam(p) for p in WRIST]
    views = [mayacam_view(p, 0.2) for p in WRIST]
    # About 110 degrees between the optical axes (data README).
    ang = np.degrees(np.arccos(cams[0].R[2] @ cams[1].R[2]))
    assert abs(ang - 110) < 1
    # The principal rays pass close to each other, in front of both sources.
    c0, c1, a0, a1 = cams[0].centre, cams[1].centre, cams[0].R[2], cams[1].R[2]
    A = np.stack([a0, -a1], axis=1)
    s, t = np.linalg.lstsq(A, c1 - c0, rcond=None)[0]
    p0, p1 = c0 + s * a0, c1 + t * a1
    assert np.linalg.norm(p0 - p1) < 10 and 500 < s < 1500 and 500 < t < 1500
    obj = (p0 + p1) / 2
    rng = np.random.default_rng(0)
    X = obj + rng.uniform(-60, 60, (100, 3))
    for cam, view in zip(cams, views):
        px = cam.project(X)
        assert np.all(cam.depth(X) > 0)
        # The object appears near the image centre.
        assert np.all(np.abs(cam.project(obj) - [cam.width / 2, cam.height / 2]) < 200)
        # Our cone view and the file's pinhole give the same pixel.
        assert np.abs(_project(X, view) - px).max() < 1e-6
        assert view.width == view.height == 1760
        assert abs(view.source_intensifier_distance - cam.K[0, 0] * 0.2) < 1e-6
        # The source lies between 800 and 1300 mm from the object.
        assert 800 < np.linalg.norm(view.source - obj) < 1300
    # The geometry built from the files: its system centre is the mean of both sources and
    # intensifier centres, nearer the object than either source.
    geo = geometry_from_mayacam(WRIST, 0.2, names=("cam01", "cam02"))
    pts = [v.source for v in geo.views] + [v.intensifier_centre for v in geo.views]
    assert np.allclose(geo.system_centre, np.mean(pts, axis=0))
    assert np.linalg.norm(geo.system_centre - obj) < min(np.linalg.norm(v.source - obj) for v in geo.views) / 2


def test_mayacam_round_trip(tmp_path):
    v = ConeView.looking_at([-900, 30, 10], [0, 0, 0], distance_to_intensifier=1400, pitch=0.25,
                            width=1024, height=768)
    cam = pinhole_from_view(v)
    p = tmp_path / "cam.txt"
    write_mayacam(p, v)
    cam2 = read_mayacam(p)
    assert (cam2.width, cam2.height) == (1024, 768)
    assert np.array_equal(cam2.K, cam.K) and np.array_equal(cam2.R, cam.R) and np.array_equal(cam2.t, cam.t)
    v2 = view_from_pinhole(cam2, 0.25)
    X = np.random.default_rng(1).uniform(-50, 50, (20, 3))
    assert np.abs(_project(X, v2) - _project(X, v)).max() < 1e-8
    assert np.allclose(v2.source, v.source) and np.allclose(v2.intensifier_centre, v.intensifier_centre)
    if WRIST[0].is_file():
        real = read_mayacam(WRIST[0])
        write_mayacam(tmp_path / "w.txt", real)
        back = read_mayacam(tmp_path / "w.txt")
        assert np.array_equal(back.K, real.K) and np.array_equal(back.t, real.t)


def test_dlt_round_trip(tmp_path):
    views = [ConeView.looking_at([-900, 30, 10], [0, 0, 0], distance_to_intensifier=1400, pitch=0.3,
                                 width=1024, height=1024),
             ConeView.looking_at([400, -850, 50], [5, 0, 0], distance_to_intensifier=1300, pitch=0.3,
                                 width=1024, height=1024)]
    X = np.random.default_rng(2).uniform(-50, 50, (30, 3))
    L = np.stack([dlt_from_pinhole(v) for v in views])
    p = tmp_path / "dlt.csv"
    write_dlt(p, L)
    assert len(p.read_text().strip().splitlines()) == 11
    L2 = read_dlt(p)
    assert L2.shape == (2, 11) and np.array_equal(L2, L)
    for v, l in zip(views, L2):
        ref = _project(X, v)
        assert np.abs(project_dlt(l, X, height=v.height) - ref).max() < 1e-8
        # MATLAB convention: 1-based, origin bottom-left.
        li = dlt_from_pinhole(v, convention="image")
        assert np.abs(project_dlt(li, X, convention="image") - ref).max() < 1e-8
        cam = pinhole_from_dlt(l, v.width, v.height)
        assert np.allclose(cam.centre, v.source, atol=1e-6)
        v2 = view_from_pinhole(cam, 0.3, max_skew=1e-6)
        assert np.allclose(v2.intensifier_centre, v.intensifier_centre, atol=1e-5)
    if WRIST[0].is_file():
        real = read_mayacam(WRIST[0])
        Xw = np.array([[115.0, 73.0, 115.0], [150.0, 40.0, 90.0]])
        lw = dlt_from_pinhole(real)
        assert np.abs(project_dlt(lw, Xw, height=real.height) - real.project(Xw)).max() < 1e-6


def test_format_errors(tmp_path):
    p = tmp_path / "bad.txt"
    with pytest.raises(ValueError, match="does not exist"):
        read_mayacam(p)
    p.write_text("image size\n1024,1024\n\ncamera matrix\n1000,0,512\n0,1000,x\n0,0,1\n\nrotation\n"
                 "1,0,0\n0,1,0\n0,0,1\n\ntranslation\n0\n0\n1000\n")
    with pytest.raises(ValueError, match="line 6"):
        read_mayacam(p)
    p.write_text("image size\n1024,1024\n\ncamera matrix\n1000,0,512\n0,1000,512\n0,0,1\n")
    with pytest.raises(ValueError, match="lacks the section 'rotation'"):
        read_mayacam(p)
    p.write_text("image size\n1024,1024\n\ncamera matrix\n1000,0,512\n0,1000,512\n0,0,1\n\nrotation\n"
                 "1,0,0\n0,1,0\n0,0,2\n\ntranslation\n0\n0\n1000\n")
    with pytest.raises(ValueError, match="not a rotation"):
        read_mayacam(p)
    p.write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="2 rows"):
        read_dlt(p)
    with pytest.raises(ValueError, match="convention"):
        project_dlt(np.zeros(11), np.zeros((1, 3)), convention="opengl")
    mirrored = ConeView([0, 0, -1000.0], [0, 0, 400.0], [1, 0, 0], [0, -1, 0], 0.3, 0.3, 64, 64)
    with pytest.raises(ValueError, match="mirrored"):
        pinhole_from_view(mirrored)
    K = np.array([[1000, 5.0, 512], [0, 1000, 512], [0, 0, 1]])
    with pytest.raises(ValueError, match="skew"):
        view_from_pinhole(PinholeCamera(K, np.eye(3), [0, 0, 1000.0], 1024, 1024), 0.3)


# ---- resection -----------------------------------------------------------------------------
CUBE = (np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                  if (i != 0) + (j != 0) + (k != 0) != 2], float) * 50) @ rotation_matrix([15, 20, 15]).T


@pytest.fixture(scope="module")
def two_views():
    v1 = ConeView.looking_at([-900, 0, 0], [0, 0, 0], distance_to_intensifier=1400, pitch=0.3, width=1024, height=1024)
    v2 = ConeView.looking_at([500, -800, 60], [0, 0, 0], distance_to_intensifier=1300, pitch=0.3, width=1024, height=1024)
    return v1, v2


def test_dlt_exact_and_refined(two_views):
    for v in two_views:
        xy = _project(CUBE, v)
        P = dlt_resection(CUBE, xy)
        h = np.c_[CUBE, np.ones(len(CUBE))] @ P.T
        assert np.abs(h[:, :2] / h[:, 2:] - xy).max() < 1e-6
        est = estimate_view(CUBE, xy, 1024, 1024, 0.3)
        assert est.rms_px < 1e-6
        assert np.allclose(est.view.source, v.source, atol=1e-4)
        assert np.allclose(est.view.intensifier_centre, v.intensifier_centre, atol=1e-4)


def test_calibrate_two_views_from_images(two_views):
    """Cube object (15 beads, 100 mm) imaged through two known views; rough views off by
    about 10 mm. Tolerance: source within 5 mm (depth along the axis is the weak direction:
    2.5 mm changes the image by only ~0.06 px for a 100 mm object 850 mm from the source),
    reprojection of points around the object within 0.25 px."""
    rng = np.random.default_rng(5)
    test_pts = rng.uniform(-60, 60, (50, 3))
    views = []
    for k, v in enumerate(two_views):
        img = bead_image(1024, 1024, _project(CUBE, v), radius_px=6, seed=k)
        guess = ConeView(v.source + [8, -5, 6], v.intensifier_centre + [0, 5, -10], v.u, v.v, 0.3, 0.3, 1024, 1024)
        cal = calibrate_view(img, CUBE, guess, radius_px=6, fov=None)
        assert len(cal.world_index) == len(CUBE)
        assert cal.estimate.rms_px < 0.1
        assert np.linalg.norm(cal.view.source - v.source) < 5.0
        assert np.abs(_project(test_pts, cal.view) - _project(test_pts, v)).max() < 0.25
        views.append(cal.view)
    assert np.linalg.norm(system_centre(views) - system_centre(two_views)) < 5.0


def test_four_bead_source_estimation(two_views):
    v = two_views[0]
    beads = np.array([[0, 0, 0], [40, 20, 0], [-30, 10, 35], [10, -25, -40.0]])
    xy = _project(beads, v)
    start = ConeView(v.source + [20, 30, -15], v.intensifier_centre, v.u, v.v, v.pitch_u, v.pitch_v, v.width, v.height)
    est = estimate_source(start, beads, xy + np.random.default_rng(0).normal(0, 0.05, xy.shape))
    assert np.linalg.norm(est.view.source - v.source) < 3.0
    assert np.array_equal(est.view.intensifier_centre, v.intensifier_centre)
    est0 = estimate_source(start, beads, xy)
    assert np.linalg.norm(est0.view.source - v.source) < 1e-4


def test_resection_errors(two_views):
    v = two_views[0]
    xy = _project(CUBE, v)
    with pytest.raises(ValueError, match="at least 6"):
        dlt_resection(CUBE[:5], xy[:5])
    flat = CUBE.copy()
    flat[:, 2] = 0
    with pytest.raises(ValueError, match="coplanar"):
        dlt_resection(flat, _project(flat, v))
    line = np.c_[np.arange(8.0), np.zeros(8), np.zeros(8)] * 10
    with pytest.raises(ValueError, match="collinear"):
        dlt_resection(line, _project(line, v))
    with pytest.raises(ValueError, match="3D points but"):
        dlt_resection(CUBE, xy[:-1])
    img = bead_image(1024, 1024, xy[:3], radius_px=6)
    with pytest.raises(ValueError, match="only 3 beads found"):
        calibrate_view(img, CUBE, v, radius_px=6, fov=None)
    with pytest.raises(ValueError, match="at least 5"):
        estimate_view(CUBE[:4], xy[:4], 1024, 1024, 0.3, initial=v)


# ---- geometry file -------------------------------------------------------------------------
def test_geometry_file_round_trip_and_errors(tmp_path, two_views, plate_fit):
    m = plate_fit.model
    v1 = ConeView(two_views[0].source, two_views[0].intensifier_centre, two_views[0].u, two_views[0].v, 0.3, 0.3,
                  m.width, m.height)
    geo = DualGeometry((v1, two_views[1]), ("F1", "F2"), (m, None))
    with pytest.raises(ValueError, match="'F1' and 'F2' look along the same line"):
        DualGeometry((two_views[1], two_views[1]), ("F1", "F2"))  # one calibration given twice
    p = tmp_path / "geometry.json"
    save_geometry(p, geo)
    g2 = load_geometry(p)
    assert g2.names == ("F1", "F2") and g2.distortion[1] is None
    for a, b in zip(g2.views, geo.views):
        assert np.array_equal(a.packed(), b.packed())
    assert np.allclose(g2.system_centre, system_centre(geo.views))
    q = np.array([[300.0, 400.0]])
    assert np.array_equal(g2.distortion[0].undistort_points(q), m.undistort_points(q))
    d = json.loads(p.read_text())
    assert d["units"] == "mm" and d["version"] == 1
    d["views"][1]["u"] = [1, 1, 0]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"views\[1\]\.u"):
        load_geometry(p)
    d["views"][1]["u"] = list(two_views[1].u)
    d["views"][0]["pitch_v"] = -1
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"views\[0\]\.pitch_v"):
        load_geometry(p)
    d["views"][0]["pitch_v"] = 0.3
    del d["views"][0]["source"]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"views\[0\]\.source is missing"):
        load_geometry(p)
    d["units"] = "cm"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="units"):
        load_geometry(p)
    with pytest.raises(ValueError, match="does not exist"):
        load_geometry(tmp_path / "nope.json")


def test_earlier_spellings_of_the_intensifier_still_read(dual_views, tmp_path):
    """The image plane is the 'intensifier' (the 'detector' is the landmark network): geometry
    files written with 'detector_centre' still load, and looking_at(distance_to_detector=) still
    works with a DeprecationWarning."""
    path = tmp_path / "geometry.json"
    save_geometry(path, DualGeometry(dual_views))
    d = json.loads(path.read_text())
    assert "intensifier_centre" in d["views"][0] and "detector_centre" not in d["views"][0]
    for v in d["views"]:
        v["detector_centre"] = v.pop("intensifier_centre")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(d))
    for a, b in zip(load_geometry(old).views, dual_views):
        np.testing.assert_allclose(a.intensifier_centre, b.intensifier_centre)
    with pytest.warns(DeprecationWarning, match="distance_to_intensifier"):
        v = ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_detector=1050.0)
    assert v.source_intensifier_distance == pytest.approx(1050.0)
    with pytest.raises(TypeError, match="distance_to_intensifier"):
        ConeView.looking_at([0, -650, 0], [0, 0, 0])
