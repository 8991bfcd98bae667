"""Autoscoper / XMALab / 3D Slicer interoperability: trial .cfg import, Autoscoper's volume
frame and .tra files (checked voxel by voxel against an independent statement of Autoscoper's
ray-caster convention), XMALab rigid-body CSV, MayaCam 1.0 in / 2.0 out, Slicer .tfm."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fluororeg.calibration.formats import read_mayacam, read_mayacam1, write_mayacam
from fluororeg.core.geometry import physical_poses_from_model, pose_matrix
from fluororeg.core.volume import Volume
from fluororeg.io.autoscoper import (autoscoper_from_physical, autoscoper_info, import_autoscoper_trial,
                                     model_poses_from_tra, read_autoscoper_tra, read_trial_cfg, sidecar_path,
                                     tra_from_model_poses, write_autoscoper_tra, write_autoscoper_volume)
from fluororeg.io.poses import read_reference_poses, read_slicer_tfm, read_tra, write_slicer_tfm
from fluororeg.io.recording import open_recording
from fluororeg.io.volume_formats import IntensityMapping, load_volume
from fluororeg.io.xmalab import read_xmalab_rigid_body_csv, write_xmalab_rigid_body_csv
from fluororeg.subject.landmarks import Landmarks
from fluororeg.subject.subject import load_subject, make_subject

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "autoscoper_sample"
VOXEL = (0.39625, 0.39625, 0.625)
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="autoscoper sample data not found")


def _autoscoper_position(shape_zyx, spacing, flip, ijk):
    """Where Autoscoper's ray caster samples voxel (i, j, k) of the stored array: it flips the
    array per VolumeFlip, then samples tex3D(p.x, 1 - p.y, -p.z) over [0,1]x[0,1]x[-1,0] scaled
    by the volume's size in mm, so the flipped voxel (i', j', k') centre sits at
    (sx (i' + 1/2), sy (H - j' - 1/2), -sz (k' + 1/2))."""
    D, H, W = shape_zyx
    i, j, k = (np.asarray(a, dtype=float) for a in ijk)
    i = W - 1 - i if flip[0] else i
    j = H - 1 - j if flip[1] else j
    k = D - 1 - k if flip[2] else k
    sx, sy, sz = spacing
    return np.stack([sx * (i + 0.5), sy * (H - j - 0.5), -sz * (k + 0.5)], axis=-1)


def _toy_subject(direction=np.eye(3), origin=(-12.0, 30.0, 7.5), flip_data=False):
    rng = np.random.default_rng(3)
    data = np.full((9, 11, 13), -1000, np.int16)
    data[2:7, 3:9, 2:11] = 900 + rng.integers(0, 200, (5, 6, 9))
    ct = Volume(data, (0.7, 0.5, 1.25), origin, direction)
    lm_ijk = np.array([[2, 3, 2], [10, 8, 6], [2, 8, 6], [10, 3, 2], [6, 5, 4]], float)
    lms = Landmarks(tuple(f"p{n}" for n in range(5)), ct.voxel_to_physical(lm_ijk))
    return make_subject("toy", ct, lms, threshold_hu=300)


@pytest.mark.parametrize("flip", [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)])
def test_tra_places_every_voxel_where_the_fluororeg_pose_does(flip, tmp_path):
    # A CT read as Autoscoper reads the stack (its volume frame is the physical frame) ...
    shape = (9, 11, 13)
    spacing = (0.7, 0.5, 1.25)
    from fluororeg.io.autoscoper import autoscoper_volume_geometry

    origin, direction = autoscoper_volume_geometry(shape, spacing, flip)
    subj = _toy_subject(direction, origin)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    poses = np.array([[10.0, -25.0, 40.0, 5.0, -80.0, 900.0], [-3.0, 60.0, -120.0, -40.0, 12.0, 1100.0]])
    W = pose_matrix(poses)
    tra = tra_from_model_poses(W, subj, flip)
    phys = subj.ct.voxel_to_physical(ijk)
    a = _autoscoper_position(shape, spacing, flip, ijk.T)
    np.testing.assert_allclose(phys, a, atol=1e-12)  # the stack's physical frame is Autoscoper's
    for f in range(len(poses)):
        by_fluororeg = (W[f, :3, :3] @ (phys - subj.origin).T).T + W[f, :3, 3]
        by_autoscoper = (tra[f, :3, :3] @ a.T).T + tra[f, :3, 3]
        np.testing.assert_allclose(by_autoscoper, by_fluororeg, atol=1e-9)
        np.testing.assert_allclose(tra[f, :3, :3] @ tra[f, :3, :3].T, np.eye(3), atol=1e-12)  # rigid
    # ... and through the file, with the recording's frame numbers kept: line n = trial frame n.
    path = write_autoscoper_tra(tmp_path / "bone.tra", [99, 2], W[::-1], subj, trial_frames=[2, 99, 158], flip=flip)
    lines = read_tra(path)
    assert lines.shape == (3, 4, 4) and np.isnan(lines[2]).all()
    np.testing.assert_allclose(lines[0], tra[0], atol=1e-9)
    np.testing.assert_allclose(lines[1], tra[1], atol=1e-9)
    frames, back = read_autoscoper_tra(path, subj, trial_frames=[2, 99, 158], flip=flip)
    assert frames.tolist() == [2, 99, 158]
    np.testing.assert_allclose(back[:2], W, atol=1e-9)
    # evaluate --reference reads it back through the sidecar, by frame number
    ref = read_reference_poses(path, frames=[158, 99, 2])
    assert np.isnan(ref[0]).all()
    np.testing.assert_allclose(ref[1:], poses[::-1], atol=1e-7)


def test_other_ct_frames_map_rigidly_or_raise(tmp_path):
    # A CT with an oblique LPS direction (det +1): the stack written from its array maps rigidly.
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("zyx", [30, -10, 5], degrees=True).as_matrix()
    flip = (0, 0, 0)
    # Autoscoper's frame for flip (0,0,0) has det(+1) index axes (x, -y, -z): a CT whose index
    # axes have det +1 maps rigidly.
    subj = _toy_subject(rot)
    m = autoscoper_from_physical(subj.ct, flip)
    ijk = np.array([[0, 0, 0], [12, 10, 8], [3, 7, 1]], float)
    a = _autoscoper_position(subj.ct.data.shape, subj.ct.spacing, flip, ijk.T)
    p = subj.ct.voxel_to_physical(ijk)
    np.testing.assert_allclose((m[:3, :3] @ p.T).T + m[:3, 3], a, atol=1e-9)
    W = pose_matrix(np.array([[5.0, 6.0, 7.0, 1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(model_poses_from_tra(tra_from_model_poses(W, subj), subj), W, atol=1e-12)
    # A mirrored index frame has no rigid map: the error says which VolumeFlip fixes it.
    mirrored = _toy_subject(rot @ np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match=r"VolumeFlip \[0, 0, 1\]"):
        autoscoper_from_physical(mirrored.ct, flip)
    m = autoscoper_from_physical(mirrored.ct, (0, 0, 1))
    a = _autoscoper_position(mirrored.ct.data.shape, mirrored.ct.spacing, (0, 0, 1), ijk.T)
    np.testing.assert_allclose((m[:3, :3] @ mirrored.ct.voxel_to_physical(ijk).T).T + m[:3, 3], a, atol=1e-9)
    # The stack it writes reads back in Autoscoper's frame with the same HU.
    path = write_autoscoper_volume(subj.ct, tmp_path / "toy.tif")
    again = load_volume(path, voxel_size_mm=subj.ct.spacing, intensity=IntensityMapping("raw", 1, -1024))
    np.testing.assert_array_equal(again.data, np.asarray(subj.ct.data))


def test_tiff_stack_needs_voxel_size_and_intensity_meaning(tmp_path):
    subj = _toy_subject()
    path = write_autoscoper_volume(subj.ct, tmp_path / "v.tif")
    with pytest.raises(ValueError, match="voxel_size_mm"):
        load_volume(path)
    with pytest.raises(ValueError, match="intensity"):
        load_volume(path, voxel_size_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        load_volume(path, voxel_size_mm=(1, 0, 1), intensity="hu")
    with pytest.raises(ValueError, match="raw:SLOPE:OFFSET"):
        IntensityMapping.parse("raw:1")
    mu = IntensityMapping.parse("mu:0.0001:0:0.02")
    np.testing.assert_allclose(mu.to_hu(np.array([0, 200, 400])), [-1000, 0, 1000])
    v = load_volume(path, voxel_size_mm=(0.5, 0.5, 2.0), intensity="raw:2:-2048")
    np.testing.assert_array_equal(v.data, 2 * (np.asarray(subj.ct.data).astype(int) + 1024) - 2048)


@needs_sample
def test_wrist_tiff_volume_reads_with_its_voxel_size():
    v = load_volume(SAMPLE / "Models" / "rad_dcm_cropped.tif", voxel_size_mm=VOXEL, intensity="raw:1:-1024")
    assert v.data.shape == (128, 86, 68) and v.data.dtype == np.int16
    np.testing.assert_allclose(v.spacing, VOXEL)
    assert v.data.min() == -1024 and v.data.max() == 4095 - 1024


def _write_cfg(tmp_path: Path) -> Path:
    rel = lambda p: Path(os.path.relpath(p, tmp_path)).as_posix()  # noqa: E731
    cfg = tmp_path / "wrist.cfg"
    cfg.write_text("\n".join([
        "# the wrist of Autoscoper's sample data", "Version 1.1", "",
        f"mayaCam_csv {rel(SAMPLE / 'Calibration' / 'xr_calib_wrist_cam01.txt')}",
        f"mayaCam_csv {rel(SAMPLE / 'Calibration' / 'xr_calib_wrist_cam02.txt')}", "",
        f"CameraRootDir {rel(SAMPLE / 'XMA_UND' / 'xr_data_wrist_cam01')}/",
        f"CameraRootDir {rel(SAMPLE / 'XMA_UND' / 'xr_data_wrist_cam02')}/", "",
        f"VolumeFile {rel(SAMPLE / 'Models' / 'rad_dcm_cropped.tif')}", "VolumeFlip 0 0 0",
        "VoxelSize 0.39625 0.39625 0.625", "",
        f"VolumeFile {rel(SAMPLE / 'Models' / 'uln_dcm_cropped.tif')}", "VolumeFlip 1 0 0",
        "VoxelSize 0.39625 0.39625 0.625", "",
        "RenderResolution 512 512", "OptimizationOffsets 0.1 0.1 0.1 0.1 0.1 0.1", ""]))
    return cfg


@needs_sample
def test_trial_cfg_import_makes_subject_and_recording(tmp_path):
    cfg = _write_cfg(tmp_path)
    trial = read_trial_cfg(cfg)
    assert trial.version == (1, 1) and len(trial.cameras) == 2 and len(trial.volumes) == 2
    assert trial.flips == [(0, 0, 0), (1, 0, 0)] and trial.render_resolution == (512, 512)
    assert all(p.is_file() for p in trial.cameras + trial.volumes)
    out = import_autoscoper_trial(cfg, tmp_path / "imp", pitch_mm=0.2, intensity="raw:1:-1024", volume="rad_dcm_cropped",
                                  n_landmarks=10)
    subj = load_subject(out["subject"])
    assert subj.pairs == () and len(subj.landmarks) == 10
    np.testing.assert_allclose(subj.ct.spacing, VOXEL)
    # the CT sits in Autoscoper's volume frame: the map to it is the identity
    np.testing.assert_allclose(autoscoper_from_physical(subj.ct, autoscoper_info(out["subject"])["flip"]), np.eye(4),
                               atol=1e-12)
    rec = open_recording(out["recording"])
    assert rec.frame_numbers.tolist() == [2, 99, 158]
    assert rec.geometry.views[0].width == 1760
    # errors name the problem
    bad = tmp_path / "bad.cfg"
    bad.write_text(cfg.read_text().replace("VoxelSize 0.39625 0.39625 0.625\n\nRenderResolution",
                                           "\nRenderResolution"))
    with pytest.raises(ValueError, match="2 VolumeFile but 1 VoxelSize"):
        read_trial_cfg(bad)
    with pytest.raises(ValueError, match="no pixel pitch"):
        import_autoscoper_trial(cfg, tmp_path / "imp2", pitch_mm=None, intensity="hu")


def test_xmalab_rigid_body_csv_round_trip(tmp_path):
    subj = _toy_subject()
    poses = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [-20.0, 10.0, 5.0, -3.0, 2.0, 800.0]])
    W = pose_matrix(poses)
    path = write_xmalab_rigid_body_csv(tmp_path / "rb.csv", [5, 3], W, subj, trial_frames=[3, 4, 5], body="radius")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:5] == ["Frame", "radius_R11", "radius_R12", "radius_R13", "radius_01"] and header[-1] == "radius_1"
    name, M, index = read_xmalab_rigid_body_csv(path)
    assert name == "radius" and M.shape == (3, 4, 4) and np.isnan(M[1]).all() and index.tolist() == [0, 1, 2]
    tra = tra_from_model_poses(W, subj)
    np.testing.assert_allclose(M[2], tra[0], atol=1e-9)
    np.testing.assert_allclose(M[0, 3], [0, 0, 0, 1])  # column by column: the last row is 0 0 0 1
    ref = read_reference_poses(path, frames=[3, 4, 5])
    np.testing.assert_allclose(ref[[0, 2]], poses[[1, 0]], atol=1e-7)
    assert np.isnan(ref[1]).all()
    # without the sidecar the bone frame is unknown: the subject is needed
    sidecar_path(path).unlink()
    with pytest.raises(ValueError, match="give the subject"):
        read_reference_poses(path)
    np.testing.assert_allclose(read_reference_poses(path, [3, 5], subject=subj, trial_frames=[3, 4, 5]),
                               poses[[1, 0]], atol=1e-7)


def test_reads_xmalab_export_as_xmalab_writes_it(tmp_path):
    # XMALab's Trial::saveRigidBodyTransformations: OpenCV pose [R | t] (world -> body) written
    # as trans[4 y + x] = R[y, x], trans[12:15] = -R^T t, trans[15] = 1; filtered columns carry
    # the cut-off; no Frame column here.
    from scipy.spatial.transform import Rotation

    R = Rotation.from_euler("xyz", [20, -35, 60], degrees=True).as_matrix()
    t = np.array([12.0, -30.0, 400.0])
    trans = np.zeros(16)
    for y in range(3):
        trans[4 * y:4 * y + 3] = R[y]
    trans[12:15] = -R.T @ t
    trans[15] = 1.0
    cols = ["R11", "R12", "R13", "01", "R21", "R22", "R23", "02", "R31", "R32", "R33", "03", "TX", "TY", "TZ", "1"]
    head = ",".join(f"{b}_{c}_25Hz" for b in ("ulna", "radius") for c in cols)
    row = ",".join(repr(float(v)) for v in np.r_[np.full(16, np.nan), trans])
    path = tmp_path / "xma.csv"
    path.write_text(head + "\n" + ",".join(["NaN"] * 32) + "\n" + row + "\n")
    name, M, index = read_xmalab_rigid_body_csv(path, "radius")
    assert name == "radius" and index.tolist() == [0, 1]
    world_from_body = np.eye(4)
    world_from_body[:3, :3], world_from_body[:3, 3] = R.T, -R.T @ t
    np.testing.assert_allclose(M[1], world_from_body, atol=1e-12)
    assert np.isnan(M[0]).all()
    with pytest.raises(ValueError, match="'femur' is not in"):
        read_xmalab_rigid_body_csv(path, "femur")


def test_mayacam1_in_mayacam2_out(tmp_path):
    # A MayaCam 1.0 camera 1000 units above the world origin on +z, unrotated (an OpenGL
    # camera looking down -z with image up = world +y), focal length 2000 px, principal point
    # MATLAB (u0, v0) = (513, 400) in a 1024 x 800 image: 1-based, v0 counted from the bottom.
    f = tmp_path / "cam1.csv"
    f.write_text("0,0,1000\n0,0,0\n0,0,0\n513,400,-2000\n1,1024,800\n")
    cam = read_mayacam(f)  # detected as 1.0
    assert (cam.width, cam.height) == (1024, 800)
    cx, cy = 512.0, 800 - 400  # 0-based, from the top
    pts = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [5.0, -5.0, 100.0]])
    expect = np.array([[cx, cy], [cx + 20.0, cy], [cx, cy - 20.0],
                       [cx + 2000 * 5 / 900, cy + 2000 * 5 / 900]])
    np.testing.assert_allclose(cam.project(pts), expect, atol=1e-9)
    # a rotated camera: 90 deg about z turns image +x to world +y
    g = tmp_path / "cam2.csv"
    g.write_text("0,0,1000\n0,0,90\n0,0,0\n513,400,-2000\n1,1024,800\n")
    np.testing.assert_allclose(read_mayacam1(g).project(np.array([[0.0, 10.0, 0.0]])), [[cx + 20.0, cy]], atol=1e-9)
    # written as MayaCam 2.0 and read back: the same camera
    write_mayacam(tmp_path / "cam.txt", cam)
    assert (tmp_path / "cam.txt").read_text().startswith("image size")
    np.testing.assert_allclose(read_mayacam(tmp_path / "cam.txt").project(pts), expect, atol=1e-9)
    h = tmp_path / "bad.csv"
    h.write_text("0,0,1000\n0,0\n0,0,0\n513,400,-2000\n1,1024,800\n")
    with pytest.raises(ValueError, match="line 2"):
        read_mayacam(h)


def test_slicer_tfm_places_the_ct(tmp_path):
    subj = _toy_subject(origin=(3.0, -4.0, 5.0))
    pose = np.array([12.0, -7.0, 33.0, 10.0, 20.0, 650.0])
    W = pose_matrix(pose)
    path = write_slicer_tfm(tmp_path / "frame_0002.tfm", W, subj)
    text = path.read_text()
    assert text.startswith("#Insight Transform File V1.0") and "AffineTransform_double_3_3" in text
    phys_from_world = read_slicer_tfm(path)
    ijk = np.array([[0, 0, 0], [12, 10, 8]], float)
    phys = subj.ct.voxel_to_physical(ijk)
    world = (W[:3, :3] @ (phys - subj.origin).T).T + W[:3, 3]
    np.testing.assert_allclose((phys_from_world[:3, :3] @ world.T).T + phys_from_world[:3, 3], phys, atol=1e-9)


def test_reference_poses_from_a_slicer_tfm_and_from_ct_frame_csv(tmp_path):
    """A bone placed by hand arrives as a Slicer transform or as a CSV of world_from_physical
    poses (its CT's own frame): both are read back as the model-frame pose that placed it."""
    subj = _toy_subject(origin=(3.0, -4.0, 5.0))
    pose = np.array([12.0, -7.0, 33.0, 10.0, 20.0, 650.0])  # world_from_model
    tfm = write_slicer_tfm(tmp_path / "radius_0099.tfm", pose_matrix(pose), subj)
    got = read_reference_poses(tfm, frames=[2, 99], subject=subj)
    assert np.isnan(got[0]).all()
    np.testing.assert_allclose(got[1], pose, atol=1e-9)
    with pytest.raises(ValueError, match="frame number"):
        read_reference_poses(write_slicer_tfm(tmp_path / "radius.tfm", pose_matrix(pose), subj), subject=subj)
    with pytest.raises(ValueError, match="subject"):
        read_reference_poses(tfm, frames=[99])

    physical = physical_poses_from_model(pose, subj.origin)
    assert np.abs(physical[3:] - pose[3:]).max() > 1.0  # the two frames differ here
    csv = tmp_path / "placed.csv"
    csv.write_text("frame,theta_x_deg,theta_y_deg,theta_z_deg,tau_x_mm,tau_y_mm,tau_z_mm\n"
                   "99," + ",".join(repr(float(v)) for v in physical) + "\n7,,,,,,\n")
    got = read_reference_poses(csv, frames=[7, 99], subject=subj, pose_frame="ct")
    assert np.isnan(got[0]).all()
    np.testing.assert_allclose(got[1], pose, atol=1e-9)
    np.testing.assert_allclose(read_reference_poses(csv, frames=[99])[0], physical)  # 'model': as written
    with pytest.raises(ValueError, match="CT's own frame"):
        read_reference_poses(csv, frames=[99], pose_frame="ct")
    with pytest.raises(ValueError, match="pose_frame 'world'"):
        read_reference_poses(csv, frames=[99], pose_frame="world")


def test_a_tra_with_a_line_per_frame_number_is_refused_with_how_it_is_laid_out(tmp_path):
    subj = _toy_subject()
    path = tmp_path / "one.tra"
    path.write_text(",".join(repr(float(v)) for v in np.eye(4).ravel()) + "\n")  # frame 99 alone, one line
    with pytest.raises(ValueError, match=r"1 lines but the trial has 3 frames \(2, 99, 158\).*one line per frame"):
        read_reference_poses(path, frames=[99], subject=subj, trial_frames=[2, 99, 158])


@needs_sample
def test_cli_import_calibrate_export(tmp_path, capsys):
    from fluororeg.calibration.distortion import DistortionModel, save_distortion
    from fluororeg.calibration.geometry_file import load_geometry
    from fluororeg.cli import main
    from fluororeg.io.poses import write_poses_csv

    cfg = _write_cfg(tmp_path)
    assert main(["import", "autoscoper", str(cfg), "--out", str(tmp_path / "w"), "--pitch", "0.2",
                 "--intensity", "raw:1:-1024", "--volume", "uln_dcm_cropped", "--n-landmarks", "8"]) == 0
    info = autoscoper_info(tmp_path / "w" / "subject")
    assert info["flip"] == (1, 0, 0)  # the ulna's VolumeFlip in the cfg
    capsys.readouterr()
    # again into the same folder: refused (its landmarks may have been moved since), unless --force
    assert main(["import", "autoscoper", str(cfg), "--out", str(tmp_path / "w"), "--pitch", "0.2",
                 "--intensity", "raw:1:-1024", "--volume", "uln_dcm_cropped", "--n-landmarks", "8"]) == 2
    assert "subject/subject.json and recording/recording.json" in capsys.readouterr().err
    # calibrate geometry: the pitch is required, distortion models are attached
    cams = [str(SAMPLE / "Calibration" / f"xr_calib_wrist_cam0{k}.txt") for k in (1, 2)]
    assert main(["calibrate", "geometry", "--mayacam", *cams, "--out", str(tmp_path / "g.json")]) == 2
    assert "no pixel pitch" in capsys.readouterr().err
    model = DistortionModel(1, 1760, 1760, np.array([879.5, 879.5]), 880.0, np.zeros((3, 2)), np.zeros((3, 2)))
    save_distortion(model, tmp_path / "d1.json")
    assert main(["calibrate", "geometry", "--mayacam", *cams, "--pitch", "0.25", "--distortion",
                 str(tmp_path / "d1.json"), str(tmp_path / "d1.json"), "--out", str(tmp_path / "g.json")]) == 0
    geo = load_geometry(tmp_path / "g.json")
    assert geo.views[0].pitch_u == 0.25 and all(d is not None for d in geo.distortion)
    # export poses.csv (frame numbers of the recording) as .tra / XMALab / Slicer
    subj = load_subject(tmp_path / "w" / "subject")
    poses = np.array([[10.0, 20.0, 30.0, 1.0, 2.0, 3.0], [np.nan] * 6])
    M = np.where(np.isfinite(poses).all(axis=1)[:, None, None], pose_matrix(np.nan_to_num(poses)), np.nan)
    csv = write_poses_csv(tmp_path / "poses.csv", [99, 158], ["ok", "failed"], poses, M, [1.0, np.nan],
                          np.zeros((2, 2)), np.zeros((2, 2)), [8, 0], [0, -1])
    rec = str(tmp_path / "w" / "recording")
    base = ["--subject", str(tmp_path / "w" / "subject"), "--recording", rec]
    assert main(["export", str(csv), "--format", "tra", "--out", str(tmp_path / "u.tra"), *base]) == 0
    tra = read_tra(tmp_path / "u.tra")
    assert tra.shape == (3, 4, 4) and np.isnan(tra[0]).all() and np.isnan(tra[2]).all()
    np.testing.assert_allclose(tra[1], tra_from_model_poses(M[:1], subj, (1, 0, 0))[0], atol=1e-9)
    np.testing.assert_allclose(read_reference_poses(tmp_path / "u.tra", [99])[0], poses[0], atol=1e-7)
    assert main(["export", str(csv), "--format", "xmalab", "--out", str(tmp_path / "u.csv"), *base]) == 0
    np.testing.assert_allclose(read_reference_poses(tmp_path / "u.csv", [99])[0], poses[0], atol=1e-7)
    assert main(["export", str(csv), "--format", "slicer", "--out", str(tmp_path / "u.tfm"), *base]) == 0
    assert read_slicer_tfm(tmp_path / "u.tfm").shape == (4, 4)
    assert main(["export", str(csv), "--format", "slicer", "--frame", "158", "--out", str(tmp_path / "v.tfm"),
                 *base]) == 2
    assert "frame 158 has no pose" in capsys.readouterr().err
    assert main(["export", str(csv), "--format", "xmalab", "--out", str(csv), *base]) == 2  # over its input
    assert "is the poses file being exported" in capsys.readouterr().err
    assert main(["export", str(csv), "--format", "tra", "--out", str(tmp_path / "new" / "dir" / "u.tra"), *base]) == 0
    np.testing.assert_array_equal(read_tra(tmp_path / "new" / "dir" / "u.tra"), tra)
    # The same .tra as Autoscoper saves it (no sidecar): its lines are the trial's frames in order,
    # which evaluate needs --recording to number (line 2 is frame 99, not frame 2).
    foreign = tmp_path / "autoscoper" / "u.tra"
    foreign.parent.mkdir()
    foreign.write_text((tmp_path / "u.tra").read_text())
    assert main(["evaluate", str(csv), "--reference", str(foreign), "--subject", base[1],
                 "--out", str(tmp_path / "ev")]) == 2
    assert "without --recording, line n of a .tra or XMALab file is read as frame number n" in capsys.readouterr().err
    assert main(["evaluate", str(csv), "--reference", str(foreign), *base, "--out", str(tmp_path / "ev")]) == 0
    assert "1/1 frames with a reference registered: angle error 0.00 +- 0.00 deg" in capsys.readouterr().out


@needs_sample
def test_cli_subject_init_from_tiff_without_pairs(tmp_path, capsys):
    from fluororeg.cli import main

    tif = str(SAMPLE / "Models" / "uln_dcm_cropped.tif")
    out = str(tmp_path / "uln")
    assert main(["subject", "init", "--ct", tif, "--out", out, "--propose", "9", "--pairs-count", "0"]) == 2
    err = capsys.readouterr().err  # the CLI's options, not the Python arguments
    assert "give --voxel-size SX SY SZ and --intensity" in err and "voxel_size_mm" not in err
    assert main(["subject", "init", "--ct", tif, "--voxel-size", "0.5", "0.5", "0.5", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "give --intensity (e.g." in err and "--voxel-size SX" not in err
    assert main(["subject", "init", "--ct", tif, "--voxel-size", *map(str, VOXEL), "--intensity", "raw:1:-1024",
                 "--propose", "9", "--pairs-count", "0", "--out", out]) == 0
    assert "no mirror search" in capsys.readouterr().out
    subj = load_subject(out)
    assert subj.pairs == () and len(subj.landmarks) == 9
    np.testing.assert_allclose(autoscoper_from_physical(subj.ct), np.eye(4), atol=1e-12)
