"""Bounded readers (fluororeg.io.limits): every reader refuses device files, FIFOs and folders
where a file is expected, before opening them (a FIFO must not hang, /dev/zero must not be
read forever); header-declared sizes (voxels, pixels, frames, frame numbers, polynomial
orders) are checked before anything of that size is allocated or inflated; zlib/gzip bombs
stay bounded in memory (checked in a subprocess under RLIMIT_AS); the CLI turns all of these,
and MemoryError, into one line on stderr with a non-zero exit status."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import fluororeg
from fluororeg.calibration.distortion import DistortionModel, load_distortion
from fluororeg.calibration.formats import read_dlt, read_mayacam
from fluororeg.calibration.geometry_file import DualGeometry, geometry_to_dict, load_geometry
from fluororeg.core.geometry import ConeView
from fluororeg.io import limits
from fluororeg.io.autoscoper import autoscoper_info, read_pose_sidecar, read_trial_cfg, trial_frame_files
from fluororeg.io.metaimage import read_metaimage
from fluororeg.io.poses import read_poses_csv, read_reference_poses, read_slicer_tfm, read_tra
from fluororeg.io.recording import ImageSequence, open_recording
from fluororeg.io.volume_formats import load_tiff_stack, load_volume
from fluororeg.io.xmalab import read_xmalab_rigid_body_csv
from fluororeg.subject.landmarks import load_landmarks
from fluororeg.subject.subject import load_subject

PYTHON_DIR = str(Path(fluororeg.__file__).parents[1])  # the fluororeg under test (source tree or installed)


class Hang(BaseException):
    """Raised by the alarm: neither a ValueError nor an OSError, so a hang never passes."""


@pytest.fixture(autouse=True)
def no_hang():
    def on_alarm(signum, frame):
        raise Hang("the reader blocked or kept reading (10 s)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _make_bad(kind: str, path: Path) -> Path:
    if kind == "device":
        os.symlink("/dev/zero", path)
    elif kind == "urandom":
        os.symlink("/dev/urandom", path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    return path


def _geometry(w=40, h=30) -> DualGeometry:
    v1 = ConeView.looking_at([0, -600, 0], [0, 0, 0], distance_to_intensifier=1000, pitch=1.0, width=w, height=h)
    v2 = ConeView.looking_at([600, 0, 0], [0, 0, 0], distance_to_intensifier=1000, pitch=1.0, width=w, height=h)
    return DualGeometry((v1, v2))


# ------------------------------------------------------------------ not a regular file
# (file name, call) for every reader that takes a file path
FILE_READERS = {
    "load_volume.mha": ("ct.mha", load_volume),
    "load_volume.mhd": ("ct.mhd", load_volume),
    "load_volume.nii": ("ct.nii", load_volume),
    "load_volume.nii.gz": ("ct.nii.gz", load_volume),
    "load_volume.nrrd": ("ct.nrrd", load_volume),
    "load_volume.npz": ("ct.npz", load_volume),
    "load_volume.dcm": ("slice.dcm", load_volume),
    "read_metaimage": ("ct.mha", lambda p: read_metaimage(Path(p))),
    "load_tiff_stack": ("ct.tif", lambda p: load_tiff_stack(p, (1, 1, 1), "hu")),
    "ImageSequence.tif": ("view.tif", ImageSequence),
    "ImageSequence.avi": ("view.avi", ImageSequence),
    "ImageSequence.cine": ("view.cine", ImageSequence),
    "read_poses_csv": ("poses.csv", read_poses_csv),
    "read_reference_poses.csv": ("ref.csv", lambda p: read_reference_poses(p, frames=[0])),
    "read_reference_poses.npz": ("truth.npz", lambda p: read_reference_poses(p, frames=[0])),
    "read_reference_poses.tra": ("ref.tra", lambda p: read_reference_poses(p, frames=[0])),
    "read_tra": ("poses.tra", read_tra),
    "read_slicer_tfm": ("pose.tfm", read_slicer_tfm),
    "read_xmalab": ("rb.csv", read_xmalab_rigid_body_csv),
    "read_trial_cfg": ("trial.cfg", read_trial_cfg),
    "read_mayacam": ("cam.csv", read_mayacam),
    "read_dlt": ("dlt.csv", read_dlt),
    "load_geometry": ("geometry.json", load_geometry),
    "load_distortion": ("distortion.json", load_distortion),
    "load_landmarks.mrk.json": ("lm.mrk.json", load_landmarks),
    "load_landmarks.fcsv": ("lm.fcsv", load_landmarks),
    "load_landmarks.csv": ("lm.csv", load_landmarks),
}


def _file_reader_cases():
    for reader in sorted(FILE_READERS):
        for kind in ("device", "fifo", "directory"):
            # a folder given as a CT is a DICOM series, one given as a view a folder of frames (tested below)
            folder_means_more = reader.startswith("load_volume") and reader != "load_volume.dcm" \
                or reader.startswith("ImageSequence")
            if not (kind == "directory" and folder_means_more):
                yield pytest.param(reader, kind, id=f"{reader}-{kind}")


@pytest.mark.parametrize("reader, kind", list(_file_reader_cases()))
def test_file_readers_refuse_what_is_not_a_regular_file(tmp_path, reader, kind):
    name, call = FILE_READERS[reader]
    bad = _make_bad(kind, tmp_path / name)
    with pytest.raises((ValueError, OSError)) as info:
        call(bad)
    message = str(info.value)
    assert bad.name in message
    if reader != "load_volume.dcm" or kind != "directory":
        expected = {"device": "device", "fifo": "FIFO", "directory": "folder"}[kind]
        assert expected in message


def test_dev_urandom_as_a_ct(tmp_path):
    for name in ("ct.nii.gz", "ct.mha", "ct.nrrd"):
        with pytest.raises(ValueError, match="character device"):
            load_volume(_make_bad("urandom", tmp_path / name))
    with pytest.raises(ValueError, match="character device"):
        load_volume("/dev/zero")


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_files_inside_folders_are_checked(tmp_path, kind):
    # a folder of frames: each frame file
    frames = tmp_path / "view"
    frames.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(frames / "f_0001.png")
    _make_bad(kind, frames / "f_0002.png")
    with pytest.raises(ValueError, match="f_0002.png"):
        ImageSequence(frames)
    # an Autoscoper view folder
    tif = tmp_path / "cam"
    tif.mkdir()
    _make_bad(kind, tif / "x.tif")
    with pytest.raises(ValueError, match="x.tif"):
        trial_frame_files(tif)
    # the files a folder's manifest names
    for folder_reader, file_name in ((open_recording, "recording.json"), (load_subject, "subject.json"),
                                     (autoscoper_info, "autoscoper.json")):
        d = tmp_path / f"d_{file_name}"
        d.mkdir()
        _make_bad(kind, d / file_name)
        with pytest.raises(ValueError, match=file_name.replace(".", r"\.")):
            folder_reader(d)
    # the data file a MetaImage / NRRD header names
    d = tmp_path / "detached"
    d.mkdir()
    _make_bad(kind, d / "data.raw")
    (d / "ct.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\n"
                              "ElementDataFile = data.raw\n")
    with pytest.raises(ValueError, match="data.raw"):
        load_volume(d / "ct.mhd")
    (d / "ct.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nspacings: 1 1 1\n"
                               "encoding: raw\nendian: little\ndata file: data.raw\n")
    with pytest.raises(ValueError, match="data.raw"):
        load_volume(d / "ct.nhdr")
    # a pose file's sidecar
    (tmp_path / "p.tra").write_text(",".join(["1"] * 16) + "\n")
    _make_bad(kind, tmp_path / "p.tra.fluororeg.json")
    with pytest.raises(ValueError, match="p.tra.fluororeg.json"):
        read_pose_sidecar(tmp_path / "p.tra")
    # a DICOM folder: devices and FIFOs are refused, sub-folders skipped
    dcm = tmp_path / "dicom"
    dcm.mkdir()
    _make_bad(kind, dcm / "IM0001")
    with pytest.raises(ValueError, match="IM0001" if kind != "directory" else "no DICOM image files"):
        load_volume(dcm)


# ------------------------------------------------------------------ declared sizes
def _gzip_bomb(inflated_gib: int = 2) -> bytes:
    """gzip data of ``inflated_gib`` GiB of zeros in about 1 MB per GiB (its trailer is not
    valid: a bounded reader stops long before it)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 24)) + c.flush(zlib.Z_FULL_FLUSH)  # 16 MiB, byte-aligned, independent
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + block * (64 * inflated_gib) + final + bytes(8)


