"""fluororeg study on a Dask LocalCluster: two subjects, three recordings, tiny models; a
worker killed mid-study, resume, failures."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np

from fluororeg.study.manifest import load_study
from fluororeg.study.run import run_study

RECORDINGS = ("alpha_walk", "alpha_flex", "beta_walk")


def test_study_builds_models_once_and_registers_every_recording(built_study, read_poses):
    manifest, run = built_study
    out = run.out
    assert run.ok and run.frame_pairs_processed == 12 and run.workers == 1
    for name in RECORDINGS:
        folder = out / "recordings" / name
        assert (folder / "poses.csv").exists() and (folder / "poses.tra").exists()
        assert json.loads((folder / "options.json").read_text())["num_threads"] == 1
        assert read_poses(run, name).shape == (4, 6)
        assert np.isfinite(read_poses(run, name)).all(axis=1).any()
    assert json.loads((out / "recordings" / "alpha_walk" / "options.json").read_text())["style"] == "translate"
    assert json.loads((out / "recordings" / "beta_walk" / "options.json").read_text())["style"] == "log"
    # alpha registers with style translation: its translator was trained; beta needs none.
    assert (out / "subjects" / "alpha" / "style" / "xray_to_drr.onnx").exists()
    assert not (out / "subjects" / "beta" / "style").exists()
    for s in ("alpha", "beta"):
        for stage in ("dataset", "detector"):
            assert json.loads((out / "subjects" / s / "stages" / f"{stage}.json").read_text())["complete"]
    # beta's dataset matches its 5 landmarks and pairs
    meta = json.loads((out / "subjects" / "beta" / "dataset" / "dataset.json").read_text())
    assert meta["landmark_names"] == ["left", "right", "front", "back", "top"] and meta["pairs"] == [[0, 1]]
    # The reference of beta_walk (given in the manifest) is evaluated.
    assert (out / "recordings" / "beta_walk" / "evaluation_summary.json").exists()
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("recording,subject,result,frames,registered") and len(csv) == 4
    assert all(",done,4," in line for line in csv[1:])
    md = (out / "summary.md").read_text()
    assert "| alpha_walk | alpha | done" in md and "## Subjects' models" in md and "Failures" not in md
    assert (out / "summary.png").exists()


def test_a_worker_killed_mid_study_changes_nothing(study_tree, built_study, prebuilt_models, cluster_client,
                                                   manifest_writer, read_poses, tmp_path):
    """Two workers, prebuilt models (the one-worker run's): kill the worker that is registering
    a recording once its first detection chunk is on disk; the study still completes, with the
    poses of the one-worker run."""
    client = cluster_client
    _, one_worker = built_study
    study = load_study(manifest_writer(study_tree, "killed", prebuilt=prebuilt_models))
    out = tmp_path / "out"
    killed = []

    async def die():  # on the worker: die at once (a coroutine, so the caller need not wait)
        os._exit(1)

    def kill_mid_registration():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            folders = {n: out / "recordings" / n for n in RECORDINGS}
            in_flight = [n for n, f in folders.items()
                         if any(f.glob("detections/chunk_*.npz")) and not (f / "poses.csv").exists()]
            # Preferably a registration with a chunk on disk; should the machine be so fast that
            # none is caught before one finishes, a worker holding a registration task.
            late = any((f / "poses.csv").exists() for f in folders.values())
            targets = in_flight or (list(RECORDINGS) if late else [])
            if targets:
                for addr, keys in client.processing().items():
                    hit = [n for n in targets if any(f"register/{n}" in str(k) for k in keys)]
                    if hit:
                        client.run(die, workers=[addr], wait=False)
                        killed.append((hit[0], addr, bool(in_flight)))
                        return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_mid_registration, daemon=True)
    watcher.start()
    run = run_study(study, out, client=client, say=lambda m: None)
    watcher.join(5)
    assert killed, "no worker was killed: no registration was caught in flight"
    assert run.ok, [(o.key, o.error) for o in run.failures]
    assert run.workers == 2
    for name in RECORDINGS:
        np.testing.assert_allclose(read_poses(run, name), read_poses(one_worker, name), atol=1e-6, equal_nan=True)
    assert "prebuilt" in run.outcomes["models/alpha"].result["stages"]["detector"]


def test_rerun_skips_completed_work_and_redoes_only_what_changed(study_tree, built_study, cluster_client,
                                                                   manifest_writer, tmp_path):
    _, first = built_study
    out = tmp_path / "out"
    shutil.copytree(first.out, out)
    poses = {n: out / "recordings" / n / "poses.csv" for n in RECORDINGS}
    mtimes = {n: p.stat().st_mtime_ns for n, p in poses.items()}
    study = load_study(manifest_writer(study_tree, "built"))
    again = run_study(study, out, client=cluster_client, say=lambda m: None)
    assert again.ok and again.frame_pairs_processed == 0
    assert all(again.outcomes[f"register/{n}"].result["skipped"] for n in RECORDINGS)
    for s in ("alpha", "beta"):
        assert all(v.startswith("skipped") for v in again.outcomes[f"models/{s}"].result["stages"].values())
    assert {n: p.stat().st_mtime_ns for n, p in poses.items()} == mtimes
    assert "(resumed)" in (out / "summary.md").read_text()
    # Another register setting for beta_walk only: it alone is registered again (its detections
    # too, they depend on min_visible through the first pass); the models and alpha's work stay.
    changed = manifest_writer(study_tree, "built")
    changed.write_text(changed.read_text() + "[recording.register]\nmin_visible = 5\n")
    third = run_study(load_study(changed), out, client=cluster_client, say=lambda m: None)
    assert third.ok and third.frame_pairs_processed == 4
    assert not third.outcomes["register/beta_walk"].result["skipped"]
    assert all(third.outcomes[f"register/{n}"].result["skipped"] for n in ("alpha_walk", "alpha_flex"))
    assert all(v.startswith("skipped") for v in third.outcomes["models/beta"].result["stages"].values())
    assert poses["alpha_walk"].stat().st_mtime_ns == mtimes["alpha_walk"]
    assert json.loads((out / "recordings" / "beta_walk" / "options.json").read_text())["min_visible"] == 5


def test_model_stages_skip_resume_or_start_over_by_fingerprint(tmp_path):
    from fluororeg.study.models import _run_stage, _Stage

    folder = tmp_path / "work"
    calls = []

    def build():
        calls.append(sorted(p.name for p in folder.iterdir()) if folder.exists() else None)
        folder.mkdir(exist_ok=True)
        (folder / f"part{len(calls)}").write_text("x")
        (folder / "done").write_text("x")

    report = {}
    _run_stage(_Stage(tmp_path, "s", "fp1", [folder], [folder / "done"]), build, report)
    assert calls == [None] and report["s"].startswith("built")
    _run_stage(_Stage(tmp_path, "s", "fp1", [folder], [folder / "done"]), build, report)
    assert len(calls) == 1 and report["s"].startswith("skipped")  # complete, same fingerprint
    (folder / "done").unlink()  # outputs missing (e.g. deleted): built again, partial work kept
    _run_stage(_Stage(tmp_path, "s", "fp1", [folder], [folder / "done"]), build, report)
    assert calls[-1] == ["part1"] and report["s"].startswith("resumed and built in")
    _run_stage(_Stage(tmp_path, "s", "fp2", [folder], [folder / "done"]), build, report)  # other settings
    assert calls[-1] is None and report["s"].startswith("built in")  # started over in a clean folder
    assert json.loads((tmp_path / "stages" / "s.json").read_text()) == {
        "stage": "s", "fingerprint": "fp2", "complete": True, "seconds": json.loads(
            (tmp_path / "stages" / "s.json").read_text())["seconds"]}


def test_local_workers_write_fluororeg_warnings_as_the_command_does(cluster_client):
    """A worker of `study run`'s local cluster formats fluororeg's warnings as one line naming the
    command, as the command itself does (not Python's file, line and source line)."""
    def formatted() -> str:
        import warnings

        from fluororeg.pipeline import quality

        return warnings.formatwarning(UserWarning("allows  41.7 mm"), UserWarning, quality.__file__, 688)

    assert set(cluster_client.run(formatted).values()) == {"fluororeg study run: warning: allows 41.7 mm\n"}
