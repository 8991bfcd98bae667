"""Bad input gets one line naming the option, value or file and what was expected (exit status 2),
before any work: simulate, dataset, render, calibrate, subject init, the MayaCam, distortion,
recording, dataset and checkpoint readers, frame rates, the study manifest and OS errors."""

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
    # Named once, at the table that sets them (the recording inherits them)
    problems = [p for p in info.value.problems if "register" in p]
    assert len(problems) == 2 and all(p.startswith(f"{path} [settings.register]: ") for p in problems), problems
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


def test_calibration_files_and_pitches_no_camera_has(capsys, tmp_path):
    """A MayaCam camera matrix that is not an intrinsic matrix, a pixel pitch of a kilometre, a
    distortion model of another version or with a zero scale, a recording.json of another
    version: refused where they are read, naming the file or option, not used."""
    from dataclasses import replace

    from fluororeg.calibration.distortion import DistortionModel, load_distortion
    from fluororeg.calibration.formats import read_mayacam, write_mayacam
    from fluororeg.calibration.geometry_file import DualGeometry, geometry_to_dict
    from fluororeg.core.geometry import ConeView
    from fluororeg.io.recording import open_recording, write_recording_manifest
    from fluororeg.simulation.simulate import default_dual_views

    views = default_dual_views(64, 64)
    cams = [tmp_path / f"cam{k}.txt" for k in (1, 2)]
    for cam, view in zip(cams, views):
        write_mayacam(cam, view)
    lines = cams[0].read_text().splitlines()
    row = lines.index("camera matrix") + 3
    scaled = tmp_path / "scaled.txt"
    scaled.write_text("\n".join(lines[:row] + ["0.0,0.0,2.0"] + lines[row + 1:]) + "\n")
    with pytest.raises(ValueError, match=r"'.*scaled.txt' \(camera matrix\): its last row is 0,0,2, expected 0,0,1"):
        read_mayacam(scaled)
    _fails(capsys, ["calibrate", "geometry", "--mayacam", *map(str, cams), "--pitch", "1e9",
                    "--out", str(tmp_path / "g.json")], "pixel pitch 1000000000.0", "0.001 to 10")
    assert not (tmp_path / "g.json").exists()

    model = DistortionModel(order=3, width=64, height=64, centre=[32.0, 32.0], scale=45.0,
                            coef=np.zeros((10, 2)), inverse_coef=np.zeros((10, 2)))
    d = model.to_dict()
    for name, change, expected in [("v99", {"version": 99}, r"'.*v99.json'.version = 99: only version 1"),
                                   ("zero", {"scale": 0.0}, r"DistortionModel.scale = 0.0: expected a positive")]:
        (tmp_path / f"{name}.json").write_text(__import__("json").dumps({**d, **change}))
        with pytest.raises(ValueError, match=expected):
            load_distortion(tmp_path / f"{name}.json")
    with pytest.raises(ValueError, match=r"DistortionModel.centre = \[32.0, inf\]"):
        replace(model, centre=np.array([32.0, np.inf]))

    v = views[0]
    far = ConeView(v.intensifier_centre - 1e12 * v.normal, v.intensifier_centre, v.u, v.v, v.pitch_u, v.pitch_v,
                   v.width, v.height)
    with pytest.raises(ValueError, match=r"'view1': the source lies 1e\+12 mm from the intensifier plane, expected "
                                         r"100 to 10,000 mm"):
        DualGeometry((far, views[1]))
    rec = tmp_path / "rec"
    for k in (1, 2):
        (rec / f"view{k}").mkdir(parents=True)
        from PIL import Image
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(rec / f"view{k}" / "frame_0001.png")
    (rec / "geometry.json").write_text(__import__("json").dumps(geometry_to_dict(DualGeometry(views))))
    write_recording_manifest(rec, frames=1)
    assert len(open_recording(rec)) == 1
    manifest = rec / "recording.json"
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 7'))
    with pytest.raises(ValueError, match=r"recording.json' has version 7: only version 1"):
        open_recording(rec)


