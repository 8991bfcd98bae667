"""DICOM series (a folder of single-frame files, reading only, via pydicom)
(:func:`fluororeg.io.volume_formats.load_volume` dispatches here)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from fluororeg.core.volume import Volume
from fluororeg.io.limits import (MAX_IMAGE_FILE_BYTES, check_frame_count, check_frame_shape, check_volume_shape,
                                 describe_file_type, read_bytes)

__all__ = ["read_dicom_series"]


def _size_of(ds, q: Path) -> tuple:
    """(rows, columns) of a DICOM slice, checked against the frame limit before decoding."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{str(q)!r}: DICOM image without valid Rows / Columns") from None
    check_frame_shape(cols, rows, f"{str(q)!r} (DICOM Columns x Rows)")
    return rows, cols


def read_dicom_series(folder: Path, select_file: Optional[Path] = None) -> Volume:
    """The DICOM series in ``folder`` (the one ``select_file`` belongs to, if given) as a Volume;
    a damaged file is a ValueError naming the folder, never pydicom's own exception."""
    from pydicom.errors import BytesLengthException

    try:
        return _read_dicom_series(folder, select_file)
    except BytesLengthException as exc:  # pydicom parses elements lazily: damage can surface anywhere
        raise ValueError(f"DICOM folder {str(folder)!r}: malformed DICOM data: {exc}") from exc


