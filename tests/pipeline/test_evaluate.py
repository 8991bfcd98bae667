"""Evaluation (Eq. 3), pose files (CSV, Autoscoper .tra) and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fluororeg.pipeline.evaluate import evaluate_poses, recordings_bar_chart, write_evaluation
from fluororeg.core.geometry import pose_matrix
from fluororeg.io.poses import read_poses_csv, read_tra, write_poses_csv, write_tra


def test_eq3_errors_and_summary(tmp_path):
    ref = np.array([[0, 0, 0, 0, 0, 0], [10, 20, 30, 1, 2, 3], [179, 0, 0, 0, 0, 0], [0, 0, 0, 5, 5, 5]], float)
    est = ref.copy()
    est[0] += [1.0, -2.0, 0.5, 0.1, -0.3, 0.2]
    est[1] += [0.0, 0.0, 0.0, 4.0, 0.0, 0.0]
    est[2, 0] = -179.0  # 2 deg apart across the wrap
    est[3] = np.nan     # not registered
    landmarks = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    ev = evaluate_poses(est, ref, landmarks=landmarks)
    np.testing.assert_allclose(ev.angle_err_deg[:3], [2.0, 0.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(ev.position_err_mm[:3], [0.3, 4.0, 0.0], atol=1e-9)
    assert np.isnan(ev.angle_err_deg[3]) and ev.registered.sum() == 3
    np.testing.assert_allclose(ev.landmark_err_mm[1], 4.0, atol=1e-9)  # pure translation
    s = ev.summary()
    assert s["frames"] == 4 and s["registered"] == 3
    np.testing.assert_allclose(s["angle_err_deg_mean"], 4 / 3)
    np.testing.assert_allclose(s["angle_err_deg_sd"], np.std([2, 0, 2], ddof=1))
    paths = write_evaluation(ev, tmp_path)
    assert json.loads(paths["summary"].read_text())["registered"] == 3
    lines = paths["csv"].read_text().splitlines()
    assert lines[0].startswith("frame,angle_err_deg") and lines[4] == "3,,,"
    assert paths["plot"].stat().st_size > 0
    bar = recordings_bar_chart({"walking": s, "flexion": s}, tmp_path / "bars.png")
    assert bar.exists()
    with pytest.raises(ValueError, match="same frames"):
        evaluate_poses(est[:2], ref)


def test_pose_files_that_say_two_things_are_refused(tmp_path, capsys):
    """A hand-edited pose file: a duplicated frame, angles edited without the matrix, a matrix that
    is not rigid (a .tra of zeros, a scaled one) are errors naming the row, not silent answers."""
    from fluororeg.cli import main
    from fluororeg.io.poses import read_reference_poses

    poses = np.array([[10.0, 20.0, 30.0, 1.0, 2.0, 3.0], [5.0, -4.0, 3.0, 7.0, 8.0, 9.0]])
    M = pose_matrix(poses)
    args = (["ok", "ok"], poses, M, [1.0, 1.0], np.ones((2, 2)), np.ones((2, 2)), [8, 8], [0, 0])
    good = write_poses_csv(tmp_path / "good.csv", [2, 99], *args)
    with pytest.raises(ValueError, match="frame 2 has 2 rows"):
        read_poses_csv(write_poses_csv(tmp_path / "dup.csv", [2, 2], *args))
    edited = good.read_text().splitlines()
    edited[2] = edited[2].replace("99,ok,5.0,", "99,ok,15.0,")
    (tmp_path / "edited.csv").write_text("\n".join(edited) + "\n")
    with pytest.raises(ValueError, match="frame 99's angles and translation .* differ"):
        read_poses_csv(tmp_path / "edited.csv")
    for name, bad in (("zeros", np.zeros((2, 4, 4))), ("scaled", M * [[2.0], [2.0], [2.0], [1.0]])):
        write_tra(tmp_path / f"{name}.tra", bad)
        with pytest.raises(ValueError, match="line 1: not a rigid transform"):
            read_reference_poses(tmp_path / f"{name}.tra", frames=[0, 1], subject=None, trial_frames=[0, 1])
    # evaluate against a reference none of whose frames is registered: said, not "nan +- nan"
    none = write_poses_csv(tmp_path / "none.csv", [2, 99], ["failed", "failed"], np.full((2, 6), np.nan),
                           np.full((2, 4, 4), np.nan), [np.nan] * 2, np.ones((2, 2)), np.ones((2, 2)), [0, 0], [0, 0])
    assert main(["evaluate", str(none), "--reference", str(good), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "0/2 frames with a reference registered" in out and "nan" not in out


def test_pose_csv_and_tra_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.uniform(-30, 30, (3, 3)), rng.uniform(-50, 50, (3, 3))], axis=1)
    poses[1] = np.nan
    M = pose_matrix(np.nan_to_num(poses))
    M[1] = np.nan
    status = np.array(["ok", "too_few_landmarks", "ok"])
    write_poses_csv(tmp_path / "p.csv", [0, 1, 2], status, poses, M, [1.5, np.nan, 2.5],
                    np.ones((3, 2)), 2 * np.ones((3, 2)), [30, 2, 31], [0, -1, 3])
    back = read_poses_csv(tmp_path / "p.csv")
    np.testing.assert_array_equal(back["status"], status)
    np.testing.assert_array_equal(back["poses"], poses)
    np.testing.assert_array_equal(back["matrices"], M)
    np.testing.assert_array_equal(back["mirror_case"], [0, -1, 3])
    write_tra(tmp_path / "p.tra", M)
    np.testing.assert_array_equal(read_tra(tmp_path / "p.tra"), M)
    first = [float(v) for v in (tmp_path / "p.tra").read_text().splitlines()[0].split(",")]
    # Autoscoper's default export writes the matrix row by row: the translation is values 4, 8, 12
    assert [first[3], first[7], first[11]] == list(M[0, :3, 3]) and first[12:] == [0.0, 0.0, 0.0, 1.0]
    write_tra(tmp_path / "c.tra", M, as_rows=False)  # "as columns": the OpenGL array as it is
    columns = [float(v) for v in (tmp_path / "c.tra").read_text().splitlines()[0].split(",")]
    assert columns[12:15] == list(M[0, :3, 3]) and columns[3] == 0.0
    np.testing.assert_array_equal(read_tra(tmp_path / "c.tra", as_rows=False), M)
    assert (tmp_path / "p.tra").read_text().splitlines()[1].count("NaN") == 16
    (tmp_path / "bad.tra").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="3 values, expected 16"):
        read_tra(tmp_path / "bad.tra")
    (tmp_path / "bad.csv").write_text("frame,x\n1,2\n")
    with pytest.raises(ValueError, match="not a fluororeg pose file"):
        read_poses_csv(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="poses has shape"):
        write_poses_csv(tmp_path / "q.csv", [0], ["ok"], np.zeros((2, 6)), M[:1], [0], np.ones((1, 2)),
                        np.ones((1, 2)), [4], [0])


def test_malformed_pose_csv_rows_are_named(tmp_path):
    poses = np.zeros((2, 6))
    write_poses_csv(tmp_path / "p.csv", [0, 1], ["ok", "ok"], poses, pose_matrix(poses), [1.0, 1.0],
                    np.ones((2, 2)), np.ones((2, 2)), [30, 30], [0, 0])
    lines = (tmp_path / "p.csv").read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:2] + [",".join(lines[2].split(",")[:10])]) + "\n")
    with pytest.raises(ValueError, match="row 2 has no value for column m02"):
        read_poses_csv(tmp_path / "short.csv")
    (tmp_path / "noframe.csv").write_text("\n".join([lines[0], "," + lines[1].split(",", 1)[1]]) + "\n")
    with pytest.raises(ValueError, match="row 1, column frame: '', expected an integer"):
        read_poses_csv(tmp_path / "noframe.csv")
    (tmp_path / "word.csv").write_text("\n".join([lines[0], lines[1].replace(",30,", ",many,")]) + "\n")
    with pytest.raises(ValueError, match="column n_vis: 'many' is not a number"):
        read_poses_csv(tmp_path / "word.csv")


def test_reference_poses_are_matched_by_frame_number(tmp_path, capsys):
    from fluororeg.cli import main
    from fluororeg.io.poses import read_reference_poses

    rng = np.random.default_rng(3)
    truth = np.concatenate([rng.uniform(-30, 30, (6, 3)), rng.uniform(-50, 50, (6, 3))], axis=1)  # frames 0..5
    est = truth + [1.0, 0, 0, 0, 0, 0.5]
    est[4] = np.nan
    write_poses_csv(tmp_path / "est.csv", np.arange(6), ["ok"] * 4 + ["failed", "ok"], est,
                    pose_matrix(np.nan_to_num(est)), np.ones(6), np.ones((6, 2)), np.ones((6, 2)), [9] * 6, [0] * 6)
    # A manual registration of some frames only, in another order, with just the pose columns
    # and one frame left empty: frames 5, 1, 4 and 3 (empty).
    rows = ["frame,theta_x_deg,theta_y_deg,theta_z_deg,tau_x_mm,tau_y_mm,tau_z_mm"]
    rows += [",".join([str(f)] + [repr(float(v)) for v in truth[f]]) for f in (5, 1, 4)] + ["3,,,,,,"]
    (tmp_path / "manual.csv").write_text("\n".join(rows) + "\n")
    ref = read_reference_poses(tmp_path / "manual.csv", frames=np.arange(7))
    assert ref.shape == (7, 6)
    np.testing.assert_array_equal(ref[[1, 4, 5]], truth[[1, 4, 5]])
    assert np.isnan(ref[[0, 2, 3, 6]]).all()
    assert main(["evaluate", str(tmp_path / "est.csv"), "--reference", str(tmp_path / "manual.csv"),
                 "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "evaluation_summary.json").read_text())
    # Frames 1 and 5 are evaluated (1 deg, 0.5 mm); frame 4 has a reference but no estimate.
    assert (summary["frames"], summary["registered"], summary["frames_without_reference"]) == (3, 2, 3)
    np.testing.assert_allclose([summary["angle_err_deg_max"], summary["position_err_mm_max"]], [1.0, 0.5])
    assert "2/3 frames with a reference registered" in capsys.readouterr().out
    # Bad references are refused, naming the problem.
    (tmp_path / "dup.csv").write_text(rows[0] + "\n" + rows[1] + "\n" + rows[1] + "\n")
    with pytest.raises(ValueError, match="frame 5 appears 2 times"):
        read_reference_poses(tmp_path / "dup.csv")
    (tmp_path / "other.csv").write_text("\n".join([rows[0], ",".join(["40"] + ["0"] * 6)]) + "\n")
    assert main(["evaluate", str(tmp_path / "est.csv"), "--reference", str(tmp_path / "other.csv"),
                 "--out", str(tmp_path / "ev2")]) == 2
    assert "has no pose for any of the 6 frames" in capsys.readouterr().err
    with pytest.raises(ValueError, match="partly missing"):
        evaluate_poses(est[:1], np.array([[0, 0, 0, 0, 0, np.nan]]))
