"""XMALab interoperability: rigid-body transformation CSV files.

XMALab (Brown University; XROMM) exports a rigid body's motion as a CSV with one row per
trial frame (the first row is the first frame) and 16 columns per body: the 4x4
``world_from_body`` matrix column by column (the layout Maya and the XROMM tools read:
rotation columns, each followed by 0, then the translation and 1), headed
``NAME_R11, NAME_R12, NAME_R13, NAME_0, NAME_R21, ..., NAME_Tx, NAME_Ty, NAME_Tz, NAME_1``
(R1k is the first column of the rotation in column-vector form). Frames without a pose are
``NaN``. Units are those of the calibration (mm).

fluororeg writes the bone frame Autoscoper uses for the subject's CT (the volume frame, see
:mod:`fluororeg.io.autoscoper`), so the same motion drives the CT model in XMALab, Maya and
Autoscoper; a sidecar ``<file>.fluororeg.json`` records that frame and each row's frame
number so that :func:`fluororeg.io.poses.read_reference_poses` reads the file back.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text

__all__ = ["write_xmalab_rigid_body_csv", "read_xmalab_rigid_body_csv", "xmalab_columns"]

_SUFFIXES = ("R11", "R12", "R13", "0", "R21", "R22", "R23", "0", "R31", "R32", "R33", "0", "Tx", "Ty", "Tz", "1")


def xmalab_columns(body: str) -> list[str]:
    """The 16 column names of one rigid body."""
    return [f"{body}_{s}" for s in _SUFFIXES]


def write_xmalab_rigid_body_csv(path, frames, world_from_model, subject, *, trial_frames=None, body: str | None = None,
                                flip=(0, 0, 0)) -> Path:
    """Write poses (fluororeg frame numbers ``frames`` [F], world_from_model [F, 4, 4]) as an
    XMALab rigid-body CSV of the subject's CT in Autoscoper's volume frame; row n holds frame
    ``trial_frames[n]`` (default: frame number n)."""
    from fluororeg.io.autoscoper import autoscoper_from_model, tra_from_model_poses, write_pose_sidecar

    body = body or subject.name
    if not body or "," in body:
        raise ValueError(f"rigid body name {body!r}: expected a name without commas")
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    M = tra_from_model_poses(world_from_model, subject, flip)
    if len(frames) != len(M):
        raise ValueError(f"{len(frames)} frame numbers but {len(M)} poses")
    if trial_frames is None:
        if len(frames) and frames.min() < 0:
            raise ValueError(f"frame {frames.min()} is negative: a row number cannot be negative")
        trial_frames = np.arange(int(frames.max()) + 1 if len(frames) else 0)
    trial_frames = np.asarray(trial_frames, dtype=np.int64).reshape(-1)
    row_of = {int(f): n for n, f in enumerate(trial_frames)}
    missing = [int(f) for f in frames if int(f) not in row_of]
    if missing:
        raise ValueError(f"frames {missing[:10]} are not frames of the trial")
    rows = np.full((len(trial_frames), 16), np.nan)
    for f, m in zip(frames, M):
        rows[row_of[int(f)]] = m.T.ravel()  # column by column
    lines = [",".join(xmalab_columns(body))]
    lines += [",".join("NaN" if not math.isfinite(v) else repr(float(v)) for v in r) for r in rows]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    write_pose_sidecar(path, autoscoper_from_model(subject, flip), trial_frames, subject)
    return path


def read_xmalab_rigid_body_csv(path, body: str | None = None) -> tuple[str, np.ndarray]:
    """(body name, world_from_body [F, 4, 4]) from an XMALab rigid-body CSV; ``body`` picks one
    of several bodies (default: the first). Row n is trial frame n; NaN rows stay NaN."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"XMALab file '{path}' does not exist")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"'{path}' is empty")
    header = [h.strip() for h in rows[0]]
    bodies = [h[:-len("_R11")] for h in header if h.endswith("_R11")]
    if not bodies:
        raise ValueError(f"'{path}' has no NAME_R11 column: not an XMALab rigid-body transformation export")
    name = bodies[0] if body is None else body
    if name not in bodies:
        raise ValueError(f"rigid body {name!r} is not in '{path}' (it has {bodies})")
    start = header.index(f"{name}_R11")
    if header[start:start + 16] != xmalab_columns(name):
        raise ValueError(f"'{path}': the 16 columns of {name!r} are not {xmalab_columns(name)}")
    out = np.full((len(rows) - 1, 4, 4), np.nan)
    for i, r in enumerate(rows[1:]):
        vals = r[start:start + 16]
        if len(vals) != 16:
            raise ValueError(f"'{path}' row {i + 2}: {len(vals)} values for {name!r}, expected 16")
        try:
            v = np.array([float(x) if x.strip() else math.nan for x in vals])
        except ValueError:
            raise ValueError(f"'{path}' row {i + 2}: not all values of {name!r} are numbers") from None
        out[i] = v.reshape(4, 4).T
    return name, out
