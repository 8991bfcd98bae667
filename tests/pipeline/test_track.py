"""`fluororeg track`: a recording registered from the pose of one of its frames, by intensity
refinement and tracking alone (no detector): the poses, the files, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fluororeg.cli import main
from fluororeg.core.registration import pose_errors
from fluororeg.dataset.generate import DatasetConfig
from fluororeg.io.poses import read_poses_csv
from fluororeg.io.recording import open_recording
from fluororeg.pipeline.track import NO_START_STATUS, TrackOptions, track_recording
from fluororeg.simulation.simulate import default_dual_views, simulate_recording
from fluororeg.subject.subject import save_subject


@pytest.fixture(scope="module")
def walking(subject, tmp_path_factory):
    """30 frame pairs of the walking scenario (up to 2.2 deg and 8 mm between frames), 128 px."""
    folder = tmp_path_factory.mktemp("track") / "rec"
    simulate_recording(subject, folder, scenario="walking", n_frames=30,
                       views=default_dual_views(width=128, height=128, pitch=3.2), seed=4)
    return folder, np.load(folder / "truth.npz")["poses"]


def write_start(path, frames, poses) -> None:
    lines = ["frame,theta_x_deg,theta_y_deg,theta_z_deg,tau_x_mm,tau_y_mm,tau_z_mm"]
    lines += [f"{f}," + ",".join(f"{v:.6f}" for v in p) for f, p in zip(frames, poses)]
    path.write_text("\n".join(lines) + "\n")


def test_track_registers_a_recording_from_one_frames_pose(subject, walking, tmp_path, capsys):
    folder, truth = walking
    rec = open_recording(folder)
    start = tmp_path / "start.csv"
    # frame 10 placed by hand, 2-3 deg and 2 mm off
    write_start(start, [rec.frame_numbers[10]], truth[10:11] + [2.0, -1.0, 1.0, 1.5, -1.0, 1.0])
    out = tmp_path / "out"
    assert main(["track", str(folder), "--subject", str(_subject_dir(subject, tmp_path)), "--start", str(start),
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "registered 30 of 30 frame pairs" in said
    # The QC as register writes it, without the landmark figures it has none of.
    assert "QC: 30 of 30 frames registered (no landmark path: the refinement's similarity is the gate)" in said
    assert "median residual" not in said and f"QC -> {out / 'qc.json'}" in said
    qc = json.loads((out / "qc.json").read_text())
    assert qc["landmark_path"] is False and qc["counts"] == {"ok": 1, "tracked": 29}
    assert "residual_bone_mm" not in qc["per_frame"] and len(qc["per_frame"]["similarity"]) == 30
    assert qc["refined"]["tracked"] == 29 and qc["refined"]["median_similarity_registered"][0] > 0.6
    assert [w["frame"] for w in qc["worst"]] == [int(f) for f in sorted(
        rec.frame_numbers, key=lambda f: min(qc["per_frame"]["similarity"][list(rec.frame_numbers).index(f)]))][:5]
    assert (out / "qc.png").stat().st_size > 0
    assert sorted(p.name for p in out.glob("qc_worst_*.png")) == sorted(f"qc_worst_{w['frame']}.png"
                                                                        for w in qc["worst"])
    table = read_poses_csv(out / "poses.csv")
    assert table["frame"].tolist() == rec.frame_numbers.tolist()
    assert table["status"][10] == "ok" and set(np.delete(table["status"], 10)) == {"tracked"}
    ang, mm = pose_errors(table["poses"], truth)
    assert ang.max() < 1.0 and mm.max() < 1.0, (ang, mm)  # 128 px of 3.2 mm: coarse frames
    header = (out / "poses.csv").read_text().splitlines()[0].split(",")
    assert {"start", "refine_status", "similarity_view1", "refine_tracked"} <= set(header)
    assert "landmark_status" not in header  # no landmarks were used
    assert len((out / "poses.tra").read_text().strip().splitlines()) == 30
    options = json.loads((out / "options.json").read_text())
    assert options["frames_given"] == 1 and options["refined_on"] in ("cpu", "cuda")
    # sized to the bone: a crop's field of view of the sphere about its centroid that holds it, over 128 px
    from fluororeg.dataset.generate import CROP_MARGIN, bone_radius_mm

    assert options["pixel_mm_used"] == pytest.approx(2 * bone_radius_mm(subject) * CROP_MARGIN / 128)


def test_track_without_a_usable_start_says_so(subject, walking, tmp_path, capsys):
    folder, truth = walking
    rec = open_recording(folder)
    start = tmp_path / "start.csv"
    write_start(start, [999], truth[:1])  # a frame the recording does not have
    capsys.readouterr()
    assert main(["track", str(folder), "--subject", str(_subject_dir(subject, tmp_path)), "--start", str(start),
                 "--out", str(tmp_path / "out")]) == 2
    assert "has no pose for any of the recording's frames" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no frame has a start pose"):
        track_recording(rec, subject, np.full((len(rec), 6), np.nan))
    with pytest.raises(ValueError, match=r"start_poses have shape \(2, 6\), expected \(30, 6\)"):
        track_recording(rec, subject, truth[:2])
    for bad, match in (({"min_similarity": 1.2}, "min_similarity = 1.2"), ({"pixel_mm": 0.0}, "pixel_mm = 0.0"),
                       ({"refine_device": "tpu"}, "refine_device 'tpu' is unknown")):
        with pytest.raises(ValueError, match=match):
            TrackOptions(**bad)
    # A far-off start fails its gate and has nothing to track from: no frame is registered.
    far = np.full((len(rec), 6), np.nan)
    far[0] = truth[0] + [40.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    res = track_recording(rec, subject, far, TrackOptions(refine_device="cpu"))
    assert not np.isfinite(res.poses).any()
    assert res.status[0] in ("low_similarity", "moved_far") and set(res.status[1:]) == {NO_START_STATUS}


def _subject_dir(subject, tmp_path):
    """The session's subject saved as a folder the CLI reads (once per test folder)."""
    folder = tmp_path / "subject"
    if not (folder / "subject.json").is_file():
        save_subject(subject, folder)
    return folder


