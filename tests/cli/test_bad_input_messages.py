"""Bad input gets one line naming the option or value and what was expected (exit status 2),
before any work: simulate, dataset, render, calibrate, the MayaCam reader and the study manifest."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.cli import main


def _fails(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--size", "20000"], ("--size 20000", "8192")),            # would run for minutes
    (["--n-frames", "100000000"], ("--n-frames 100000000", "1,000,000")),
    (["--seed", "-1"], ("--seed -1", ">= 0")),
])
def test_simulate_refuses_bad_options_at_once(capsys, tmp_path, argv, expected):
    _fails(capsys, ["simulate", "--subject", str(tmp_path / "no_subject"), "--n-frames", "1", "--quiet",
                    "--out", str(tmp_path / "rec"), *argv], *expected)
    assert not (tmp_path / "rec").exists()


@pytest.mark.parametrize("kwargs, expected", [
    ({"n_frames": 100_000_000}, "n_frames = 100000000"),
    ({"seed": -1}, "seed = -1"),
    ({"views": "big"}, "view 1 width = 20000"),
])
def test_simulate_recording_checks_its_arguments_first(tmp_path, kwargs, expected):
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    if kwargs.get("views") == "big":
        kwargs["views"] = default_dual_views(20000, 20000)
    with pytest.raises(ValueError, match=expected):
        simulate_recording(None, tmp_path / "rec", **kwargs)
    assert not (tmp_path / "rec").exists()


def test_dataset_size_zero_names_size(capsys, tmp_path):
    _fails(capsys, ["dataset", "--subject", str(tmp_path / "no_subject"), "--size", "0", "--out", str(tmp_path / "d"),
                    "--quiet"], "--size 0", "expected 8 to")


@pytest.mark.parametrize("argv, expected", [
    (["--max-angle", "nan"], "--max-angle nan: expected an angle of 0 to 180 degrees"),
    (["--max-angle", "-10"], "--max-angle -10.0: expected an angle of 0 to 180 degrees"),
    (["--max-angle", "inf"], "--max-angle inf"),
    (["--seed", "-1"], "--seed -1: expected a whole number >= 0"),
])
def test_render_names_max_angle_and_seed(capsys, tmp_path, argv, expected):
    _fails(capsys, ["render", "--ct", str(tmp_path / "no_ct.nii.gz"), "--count", "1", "--out", str(tmp_path / "r"),
                    *argv], expected)


def test_mayacam_empty_bom_and_unknown_content(tmp_path):
    from fluororeg.calibration.formats import read_mayacam, write_mayacam
    from fluororeg.simulation.simulate import default_dual_views

    cam = tmp_path / "cam.txt"
    write_mayacam(cam, default_dual_views(128, 128)[0])
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + cam.read_bytes())
    a, b = read_mayacam(cam), read_mayacam(bom)
    assert np.array_equal(a.K, b.K) and np.array_equal(a.R, b.R) and (a.width, a.height) == (b.width, b.height)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty: expected a MayaCam 2.0 file"):
        read_mayacam(empty)
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\n")
    with pytest.raises(ValueError, match="starts with 'hello world': expected 'image size'"):
        read_mayacam(junk)


def test_calibrate_distortion_without_image(capsys, tmp_path):
    _fails(capsys, ["calibrate", "distortion", "--out", str(tmp_path / "dx.json")],
           "calibrate distortion needs the bead-plate image")


def test_beads_csv_with_text_names_the_file(capsys, tmp_path):
    beads = tmp_path / "beads.csv"
    beads.write_text("1,2,3\n1,a,3\n")
    _fails(capsys, ["calibrate", "geometry", "--bead-images", "a.png", "b.png", "--beads", str(beads),
                    "--out", str(tmp_path / "g.json")], f"--beads {beads}", "could not convert string 'a'")


@pytest.mark.parametrize("body, expected", [
    ("min_visible = 0\nmin_similarity = 5.0\n", ("min_visible = 0", "min_similarity = 5.0")),
    ("loss_scale_mm = -1\nsmoothing_hz = -2\n", ("loss_scale_mm = -1", "smoothing_hz = -2")),
])
def test_manifest_lists_every_bad_register_field(tmp_path, body, expected):
    from fluororeg.study.manifest import ManifestError, load_study

    path = tmp_path / "study.toml"
    path.write_text(f'[settings.register]\n{body}\n[[subject]]\nname = "a"\nfolder = "subj"\n\n'
                    '[[recording]]\nname = "r1"\nsubject = "a"\nfolder = "rec/r1"\n')
    with pytest.raises(ManifestError) as info:
        load_study(path)
    problems = [p for p in info.value.problems if "register settings" in p]
    assert len(problems) == 2, problems
    for text, problem in zip(expected, problems):
        assert text in problem
    path.write_text(path.read_text().replace(body, "min_visible = 5\n"))
    assert load_study(path).recordings[0].register == {"min_visible": 5}


def test_subject_init_refuses_what_cannot_be_a_bone_model(capsys, tmp_path, subject):
    """Voxel sizes no CT has, a bone threshold below fat (the whole body would be bone) and
    landmarks at one point: said at once, nothing written."""
    from fluororeg.subject.example import headsq_path

    ct = str(headsq_path())
    base = ["subject", "init", "--ct", ct, "--propose", "8", "--out", str(tmp_path / "s")]
    _fails(capsys, [*base, "--threshold-hu", "-5000"], "--threshold-hu -5000", "below soft tissue")
    tif = str(tmp_path / "stack.tif")
    _fails(capsys, ["subject", "init", "--ct", tif, "--voxel-size", "1e300", "1", "1", "--intensity", "raw:1:-1024",
                    "--out", str(tmp_path / "s")], "--voxel-size 1e+300 1 1", "mm per voxel")
    same = tmp_path / "same.csv"
    same.write_text("name,x,y,z\n" + "".join(f"p{k},1.5,-2.0,30.0\n" for k in range(6)))
    _fails(capsys, ["subject", "init", "--ct", ct, "--landmarks", str(same), "--out", str(tmp_path / "s")],
           "6 landmarks lie within 0 mm of one line")
    assert not (tmp_path / "s").exists()


def test_pose_file_rows_and_export_options_that_would_be_ignored(capsys, tmp_path):
    from fluororeg.core.geometry import pose_matrix
    from fluororeg.io.poses import read_poses_csv, write_poses_csv

    pose = np.array([[10.0, 20.0, 30.0, 1.0, 2.0, 3.0]])
    path = write_poses_csv(tmp_path / "p.csv", [99], ["ok"], pose, pose_matrix(pose), [1.0], np.ones((1, 2)),
                           np.ones((1, 2)), [8], [0])
    text = path.read_text().splitlines()
    (tmp_path / "trailing.csv").write_text(text[0] + "\n" + text[1] + ",\n")  # a spreadsheet's trailing comma
    np.testing.assert_allclose(read_poses_csv(tmp_path / "trailing.csv")["poses"], pose)
    (tmp_path / "extra.csv").write_text(text[0] + "\n" + text[1] + ",7\n")
    with pytest.raises(ValueError, match="row 1 has .* fields for .* columns"):
        read_poses_csv(tmp_path / "extra.csv")
    _fails(capsys, ["export", str(path), "--format", "tra", "--frame", "99", "--subject", "example",
                    "--out", str(tmp_path / "x.tra")], "--frame 99 applies to --format slicer")
