"""Simulated dual-fluoroscope recordings and the recording format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fluororeg.core import render as R
from fluororeg.calibration.geometry_file import load_geometry
from fluororeg.io.recording import ImageSequence, open_recording, write_recording_manifest
from fluororeg.simulation.simulate import FluoroStyle, default_dual_views, fluoro_image, motion_sequence, simulate_recording


@pytest.fixture(scope="module")
def recording(subject, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    views = default_dual_views(width=192, height=192, pitch=1.6)
    simulate_recording(subject, out, scenario="walking", n_frames=4, views=views, seed=1)
    return out


def test_recording_layout_and_truth(subject, recording):
    rec = open_recording(recording)
    assert len(rec) == 4
    a, b = rec.frame(2)
    assert a.shape == (192, 192) and b.shape == (192, 192)
    truth = np.load(recording / "truth.npz")
    L = len(subject.landmark_names)
    assert truth["poses"].shape == (4, 6) and truth["landmarks_px"].shape == (4, 2, L, 2)
    meta = json.loads((recording / "truth.json").read_text())
    assert meta["subject_fingerprint"] == subject.fingerprint and meta["scenario"] == "walking"
    # The ideal landmarks are the cone projections of the true poses.
    for k, view in enumerate(rec.geometry.views):
        xy, _ = R.project_cone(subject.landmarks_model, view, truth["poses"])
        np.testing.assert_allclose(truth["landmarks_px"][:, k], xy, atol=1e-9)


def test_calibrated_distortion_maps_image_landmarks_back(recording):
    """The geometry file's distortion models (fitted from the simulated plates) undo the
    intensifier distortion: image landmarks corrected as points land on the ideal ones."""
    geo = load_geometry(recording / "geometry.json")
    truth = np.load(recording / "truth.npz")
    for k, model in enumerate(geo.distortion):
        fov = truth["in_fov"][:, k]
        seen = truth["landmarks_image_px"][:, k][fov]
        assert len(seen) > 0
        moved = np.linalg.norm(seen - truth["landmarks_px"][:, k][fov], axis=-1)
        assert moved.max() > 1.0  # the distortion is real
        corrected = model.undistort_points(seen)
        err = np.linalg.norm(corrected - truth["landmarks_px"][:, k][fov], axis=-1)
        assert np.median(err) < 0.3


def test_frames_look_like_fluoroscopy(subject, recording):
    rec = open_recording(recording)
    truth = np.load(recording / "truth.npz")
    img = rec.frame(0)[0]
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    outside = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) > 0.47 * size + 1
    assert np.all(img[outside] == FluoroStyle().background)  # circular field of view
    # Bone attenuates: pixels at visible bony landmarks are darker than the open field.
    vis = truth["in_fov"][0, 0]
    pts = np.round(truth["landmarks_image_px"][0, 0][vis]).astype(int)
    bone = img[pts[:, 1], pts[:, 0]]
    open_field = np.percentile(img[~outside], 99)
    assert np.median(bone) < 0.8 * open_field


def test_fluoro_image_noise_and_response():
    L = np.full((64, 64), 1.0)
    L[20:40, 20:40] = 3.0  # a dense block
    a = fluoro_image(L, FluoroStyle(blur_px=0), np.random.default_rng(0))
    b = fluoro_image(L, FluoroStyle(blur_px=0), np.random.default_rng(1))
    assert np.any(a != b)  # quantum noise differs between draws
    assert abs(a[25:35, 25:35].mean() - b[25:35, 25:35].mean()) < 3  # but not the signal
    assert a[25:35, 25:35].mean() < a[5:15, 28:36].mean() - 20  # more attenuation is darker
    quiet = fluoro_image(L, FluoroStyle(blur_px=0, photons=1e6), np.random.default_rng(0))
    assert quiet[5:15, 28:36].std() < a[5:15, 28:36].std()  # more quanta, less noise


def test_real_wrist_recording_opens(tmp_path):
    from fluororeg.calibration.geometry_file import geometry_from_mayacam
    from fluororeg.subject.example import shared_data_dir

    data = shared_data_dir()
    if data is None:
        pytest.skip("../shared/data is not available")
    base = data / "autoscoper_sample"
    geo = geometry_from_mayacam([base / "Calibration" / f"xr_calib_wrist_cam0{k}.txt" for k in (1, 2)], pitch_u=0.2)
    rec = open_recording(views=[base / "XMA_UND" / f"xr_data_wrist_cam0{k}" for k in (1, 2)], geometry=geo)
    assert len(rec) == 3
    a, b = rec.frame(1)
    assert a.shape == (1760, 1760) and b.shape == (1760, 1760) and a.max() > a.min()


def test_motion_sequences():
    static = motion_sequence("static", 5)
    np.testing.assert_allclose(static, np.zeros((5, 6)), atol=1e-12)
    flex = motion_sequence("flexion_extension", 50, seed=2)
    assert 20 < np.ptp(flex[:, 0]) <= 60.0 + 1e-9  # about +-30 deg of flexion
    assert np.ptp(flex[:, 2]) < 7
    np.testing.assert_array_equal(motion_sequence("walking", 7, seed=3), motion_sequence("walking", 7, seed=3))
    with pytest.raises(ValueError, match="scenario 'running'"):
        motion_sequence("running", 5)
    with pytest.raises(ValueError, match="n_frames"):
        motion_sequence("walking", 0)


def test_default_views_are_paper_like():
    v1, v2 = default_dual_views()
    cos = -v1.normal @ v2.normal if v1.normal @ v2.normal < 0 else v1.normal @ v2.normal
    angle = np.degrees(np.arccos(np.clip(abs(cos), -1, 1)))
    assert abs(angle - 80.0) < 1e-6 or abs(angle - 100.0) < 1e-6
    assert abs(v1.source_intensifier_distance - 1050.0) < 1e-9


def test_beam_crossing_is_where_the_principal_rays_meet():
    from fluororeg.core.geometry import ConeView, beam_crossing

    np.testing.assert_allclose(beam_crossing(default_dual_views()), 0.0, atol=1e-9)
    target = np.array([30.0, -20.0, 15.0])
    views = [ConeView.looking_at(target + 700.0 * np.array([np.sin(a), -np.cos(a), 0.1]), target,
                                 distance_to_intensifier=1000.0) for a in (-0.6, 0.9)]
    np.testing.assert_allclose(beam_crossing(views), target, atol=1e-9)
    with pytest.raises(ValueError, match="parallel"):
        beam_crossing([views[0], views[0]])


def test_recording_from_multipage_tiff_and_errors(recording, tmp_path):
    import tifffile

    rec = open_recording(recording)
    for k in range(2):
        tifffile.imwrite(tmp_path / f"v{k}.tif", np.stack([rec.frame(i)[k].astype(np.uint8) for i in range(len(rec))]), photometric="minisblack")
    rec2 = open_recording(views=[tmp_path / "v0.tif", tmp_path / "v1.tif"], geometry=recording / "geometry.json")
    np.testing.assert_array_equal(rec2.frame(3)[1], rec.frame(3)[1])
    assert len(ImageSequence(tmp_path / "v0.tif")) == 4
    tifffile.imwrite(tmp_path / "short.tif", np.zeros((2, 192, 192), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match="different frame counts"):
        open_recording(views=[tmp_path / "v0.tif", tmp_path / "short.tif"], geometry=recording / "geometry.json")
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((4, 64, 64), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match="64 x 64 px"):
        open_recording(views=[tmp_path / "v0.tif", tmp_path / "small.tif"], geometry=recording / "geometry.json")
    with pytest.raises(FileNotFoundError, match="recording.json"):
        open_recording(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageSequence(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG or TIFF"):
        ImageSequence(tmp_path / "empty")
    write_recording_manifest(tmp_path, views=("v0.tif", "v1.tif"), geometry=str(recording / "geometry.json"), frames=5)
    with pytest.raises(ValueError, match="says 5 frames"):
        open_recording(tmp_path)
    (tmp_path / "recording.json").write_text('{"format": "fluororeg-recording", "geometry": "g.json"}')
    with pytest.raises(ValueError, match="'views' is None, expected the two image sequences"):
        open_recording(tmp_path)
    (tmp_path / "recording.json").write_text('{"format": "fluororeg-recording", "views": ["a", "b"]}')
    with pytest.raises(ValueError, match="'geometry' is None"):
        open_recording(tmp_path)
    (tmp_path / "recording.json").write_text('{"format": ')
    with pytest.raises(ValueError, match="recording.json' is not valid JSON"):
        open_recording(tmp_path)


def test_image_folders_are_read_in_numeric_order(tmp_path):
    from PIL import Image

    (tmp_path / "seq").mkdir()
    for i in (10, 2, 1, 0):  # unpadded numbers: lexicographic order would put 10 before 2
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "seq" / f"frame_{i}.png")
    seq = ImageSequence(tmp_path / "seq")
    assert [seq[k][0, 0] for k in range(len(seq))] == [0, 1, 2, 10]


def test_overlays_show_landmarks_and_outline(subject, recording, tmp_path):
    from fluororeg.viz.overlay import DETECTED_RGB, LANDMARK_RGB, OUTLINE_RGB, overlay_frame, overlay_pair, save_overlay_gif

    rec = open_recording(recording)
    truth = np.load(recording / "truth.npz")
    geo = rec.geometry
    a, b = rec.frame(0)
    img = overlay_frame(a, subject, geo.views[0], truth["poses"][0], distortion=geo.distortion[0],
                        detected=truth["landmarks_px"][0, 0])  # undistorted, as the pipeline's detections
    assert img.shape == (192, 192, 3)
    for colour in (LANDMARK_RGB, OUTLINE_RGB, DETECTED_RGB):
        assert (img == colour).all(axis=-1).any(), colour
    # The crosses are drawn where the detections lie in the raw (distorted) image.
    und = truth["landmarks_px"][0, 0]
    no_pose = np.full(6, np.nan)
    crosses = overlay_frame(a, subject, geo.views[0], no_pose, detected=und, distortion=geo.distortion[0], label="")
    moved = overlay_frame(a, subject, geo.views[0], no_pose, detected=geo.distortion[0].distort_points(und), label="")
    unmoved = overlay_frame(a, subject, geo.views[0], no_pose, detected=und, label="")
    np.testing.assert_array_equal(crosses, moved)
    assert not np.array_equal(crosses, unmoved)
    none = overlay_frame(a, subject, geo.views[0], np.full(6, np.nan))
    assert not (none == LANDMARK_RGB).all(axis=-1).any()  # no pose, nothing projected
    pair = overlay_pair([a, b], subject, geo.views, truth["poses"][0], distortion=geo.distortion)
    assert pair.shape[1] == 2 * 192 + 8
    pair2 = overlay_pair(list(rec.frame(1)), subject, geo.views, truth["poses"][1], distortion=geo.distortion)
    gif = save_overlay_gif([pair, pair2], tmp_path / "o.gif")
    from PIL import Image
    assert Image.open(gif).n_frames == 2
    for fps in (0.0, -5.0, float("nan"), 1e9):
        with pytest.raises(ValueError, match="expected a playback frame rate above 0 and at most 1000"):
            save_overlay_gif([pair], tmp_path / "bad.gif", fps=fps)
    with pytest.raises(ValueError, match="the view is 192 x 192"):
        overlay_frame(np.zeros((10, 10)), subject, geo.views[0], truth["poses"][0])
