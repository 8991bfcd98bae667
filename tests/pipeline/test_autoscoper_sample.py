"""A lab's own data in, Autoscoper-ready results out, with CLI commands only: the wrist of
Autoscoper's sample data (MayaCam 2.0 cameras, the radius as a uint16 TIFF stack, undistorted
1760 x 1760 frames 0002, 0099, 0158) through ``fluororeg`` commands: ``subject init`` from the
TIFF volume with no symmetric pairs, ``calibrate geometry`` from the MayaCam files,
``recording init`` with the file frame numbers, a tiny bone-sized ``dataset`` and a very short
``train-detector``, ``register`` (the crop pixel size from the detector), ``overlay``,
``export --format tra`` in Autoscoper's volume frame and ``evaluate --reference`` the .tra.

Three frames and a one-epoch detector say nothing about accuracy; what must hold: frame
numbers survive every step, the radius gets no mirror search, the dataset is sized to the
bone and its crop pixel size reaches the registration, and no frame is reported ``ok`` unless
its detections agree with its pose."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fluororeg.cli import main
from fluororeg.core.registration import INPUT_STATUSES, STATUSES
from fluororeg.dataset.generate import DatasetReader
from fluororeg.pipeline.quality import REGISTERED_STATUSES
from fluororeg.pipeline import refine_stage
from fluororeg.pipeline.refine_stage import REFINE_FAILURE_STATUSES
from fluororeg.inference.detector import LandmarkDetector
from fluororeg.io.poses import read_poses_csv
from fluororeg.io.recording import open_recording
from fluororeg.subject.subject import load_subject

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "autoscoper_sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="autoscoper sample data not found")


def _run(*argv) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, f"fluororeg {' '.join(map(str, argv))} exited with {code}"


def test_wrist_sample_end_to_end(tmp_path, capsys, monkeypatch):
    subj, geo, rec_dir = tmp_path / "radius", tmp_path / "geometry.json", tmp_path / "recording"
    # 1. subject from the TIFF volume (raw values = HU + 1024), 12 proposed landmarks, no pairs
    _run("subject", "init", "--ct", SAMPLE / "Models" / "rad_dcm_cropped.tif", "--voxel-size", 0.39625, 0.39625,
         0.625, "--intensity", "raw:1:-1024", "--propose", 12, "--pairs-count", 0, "--out", subj)
    subject = load_subject(subj)
    assert subject.pairs == () and len(subject.landmarks) == 12  # a radius: no mirror search
    # 2. geometry from the MayaCam files; 3. the recording keeps the file frame numbers
    _run("calibrate", "geometry", "--mayacam", *[SAMPLE / "Calibration" / f"xr_calib_wrist_cam0{k}.txt" for k in (1, 2)],
         "--pitch", 0.2, "--out", geo)
    _run("recording", "init", *[SAMPLE / "XMA_UND" / f"xr_data_wrist_cam0{k}" for k in (1, 2)], "--geometry", geo,
         "--out", rec_dir)
    rec = open_recording(rec_dir)
    assert rec.frame_numbers.tolist() == [2, 99, 158] and rec.geometry.views[0].width == 1760

    # Commands that need a subject say so instead of taking the example subject.
    capsys.readouterr()
    assert main(["dataset", "--out", str(tmp_path / "nods"), "--n-train", "4", "--n-test", "0", "--quiet"]) == 2
    assert "--subject DIR" in capsys.readouterr().err

    # 4. a tiny dataset sized to the bone (crop pixel size, all-round views), cone beam of the lab
    ds = tmp_path / "ds"
    _run("dataset", "--subject", subj, "--out", ds, "--n-train", 32, "--n-test", 8, "--size", 64, "--shard-size", 32,
         "--geometry", geo, "--quiet")
    reader = DatasetReader(ds)
    assert 0.5 < reader.crop_pixel_mm < 3.0  # a radius 80 mm long, not a 2 mm/px skull crop
    assert reader.meta["config"]["poses"]["azimuth_deg"] == [-180.0, 180.0]
    assert reader.subject_fingerprint == subject.fingerprint

    # 5. a very short training; the export carries the crop pixel size and the subject
    capsys.readouterr()
    _run("train-detector", ds, "--out", tmp_path / "det", "--epochs", 1, "--quiet")
    said = capsys.readouterr()
    assert "validation error" in said.out and " px; exported " in said.out
    # One epoch: said when training ends, not first at register's refusal.
    assert said.err.startswith("WARNING: detector ") and "register refuses it unless given --allow-undertrained" in \
        said.err
    onnx = tmp_path / "det" / "detector.onnx"
    detector = LandmarkDetector(onnx, subject=subject)
    assert detector.crop_pixel_mm == pytest.approx(reader.crop_pixel_mm)
    assert detector.subject_fingerprint == subject.fingerprint

    # 6. register: crop pixel size from the detector (a --crop-pixel-mm off by > 10 % is refused)
    reg = tmp_path / "reg"
    capsys.readouterr()
    assert main(["register", str(rec_dir), "--subject", str(subj), "--detector", str(onnx), "--out", str(reg),
                 "--crop-pixel-mm", f"{1.2 * reader.crop_pixel_mm:.4f}", "--quiet"]) == 2
    assert "disagrees" in capsys.readouterr().err
    # What each refinement call was given: a pixel sized to the bone (not a head's 2 mm) and the floor.
    refined_with, sized_with = [], []
    refine, options_for = refine_stage.refine_poses, refine_stage.default_refine_options
    monkeypatch.setattr(refine_stage, "refine_poses",
                        lambda *a, **k: refined_with.append(k["options"].min_similarity) or refine(*a, **k))
    monkeypatch.setattr(refine_stage, "default_refine_options", lambda views, poses, pixel_mm, **k: sized_with.append(
        pixel_mm) or options_for(views, poses, pixel_mm, **k))
    _run("register", rec_dir, "--subject", subj, "--detector", onnx, "--style", "log", "--min-visible", 4,
         "--min-similarity", 0.55, "--out", reg, "--quiet", "--allow-undertrained")  # one epoch: far from trained
    options = json.loads((reg / "options.json").read_text())
    assert options["crop_pixel_mm"] == pytest.approx(reader.crop_pixel_mm) and options["min_similarity"] == 0.55
    bone_px = reader.crop_pixel_mm * 64 / 128  # the crop's field of view over 128 px: about 1 mm
    assert sized_with and sized_with == [pytest.approx(bone_px)] * len(sized_with), sized_with
    assert refined_with == [pytest.approx(0.55)] * len(sized_with), refined_with
    table = read_poses_csv(reg / "poses.csv")
    assert table["frame"].tolist() == [2, 99, 158]
    # the lab's frames are usable input; a one-epoch detector's poses may fail the refinement's gate
    assert set(table["status"]) <= (set(STATUSES) | set(REGISTERED_STATUSES) | set(REFINE_FAILURE_STATUSES)) \
        - set(INPUT_STATUSES)
    registered = np.isfinite(table["poses"]).all(axis=1)

    # 7. overlay one frame pair by its frame number (1760 px views are slow to draw)
    _run("overlay", rec_dir, reg / "poses.csv", "--subject", subj, "--frames", 99, "--video", "none",
         "--out", tmp_path / "ov", "--quiet")
    assert (tmp_path / "ov" / "overlay_frame_00099.png").is_file()
    assert main(["overlay", str(rec_dir), str(reg / "poses.csv"), "--subject", str(subj), "--frames", "1",
                 "--video", "none", "--out", str(tmp_path / "ov")]) == 2  # 1 is a position, not a frame number

    # 8. export for Autoscoper (its volume frame, one line per recording frame), re-import via evaluate
    tra = tmp_path / "radius.tra"
    _run("export", reg / "poses.csv", "--format", "tra", "--subject", subj, "--recording", rec_dir, "--out", tra)
    assert len(tra.read_text().strip().splitlines()) == 3
    # as Autoscoper would save it (no fluororeg sidecar): the subject's volume frame, the recording's frame numbers
    foreign = tmp_path / "autoscoper" / "radius.tra"
    foreign.parent.mkdir()
    foreign.write_text(tra.read_text())
    capsys.readouterr()
    assert main(["evaluate", str(reg / "poses.csv"), "--reference", str(foreign), "--out", str(tmp_path / "ev0")]) == 2
    assert "--subject" in capsys.readouterr().err
    if not registered.any():  # every frame held back by the gate: nothing to evaluate, said clearly
        capsys.readouterr()
        assert main(["evaluate", str(reg / "poses.csv"), "--reference", str(tra), "--subject", str(subj),
                     "--recording", str(rec_dir), "--out", str(tmp_path / "ev")]) == 2
        assert "has no pose" in capsys.readouterr().err
    for reference, out in ((tra, "ev"), (foreign, "ev_foreign")) if registered.any() else ():
        _run("evaluate", reg / "poses.csv", "--reference", reference, "--subject", subj, "--recording", rec_dir,
             "--with-landmarks", "--out", tmp_path / out)
        with open(tmp_path / out / "evaluation.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["frame"]) for r in rows] == [2, 99, 158]
        for r, ok in zip(rows, registered):  # the same poses back: zero error where registered, none elsewhere
            if ok:
                assert float(r["angle_err_deg"]) < 1e-6 and float(r["position_err_mm"]) < 1e-6
                assert float(r["landmark_err_mm"]) < 1e-6
            else:
                assert r["angle_err_deg"] == ""

    # 9. No frame is "ok" unless its pose reprojects its own detections closely: a wrong frame
    # must not pass as registered. Limit: 5 crop pixels at the bone, in frame pixels.
    view = rec.geometry.views[0]
    limit_px = 5 * reader.crop_pixel_mm * 1.2 / view.pitch_u
    wrong_ok = [(int(f), np.round(rms, 1).tolist()) for f, st, rms in zip(table["frame"], table["status"],
                                                                         table["rms_px"])
                if st == "ok" and not np.all(rms < limit_px)]
    assert not wrong_ok, f"frames reported 'ok' with reprojection rms above {limit_px:.0f} px: {wrong_ok}"
    # The QC report names every frame with its status (the gate's verdict, with its limit).
    qc = json.loads((reg / "qc.json").read_text())
    assert qc["per_frame"]["frame"] == [2, 99, 158] and qc["per_frame"]["status"] == list(table["status"])
    assert qc["max_residual_mm"] > 0
