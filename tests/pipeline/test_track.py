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
    assert "registered 30 of 30 frame pairs" in capsys.readouterr().out
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
