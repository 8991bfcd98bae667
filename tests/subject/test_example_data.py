"""Tests for fluororeg.subject.example: shared-data lookup and the Cranium example CT."""

import io
import lzma
import plistlib
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fluororeg.subject import example as example_data
from fluororeg.subject.example import (CRANIUM_DIRECTION, CRANIUM_SHAPE_ZYX, cranium_volume,
                                    default_cache_dir, headsq_path)
from fluororeg.io.volume_formats import load_volume


def test_headsq_path_found_or_none():
    p = headsq_path()
    here_data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if (here_data / "headsq" / "headsq_hu.nii.gz").is_file():
        assert p is not None and p.is_file() and p.name == "headsq_hu.nii.gz"
    elif p is not None:
        assert p.is_file()


def test_headsq_path_env_override(tmp_path, monkeypatch):
    d = tmp_path / "data" / "headsq"
    d.mkdir(parents=True)
    (d / "headsq_hu.nii.gz").write_bytes(b"x")
    monkeypatch.setenv("FLUORO_SHARED_DATA", str(tmp_path / "data"))
    assert headsq_path() == tmp_path / "data" / "headsq" / "headsq_hu.nii.gz"
    monkeypatch.setenv("FLUORO_SHARED_DATA", str(tmp_path))  # the folder holding data/
    assert headsq_path() == tmp_path / "data" / "headsq" / "headsq_hu.nii.gz"
    monkeypatch.setenv("FLUORO_SHARED_DATA", str(tmp_path / "missing"))
    assert headsq_path() is None


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUORO_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FLUORO_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "fluororeg"


# ---------------------------------------------------------------------- synthetic package
def _synthetic_matrix(offset=0):
    data = np.full(CRANIUM_SHAPE_ZYX, -1024, np.int16)
    data[10:20, 200:210, 30:40] = 1800  # a "bone" block: anterior rows, low columns
    data[50, 100, 100] = 2500
    return (data.astype(np.int32) + offset).astype(np.int16)


def _tar_bytes(members, mode):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _synthetic_inv3(offset=0):
    plist = {"matrix": {"dtype": "int16", "filename": "matrix.dat",
                        "shape": list(CRANIUM_SHAPE_ZYX)},
             "spacing": [0.9570312, 0.9570312, 1.5], "modality": "CT"}
    return _tar_bytes({"tmpabc/main.plist": plistlib.dumps(plist),
                       "tmpabc/matrix.dat": _synthetic_matrix(offset).tobytes()}, "w:gz")


def _ar(members):
    out = [b"!<arch>\n"]
    for name, payload in members:
        hdr = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
        out.append(hdr + payload + (b"\n" if len(payload) % 2 else b""))
    return b"".join(out)


def _write_synthetic_deb(folder, offset=0):
    inv3 = _synthetic_inv3(offset)
    data_tar = lzma.compress(_tar_bytes(
        {"./usr/share/doc/invesalius-examples/examples/Cranium.inv3": inv3}, "w"))
    deb = folder / "invesalius-examples_0.0-1_all.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(b"")),
                         ("data.tar.xz", data_tar)]))
    return deb


@pytest.mark.parametrize("offset", [0, 1024])
def test_cranium_from_cached_deb_without_network(tmp_path, monkeypatch, capsys, offset):
    def no_download(cache):
        raise AssertionError("must not download when a .deb is cached")

    monkeypatch.setattr(example_data, "_download_deb", no_download)
    _write_synthetic_deb(tmp_path, offset)
    v = cranium_volume(tmp_path)
    assert "extracting Cranium.inv3" in capsys.readouterr().err
    assert v.data.shape == CRANIUM_SHAPE_ZYX and v.data.dtype == np.int16
    np.testing.assert_array_equal(v.data, _synthetic_matrix(0))  # offset removed
    np.testing.assert_allclose(v.direction, CRANIUM_DIRECTION)
    np.testing.assert_allclose(v.spacing, [0.9570312, 0.9570312, 1.5])
    np.testing.assert_allclose(v.center, 0.0, atol=1e-9)
    # orientation: higher slice = superior (+z), higher row = anterior (-y), higher column = left (+x)
    p0 = v.voxel_to_physical([0, 0, 0])
    assert v.voxel_to_physical([0, 0, 1])[2] > p0[2]
    assert v.voxel_to_physical([0, 1, 0])[1] < p0[1]
    assert v.voxel_to_physical([1, 0, 0])[0] > p0[0]
    assert (tmp_path / "cranium_hu.npz").is_file()
    assert not list(tmp_path.glob(".tmp-*"))
    # second call: read from the npz cache, silently, even without the .deb
    for deb in tmp_path.glob("*.deb"):
        deb.unlink()
    v2 = cranium_volume(tmp_path)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(v2.data, v.data)
    np.testing.assert_allclose(v2.origin, v.origin)


def test_cranium_rejects_non_hu():
    plist = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [2, 2, 2]},
             "spacing": [1.0, 1.0, 1.0]}
    inv3 = _tar_bytes({"main.plist": plistlib.dumps(plist),
                       "matrix.dat": np.full(8, 5, np.int16).tobytes()}, "w:gz")
    with pytest.raises(ValueError, match="Hounsfield"):
        example_data._volume_from_inv3(inv3, "test")


def test_cranium_rejects_wrong_size():
    plist = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [2, 2, 2]},
             "spacing": [1.0, 1.0, 1.0]}
    inv3 = _tar_bytes({"main.plist": plistlib.dumps(plist),
                       "matrix.dat": np.zeros(7, np.int16).tobytes()}, "w:gz")
    with pytest.raises(ValueError, match="14 bytes"):
        example_data._volume_from_inv3(inv3, "test")


def test_cranium_clear_error_without_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(example_data.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="invesalius-examples"):
        cranium_volume(tmp_path / "cache")


# ---------------------------------------------------------------------- real Cranium
def _cranium_available():
    if (default_cache_dir() / "cranium_hu.npz").is_file():
        return True, ""
    if shutil.which("apt-get") is None:
        return False, "no cached cranium_hu.npz and no apt-get to download invesalius-examples"
    return True, ""


_available, _reason = _cranium_available()


@pytest.mark.skipif(not _available, reason=_reason or "cranium not available")
def test_cranium_real():
    v = cranium_volume()  # default cache; downloads ~19 MB once
    assert v.data.shape == (108, 256, 256)
    assert v.data.dtype == np.int16
    np.testing.assert_allclose(v.spacing, [0.9570312, 0.9570312, 1.5], rtol=1e-6)
    np.testing.assert_allclose(v.direction, CRANIUM_DIRECTION)
    lo, hi = int(v.data.min()), int(v.data.max())
    assert -1100 <= lo <= -900 and 1500 < hi < 4000
    assert (v.data > 300).mean() > 0.01  # plenty of bone
    # the nose/maxilla (anterior) sits at high row indices in the low slices
    bone_rows = np.nonzero((v.data[:40] > 300).any(axis=(0, 2)))[0]
    assert bone_rows.max() > 200
    assert load_volume(default_cache_dir() / "cranium_hu.npz").data.shape == (108, 256, 256)
