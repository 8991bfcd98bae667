"""The command line: render on a real CT file, error reporting."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fluororeg.cli import main
from fluororeg.example_data import headsq_path


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
    assert main(["render", "--ct", str(ct), "--geometry", "cone", "--count", "2", "--size", "48",
                 "--out", str(tmp_path / "cone")]) == 0
    assert np.load(tmp_path / "cone" / "drrs.npz")["drrs"].shape == (2, 48, 48)


def test_render_reports_bad_input(tmp_path, capsys):
    assert main(["render", "--ct", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path)]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    assert main(["render", "--count", "0", "--out", str(tmp_path)]) == 2
    assert "--count 0" in capsys.readouterr().err


def test_simulate_and_dataset_commands(tmp_path, subject, capsys, monkeypatch):
    import fluororeg.cli as cli
    from fluororeg.dataset import DatasetReader
    from fluororeg.recording import open_recording

    monkeypatch.setattr(cli, "_subject", lambda folder: subject)  # the small headsq subject
    assert main(["simulate", "--frames", "2", "--size", "128", "--scenario", "static", "--quiet",
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
    assert main(["simulate", "--frames", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--frames 0" in capsys.readouterr().err
