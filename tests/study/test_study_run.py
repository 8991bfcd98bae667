"""fluororeg study on a Dask LocalCluster: two subjects, three recordings, tiny models."""

from __future__ import annotations

import json

import numpy as np

from fluororeg.study.manifest import load_study
from fluororeg.study.run import run_study


def test_study_builds_models_once_and_registers_every_recording(built_study, read_poses):
    manifest, run = built_study
    out = run.out
    assert run.ok and run.frames_registered == 12
    for name in ("alpha_walk", "alpha_flex", "beta_walk"):
        folder = out / "recordings" / name
        assert (folder / "poses.csv").exists() and (folder / "poses.tra").exists()
        assert json.loads((folder / "options.json").read_text())["num_threads"] == 1
        assert read_poses(run, name).shape == (4, 6)
    assert json.loads((out / "recordings" / "alpha_walk" / "options.json").read_text())["style"] == "translate"
    assert json.loads((out / "recordings" / "beta_walk" / "options.json").read_text())["style"] == "log"
    # alpha registers with style translation: its translator was trained; beta needs none.
    assert (out / "subjects" / "alpha" / "style" / "xray_to_drr.onnx").exists()
    assert not (out / "subjects" / "beta" / "style").exists()
    for s in ("alpha", "beta"):
        for stage in ("dataset", "detector"):
            assert json.loads((out / "subjects" / s / "stages" / f"{stage}.json").read_text())["complete"]
    # The reference of beta_walk (a simulation's truth) is evaluated.
    assert (out / "recordings" / "beta_walk" / "evaluation_summary.json").exists()
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("recording,subject,result,frames,registered") and len(csv) == 4
    md = (out / "summary.md").read_text()
    assert "| alpha_walk | alpha | done" in md and "Subjects' models" in md
    assert (out / "summary.png").exists()