def _mha(path: Path, dims, payload: bytes, etype="MET_SHORT", compressed=True, extra="") -> Path:
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"CompressedData = {compressed}\n{extra}ElementSpacing = 1 1 1\nDimSize = {' '.join(map(str, dims))}\n"
              f"ElementType = {etype}\nElementDataFile = LOCAL\n")
    path.write_bytes(header.encode() + payload)
    return path


def _nrrd(path: Path, sizes, payload: bytes, encoding="gzip") -> Path:
    header = (f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {' '.join(map(str, sizes))}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
              f"kinds: domain domain domain\nendian: little\nencoding: {encoding}\nspace origin: (0,0,0)\n\n")
    path.write_bytes(header.encode() + payload)
    return path


_BOUNDED_CHILD = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(1.5 * 2**30),) * 2)
from fluororeg.io.volume_formats import load_volume
for path in sys.argv[1:]:
    try:
        load_volume(path)
    except ValueError as exc:
        print("ValueError:", exc)
        continue
    except MemoryError:
        print("MemoryError:", path)
        sys.exit(3)
    print("read:", path)
    sys.exit(4)
"""


def test_compression_bombs_stay_bounded_in_memory(tmp_path):
    """2 MB files inflating to 2 GiB, read in a process limited to 1.5 GiB of address space:
    every one is refused with a ValueError before it is inflated (no MemoryError)."""
    bomb = _gzip_bomb(2)
    assert len(bomb) < 3_000_000
    files = [
        _mha(tmp_path / "small_declared.mha", (64, 64, 64), bomb),     # inflates past DimSize
        _mha(tmp_path / "huge_declared.mha", (2048, 2048, 2048), bomb),  # DimSize past the limit
        _mha(tmp_path / "size_mismatch.mha", (64, 64, 64), bomb, extra="CompressedDataSize = 5000000\n"),
        _nrrd(tmp_path / "small_declared.nrrd", (64, 64, 64), bomb),
        _nrrd(tmp_path / "huge_declared.nrrd", (2048, 2048, 2048), bomb),
    ]
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", _BOUNDED_CHILD, *map(str, files)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == len(files)
    assert "inflates to more than" in lines[0]
    assert "more than the limit" in lines[1] and "MAX_VOLUME_VOXELS" in lines[1]
    assert "CompressedDataSize = 5000000" in lines[2]
    assert "inflates to more than" in lines[3]
    assert "more than the limit" in lines[4]


def test_metaimage_declared_size_checks(tmp_path):
    # too little compressed data for DimSize: refused before inflating
    with pytest.raises(ValueError, match="cannot inflate to"):
        read_metaimage(_mha(tmp_path / "a.mha", (512, 512, 512), zlib.compress(bytes(1000))))
    # uncompressed: the limit holds before the data is read
    with pytest.raises(ValueError, match="MAX_VOLUME_VOXELS"):
        read_metaimage(_mha(tmp_path / "b.mha", (100000, 100000, 10), b"", compressed=False))
    with pytest.raises(ValueError, match="DimSize"):
        read_metaimage(_mha(tmp_path / "c.mha", ("x", 1, 1), b"", compressed=False))
    # a normal compressed volume still reads
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(4, 3, 2)
    v = read_metaimage(_mha(tmp_path / "d.mha", (2, 3, 4), zlib.compress(data.tobytes())))
    np.testing.assert_array_equal(v.data, data)


def test_nifti_npz_tiff_headers_are_checked_before_reading(tmp_path):
    import nibabel as nib
    import tifffile

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 2048))
    hdr.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as fh:
        fh.write(hdr.binaryblock + bytes(4) + bytes(1024))  # the data is missing: never read
    with pytest.raises(ValueError, match="huge.nii.*MAX_VOLUME_VOXELS"):
        load_volume(path)

    npz = tmp_path / "huge.npz"
    with zipfile.ZipFile(npz, "w") as z:
        for name, shape in (("data", (2048, 2048, 2048)), ("spacing", (3,)), ("origin", (3,)), ("direction", (3, 3))):
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": "<i2", "fortran_order": False, "shape": shape})
            z.writestr(name + ".npy", buf.getvalue())  # headers only
    with pytest.raises(ValueError, match="huge.npz.*MAX_VOLUME_VOXELS"):
        load_volume(npz)

    tif = tmp_path / "huge.tif"
    tif.write_bytes(_tiff_header(30000, 30000))
    with pytest.raises(ValueError, match="huge.tif.*MAX_VOLUME_VOXELS"):
        load_tiff_stack(tif, (1, 1, 1), "hu")
    # a normal stack still reads
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((3, 4, 5), np.uint16), photometric="minisblack")
    assert load_tiff_stack(tmp_path / "ok.tif", (1, 1, 1), "hu").data.shape == (3, 4, 5)


def _tiff_header(width: int, height: int) -> bytes:
    """A little-endian one-page 8-bit grey TIFF declaring width x height with one tiny strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + bytes(4)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(16)


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring width x height 8-bit grey, with a tiny (short) image data stream."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10000, 20000])  # 100 MP (fluororeg's limit), 400 MP (also Pillow's)
def test_huge_frames_are_refused_before_decoding(tmp_path, side):
    view = tmp_path / "view"
    view.mkdir()
    (view / "f_0001.png").write_bytes(_png_header(side, side))
    seq = ImageSequence(view)
    with pytest.raises(ValueError, match=f"f_0001.png.*({side} x {side} px|{side * side} pixels).*MAX_FRAME_PIXELS"):
        seq[0]
    tif = tmp_path / "pages.tif"
    tif.write_bytes(_tiff_header(side, side))
    with pytest.raises(ValueError, match="pages.tif"):
        ImageSequence(tif)[0]


