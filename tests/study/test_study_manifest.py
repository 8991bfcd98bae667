"""The study manifest: strict parsing (every problem listed, naming key and file), file checks,
`study init` from a folder tree, and the Dask-free command line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from fluororeg.study.manifest import ManifestError, load_study


def test_unknown_keys_and_bad_values_are_all_listed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("""
[study]
name = "bad"
retrys = 3

[settings.dataset]
n_trian = 10
image_size = 4

[settings.register]
style = "gan"

[[subject]]
name = "a"
foldr = "subjects/a"

[[subject]]
name = "b"
folder = "subjects/b"
ct = "x.nii.gz"

[[recording]]
name = "r1"
subject = "c"
folder = "rec/r1"

[[recording]]
name = "r2"
subject = "b"
views = ["v1"]
""")
    with pytest.raises(ManifestError) as info:
        load_study(path)
    problems = info.value.problems
    text = "\n".join(problems)
    assert all(str(path) in p for p in problems)
    assert "[study]: unknown key 'retrys' (did you mean 'retries'?)" in text
    assert "[settings.dataset]: unknown key 'n_trian' (did you mean 'n_train'?)" in text
    assert "unknown key 'foldr' (did you mean 'folder'?)" in text
    assert "[[subject]] #1 (a): expected 'folder'" in text
    assert "'ct' is set together with 'folder'" in text
    assert "[[recording]] #1 (r1): 'subject' = 'c' is not a [[subject]] of this study" in text
    assert "'views' = ['v1']: expected the two image sequences" in text
    assert "exactly one of 'geometry'" in text
    # A bad shared value: one problem, at the table that sets it (not one per subject or recording).
    assert f"{path} [settings.dataset]: image_size = 4: expected an integer >= 8" in problems
    assert [p for p in problems if "style 'gan' is unknown" in p] == [
        f"{path} [settings.register]: style 'gan' is unknown: expected 'translate', 'log', 'invert' or 'none'"]
    assert sum("image_size = 4" in p for p in problems) == 1
    assert len(problems) >= 9


def test_a_recording_of_a_subject_with_a_bad_name_points_at_that_subject(tmp_path):
    """A [[subject]] left out for its name: each recording naming it says so and where, not that
    the study has no such subject (it has, under a name it cannot use); the check still opens
    those recordings' files."""
    path = tmp_path / "names.toml"
    path.write_text("""
[[subject]]
name = "knee 1"
folder = "subjects/knee1"

[[recording]]
name = "walk"
subject = "knee 1"
folder = "rec/walk"

[[recording]]
name = "run\\n"
subject = ["knee 1"]
folder = "rec/run"

[[recording]]
name = "jump"
subject = ["knee 1"]
folder = "rec/jump"
""")
    with pytest.raises(ManifestError) as info:
        load_study(path)
    problems = info.value.problems
    subject_where = f"{path} [[subject]] #1 (knee 1)"
    assert f"{subject_where}: 'name' = 'knee 1': expected a name of letters, digits, '_', '-' or '.' (it names the " \
           "output folder)" in problems
    assert f"{path} [[recording]] #1 (walk): 'subject' = 'knee 1': that subject's name is not usable (see " \
           f"{subject_where}); rename it in both places" in problems
    assert not any("'knee 1' is not a [[subject]]" in p for p in problems), problems
    # A name with a line break is no name; a subject that is not a string is no subject (a
    # problem, not a crash).
    assert f"{path} [[recording]] #2 (run\n): 'name' = 'run\\n': expected a name of letters, digits, '_', '-' or " \
           "'.' (it names the output folder)" in problems
    assert f"{path} [[recording]] #3 (jump): 'subject' = ['knee 1'] is not a [[subject]] of this study; " \
           "subjects: []" in problems
    # Such recordings never run, but `study check` opens their files in the same run (their
    # folders are missing here); a recording without a usable name is not checked.
    from fluororeg.study.inputs import check_study_files

    partial = info.value.partial
    assert partial.recordings == () and [r.name for r in partial.unassigned] == ["walk", "jump"]
    files = check_study_files(partial)
    assert len(files) == 2, files
    assert files[0].startswith(f"{path} [[recording]] #1 (walk): ") and "rec/walk" in files[0]
    assert files[1].startswith(f"{path} [[recording]] #3 (jump): ") and "rec/jump" in files[1]


def test_a_bad_setting_is_named_once_where_it_is_set(tmp_path):
    """Settings are inherited ([settings.*] -> [subject.*] -> [recording.register]): a bad value is
    one problem at the table that sets it, and a bad dataset value hides no other problem."""
    path = tmp_path / "where.toml"
    path.write_text("""
[settings.dataset]
n_train = -3

[settings.register]
smoothing_hz = -1

[[subject]]
name = "a"
folder = "subjects/a"

[[subject]]
name = "b"
folder = "subjects/b"
[subject.register]
min_similarity = 2.0

[[recording]]
name = "r1"
subject = "a"
folder = "rec/r1"

[[recording]]
name = "r2"
subject = "b"
folder = "rec/r2"

[[recording]]
name = "r3"
subject = "b"
folder = "rec/r3"
[recording.register]
smoothing_hz = 5.0
min_visible = 0
""")
    with pytest.raises(ManifestError) as info:
        load_study(path)
    assert sorted(info.value.problems) == sorted([
        f"{path} [settings.dataset]: n_train = -3: expected a whole number >= 0",
        f"{path} [settings.register]: smoothing_hz = -1: expected a positive cut-off (Hz) or None (off)",
        f"{path} [[subject]] #2 (b) register settings: min_similarity = 2.0: expected a similarity between 0 and 1",
        f"{path} [[recording]] #3 (r3) register settings: min_visible = 0: expected at least 4 (landmarks in both fields of view)",
    ]), info.value.problems


