"""The command line: render on a real CT file, error reporting."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fluororeg.cli import main
from fluororeg.subject.example import headsq_path


def test_render_writes_drrs_pngs_and_sheet(tmp_path, capsys):
    ct = headsq_path()
    if ct is None:
        pytest.skip("../shared/data/headsq is not available")
    assert main(["render", "--ct", str(ct), "--count", "5", "--size", "64", "--pixel-mm", "4",
                 "--out", str(tmp_path)]) == 0
    data = np.load(tmp_path / "drrs.npz")
    assert data["drrs"].shape == (5, 64, 64) and data["poses_deg_mm"].shape == (5, 6)
    assert data["drrs"].max() > 1.0  # bone: line integrals well above 1
    assert len(list(tmp_path.glob("drr_*.png"))) == 5
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png"))
    assert sheet.shape == (66, 5 * 66) and sheet.max() == 255
    assert main(["render", "--ct", str(ct), "--beam", "cone", "--count", "2", "--size", "48",
                 "--out", str(tmp_path / "cone")]) == 0
    assert np.load(tmp_path / "cone" / "drrs.npz")["drrs"].shape == (2, 48, 48)


def test_render_reports_bad_input(tmp_path, capsys):
    assert main(["render", "--ct", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path)]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    assert main(["render", "--count", "0", "--out", str(tmp_path)]) == 2
    assert "--count 0" in capsys.readouterr().err


def test_simulate_and_dataset_commands(tmp_path, subject, capsys, monkeypatch):
    import fluororeg.cli.common as cli_common
    from fluororeg.dataset.generate import DatasetReader
    from fluororeg.io.recording import open_recording

    monkeypatch.setattr(cli_common, "load_subject_arg", lambda folder: subject)  # the small headsq subject
    assert main(["simulate", "--n-frames", "2", "--size", "128", "--scenario", "static", "--quiet",
                 "--out", str(tmp_path / "rec")]) == 0
    assert len(open_recording(tmp_path / "rec")) == 2
    assert main(["dataset", "--n-train", "6", "--n-test", "2", "--size", "32", "--pixel-mm", "8", "--quiet",
                 "--out", str(tmp_path / "ds")]) == 0
    assert len(DatasetReader(tmp_path / "ds", "test")) == 2
    # A cone-beam dataset matching the recording's fluoroscopes (650 mm from the centre).
    assert main(["dataset", "--n-train", "4", "--n-test", "0", "--size", "32", "--pixel-mm", "8", "--quiet",
                 "--geometry", str(tmp_path / "rec" / "geometry.json"), "--out", str(tmp_path / "cone")]) == 0
    cone = DatasetReader(tmp_path / "cone", "train")
    assert cone.meta["config"]["projection"] == "cone"
    np.testing.assert_allclose(cone.meta["config"]["source_distance_mm"], [650 * 0.85, 650 * 1.15])
    assert main(["dataset", "--projection", "parallel", "--source-distance", "500", "900",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "cone beam" in capsys.readouterr().err
    assert main(["contact-sheet", str(tmp_path / "ds"), "--count", "4"]) == 0
    assert (tmp_path / "ds" / "contact_sheet_train.png").exists()
    assert main(["simulate", "--n-frames", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--n-frames 0" in capsys.readouterr().err
    assert main(["simulate", "--size", "100", "--out", str(tmp_path / "x")]) == 2
    assert "expected at least 128 pixels" in capsys.readouterr().err
    # A rerun into the same folder with fewer frames replaces the recording (no stale frames).
    assert main(["simulate", "--n-frames", "1", "--size", "128", "--scenario", "static", "--quiet",
                 "--out", str(tmp_path / "rec")]) == 0
    assert len(open_recording(tmp_path / "rec")) == 1 and len(list((tmp_path / "rec" / "view1").glob("*.png"))) == 1
    assert main(["dataset", "--n-train", "4", "--n-test", "0", "--size", "32", "--seed", "-1", "--quiet",
                 "--out", str(tmp_path / "ds_bad")]) == 2
    assert "seed = -1: expected a whole number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "ds_bad" / "dataset.json").exists()  # a corrected rerun is not refused
    # Without --pixel-mm / --azimuth: sized to the bone (DatasetConfig.for_subject); given ones win.
    from fluororeg.dataset.generate import DatasetConfig

    derived = DatasetConfig.for_subject(subject, image_size=32)
    assert main(["dataset", "--n-train", "2", "--n-test", "0", "--size", "32", "--azimuth", "-10", "10", "--quiet",
                 "--out", str(tmp_path / "sized")]) == 0
    config = DatasetReader(tmp_path / "sized", "train").meta["config"]
    assert config["pixel_mm"] == pytest.approx(derived.pixel_mm) and config["pixel_mm"] != 8
    assert config["poses"]["azimuth_deg"] == [-10, 10]
    assert config["poses"]["translation_mm"] == pytest.approx(list(derived.poses.translation_mm))


def test_commands_that_need_a_subject_refuse_to_run_without_one(tmp_path, capsys):
    no_subject = "no subject given: pass --subject DIR"
    for argv in (["dataset", "--out", str(tmp_path / "ds")],
                 ["simulate", "--out", str(tmp_path / "rec")],
                 ["evaluate", str(tmp_path / "p.csv"), "--reference", str(tmp_path / "r.csv"), "--with-landmarks",
                  "--out", str(tmp_path / "ev")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert no_subject in err and "--subject example" in err and err.count("\n") == 1, argv
    assert not (tmp_path / "ds").exists() and not (tmp_path / "rec").exists()
    for command in ("register", "overlay", "select-translator"):  # --subject is checked after the recording
        help_text = _help_of(command, capsys)
        assert "'example' for the built-in example subject; required" in " ".join(help_text.split()), command
    help_text = " ".join(_help_of("dataset", capsys).split())
    assert "derived from the bone's size" in help_text and "given explicitly" in help_text


def _help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


class _Detector:
    def __init__(self, crop):
        self.crop_pixel_mm, self.path = crop, "det.onnx"


def test_crop_pixel_size_comes_from_the_detector(capsys):
    from fluororeg.cli.register_commands import crop_pixel_mm_for

    assert crop_pixel_mm_for(None, _Detector(1.1)) == 1.1  # the detector's (its dataset's) pixel size
    assert crop_pixel_mm_for(1.15, _Detector(1.1)) == 1.15  # within 10 %: the user's
    for given in (1.25, 0.9, -1.0, float("nan")):
        with pytest.raises(ValueError, match="--crop-pixel-mm"):
            crop_pixel_mm_for(given, _Detector(1.1))
    assert crop_pixel_mm_for(1.5, _Detector(None)) == 1.5  # an older export: the user's, else 2 mm with a note
    assert crop_pixel_mm_for(None, _Detector(None)) == 2.0 and "records no crop pixel size" in capsys.readouterr().err


def test_subject_init_and_check(subject, tmp_path, capsys):
    from fluororeg.subject.landmarks import save_landmarks
    from fluororeg.subject.subject import load_subject
    from fluororeg.io.volume_formats import save_volume

    save_volume(subject.ct, tmp_path / "ct.nrrd")
    save_landmarks(tmp_path / "lm.mrk.json", subject.landmarks)
    assert main(["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--landmarks", str(tmp_path / "lm.mrk.json"),
                 "--pairs", "left:right", "--out", str(tmp_path / "subj")]) == 0
    made = load_subject(tmp_path / "subj")
    np.testing.assert_allclose(made.landmarks.positions, subject.landmarks.positions)
    assert [tuple(made.landmark_names[i] for i in p) for p in made.pairs] == \
        [tuple(subject.landmark_names[i] for i in p) for p in subject.pairs]
    assert main(["subject", "check", str(tmp_path / "subj")]) == 0
    out = capsys.readouterr().out
    assert f"{len(subject.landmark_names)} landmarks" in out and "on bone" in out
    sheet = np.asarray(Image.open(tmp_path / "subj" / "subject_check.png"))
    assert sheet.shape == (512, 1024, 3) and sheet.std() > 10
    # Proposed landmarks when none are given.
    assert main(["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--propose", "9", "--out",
                 str(tmp_path / "auto")]) == 0
    auto = load_subject(tmp_path / "auto")
    assert len(auto.landmark_names) == 9 and len(auto.pairs) == 3
    # Pairs from <stem>_L / <stem>_R names; a landmark off the bone (moved into the brain) is
    # reported, and --strict fails on it.
    from fluororeg.subject.landmarks import Landmarks

    names = ["ear_L" if n == "left" else "ear_R" if n == "right" else n for n in subject.landmark_names]
    moved = subject.landmarks.positions.copy()
    top = subject.landmark_names.index("top")
    moved[top, 2] -= 40.0
    save_landmarks(tmp_path / "named.mrk.json", Landmarks(tuple(names), moved))
    assert main(["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--landmarks", str(tmp_path / "named.mrk.json"),
                 "--out", str(tmp_path / "named")]) == 0
    named = load_subject(tmp_path / "named")
    assert [tuple(named.landmark_names[i] for i in p) for p in named.pairs] == [("ear_L", "ear_R")]
    capsys.readouterr()
    assert main(["subject", "check", str(tmp_path / "named"), "--strict"]) == 1
    assert "warning: landmark top" in capsys.readouterr().out
    assert main(["subject", "check", str(tmp_path / "named"), "--strict", "--max-off-bone-mm", "nan"]) == 2
    assert "--max-off-bone-mm nan: expected a distance >= 0" in capsys.readouterr().err
    assert main(["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--landmarks", str(tmp_path / "lm.mrk.json"),
                 "--pairs", "left-right", "--out", str(tmp_path / "bad")]) == 2
    assert "LEFT:RIGHT" in capsys.readouterr().err
    # An existing subject (with its edited landmarks) is not overwritten unless --force.
    assert main(["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--propose", "9", "--out",
                 str(tmp_path / "named")]) == 2
    assert "already holds a subject" in capsys.readouterr().err
    assert load_subject(tmp_path / "named").landmark_names == named.landmark_names
    assert main(["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--propose", "9", "--force", "--out",
                 str(tmp_path / "named")]) == 0
    assert len(load_subject(tmp_path / "named").landmark_names) == 9
    assert main(["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--pairs", "a:b", "--out",
                 str(tmp_path / "nolm")]) == 2
    assert "--pairs names landmarks of --landmarks" in capsys.readouterr().err


def test_python_m_fluororeg_is_the_command():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "fluororeg", "register", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--view-outlier-ratio" in run.stdout


def test_version(capsys):
    import fluororeg

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"fluororeg {fluororeg.__version__}"


def test_info_says_where_each_part_runs(capsys, monkeypatch):
    """``info``: the backends, and per part of the work where 'auto' runs it on this machine,
    as the code that runs it decides (the core's renders, onnxruntime, torch), and the threads."""
    from fluororeg import _core
    from fluororeg.core import threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(threads, "_configured", 0)  # an earlier test's set_num_threads must not count
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    renders = "CUDA" if _core.cuda_available() else "CPU ("
    assert f"renders (dataset, refinement): {renders}" in out
    assert "networks, inference (onnxruntime): " in out and "threads per process: 3 (OMP_NUM_THREADS" in out
    try:
        import torch
    except ImportError:
        assert "torch is not installed" in out
    else:
        assert ("training (torch): CUDA" in out) == torch.cuda.is_available()


@pytest.mark.parametrize("old, new", [
    (["render", "--geometry", "cone"], ["render", "--beam", "cone"]),
    (["simulate", "--frames", "3"], ["simulate", "--n-frames", "3"]),
    (["register", "rec", "--detector", "d.onnx", "--out", "o", "--smooth-hz", "2.5"],
     ["register", "rec", "--detector", "d.onnx", "--out", "o", "--smoothing-hz", "2.5"]),
])
def test_deprecated_options_still_work_and_say_so(old, new, capsys):
    from fluororeg.cli import build_parser

    renamed = vars(build_parser().parse_args(new))
    assert capsys.readouterr().err == ""
    deprecated = vars(build_parser().parse_args(old))
    assert deprecated == renamed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old[-2]} is deprecated" in err and f"use {new[-2]}" in err