def test_video_size_and_length_are_checked_before_decoding(tmp_path, monkeypatch):
    """A video's declared frame size and its packet count, against (lowered) limits."""
    av = pytest.importorskip("av")
    import fluororeg.io.recording as recording

    path = tmp_path / "view.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "gray"
        for k in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((16, 32), k, np.uint8), format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert len(ImageSequence(path)) == 5
    monkeypatch.setattr(limits, "MAX_FRAME_PIXELS", 500)
    with pytest.raises(ValueError, match="view.mkv.*32 x 16 px.*MAX_FRAME_PIXELS"):
        ImageSequence(path)
    monkeypatch.setattr(limits, "MAX_FRAME_PIXELS", 10 ** 6)
    monkeypatch.setattr(limits, "MAX_FRAMES", 3)
    monkeypatch.setattr(recording, "MAX_FRAMES", 3)
    with pytest.raises(ValueError, match="view.mkv.*4 frames.*MAX_FRAMES"):
        ImageSequence(path)


def test_huge_dicom_slices_are_refused_before_decoding(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series = generate_uid()
    for k in range(2):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Rows, ds.Columns = 20000, 20000
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.PixelData = bytes(64)
        ds.save_as(tmp_path / f"IM{k}.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match="IM0.dcm.*20000 x 20000.*MAX_FRAME_PIXELS"):
        load_volume(tmp_path)


def test_frames_of_one_recording_have_one_size_type_and_finite_values(tmp_path):
    import tifffile

    view = tmp_path / "view"
    view.mkdir()
    tifffile.imwrite(view / "f_0001.tif", np.zeros((30, 40), np.float32))
    tifffile.imwrite(view / "f_0002.tif", np.zeros((30, 41), np.float32))
    bad = np.zeros((30, 40), np.float32)
    bad[3, 4] = np.nan
    tifffile.imwrite(view / "f_0003.tif", bad)
    seq = ImageSequence(view)
    assert seq[0].shape == (30, 40)
    with pytest.raises(ValueError, match="f_0002.tif.*41 x 30 px.*40 x 30 px"):
        seq[1]
    with pytest.raises(ValueError, match="f_0003.tif.*non-finite"):
        seq[2]


# ------------------------------------------------------------------ orders and frame numbers
def _model_dict(order) -> dict:
    return {"format": "fluororeg-distortion", "version": 1, "order": order, "width": 64, "height": 64,
            "centre": [31.5, 31.5], "scale": 32.0, "coef": [[0.0, 0.0]] * 3, "inverse_coef": [[0.0, 0.0]] * 3}


@pytest.mark.parametrize("order", [0, 11, 10 ** 9, 2.5, True, "5", -3])
def test_distortion_order_is_bounded(tmp_path, order):
    with pytest.raises(ValueError, match="order"):
        DistortionModel.from_dict(_model_dict(order))
    path = tmp_path / "distortion.json"
    path.write_text(json.dumps(_model_dict(order)))
    with pytest.raises(ValueError, match="order"):
        load_distortion(path)
    with pytest.raises(ValueError, match="order"):
        DistortionModel(order=order, width=64, height=64, centre=[0, 0], scale=1.0, coef=np.zeros((3, 2)),
                        inverse_coef=np.zeros((3, 2)))
    # inside a geometry file too
    d = geometry_to_dict(_geometry(64, 64))
    d["views"][0]["distortion"] = _model_dict(order)
    geo = tmp_path / "geometry.json"
    geo.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="order"):
        load_geometry(geo)


def test_distortion_coefficients_must_match_the_order():
    ok = DistortionModel.from_dict(_model_dict(1))  # order 1: 3 terms
    assert ok.order == 1 and ok.coef.shape == (3, 2)
    with pytest.raises(ValueError, match=r"expected \(6, 2\)"):
        DistortionModel.from_dict(_model_dict(2))
    with pytest.raises(ValueError, match="MAX_FRAME_PIXELS"):
        DistortionModel.from_dict({**_model_dict(1), "width": 100000, "height": 100000})


def test_geometry_image_size_is_bounded(tmp_path):
    d = geometry_to_dict(_geometry())
    d["views"][0]["width"] = d["views"][0]["height"] = 10 ** 6
    path = tmp_path / "geometry.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="MAX_FRAME_PIXELS"):
        load_geometry(path)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e400, 2.5, 0])