def test_frame_rates_no_camera_or_player_has(tmp_path):
    from fluororeg.pipeline.register import PipelineOptions
    from fluororeg.viz.overlay import save_overlay_video

    with pytest.raises(ValueError, match=r"fps = 1000000000.0: expected a positive frame rate \(frames/s\), at most"):
        PipelineOptions(fps=1e9)
    with pytest.raises(ValueError, match=r"fps = 1000000000.0: expected a playback frame rate above 0 and at most"):
        save_overlay_video([np.zeros((8, 8, 3), np.uint8)], tmp_path / "o.gif", fps=1e9)
    assert not (tmp_path / "o.gif").exists()
    assert PipelineOptions(fps=5000.0).fps == 5000.0  # a high-speed camera's rate stays valid


def test_damaged_dataset_and_checkpoint_name_the_file_and_the_way_out(tmp_path):
    """A dataset.json that is not JSON, a shard that is not HDF5, a truncated checkpoint: the
    error names the file and says what to do, instead of a parser's or h5py's words."""
    import json

    from fluororeg.dataset.generate import DatasetReader

    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    (root / "dataset.json").write_text('{"config": {"shard_size": 4}, "splits": ')
    with pytest.raises(ValueError, match=r"dataset.json' is not valid JSON .*generate the dataset again"):
        DatasetReader(root)
    (root / "dataset.json").write_text(json.dumps({"config": {}, "splits": {"train": 2}}))
    with pytest.raises(ValueError, match=r"not a fluororeg dataset description \(no valid config.shard_size"):
        DatasetReader(root)
    (root / "dataset.json").write_text(json.dumps({"config": {"shard_size": 4}, "splits": {"train": 2, "test": 0}}))
    (root / "train" / "shard_00000.h5").write_bytes(b"\x89HDF\r\n" + b"\0" * 10)  # truncated
    reader = DatasetReader(root)
    with pytest.raises(ValueError, match=r"dataset shard '.*shard_00000.h5' cannot be read .*delete it and run"):
        reader[0]

    torch = pytest.importorskip("torch")
    from fluororeg.training.common import load_checkpoint, load_resume_checkpoint, save_checkpoint

    ckpt = tmp_path / "run" / "checkpoint_last.pt"
    save_checkpoint(ckpt, {"step": 3, "w": torch.zeros(100)})
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"checkpoint '.*checkpoint_last.pt' is damaged or not a PyTorch checkpoint"):
        load_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"cannot resume from it; pass --restart"):
        load_resume_checkpoint(ckpt)


def test_paths_of_the_wrong_kind_and_os_errors_in_plain_words(capsys, tmp_path):
    from fluororeg.cli import _one_line
    from fluororeg.inference.onnx_model import OnnxModel
    from fluororeg.io.atomic import atomic_path, atomic_write_text
    from fluororeg.subject.example import headsq_path

    models = tmp_path / "models"
    models.mkdir()
    (models / "detector.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"models' is a folder: give the .onnx file itself \(the folder holds "
                                         r"detector.onnx\)"):
        OnnxModel(models)
    folder = tmp_path / "poses.csv"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:  # the temporary file beside it is not named
        atomic_write_text(folder, "x")
    assert _one_line(info.value) == f"'{folder}': is a directory"
    with pytest.raises(IsADirectoryError) as info:
        with atomic_path(folder) as tmp:
            tmp.write_text("x")
    assert _one_line(info.value) == f"'{folder}': is a directory"
    assert list(tmp_path.glob(".poses.csv.*")) == []
    _fails(capsys, ["subject", "init", "--ct", str(headsq_path()), "--flip", "1", "0", "0", "--out",
                    str(tmp_path / "s")], "--voxel-size and --flip are for a TIFF-stack CT")


def test_bead_image_of_another_size_is_called_so():
    from fluororeg.calibration import calibrate_view
    from fluororeg.simulation.simulate import default_dual_views

    guess = default_dual_views(512, 512)[0]
    with pytest.raises(ValueError, match=r"the bead image is 128 x 128 px but the rough view is 512 x 512 px"):
        calibrate_view(np.zeros((128, 128)), np.random.default_rng(0).normal(size=(8, 3)), guess)