def test_the_refinements_pixel_follows_the_bone_not_the_subjects_origin(subject):
    """subject.json's origin is a lab's to set (the CT's corner, say); the refinement's pixel must
    stay the bone's (with the origin at the radius CT's corner it grew from 1.01 to 1.82 mm and
    the wrist sample's frame 99 failed the gate)."""
    import dataclasses

    from fluororeg.pipeline.register import subject_refine_pixel_mm

    moved = dataclasses.replace(subject, origin=np.asarray(subject.origin) + [60.0, -40.0, 25.0])
    assert subject_refine_pixel_mm(moved) == pytest.approx(subject_refine_pixel_mm(subject), rel=1e-9)
    # the dataset's crops are centred at the origin: their field of view grows with it
    assert DatasetConfig.for_subject(moved).pixel_mm > 1.2 * DatasetConfig.for_subject(subject).pixel_mm


def test_a_runs_poses_follow_the_subjects_origin_when_its_landmarks_moved(subject, walking, tmp_path, capsys):
    """poses.csv is in the model frame of the subject it was made with (options.json records its
    origin). After the lab moves landmarks (the origin, their centroid, moves), `track --start` moves
    the poses to the new origin and says so; `export` refuses rather than place the bone elsewhere."""
    import dataclasses

    folder, truth = walking
    rec = open_recording(folder)
    start = tmp_path / "start.csv"
    write_start(start, [rec.frame_numbers[10]], truth[10:11])
    first = tmp_path / "first"
    assert main(["track", str(folder), "--subject", str(_subject_dir(subject, tmp_path)), "--start", str(start),
                 "--out", str(first), "--quiet"]) == 0
    recorded = json.loads((first / "options.json").read_text())
    assert recorded["subject_fingerprint"] == subject.fingerprint
    assert recorded["subject_origin"] == pytest.approx(list(subject.origin))
    moved = tmp_path / "moved"
    save_subject(dataclasses.replace(subject, origin=np.asarray(subject.origin) + [4.0, -3.0, 2.0]), moved)
    capsys.readouterr()
    assert main(["track", str(folder), "--subject", str(moved), "--start", str(first / "poses.csv"),
                 "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert "origin lay 5.39 mm from" in capsys.readouterr().err
    again = read_poses_csv(tmp_path / "again" / "poses.csv")
    assert set(again["status"]) <= {"ok", "tracked"}
    # the same bone placement (refined again on coarse 128 px frames), compared in the new model frame
    from fluororeg.core.geometry import model_poses_from_physical, physical_poses_from_model

    before = model_poses_from_physical(physical_poses_from_model(read_poses_csv(first / "poses.csv")["poses"],
                                                                 subject.origin), np.asarray(subject.origin) + [4, -3, 2])
    ang, mm = pose_errors(again["poses"], before)
    assert ang.max() < 0.2 and mm.max() < 0.2, (ang, mm)
    assert main(["export", str(first / "poses.csv"), "--format", "tra", "--subject", str(moved),
                 "--out", str(tmp_path / "x.tra")]) == 2
    assert "export with the subject folder the run used" in capsys.readouterr().err
