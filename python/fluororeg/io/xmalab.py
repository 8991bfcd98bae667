"""XMALab interoperability: rigid-body transformation CSV files.

XMALab (Brown University; XROMM) exports a rigid body's motion (``Trial::
saveRigidBodyTransformations``) as a CSV with one row per trial frame and 16 columns per
body, headed ``NAME_R11, NAME_R12, NAME_R13, NAME_01, NAME_R21, NAME_R22, NAME_R23, NAME_02,
NAME_R31, NAME_R32, NAME_R33, NAME_03, NAME_TX, NAME_TY, NAME_TZ, NAME_1`` (each name followed
by ``_<cutoff>Hz`` for filtered poses), optionally after a ``Frame`` column (1-based frame
index in the trial) and optionally without the header row. The 16 values are the 4x4
``world_from_body`` matrix column by column (XMALab writes its OpenCV rotation ``R`` row by row
and ``-R^T t`` last: the inverse of ``[R | t]``, in OpenGL/Maya column order), ``NaN`` for a
frame without a pose. Units are those of the calibration (mm).

fluororeg writes the bone frame Autoscoper uses for the subject's CT (the volume frame, see
:mod:`fluororeg.io.autoscoper`), so the same motion drives the CT model in XMALab, Maya and
Autoscoper; a sidecar ``<file>.fluororeg.json`` records that frame and each row's frame
number so that :func:`fluororeg.io.poses.read_reference_poses` reads the file back.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.io.limits import MAX_FRAME_NUMBER, check_frame_count, check_regular_file, read_text

__all__ = ["write_xmalab_rigid_body_csv", "read_xmalab_rigid_body_csv", "xmalab_columns"]

_SUFFIXES = ("R11", "R12", "R13", "01", "R21", "R22", "R23", "02", "R31", "R32", "R33", "03", "TX", "TY", "TZ", "1")


def xmalab_columns(body: str, filter_suffix: str = "") -> list[str]:
    """The 16 column names of one rigid body (``filter_suffix`` e.g. ``"_30Hz"``)."""
    return [f"{body}_{s}{filter_suffix}" for s in _SUFFIXES]


def write_xmalab_rigid_body_csv(path, frames, world_from_model, subject, *, trial_frames=None, body: str | None = None,
                                flip=(0, 0, 0)) -> Path:
    """Write poses (fluororeg frame numbers ``frames`` [F], world_from_model [F, 4, 4]) as an
    XMALab rigid-body CSV of the subject's CT in Autoscoper's volume frame; row n holds frame
    ``trial_frames[n]`` (default: frame number n)."""
    from fluororeg.io.autoscoper import autoscoper_from_model, trial_matrices, write_pose_sidecar

    body = body or subject.name
    if not body or "," in body:
        raise ValueError(f"rigid body name {body!r}: expected a name without commas")
    trial_frames, M = trial_matrices(world_from_model, frames, subject, flip, trial_frames)
    rows = M.transpose(0, 2, 1).reshape(len(M), 16)  # column by column
    lines = ["Frame," + ",".join(xmalab_columns(body))]  # XMALab's "Frame" column: 1-based trial index
    lines += [f"{n + 1}," + ",".join("NaN" if not math.isfinite(v) else repr(float(v)) for v in r)
              for n, r in enumerate(rows)]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    write_pose_sidecar(path, autoscoper_from_model(subject, flip), trial_frames, subject)
    return path


def read_xmalab_rigid_body_csv(path, body: str | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """(body name, world_from_body [R, 4, 4], trial index [R]) from an XMALab rigid-body CSV
    with a header row; ``body`` picks one of several bodies (default: the first). The trial
    index (0-based) of a row is its ``Frame`` column minus 1 when there is one, else its
    position. NaN rows stay NaN."""
    path = Path(path)
    check_regular_file(path, "XMALab file")
    try:
        rows = [r for r in csv.reader(io.StringIO(read_text(path, "XMALab file", encoding="utf-8-sig"), newline=""))
                if r]
    except csv.Error as exc:
        raise ValueError(f"'{path}' is not a readable CSV file: {exc}") from None
    check_frame_count(len(rows) - 1, f"'{path}' (rows)")
    if not rows:
        raise ValueError(f"'{path}' is empty")
    header = [h.strip() for h in rows[0]]
    found = [re.fullmatch(r"(.+)_R11(_[0-9.eE+-]+Hz)?", h) for h in header]
    bodies = [(m.group(1), m.group(2) or "", i) for i, m in enumerate(found) if m]
    if not bodies:
        raise ValueError(f"'{path}' has no NAME_R11 column: not an XMALab rigid-body transformation export "
                         "(exported with its header row)")
    names = [b[0] for b in bodies]
    name = names[0] if body is None else body
    if name not in names:
        raise ValueError(f"rigid body {name!r} is not in '{path}' (it has {names})")
    _, suffix, start = bodies[names.index(name)]
    if header[start:start + 16] != xmalab_columns(name, suffix):
        raise ValueError(f"'{path}': the 16 columns of {name!r} are {header[start:start + 16]}, expected "
                         f"{xmalab_columns(name, suffix)}")
    frame_col = header.index("Frame") if "Frame" in header else None
    out = np.full((len(rows) - 1, 4, 4), np.nan)
    index = np.arange(len(rows) - 1, dtype=np.int64)
    for i, r in enumerate(rows[1:]):
        vals = r[start:start + 16]
        if len(vals) != 16:
            raise ValueError(f"'{path}' row {i + 2}: {len(vals)} values for {name!r}, expected 16")
        try:
            v = np.array([float(x) if x.strip() else math.nan for x in vals])
            frame = float(r[frame_col]) if frame_col is not None else i + 1.0
        except (ValueError, IndexError):
            raise ValueError(f"'{path}' row {i + 2}: not all values of {name!r} (or its Frame) are numbers") from None
        if not (math.isfinite(frame) and frame == int(frame) and 1 <= frame <= MAX_FRAME_NUMBER):
            raise ValueError(f"'{path}' row {i + 2}: Frame {r[frame_col]!r}, expected a 1-based frame index "
                             f"from 1 to {MAX_FRAME_NUMBER:,}")
        if np.isinf(v).any():
            raise ValueError(f"'{path}' row {i + 2}: a value of {name!r} is infinite (NaN marks a frame without a "
                             f"pose)")
        index[i] = int(frame) - 1
        out[i] = v.reshape(4, 4).T
    if len(index) and index.min() < 0:
        raise ValueError(f"'{path}': Frame {index.min() + 1} is not a 1-based frame index")
    return name, out, index
