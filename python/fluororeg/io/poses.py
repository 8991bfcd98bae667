"""Pose files: the per-frame registration CSV and Autoscoper's ``.tra`` export.

CSV columns (one row per frame; a frame that could not be registered keeps its row with empty
pose fields and its status, it is never invented)::

    frame, status, theta_x_deg, theta_y_deg, theta_z_deg, tau_x_mm, tau_y_mm, tau_z_mm,
    m00 .. m33 (world_from_model, row-major), objective, rms_mm_view1, rms_mm_view2,
    rms_px_view1, rms_px_view2, n_vis, mirror_case

status: ``ok``; ``one_view`` (the detections of one view disagree with the other's; the pose
rests on the view whose rms is typical, its depth is the least certain part); not registered:
``views_disagree``, ``too_few_landmarks``, ``failed``. With temporal smoothing (``register
--smoothing-hz``) the pose and matrix columns are smoothed; objective, residuals, n_vis and
mirror_case stay those of the frame's own registration.

``.tra`` (Autoscoper): one line per frame, the 16 values of the 4x4 world_from_model matrix
separated by commas, in millimetres; frames without a pose are 16 NaN values. The order is
Autoscoper's default export ("as matrix, as rows, with commas"): its ``save_tracking_results``
writes the OpenGL (column-major) array ``m`` as ``m[0], m[4], m[8], m[12], m[1], ...``, which
is the matrix row by row, the translation being values 4, 8 and 12. ``as_rows=False`` reads
and writes the "as columns" variant (the OpenGL array as it is).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text

__all__ = ["POSE_COLUMNS", "write_poses_csv", "read_poses_csv", "read_reference_poses", "write_tra", "read_tra"]

POSE_COLUMNS = (["frame", "status", "theta_x_deg", "theta_y_deg", "theta_z_deg", "tau_x_mm", "tau_y_mm",
                 "tau_z_mm"] + [f"m{r}{c}" for r in range(4) for c in range(4)]
                + ["objective", "rms_mm_view1", "rms_mm_view2", "rms_px_view1", "rms_px_view2", "n_vis",
                   "mirror_case"])


def _fmt(v) -> str:
    v = float(v)
    return "" if not math.isfinite(v) else repr(v)


def write_poses_csv(path, frames, status, poses, matrices, objective, rms_mm, rms_px, n_vis, mirror_case) -> Path:
    """Write the registration CSV (arrays of one length F: poses [F, 6] deg / mm, matrices
    [F, 4, 4], rms_* [F, 2]; NaN values become empty fields)."""
    rows = [",".join(POSE_COLUMNS)]
    F = len(frames)
    for name, arr, shape in (("poses", poses, (F, 6)), ("matrices", matrices, (F, 4, 4)), ("rms_mm", rms_mm, (F, 2)),
                             ("rms_px", rms_px, (F, 2))):
        if np.shape(arr) != shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, expected {shape}")
    for i in range(F):
        vals = ([str(int(frames[i])), str(status[i])] + [_fmt(v) for v in poses[i]]
                + [_fmt(v) for v in np.asarray(matrices[i]).ravel()] + [_fmt(objective[i])]
                + [_fmt(v) for v in rms_mm[i]] + [_fmt(v) for v in rms_px[i]]
                + [str(int(n_vis[i])), str(int(mirror_case[i]))])
        rows.append(",".join(vals))
    path = Path(path)
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path


def read_poses_csv(path) -> dict[str, np.ndarray]:
    """Read a registration CSV into arrays: frame [F], status [F] (str), poses [F, 6],
    matrices [F, 4, 4], objective [F], rms_mm [F, 2], rms_px [F, 2], n_vis [F],
    mirror_case [F] (missing values as NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file '{path}' does not exist")
    rows = _csv_rows(path, POSE_COLUMNS, "not a fluororeg pose file")
    col = _column_reader(path, rows)
    F = len(rows)
    return {
        "frame": col("frame", integer=True),
        "status": np.array([r["status"] for r in rows]),
        "poses": np.stack([col(c) for c in POSE_COLUMNS[2:8]], axis=1) if F else np.zeros((0, 6)),
        "matrices": (np.stack([col(f"m{r}{c}") for r in range(4) for c in range(4)], axis=1).reshape(F, 4, 4)
                     if F else np.zeros((0, 4, 4))),
        "objective": col("objective"),
        "rms_mm": np.stack([col("rms_mm_view1"), col("rms_mm_view2")], axis=1) if F else np.zeros((0, 2)),
        "rms_px": np.stack([col("rms_px_view1"), col("rms_px_view2")], axis=1) if F else np.zeros((0, 2)),
        "n_vis": col("n_vis", integer=True),
        "mirror_case": col("mirror_case", integer=True),
    }


def _csv_rows(path: Path, required, what: str) -> list[dict]:
    """The rows of the CSV file ``path`` (csv.DictReader); an error naming the ``required``
    columns it lacks, followed by ``what`` the file should be."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"'{path}' lacks the columns {missing}: {what}")
        return list(reader)


def _column_reader(path: Path, rows: list[dict]):
    """``col(name, integer=False)``: a column of csv.DictReader ``rows`` as float [F] (empty
    fields NaN) or, with ``integer``, as int [F] (every field must hold an integer)."""

    def col(name: str, integer: bool = False) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64 if integer else np.float64)
        for i, r in enumerate(rows):
            text = r.get(name)
            if text is None:  # a row shorter than the header
                raise ValueError(f"'{path}': row {i + 1} has no value for column {name} (a short row)")
            try:
                v = float(text) if text.strip() != "" else math.nan
            except ValueError:
                raise ValueError(f"'{path}': row {i + 1}, column {name}: {text!r} is not a number") from None
            if integer:
                if not (math.isfinite(v) and v == int(v)):
                    raise ValueError(f"'{path}': row {i + 1}, column {name}: {text!r}, expected an integer")
                v = int(v)
            out[i] = v
        return out

    return col


REFERENCE_COLUMNS = ["frame"] + POSE_COLUMNS[2:8]


def read_reference_poses(path, frames=None) -> np.ndarray:
    """Reference poses (deg, mm) by frame number from a CSV with at least the columns
    ``frame, theta_x_deg .. tau_z_mm`` (a fluororeg pose file, or manual registrations of some
    frames; empty fields: no pose) or from a simulation's ``truth.npz`` (``poses`` [F, 6],
    row i = frame i). Returns [len(frames), 6] for the given frame numbers, NaN where the
    reference has no pose; without ``frames``, [max frame + 1, 6]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file '{path}' does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            if "poses" not in data:
                raise ValueError(f"'{path}' has no 'poses' array (it has {sorted(data.files)})")
            by_frame = np.asarray(data["poses"], dtype=float)
        if by_frame.ndim != 2 or by_frame.shape[1] != 6:
            raise ValueError(f"'{path}': poses have shape {by_frame.shape}, expected [F, 6]")
    else:
        rows = _csv_rows(path, REFERENCE_COLUMNS, f"expected a CSV with {', '.join(REFERENCE_COLUMNS)} (degrees, mm)")
        col = _column_reader(path, rows)
        numbers = col("frame", integer=True)
        if len(numbers) and numbers.min() < 0:
            raise ValueError(f"'{path}': frame {numbers.min()} is negative")
        values, counts = np.unique(numbers, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"'{path}': frame {values[counts > 1][0]} appears {counts[counts > 1][0]} times")
        by_frame = np.full((int(numbers.max()) + 1 if len(numbers) else 0, 6), np.nan)
        if len(rows):
            by_frame[numbers] = np.stack([col(c) for c in REFERENCE_COLUMNS[1:]], axis=1)
    by_frame = np.where(np.isfinite(by_frame).all(axis=1, keepdims=True), by_frame, np.nan)  # a partial pose: none
    if frames is None:
        return by_frame
    frames = np.asarray(frames, dtype=np.int64)
    out = np.full((len(frames), 6), np.nan)
    known = (frames >= 0) & (frames < len(by_frame))
    out[known] = by_frame[frames[known]]
    return out


def write_tra(path, matrices, *, as_rows: bool = True) -> Path:
    """Autoscoper .tra: matrices [F, 4, 4] (NaN for frames without a pose), row by row (the
    default; see the module docstring) or column by column."""
    M = np.asarray(matrices, dtype=np.float64)
    if M.ndim != 3 or M.shape[1:] != (4, 4):
        raise ValueError(f"matrices has shape {M.shape}, expected (F, 4, 4)")
    lines = [",".join("NaN" if not math.isfinite(v) else repr(float(v)) for v in (m if as_rows else m.T).ravel())
             for m in M]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_tra(path, *, as_rows: bool = True) -> np.ndarray:
    """Read an Autoscoper .tra file (16 comma- or space-separated values per line, row by row
    or, with ``as_rows=False``, column by column) as [F, 4, 4]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tra file '{path}' does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 16:
            raise ValueError(f"'{path}' line {n}: {len(parts)} values, expected 16")
        try:
            vals = np.array([float(p) for p in parts])
        except ValueError:
            raise ValueError(f"'{path}' line {n}: not all values are numbers") from None
        out.append(vals.reshape(4, 4) if as_rows else vals.reshape(4, 4).T)
    return np.array(out).reshape(-1, 4, 4)