def test_geometry_image_size_must_be_a_positive_whole_number(tmp_path, value):
    d = geometry_to_dict(_geometry())
    d["views"][1]["height"] = value
    path = tmp_path / "geometry.json"
    path.write_text(json.dumps(d))  # inf and nan as JSON's Infinity / NaN; 1e400 reads as inf
    with pytest.raises(ValueError, match="height = .*positive whole number of pixels"):
        load_geometry(path)


@pytest.mark.parametrize("value", [float("inf"), 1e400, 24.5, "24", True])
def test_distortion_image_size_must_be_a_whole_number(value):
    """A distortion model's width from JSON: 24 and 24.0 read; infinity, 24.5 (truncated to 24
    before) and other types are a ValueError naming the field."""
    model = DistortionModel.from_dict(DistortionModel(order=3, width=24, height=24, centre=[11.5, 11.5],
                                                      scale=16.0, coef=np.zeros((10, 2)),
                                                      inverse_coef=np.zeros((10, 2))).to_dict())
    d = model.to_dict()
    assert DistortionModel.from_dict({**d, "width": 24.0}).width == 24
    with pytest.raises(ValueError, match=r"distortion\.width = .*expected a whole number"):
        DistortionModel.from_dict({**d, "width": value})


def test_open_regular_reads_never_ask_for_more_than_the_file_holds(tmp_path):
    """A decoder that trusts a damaged length field asks read(n) for gigabytes; read(n) allocates
    n bytes first. The readers' files cap n at what is left (plus a little): same bytes, no
    MemoryError (a damaged PNG frame, met by a randomised fuzz run)."""
    path = tmp_path / "small.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    with limits.open_regular(path) as fh:
        assert isinstance(fh, limits.BoundedReader)
        assert fh.read(10) == data[:10]
        assert fh.read(1 << 50) == data[10:]  # 1 PiB asked: a MemoryError without the cap
        assert fh.read(1 << 50) == b""
        fh.seek(100)
        assert fh.read(limits.READ_SLACK_BYTES * 4) == data[100:100 + limits.READ_SLACK_BYTES * 4]
        fh.seek(0)
        assert fh.read() == data
        fh.seek(5)
        assert data[5:].startswith(fh.read1(1 << 50))  # read1 (one raw read) is capped the same way
    with limits.open_regular(path) as fh, io.TextIOWrapper(fh, encoding="latin-1") as text:  # as text readers use it
        assert len(text.read()) == len(data)