def test_frame_read_errors_name_the_frame_number_of_the_file(tmp_path):
    """A damaged or odd frame is named by its number (the one in its file name, in every result),
    not by its position in the folder."""
    from PIL import Image

    from fluororeg.io.recording import ImageSequence

    folder = tmp_path / "view1"
    folder.mkdir()
    for number in (100, 101, 102):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / f"frame_{number:04d}.png")
    (folder / "frame_0101.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(folder / "frame_0102.png")
    seq = ImageSequence(folder)
    assert seq[0].shape == (16, 16)
    with pytest.raises(ValueError, match=r"cannot read frame 101 \('.*frame_0101.png'\)"):
        seq[1]
    with pytest.raises(ValueError, match=r"frame 102 \('.*frame_0102.png'\) is 16 x 8 px but the sequence's frames"):
        seq[2]
    with pytest.raises(IndexError, match="frame index 3 out of range for 3 frames"):
        seq[3]


def test_a_commands_warnings_are_one_line_naming_the_command(monkeypatch):
    """fluororeg's own warnings read like its errors (not Python's file:line and source line);
    other packages' warnings as Python writes them; a caller recording warnings still gets them."""
    import subprocess
    import sys
    import warnings

    from fluororeg.cli import info_command
    from fluororeg.cli.common import warnings_in_plain_words
    from fluororeg.pipeline import quality

    fmt = warnings_in_plain_words("register")
    assert fmt(UserWarning("the detector's recorded validation error allows 41.7 mm\n  at the bone"), UserWarning,
               quality.__file__, 688) == ("fluororeg register: warning: the detector's recorded validation error "
                                          "allows 41.7 mm at the bone\n")
    assert fmt(UserWarning("someone else's"), UserWarning, "/elsewhere/other.py", 7, "x = 1") == \
        warnings.formatwarning(UserWarning("someone else's"), UserWarning, "/elsewhere/other.py", 7, "x = 1")

    def run(args):  # as if warned in the package
        warnings.warn_explicit("allows 41.7 mm", UserWarning, quality.__file__, 688)
        return 0

    monkeypatch.setattr(info_command, "run", run)
    before = warnings.formatwarning
    with pytest.warns(UserWarning, match="allows 41.7 mm"):
        assert main(["info"]) == 0
    assert warnings.formatwarning is before  # the command's format ends with the command
    # As a lab sees it: one line on stderr.
    code = ("import warnings, fluororeg.cli as c, fluororeg.pipeline.quality as q\n"
            "def run(a):\n    warnings.warn_explicit('allows 41.7 mm', UserWarning, q.__file__, 688); return 0\n"
            "c.info_command.run = run\nraise SystemExit(c.main(['info']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "fluororeg info: warning: allows 41.7 mm\n", proc.stderr


def test_no_snapshot_selected_says_what_each_registered(monkeypatch, tmp_path):
    from fluororeg.training import translator_selection as ts

    scores = [ts.SnapshotScore(200, tmp_path / "s.pt", float("inf"), 0.25, 3.0, *[float("nan")] * 3),
              ts.SnapshotScore(-1, None, float("inf"), 0.0, 9.0, *[float("nan")] * 3, style="log", refined_share=0.1)]
    monkeypatch.setattr(ts, "score_snapshots", lambda *a, **k: scores)
    with pytest.raises(RuntimeError, match=r"\(landmark gate passed: step 200 25%, style log 0% \(10% refined\)\)"):
        ts.select_translator_snapshot(tmp_path, None, None, None, tmp_path / "sel")


def test_an_empty_argument_is_refused_not_taken_for_a_default(capsys, tmp_path, monkeypatch):
    """An empty or blank argument (typically an unset shell variable) was read as the option's
    absence or as the working folder: `subject check ""` checked the example subject and wrote
    ./subject_check.png (a fuzz run left one in the tests' folder), `--subject ""` loaded the
    working folder, `--translator ""` registered without the translator. Each is bad input now,
    named, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["subject", "check", ""], "fluororeg subject: error: argument 3 is empty")
    _fails(capsys, ["dataset", "--subject", " ", "--out", str(tmp_path / "d")], "--subject is empty")
    _fails(capsys, ["register", str(tmp_path), "--subject", "example", "--detector", "d.onnx", "--translator=",
                    "--out", str(tmp_path / "r")], "--translator is empty", "unset shell variable")
    assert list(tmp_path.iterdir()) == []
