"""A lab's own data in, Autoscoper-ready results out: the wrist of Autoscoper's sample data
(MayaCam 2.0 cameras, the radius as a uint16 TIFF stack, undistorted 1760 x 1760 frames 0002,
0099, 0158) through the library, as the CLI will drive it: subject from the TIFF volume with
no symmetric pairs, geometry from the MayaCam files, recording with the file frame numbers,
a tiny bone-sized dataset and a very short training, registration, overlays, .tra export in
Autoscoper's volume frame and re-import, evaluation against the .tra.

Three frames and a one-epoch detector say nothing about accuracy; what must hold: frame
numbers survive every step, the radius gets no mirror search, the dataset is sized to the
bone, and no frame is reported ``ok`` unless its detections agree with its pose."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fluororeg.core.geometry import pose_matrix
from fluororeg.core.registration import INPUT_STATUSES, STATUSES
from fluororeg.dataset.generate import DatasetConfig, DatasetReader, generate_dataset, source_distance_range
from fluororeg.io.autoscoper import autoscoper_info, import_autoscoper_trial, read_autoscoper_tra, \
    write_autoscoper_tra
from fluororeg.io.poses import read_poses_csv, read_reference_poses
from fluororeg.io.recording import open_recording
from fluororeg.pipeline.evaluate import evaluate_poses
from fluororeg.pipeline.register import PipelineOptions, register_recording
from fluororeg.subject.subject import load_subject
from fluororeg.inference.detector import LandmarkDetector
from fluororeg.training.detector_config import DetectorConfig
from fluororeg.training.detector_export import export_detector
from fluororeg.training.detector_train import train_detector
from fluororeg.viz.overlay import overlay_pair

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "autoscoper_sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="autoscoper sample data not found")


def _cfg(tmp: Path) -> Path:
    rel = lambda p: Path(os.path.relpath(p, tmp)).as_posix()  # noqa: E731
    cfg = tmp / "wrist.cfg"
    cfg.write_text("\n".join([
        "Version 1.1",
        f"mayaCam_csv {rel(SAMPLE / 'Calibration' / 'xr_calib_wrist_cam01.txt')}",
        f"mayaCam_csv {rel(SAMPLE / 'Calibration' / 'xr_calib_wrist_cam02.txt')}",
        f"CameraRootDir {rel(SAMPLE / 'XMA_UND' / 'xr_data_wrist_cam01')}/",
        f"CameraRootDir {rel(SAMPLE / 'XMA_UND' / 'xr_data_wrist_cam02')}/",
        f"VolumeFile {rel(SAMPLE / 'Models' / 'rad_dcm_cropped.tif')}", "VolumeFlip 0 0 0",
        "VoxelSize 0.39625 0.39625 0.625", "RenderResolution 512 512", ""]))
    return cfg


def test_wrist_sample_end_to_end(tmp_path):
    # 1. import: subject (radius, TIFF stack, raw values = HU + 1024) and recording
    out = import_autoscoper_trial(_cfg(tmp_path), tmp_path / "wrist", pitch_mm=0.2, intensity="raw:1:-1024",
                                  n_landmarks=10)
    subject = load_subject(out["subject"])
    assert subject.pairs == ()  # a radius has no left-right pairs: no mirror search
    assert len(subject.landmarks) == 10
    rec = open_recording(out["recording"])
    assert rec.frame_numbers.tolist() == [2, 99, 158]
    assert len(rec) == 3 and rec.geometry.views[0].width == 1760

    # 2. a tiny dataset sized to the bone, cone beam at the lab's source distances
    cfg = DatasetConfig.for_subject(subject, image_size=64, n_train=32, n_test=8, shard_size=32, projection="cone",
                                    source_distance_mm=source_distance_range(rec.geometry.views))
    assert 0.5 < cfg.pixel_mm < 3.0  # a radius 80 mm long, not a 2 mm/px skull crop
    assert cfg.poses.azimuth_deg == (-180.0, 180.0)
    ds = generate_dataset(subject, tmp_path / "ds", cfg, progress=False)
    reader = DatasetReader(ds)
    assert reader.crop_pixel_mm == pytest.approx(cfg.pixel_mm) and reader.subject_fingerprint == subject.fingerprint

    # 3. a very short training
    det_cfg = DetectorConfig(arch="heatmap", width=8, input_size=64, epochs=1, batch_size=16, num_threads=1)
    train_detector(ds, tmp_path / "det", det_cfg, progress=False)
    detector = LandmarkDetector(export_detector(tmp_path / "det", tmp_path / "detector.onnx"), subject=subject)

    # 4. register at the dataset's crop pixel size; the CSV keeps the file frame numbers
    opts = PipelineOptions(style="log", crop_pixel_mm=reader.crop_pixel_mm, min_visible=4, chunk=2)
    res = register_recording(rec, subject, detector, None, opts, out_dir=tmp_path / "reg", progress=False)
    table = read_poses_csv(tmp_path / "reg" / "poses.csv")
    assert table["frame"].tolist() == [2, 99, 158]
    assert set(res.status) <= set(STATUSES) - set(INPUT_STATUSES)  # the lab's frames are usable input
    assert np.all(res.batch.mirror_case[np.isfinite(res.poses).all(axis=1)] == 0)  # no mirrored solution
    # 5. overlays with contour, frame number and status
    for i, f in list(enumerate(rec.frame_numbers))[1:2]:  # one frame pair (1760 px views are slow to draw)
        pair = overlay_pair(rec.frame(i), subject, rec.geometry.views, res.poses[i], detected=res.detections[i],
                            frame=int(f), status=str(res.status[i]))
        assert pair.shape == (1760, 2 * 1760 + 8, 3)
        if os.environ.get("FLUORO_KEEP_OVERLAYS"):
            from PIL import Image

            Image.fromarray(pair).save(Path(os.environ["FLUORO_KEEP_OVERLAYS"]) / f"wrist_{int(f):04d}.png")

    # 6. export for Autoscoper (its volume frame, its frame order) and read back
    registered = np.isfinite(res.poses).all(axis=1)
    world_from_model = np.where(registered[:, None, None], pose_matrix(np.nan_to_num(res.poses)), np.nan)
    tra = write_autoscoper_tra(tmp_path / "radius.tra", table["frame"], world_from_model, subject,
                               trial_frames=rec.frame_numbers, flip=autoscoper_info(out["subject"])["flip"])
    frames, back = read_autoscoper_tra(tra, subject, trial_frames=rec.frame_numbers)
    assert frames.tolist() == [2, 99, 158]
    np.testing.assert_allclose(back[registered], world_from_model[registered], atol=1e-9)
    assert np.isnan(back[~registered]).all()

    # 7. evaluate against the .tra (as evaluate --reference does): the same poses, zero error
    ref = read_reference_poses(tra, frames=table["frame"])
    ev = evaluate_poses(table["poses"], ref, landmarks=subject.landmarks_model, frames=table["frame"])
    assert ev.frames.tolist() == [2, 99, 158]
    if registered.any():
        assert np.nanmax(ev.angle_err_deg) < 1e-6 and np.nanmax(ev.position_err_mm) < 1e-6

    # 8. No frame is "ok" unless its pose reprojects its own detections closely: a wrong frame
    # must not pass as registered. Limit: 5 crop pixels at the bone, in frame pixels.
    view = rec.geometry.views[0]
    limit_px = 5 * reader.crop_pixel_mm * 1.2 / view.pitch_u
    wrong_ok = [(int(f), np.round(rms, 1).tolist()) for f, st, rms in zip(table["frame"], table["status"],
                                                                         table["rms_px"])
                if st == "ok" and not np.all(rms < limit_px)]
    assert not wrong_ok, f"frames reported 'ok' with reprojection rms above {limit_px:.0f} px: {wrong_ok}"
    # The gate's verdict stands on figures a lab can check: qc.json (residual at the bone per view).
    qc = json.loads((tmp_path / "reg" / "qc.json").read_text())
    assert qc["per_frame"]["frame"] == [2, 99, 158] and qc["per_frame"]["status"] == table["status"].tolist()
    assert qc["max_residual_mm"] == pytest.approx(opts.residual_limit_mm(detector))  # from the detector's figures