def test_train_translator_refuses_subject_without_detector_before_any_work(tmp_path, capsys):
    assert main(["train-translator", "--xray", str(tmp_path / "none"), "--drr", str(tmp_path / "no_dataset"),
                 "--out", str(tmp_path / "run"), "--subject", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--subject is used with --detector" in err and "no_dataset" not in err
    assert not (tmp_path / "run").exists()


def test_deprecated_commands_still_work_and_say_so(tmp_path, capsys):
    # train-style / select-style run train-translator / select-translator (here: up to their first error).
    assert main(["train-style", "--xray", str(tmp_path / "none"), "--drr", str(tmp_path), "--out", str(tmp_path),
                 "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "train-style is deprecated" in err and "use train-translator" in err and "--steps 0" in err
    assert main(["select-style", str(tmp_path), str(tmp_path / "missing_recording"), "--detector", "d.onnx",
                 "--out", str(tmp_path / "sel")]) == 2
    err = capsys.readouterr().err
    assert "select-style is deprecated" in err and "use select-translator" in err and "missing_recording" in err
    # simulate --frames still counts frames, and its errors name the new option.
    assert main(["simulate", "--frames", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "--frames is deprecated" in err[0] and "--n-frames 0: expected at least 1" in err[1]


def test_ctrl_c_exits_130_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    import fluororeg.cli.common as cli_common

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_common, "load_subject_arg", interrupted)
    assert main(["dataset", "--out", str(tmp_path / "ds")]) == 130
    assert capsys.readouterr().err.strip() == "fluororeg dataset: interrupted: run the same command again to resume"
    assert main(["simulate", "--out", str(tmp_path / "rec")]) == 130
    assert "run the same command again to start over" in capsys.readouterr().err


def test_ctrl_c_while_the_commands_are_loaded_exits_130_without_a_traceback(monkeypatch, capsys):
    """The parser imports the commands' modules (SciPy among them); a Ctrl-C then (a resumed run
    interrupted again at once: the fault-injection test with FLUORO_FAULT_KILLS=6 met it, once as
    SciPy's "ImportError: initialization failed") printed Python's traceback."""
    import fluororeg.cli as cli

    def loading(*args, **kwargs):
        raise KeyboardInterrupt

    def extension_loading(*args, **kwargs):  # what a pybind11 module's init makes of Ctrl-C (SciPy's HiGHS)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    for interrupted in (loading, extension_loading):
        monkeypatch.setattr(cli, "build_parser", interrupted)
        assert main(["dataset", "--out", "x"]) == 130
        assert capsys.readouterr().err.strip() == "fluororeg: interrupted before the command started: run it again"
    monkeypatch.setattr(cli, "build_parser", lambda: (_ for _ in ()).throw(ImportError("no module named x")))
    with pytest.raises(ImportError, match="no module named x"):  # an import that fails of itself stays itself
        main(["dataset", "--out", "x"])


def test_ctrl_c_during_an_import_is_an_interrupt_not_an_error(tmp_path, monkeypatch, capsys):
    """Python 3.11 turns a KeyboardInterrupt raised while a class is made (Ctrl-C while
    matplotlib is imported for the QC figures: a fault-injection run met it) into a RuntimeError
    caused by it; an error raised while an interrupt is handled has it as its context. Both end
    as the Ctrl-C they are (130, how to go on), not as an error (2)."""
    import fluororeg.cli.common as cli_common

    class Interrupted:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    def class_made_during_ctrl_c(folder):
        try:
            type("Axis", (), {"converter": Interrupted()})
        except RuntimeError as exc:  # 3.12 and later raise the KeyboardInterrupt itself
            assert isinstance(exc.__cause__, KeyboardInterrupt)
            raise

    def error_while_handling_ctrl_c(folder):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise OSError("cleanup failed")

    for handler in (class_made_during_ctrl_c, error_while_handling_ctrl_c):
        monkeypatch.setattr(cli_common, "load_subject_arg", handler)
        assert main(["dataset", "--out", str(tmp_path / "ds")]) == 130
        assert capsys.readouterr().err.strip() == "fluororeg dataset: interrupted: run the same command again to resume"
    # An error of its own stays an error.
    monkeypatch.setattr(cli_common, "load_subject_arg", lambda folder: (_ for _ in ()).throw(OSError("disk full")))
    assert main(["dataset", "--out", str(tmp_path / "ds")]) == 2
    assert "error: disk full" in capsys.readouterr().err


def test_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "poses.csv"
    bad.write_text("frame,theta_x_deg\n0,1\n")
    assert main(["evaluate", str(bad), "--reference", str(tmp_path / "none.csv"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fluororeg evaluate: error: ") and "poses.csv" in err
    with pytest.raises(SystemExit) as stop:
        main(["render", "--beam", "fan"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "fluororeg render: error:" in err and "'fan'" in err