def test_frame_numbers_are_bounded(tmp_path):
    big = 10 ** 12
    ref = tmp_path / "ref.csv"
    ref.write_text("frame,theta_x_deg,theta_y_deg,theta_z_deg,tau_x_mm,tau_y_mm,tau_z_mm\n"
                   f"3,1,2,3,4,5,6\n{big},1,2,3,4,5,6\n")
    with pytest.raises(ValueError, match=f"ref.csv.*frame {big}.*MAX_FRAME_NUMBER"):
        read_reference_poses(ref, frames=[3])
    with pytest.raises(ValueError, match="not finite"):
        ref.write_text("frame,theta_x_deg,theta_y_deg,theta_z_deg,tau_x_mm,tau_y_mm,tau_z_mm\n3,inf,2,3,4,5,6\n")
        read_reference_poses(ref, frames=[3])
    with pytest.raises(ValueError, match="expected an integer"):
        ref.write_text("frame,theta_x_deg,theta_y_deg,theta_z_deg,tau_x_mm,tau_y_mm,tau_z_mm\n1e300,1,2,3,4,5,6\n")
        read_reference_poses(ref, frames=[3])
    # large but allowed frame numbers: only the rows the file has are kept
    ref.write_text("frame,theta_x_deg,theta_y_deg,theta_z_deg,tau_x_mm,tau_y_mm,tau_z_mm\n"
                   "9999999,1,2,3,4,5,6\n7,6,5,4,3,2,1\n")
    out = read_reference_poses(ref, frames=[7, 8, 9999999])
    np.testing.assert_array_equal(out[0], [6, 5, 4, 3, 2, 1])
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[2], [1, 2, 3, 4, 5, 6])
    # XMALab Frame column and a .tra sidecar
    cols = ",".join(f"B_{s}" for s in ("R11", "R12", "R13", "01", "R21", "R22", "R23", "02", "R31", "R32", "R33",
                                        "03", "TX", "TY", "TZ", "1"))
    xma = tmp_path / "rb.csv"
    xma.write_text(f"Frame,{cols}\n{big},1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1\n")
    with pytest.raises(ValueError, match=f"rb.csv.*Frame '{big}'"):
        read_xmalab_rigid_body_csv(xma)
    tra = tmp_path / "p.tra"
    tra.write_text(",".join(["1"] * 16) + "\n")
    (tmp_path / "p.tra.fluororeg.json").write_text(json.dumps({"body_from_model": np.eye(4).tolist(),
                                                               "line_frame_numbers": [big]}))
    with pytest.raises(ValueError, match=f"frame {big}"):
        read_pose_sidecar(tra)