def test_check_opens_every_file_and_lists_every_problem(study_tree, manifest_writer, capsys):
    from fluororeg.cli import main
    from fluororeg.study.inputs import check_study_files, load_study_subject

    good = manifest_writer(study_tree, "good")
    assert check_study_files(load_study(good)) == []
    assert main(["study", "check", str(good)]) == 0
    assert "ok: good: 2 subject(s), 3 recording(s)" in capsys.readouterr().out
    text = good.read_text().replace('"subjects/beta/landmarks.mrk.json"', '"subjects/beta/missing.mrk.json"')
    text = text.replace('folder = "recordings/alpha/flex"', 'folder = "recordings/alpha/nowhere"')
    text = text.replace('geometry = "recordings/beta/walk/geometry.json"', 'geometry = "recordings/alpha/walk/truth.json"')
    text = text.replace('name = "alpha"\nfolder = "subjects/alpha"\n',
                        'name = "alpha"\nfolder = "subjects/alpha"\ndetector = "nothing.onnx"\n')
    bad = study_tree / "bad_files.toml"
    bad.write_text(text)
    problems = check_study_files(load_study(bad))
    joined = "\n".join(problems)
    assert len(problems) == 4, problems
    assert "missing.mrk.json" in joined and "recordings/alpha/nowhere" in joined and "nothing.onnx" in joined
    assert "(beta_walk)" in joined  # the geometry file is not a geometry
    assert main(["study", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("4 problem(s) in study manifest") and out.count("\n  - ") == 4
    # A bad setting does not hide the files' problems: one check lists both.
    bad.write_text(text.replace("[settings.register]\n", "[settings.register]\nsmoothing_hz = -1\n"))
    assert main(["study", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("5 problem(s) in study manifest") and "[settings.register]: smoothing_hz = -1" in out
    assert "missing.mrk.json" in out and "recordings/alpha/nowhere" in out and "nothing.onnx" in out
    # A floor no frame could pass: more landmarks than the subject has (register refuses it too).
    n = len(load_study_subject(load_study(good).subjects[0]).landmarks)
    strict = study_tree / "strict.toml"
    strict.write_text(good.read_text().replace('[subject.register]\n', f'[subject.register]\nmin_visible = {n + 1}\n'))
    problems = check_study_files(load_study(strict))
    assert len(problems) == 2 and all(f"register min_visible = {n + 1}, but subject 'alpha' has {n} landmarks" in p
                                      for p in problems), problems
    # Smoothing over 4 frames: register refuses it before any work; the check says so first.
    strict.write_text(good.read_text().replace('[subject.register]\n', '[subject.register]\nsmoothing_hz = 5.0\n'
                                                                      'fps = 100.0\n'))
    problems = check_study_files(load_study(strict))
    assert len(problems) == 2 and all("register smoothing_hz needs at least 16 frames; the recording has 4" in p
                                      for p in problems), problems


def test_init_writes_a_manifest_from_a_folder_tree(study_tree, tmp_path, capsys):
    from fluororeg.cli import main
    from fluororeg.io.recording import write_recording_manifest

    root = tmp_path / "lab"
    (root / "subjects").mkdir(parents=True)
    shutil.copytree(study_tree / "subjects" / "alpha", root / "subjects" / "s01")
    shutil.copytree(study_tree / "subjects" / "beta", root / "subjects" / "s02")  # CT + landmarks only
    (root / "subjects" / "s03").mkdir()  # nothing usable: left out with a warning
    shutil.copytree(study_tree / "recordings" / "alpha" / "walk", root / "recordings" / "s01" / "walk")
    shutil.copytree(study_tree / "recordings" / "beta" / "walk", root / "recordings" / "s02" / "walk one")
    write_recording_manifest(root / "recordings" / "s02" / "walk one", frames=4)
    assert main(["study", "init", str(root)]) == 0
    out = capsys.readouterr().out
    assert "subjects/s03" in out and "left out" in out
    study = load_study(root / "study.toml")
    assert [s.name for s in study.subjects] == ["s01", "s02"]
    assert study.subjects[0].folder == root / "subjects" / "s01"
    assert study.subjects[1].ct.name == "ct.nrrd" and study.subjects[1].landmarks.name == "landmarks.mrk.json"
    assert [(r.name, r.subject) for r in study.recordings] == [("s01_walk", "s01"), ("s02_walk_one", "s02")]
    assert study.subjects[0].dataset["n_train"] == 9251 and study.recordings[0].register["style"] == "translate"
    assert main(["study", "init", str(root)]) == 2  # exists: not overwritten without --force
    assert "--force" in capsys.readouterr().err


def test_single_recording_commands_do_not_import_dask():
    code = "import sys, fluororeg.cli; assert 'dask' not in sys.modules and 'distributed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_study_run_without_dask_is_a_one_line_error(study_tree, manifest_writer, monkeypatch, capsys):
    from fluororeg.cli import main

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert main(["study", "run", str(manifest_writer(study_tree, "nodask"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install fluororeg[study]" in err


def test_the_example_manifest_reads():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "study.toml"
    study = load_study(example)
    assert [s.name for s in study.subjects] == ["s01", "s02"] and len(study.recordings) == 4
    by_name = {r.name: r for r in study.recordings}
    assert by_name["s02_walk1"].register["style"] == "log"          # the subject's override
    assert by_name["s01_flexion"].register["smoothing_hz"] == 6.0   # the recording's override
    assert by_name["s02_walk2"].calibration.pitch_mm == 0.2 and study.subject("s02").detector.name == "s02_detector.onnx"