def _read_dicom_series(folder: Path, select_file: Optional[Path] = None) -> Volume:
    from struct import error as struct_error

    import pydicom
    from pydicom.errors import InvalidDicomError

    import os
    import stat

    files = []
    for q in sorted(folder.iterdir()):
        try:
            mode = os.stat(q).st_mode
        except OSError:
            continue  # a dangling link
        if stat.S_ISDIR(mode) or q.name.upper() == "DICOMDIR":
            continue
        if not stat.S_ISREG(mode):  # a device or FIFO would be read forever or block
            raise ValueError(f"'{q}' in the DICOM folder {str(folder)!r} is {describe_file_type(mode)}, expected a "
                             f"regular file")
        files.append(q)
    check_frame_count(len(files), f"DICOM folder {str(folder)!r}")
    slices = []
    for q in files:
        # Parsed from its bytes in memory: a damaged element length (up to 4 GiB) then reads what
        # the file holds, where reading the file itself would allocate that length first.
        data = read_bytes(q, "DICOM file", max_bytes=MAX_IMAGE_FILE_BYTES)
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, OSError, EOFError):
            continue
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, NotImplementedError,
                struct_error) as exc:  # NotImplementedError: pydicom's unknown value representation
            raise ValueError(f"{str(q)!r}: malformed DICOM file: {exc}") from exc
        if "PixelData" not in ds:
            continue
        slices.append((q, ds))
    if not slices:
        raise ValueError(f"no DICOM image files found in folder {str(folder)!r}")
    if select_file is not None:
        sel = [ds for q, ds in slices if q.resolve() == select_file.resolve()]
        if not sel:
            raise ValueError(f"{str(select_file)!r} is not a readable DICOM image")
        uid = getattr(sel[0], "SeriesInstanceUID", None)
        slices = [(q, ds) for q, ds in slices if getattr(ds, "SeriesInstanceUID", None) == uid]
    uids = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices})
    if len(uids) > 1:
        raise ValueError(f"folder {str(folder)!r} mixes {len(uids)} DICOM series {uids}; "
                         f"put one series per folder (or pass one of its .dcm files)")
    for q, ds in slices:
        try:
            n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            raise ValueError(f"{str(q)!r}: NumberOfFrames {getattr(ds, 'NumberOfFrames', None)!r} is not a "
                             f"number") from None
        if n_frames != 1:
            raise ValueError(f"{str(q)!r}: multi-frame DICOM is not supported (one slice per file expected)")
        _size_of(ds, q)
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise ValueError(f"{str(q)!r}: DICOM slice lacks {tag}; cannot place it in space")
    if len(slices) < 2:
        raise ValueError(f"folder {str(folder)!r} holds a single DICOM slice; a volume needs at least 2")

    q0, ds0 = slices[0]
    iop0 = np.array(ds0.ImageOrientationPatient, dtype=np.float64)
    ps0 = np.array(ds0.PixelSpacing, dtype=np.float64)
    rows0, cols0 = _size_of(ds0, q0)
    # Rows x Columns x slices before any pixel is decoded
    check_volume_shape((len(slices), rows0, cols0), 4, f"DICOM series in {str(folder)!r}")
    for q, ds in slices[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), iop0, atol=1e-4):
            raise ValueError(f"{str(q)!r}: ImageOrientationPatient {list(ds.ImageOrientationPatient)} "
                             f"differs from {iop0.tolist()} in {str(q0)!r}")
        if not np.allclose(np.array(ds.PixelSpacing, dtype=np.float64), ps0, rtol=1e-4):
            raise ValueError(f"{str(q)!r}: PixelSpacing {list(ds.PixelSpacing)} differs from {ps0.tolist()}")
        if (int(ds.Rows), int(ds.Columns)) != (rows0, cols0):
            raise ValueError(f"{str(q)!r}: slice size {int(ds.Rows)}x{int(ds.Columns)} differs from "
                             f"{rows0}x{cols0}")
    # IOP: first triple = direction of increasing column index (along a row) = i axis,
    # second triple = direction of increasing row index (down a column) = j axis.
    row_dir = iop0[:3] / np.linalg.norm(iop0[:3])
    col_dir = iop0[3:] / np.linalg.norm(iop0[3:])
    if abs(row_dir @ col_dir) > 1e-3:
        raise ValueError(f"{str(q0)!r}: ImageOrientationPatient {iop0.tolist()} is not orthogonal")
    normal = np.cross(row_dir, col_dir)
    pos = np.array([np.array(ds.ImagePositionPatient, dtype=np.float64) for _, ds in slices])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    pos = pos[order]
    slices = [slices[i] for i in order]
    steps = np.diff(dist)
    if np.any(steps <= 1e-6):
        k = int(np.argmin(steps))
        raise ValueError(f"DICOM slices {str(slices[k][0])!r} and {str(slices[k + 1][0])!r} in "
                         f"{str(folder)!r} share the position {dist[k]:.4f} mm along the slice normal")
    dz = float(np.median(steps))
    tol = max(0.01, 0.01 * dz)
    if np.max(np.abs(steps - dz)) > tol:
        raise ValueError(f"non-uniform DICOM slice spacing in {str(folder)!r}: steps range "
                         f"{steps.min():.4f}..{steps.max():.4f} mm (missing slices?)")
    span = pos[-1] - pos[0]
    perp = span - (span @ normal) * normal
    if np.linalg.norm(perp) > max(0.01, 1e-3 * np.linalg.norm(span)):
        raise ValueError(f"DICOM series in {str(folder)!r} is sheared (gantry tilt): slice positions "
                         f"drift {np.linalg.norm(perp):.3f} mm off the slice normal")

    raw_slices, slopes, inters = [], [], []
    for q, ds in slices:
        try:
            px = ds.pixel_array
        except Exception as exc:
            raise ValueError(f"{str(q)!r}: cannot decode DICOM pixel data: {exc}") from exc
        if px.shape != (rows0, cols0):
            raise ValueError(f"{str(q)!r}: pixel array shape {px.shape}, expected {(rows0, cols0)}")
        raw_slices.append(px)
        slopes.append(float(getattr(ds, "RescaleSlope", 1.0) or 1.0))
        inters.append(float(getattr(ds, "RescaleIntercept", 0.0) or 0.0))
    raw = np.stack(raw_slices)  # [k, j(row), i(column)]
    slopes_a = np.array(slopes)
    inters_a = np.array(inters)
    hu = raw.astype(np.float64) * slopes_a[:, None, None] + inters_a[:, None, None]
    if (np.all(slopes_a == np.rint(slopes_a)) and np.all(inters_a == np.rint(inters_a))
            and hu.min() >= -32768 and hu.max() <= 32767):
        data = hu.astype(np.int16)
    else:
        data = hu.astype(np.float32)
    # PixelSpacing = (row spacing: between rows, along j; column spacing: along i)
    spacing = np.array([ps0[1], ps0[0], dz])
    direction = np.column_stack([row_dir, col_dir, normal])
    return Volume(data, spacing, pos[0], direction)