# ------------------------------------------------------------------ the CLI
def _cli(argv, capsys):
    from fluororeg.cli import main

    status = main(argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("case", ["fifo", "device", "bomb", "huge_order"])
def test_cli_gives_one_line_and_a_nonzero_status(tmp_path, capsys, case):
    if case in ("fifo", "device"):
        ct = _make_bad(case, tmp_path / "ct.mha")
        argv = ["subject", "init", "--ct", str(ct), "--out", str(tmp_path / "subject")]
        expect = "FIFO" if case == "fifo" else "character device"
    elif case == "bomb":
        ct = _mha(tmp_path / "ct.mha", (2048, 2048, 2048), zlib.compress(bytes(1 << 20)))
        argv = ["subject", "init", "--ct", str(ct), "--out", str(tmp_path / "subject")]
        expect = "MAX_VOLUME_VOXELS"
    else:
        path = tmp_path / "distortion.json"
        path.write_text(json.dumps(_model_dict(10 ** 9)))
        cams = []
        for k in (1, 2):
            cams.append(tmp_path / f"cam{k}.csv")
            cams[-1].write_text("image size\n64,64\n\ncamera matrix\n100,0,32\n0,100,32\n0,0,1\n\nrotation\n"
                                "1,0,0\n0,1,0\n0,0,1\n\ntranslation\n0\n0\n1000\n")
        argv = ["calibrate", "geometry", "--mayacam", *map(str, cams), "--pitch", "0.3", "--distortion",
                str(path), str(path), "--out", str(tmp_path / "g.json")]
        expect = "order"
    status, err = _cli(argv, capsys)
    assert status != 0
    assert len(err.strip().splitlines()) == 1, err
    assert expect in err and "Traceback" not in err


def test_cli_turns_memory_error_into_one_line(tmp_path, capsys, monkeypatch):
    import fluororeg.io.volume_formats as vf

    def exhausted(path):
        raise MemoryError()

    monkeypatch.setattr(vf, "read_metaimage", exhausted)
    ct = _mha(tmp_path / "ct.mha", (2, 2, 2), zlib.compress(bytes(16)))
    status, err = _cli(["subject", "init", "--ct", str(ct), "--out", str(tmp_path / "s")], capsys)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "out of memory" in err and "too large" in err


def test_cli_in_a_process_no_traceback(tmp_path):
    """The installed entry point, in its own process: a FIFO as CT gives one line, status 2."""
    fifo = _make_bad("fifo", tmp_path / "ct.nii.gz")
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "fluororeg", "subject", "init", "--ct", str(fifo), "--out",
                          str(tmp_path / "s")], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "FIFO" in res.stderr and "Traceback" not in res.stderr


