"""`fluororeg study run` on an existing Dask cluster (--scheduler): a task that fails is
retried, then reported in a table and the summary; the study exits non-zero; the others finish."""

from __future__ import annotations

from fluororeg.cli import main


def test_failed_task_is_reported_not_dropped(study_tree, manifest_writer, prebuilt_models, cluster_client,
                                             tmp_path, capsys):
    import shutil

    manifest = manifest_writer(study_tree, "failing", prebuilt=prebuilt_models)
    # A frame damaged after the check (which opens each recording's first frame): alpha_flex fails
    # at run time, every try.
    flex = tmp_path / "flex"
    shutil.copytree(study_tree / "recordings" / "alpha" / "flex", flex)
    damaged = sorted((flex / "view1").iterdir())[-1]
    damaged.write_bytes(damaged.read_bytes()[:40])
    manifest.write_text(manifest.read_text().replace('folder = "recordings/alpha/flex"\n', f'folder = "{flex}"\n'))
    out = tmp_path / "out"
    address = cluster_client.scheduler.address
    assert main(["study", "run", str(manifest), "--scheduler", address, "--out", str(out),
                 "--progress-every", "0.5"]) == 1
    text = capsys.readouterr().out
    assert "FAILED register/alpha_flex after 1 retries" in text
    assert "1 task(s) failed or did not run:" in text and "cannot read frame" in text
    assert "[study] finished: 4/5 tasks done, 0 running, 1 failed" in text
    assert (out / "recordings" / "alpha_walk" / "poses.csv").exists()
    assert (out / "recordings" / "beta_walk" / "poses.csv").exists()
    assert "register/alpha_flex,failed," in (out / "failures.csv").read_text()
    assert "Traceback" in (out / "failures.log").read_text()
    assert f"tracebacks: {out / 'failures.log'}" in text
    md = (out / "summary.md").read_text()
    assert "| alpha_flex | alpha | **failed** |" in md and "## Failures" in md
    assert ",failed," in (out / "summary.csv").read_text()
    import csv

    for row in csv.DictReader((out / "summary.csv").open()):  # every frame in one status column
        if row["result"] == "done":
            counts = {k: int(row[k] or 0) for k in ("ok", "one_view", "refined", "tracked", "views_disagree",
                                                    "too_few_landmarks", "failed", "flagged")}
            assert sum(counts.values()) == int(row["frames"]), row
            assert sum(counts[k] for k in ("ok", "one_view", "refined", "tracked")) == int(row["registered"]), row
    assert main(["study", "run", str(manifest), "--scheduler", address, "--workers", "2"]) == 2
    assert "--workers sizes the local cluster" in capsys.readouterr().err


def test_recording_given_by_calibration_files(study_tree, manifest_writer, prebuilt_models, cluster_client,
                                              read_poses, tmp_path):
    """A recording given as two image folders + MayaCam files + bead plates: the study computes
    its geometry (a calibrate task) and registers it as the same frames with their geometry file."""
    import numpy as np

    from fluororeg.calibration.geometry_file import load_geometry
    from fluororeg.study.manifest import load_study
    from fluororeg.study.run import run_study

    manifest = manifest_writer(study_tree, "calibrated", prebuilt=prebuilt_models,
                               recordings=("alpha_walk", "beta_walk", "beta_cal"))
    run = run_study(load_study(manifest), tmp_path / "out", client=cluster_client, say=lambda m: None)
    assert run.ok, [(o.key, o.error) for o in run.failures]
    assert run.outcomes["calibrate/beta_cal"].status == "done"
    computed = load_geometry(tmp_path / "out" / "recordings" / "beta_cal" / "geometry.json")
    given = load_geometry(study_tree / "recordings" / "beta" / "walk" / "geometry.json")
    for a, b in zip(computed.views, given.views):
        np.testing.assert_allclose(a.source, b.source, atol=1e-6)
    np.testing.assert_allclose(read_poses(run, "beta_cal"), read_poses(run, "beta_walk"), atol=1e-3, equal_nan=True)


def test_cuda_tasks_need_gpu_workers(study_tree, manifest_writer, prebuilt_models, cluster_client, tmp_path):
    import pytest

    from fluororeg.study.manifest import load_study
    from fluororeg.study.run import run_study

    manifest = manifest_writer(study_tree, "gpu", prebuilt=prebuilt_models, recordings=("alpha_walk", "beta_walk"))
    manifest.write_text(manifest.read_text() + 'device = "cuda"\n')  # the recording's own device
    study = load_study(manifest)
    assert [r.device for r in study.recordings] == ["cpu", "cuda"]
    with pytest.raises(RuntimeError, match="no worker of the cluster offers the resource GPU"):
        run_study(study, tmp_path / "out", client=cluster_client, say=lambda m: None)
