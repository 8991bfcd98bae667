"""MetaImage volumes (``.mha`` one file, ``.mhd`` header + data file): our own reader and
writer (:func:`fluororeg.io.volume_formats.load_volume` / ``save_volume`` dispatch here)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from fluororeg.core.volume import Volume
from fluororeg.io.atomic import chmod_default, temporary_path_beside
from fluororeg.io.limits import MAX_VOLUME_BYTES, check_regular_file, check_volume_shape, read_bytes

__all__ = ["read_metaimage", "write_metaimage"]


_MET_TYPES = {
    "MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16,
    "MET_SHORT": np.int16, "MET_UINT": np.uint32, "MET_INT": np.int32,
    "MET_ULONG_LONG": np.uint64, "MET_LONG_LONG": np.int64,
    "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}
_MET_FROM_DTYPE = {np.dtype(t): k for k, t in _MET_TYPES.items()}
_MET_FROM_DTYPE[np.dtype(np.uint64)] = "MET_ULONG_LONG"


def _parse_metaimage_header(p: Path) -> Tuple[Dict[str, str], bytes]:
    """Header fields (keys as written) and the bytes that follow ElementDataFile."""
    raw = read_bytes(p, "MetaImage file", max_bytes=MAX_VOLUME_BYTES + (1 << 20))
    fields: Dict[str, str] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        line_b = raw[pos:] if end < 0 else raw[pos:end]
        pos = len(raw) if end < 0 else end + 1
        try:
            line = line_b.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{str(p)!r}: not a MetaImage header (binary data before ElementDataFile)")
        if line and "=" not in line:
            raise ValueError(f"{str(p)!r}: malformed MetaImage header line {line!r}")
        if line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                return fields, raw[pos:]
        if end < 0:
            raise ValueError(f"{str(p)!r}: MetaImage header has no ElementDataFile line")


def _met_bool(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def read_metaimage(p: Path) -> Volume:
    f, tail = _parse_metaimage_header(p)
    get = f.get
    otype = get("ObjectType", "Image")
    if otype.lower() != "image":
        raise ValueError(f"{str(p)!r}: MetaImage ObjectType {otype!r}, expected 'Image'")
    ndims = int(get("NDims", "0"))
    if ndims != 3:
        raise ValueError(f"{str(p)!r}: MetaImage NDims = {ndims}, expected 3")
    try:
        dims = [int(x) for x in get("DimSize", "").split()]
    except ValueError:
        dims = []
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"{str(p)!r}: MetaImage DimSize {get('DimSize')!r}, expected 3 positive integers")
    channels = int(get("ElementNumberOfChannels", "1"))
    if channels != 1:
        raise ValueError(f"{str(p)!r}: ElementNumberOfChannels = {channels}, expected 1")
    etype = get("ElementType", "")
    if etype not in _MET_TYPES:
        raise ValueError(f"{str(p)!r}: unsupported MetaImage ElementType {etype!r}; expected one "
                         f"of {sorted(_MET_TYPES)}")
    msb = _met_bool(get("BinaryDataByteOrderMSB", get("ElementByteOrderMSB", "False")))
    dtype = np.dtype(_MET_TYPES[etype]).newbyteorder(">" if msb else "<")
    if "BinaryData" in f and not _met_bool(f["BinaryData"]):
        raise ValueError(f"{str(p)!r}: ASCII MetaImage data (BinaryData = False) is not supported")
    spacing_s = get("ElementSpacing", get("ElementSize", "1 1 1"))
    spacing = np.array([float(x) for x in spacing_s.split()])
    offset_s = get("Offset", get("Position", get("Origin", "0 0 0")))
    origin = np.array([float(x) for x in offset_s.split()])
    tm_s = get("TransformMatrix", get("Rotation", get("Orientation", "1 0 0 0 1 0 0 0 1")))
    tm = np.array([float(x) for x in tm_s.split()])
    if tm.size != 9:
        raise ValueError(f"{str(p)!r}: TransformMatrix {tm_s!r}, expected 9 numbers")
    # ITK: TransformMatrix[a*3 + b] = component b of the direction of index axis a
    direction = tm.reshape(3, 3).T
    check_volume_shape(dims, dtype.itemsize, f"{str(p)!r} (MetaImage DimSize)")
    n_bytes = dims[0] * dims[1] * dims[2] * dtype.itemsize
    compressed = _met_bool(get("CompressedData", "False"))
    edf = f["ElementDataFile"]
    if edf.upper() == "LOCAL":
        payload = tail
    else:
        if edf.upper().startswith("LIST") or "%" in edf or len(edf.split()) > 1:
            raise ValueError(f"{str(p)!r}: multi-file ElementDataFile {edf!r} is not supported; "
                             f"expected LOCAL or a single file name")
        data_path = Path(edf) if os.path.isabs(edf) else p.parent / edf
        if not data_path.exists():
            raise FileNotFoundError(f"{str(p)!r}: data file {str(data_path)!r} not found")
        try:
            header_size = int(get("HeaderSize", "0"))
        except ValueError:
            raise ValueError(f"{str(p)!r}: HeaderSize {get('HeaderSize')!r}, expected a whole number") from None
        check_regular_file(data_path, f"{str(p)!r}: MetaImage data file")
        payload = read_bytes(data_path, f"{str(p)!r}: MetaImage data file",
                             max_bytes=max(header_size, 0) + MAX_VOLUME_BYTES + (1 << 20))
        if header_size == -1 and not compressed:
            payload = payload[len(payload) - n_bytes:]
        elif header_size > 0:
            payload = payload[header_size:]
    if compressed:
        if "CompressedDataSize" in f:
            try:
                declared = int(f["CompressedDataSize"])
            except ValueError:
                raise ValueError(f"{str(p)!r}: CompressedDataSize {f['CompressedDataSize']!r}, expected a "
                                 f"whole number of bytes") from None
            if declared < 1 or declared > len(payload):
                raise ValueError(f"{str(p)!r}: CompressedDataSize = {declared} but the file holds "
                                 f"{len(payload)} bytes of compressed data")
            payload = payload[:declared]
        # deflate expands at most ~1032:1: less compressed data cannot hold DimSize's voxels
        if n_bytes > 1100 * len(payload) + 4096:
            raise ValueError(f"{str(p)!r}: {len(payload)} bytes of compressed data cannot inflate to the "
                             f"{n_bytes} bytes DimSize {dims} of {etype} declares")
        inflater = zlib.decompressobj(47)  # zlib or gzip wrapper
        try:
            # inflate at most the declared size (+1 byte to notice more): never more than the limit
            payload = inflater.decompress(payload, n_bytes + 1)
        except zlib.error as exc:
            raise ValueError(f"{str(p)!r}: corrupt compressed MetaImage data: {exc}") from exc
        if len(payload) > n_bytes:
            raise ValueError(f"{str(p)!r}: compressed MetaImage data inflates to more than the {n_bytes} bytes "
                             f"DimSize {dims} of {etype} declares")
    if len(payload) < n_bytes:
        raise ValueError(f"{str(p)!r}: MetaImage data has {len(payload)} bytes, expected {n_bytes} "
                         f"for DimSize {dims} of {etype}")
    arr = np.frombuffer(payload[:n_bytes], dtype=dtype).reshape(dims[2], dims[1], dims[0])
    arr = arr.astype(dtype.newbyteorder("="))
    return Volume(arr, spacing, origin, direction)


def _anatomical_orientation(direction: np.ndarray) -> str:
    # ITK naming: the axis points *from* this side, e.g. +x (toward L) is 'R'
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    out = ""
    for c in range(3):
        axis = int(np.argmax(np.abs(direction[:, c])))
        out += letters[axis][0] if direction[axis, c] > 0 else letters[axis][1]
    return out


def _fmt(values: np.ndarray) -> str:
    return " ".join(repr(float(x)) for x in np.asarray(values).ravel())


def write_metaimage(v: Volume, p: Path) -> None:
    data = np.asarray(v.data)
    if data.dtype not in _MET_FROM_DTYPE:
        raise ValueError(f"cannot write dtype {data.dtype} to MetaImage {str(p)!r}")
    raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
    local = p.name.lower().endswith(".mha")
    if local:
        payload = zlib.compress(raw, 6)
    else:
        payload = raw
    nz, ny, nx = data.shape
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        f"CompressedData = {'True' if local else 'False'}",
    ]
    if local:
        lines.append(f"CompressedDataSize = {len(payload)}")
    lines += [
        f"TransformMatrix = {_fmt(v.direction.T)}",
        f"Offset = {_fmt(v.origin)}",
        "CenterOfRotation = 0 0 0",
        f"AnatomicalOrientation = {_anatomical_orientation(v.direction)}",
        f"ElementSpacing = {_fmt(v.spacing)}",
        f"DimSize = {nx} {ny} {nz}",
        f"ElementType = {_MET_FROM_DTYPE[data.dtype]}",
    ]
    if local:
        lines.append("ElementDataFile = LOCAL")
        with open(p, "wb") as fh:
            fh.write(("\n".join(lines) + "\n").encode("ascii"))
            fh.write(payload)
        return
    raw_path = p.with_suffix(".raw")
    lines.append(f"ElementDataFile = {raw_path.name}")
    tmp_raw = temporary_path_beside(raw_path, ".raw")
    tmp_hdr = temporary_path_beside(p, ".mhd")
    try:
        tmp_raw.write_bytes(payload)
        tmp_hdr.write_text("\n".join(lines) + "\n", encoding="ascii")
        chmod_default(tmp_raw)
        chmod_default(tmp_hdr)
        os.replace(tmp_raw, raw_path)
        os.replace(tmp_hdr, p)
    finally:
        for t in (tmp_raw, tmp_hdr):
            if t.exists():
                t.unlink()
