"""recording.json for a lab's own image folders: frame numbers from the file names, kept;
views paired by frame number (a mismatch names the frames); Phantom .cine numbering."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluororeg.calibration.geometry_file import DualGeometry, geometry_from_mayacam
from fluororeg.core.geometry import ConeView
from fluororeg.io.recording import ImageSequence, frame_number_of, init_recording, open_recording

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "autoscoper_sample"


def _geometry(w=40, h=30):
    v1 = ConeView.looking_at([0, -600, 0], [0, 0, 0], distance_to_intensifier=1000, pitch=1.0, width=w, height=h)
    v2 = ConeView.looking_at([600, 0, 0], [0, 0, 0], distance_to_intensifier=1000, pitch=1.0, width=w, height=h)
    return DualGeometry((v1, v2))


def _folder(root: Path, name: str, numbers, w=40, h=30):
    d = root / name
    d.mkdir()
    for n in numbers:
        img = np.full((h, w), n % 250, np.uint8)
        Image.fromarray(img).save(d / f"{name}_UND.{n:04d}.tif")
    return d


def test_frame_numbers_come_from_file_names_and_are_kept(tmp_path):
    assert frame_number_of("L_Hop_Cam1_001_UND.0260.tif") == 260 and frame_number_of("x.png") is None
    a = _folder(tmp_path, "cam01", [158, 2, 99, 1000])
    b = _folder(tmp_path, "cam02", [2, 99, 158, 1000])
    path = init_recording([a, b], _geometry(), tmp_path / "rec", frame_rate_hz=250)
    meta = json.loads(path.read_text())
    assert meta["frame_numbers"] == [2, 99, 158, 1000] and meta["frame_rate_hz"] == 250.0
    rec = open_recording(tmp_path / "rec")
    assert rec.frame_numbers.tolist() == [2, 99, 158, 1000]
    assert rec.index_of(158) == 2
    # frames are read in frame-number order (158 comes after 99, 1000 last, not by name)
    assert [float(rec.frame(i)[0][0, 0]) for i in range(4)] == [2.0, 99.0, 158.0, 1000 % 250]
    with pytest.raises(ValueError, match="frame 5 is not in the recording"):
        rec.index_of(5)
    # a frame renamed later is noticed
    (a / "cam01_UND.1000.tif").rename(a / "cam01_UND.2000.tif")
    (b / "cam02_UND.1000.tif").rename(b / "cam02_UND.2000.tif")
    with pytest.raises(ValueError, match="lists frames"):
        open_recording(tmp_path / "rec")


@pytest.mark.parametrize("field,value,message", [
    ("frames", 1e400, "says inf frames"), ("frames", [4], r"says \[4\] frames"), ("frames", "4", "says '4' frames"),
    ("frames", True, "says True frames"), ("frame_numbers", 5, "lists frames 5 but"),
    ("frame_numbers", "2,99", "lists frames '2,99' but")])
def test_a_damaged_manifest_count_is_a_clear_error(tmp_path, field, value, message):
    """recording.json's frame count and numbers as something else than written (infinity raised
    OverflowError, a list TypeError; a number where the list belongs TypeError while the error
    was being worded)."""
    a = _folder(tmp_path, "cam01", [2, 99, 158, 1000])
    b = _folder(tmp_path, "cam02", [2, 99, 158, 1000])
    path = init_recording([a, b], _geometry(), tmp_path / "rec")
    meta = json.loads(path.read_text())
    assert meta["frames"] == 4
    path.write_text(json.dumps({**meta, field: value}))
    with pytest.raises(ValueError, match=message):
        open_recording(tmp_path / "rec")


def test_views_with_different_frames_are_an_error_naming_them(tmp_path):
    a = _folder(tmp_path, "cam01", [138, 180, 260])
    b = _folder(tmp_path, "cam02", [138, 180, 272])
    with pytest.raises(ValueError, match=r"view 1 has frames \[260\] that view 2 lacks, view 2 has \[272\]"):
        init_recording([a, b], _geometry(), tmp_path / "rec")
    assert not (tmp_path / "rec" / "recording.json").exists()
    with pytest.raises(ValueError, match="two views"):
        init_recording([a], _geometry(), tmp_path / "rec")


def test_frames_of_another_size_than_the_geometry_name_every_view(tmp_path):
    a = _folder(tmp_path, "cam01", [1, 2], w=50, h=30)
    b = _folder(tmp_path, "cam02", [1, 2], w=40, h=20)
    with pytest.raises(ValueError) as info:
        init_recording([a, b], _geometry(), tmp_path / "rec")
    assert str(info.value) == ("view 1: frames are 50 x 30 px but the geometry says 40 x 30; "
                               "view 2: frames are 40 x 20 px but the geometry says 40 x 30")


def test_names_without_numbers_fall_back_to_positions(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(d / name)
    assert ImageSequence(d).frame_numbers.tolist() == [0, 1, 2]


def test_cine_numbering_and_clear_error(tmp_path):
    # A Phantom cine header only: PyAV cannot decode it, and the error says what to do.
    p = tmp_path / "take.cine"
    p.write_bytes(b"CI" + struct.pack("<HHHiIiI", 44, 0, 1, -50, 10, -50, 10) + bytes(200))
    with pytest.raises(ValueError, match="TIFF sequence"):
        ImageSequence(p)
    q = tmp_path / "notcine.cine"
    q.write_bytes(b"XX" + bytes(40))
    with pytest.raises(ValueError, match="not a Phantom .cine"):
        ImageSequence(q)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="autoscoper sample data not found")
def test_sample_knee_frames_mismatch_and_wrist_pairs(tmp_path):
    cams = [SAMPLE / "Calibration" / f"xr_calib_left_knee_cam0{k}.txt" for k in (1, 2)]
    geo = geometry_from_mayacam(cams, 0.2)
    views = [SAMPLE / "XMA_UND" / f"xr_data_left_knee_cam0{k}" for k in (1, 2)]
    with pytest.raises(ValueError, match=r"\[260\].*\[272\]"):
        init_recording(views, geo, tmp_path / "knee")
    with pytest.raises(ValueError, match="no pixel pitch"):
        geometry_from_mayacam(cams)


def test_cli_recording_init(tmp_path, capsys):
    from fluororeg.calibration.geometry_file import save_geometry
    from fluororeg.cli import main

    a = _folder(tmp_path, "cam01", [7, 9])
    b = _folder(tmp_path, "cam02", [7, 9])
    save_geometry(tmp_path / "g.json", _geometry())
    assert main(["recording", "init", str(a), str(b), "--geometry", str(tmp_path / "g.json"), "--out",
                 str(tmp_path / "rec"), "--fps", "125"]) == 0
    assert "frames 7..9" in capsys.readouterr().out
    rec = open_recording(tmp_path / "rec")
    assert rec.frame_numbers.tolist() == [7, 9] and rec.frame_rate_hz == 125.0
    # a recording folder is not replaced unasked (a simulation's truth.npz would stay beside another recording)
    again = ["recording", "init", str(b), str(a), "--geometry", str(tmp_path / "g.json"), "--out", str(tmp_path / "rec")]
    assert main(again) == 2 and "--force" in capsys.readouterr().err
    assert open_recording(tmp_path / "rec").frame_rate_hz == 125.0
    assert main([*again, "--force"]) == 0 and open_recording(tmp_path / "rec").frame_rate_hz is None
    capsys.readouterr()
    c = _folder(tmp_path, "cam03", [7, 8])
    assert main(["recording", "init", str(a), str(c), "--geometry", str(tmp_path / "g.json"), "--out",
                 str(tmp_path / "rec2")]) == 2
    assert "[9] that view 2 lacks" in capsys.readouterr().err