def test_limits_are_sane():
    assert limits.MAX_POLYNOMIAL_ORDER >= 5  # the paper's order
    assert 1024 * 1024 <= limits.MAX_FRAME_PIXELS < 400_000_000
    assert 512 * 512 * 1024 <= limits.MAX_VOLUME_VOXELS
    assert limits.MAX_FRAME_NUMBER == 10_000_000


def test_bead_plate_image_and_study_digest_refuse_special_files(tmp_path):
    from fluororeg.calibration.beads import load_image
    from fluororeg.study.inputs import file_digest

    fifo = tmp_path / "plate.png"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        load_image(fifo, "bead plate")
    with pytest.raises(ValueError, match="character device"):
        load_image("/dev/zero", "bead plate")
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png", "bead plate")
    with pytest.raises(ValueError, match="FIFO"):
        file_digest(fifo)
    with pytest.raises(ValueError, match="character device"):
        file_digest("/dev/zero")


def test_tiff_stack_with_a_looping_page_chain_is_refused_at_once(tmp_path):
    """A damaged TIFF whose chain of pages loops kept tifffile busy for minutes (fuzz suite); the
    autouse alarm turns a hang into a failure."""
    import tifffile

    from fluororeg.io.volume_formats import load_tiff_stack

    z, y, x = np.mgrid[0:12, 0:14, 0:16]
    data = np.where((x - 8) ** 2 + (y - 7) ** 2 + (z - 6) ** 2 < 25, 2200, 0).astype(np.uint16)
    for big in (False, True):
        good = tmp_path / f"good_{big}.tif"
        tifffile.imwrite(good, data, bigtiff=big)
        assert load_tiff_stack(good, (1, 1, 1), "hu").data.size == data.size  # a sound file still reads
        raw = good.read_bytes()
        bad = tmp_path / f"bad_{big}.tif"
        bad.write_bytes(raw[:136] + raw[136:169] + raw[136:])  # 33 bytes duplicated: the chain loops
        with pytest.raises(ValueError, match="damaged TIFF"):
            load_tiff_stack(bad, (1, 1, 1), "hu")
