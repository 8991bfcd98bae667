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
and writes the "as columns" variant (the OpenGL array as it is). These matrices are in
fluororeg's model frame; :func:`fluororeg.io.autoscoper.write_autoscoper_tra` writes the ones
Autoscoper loads in place (its volume frame, its frame order).

3D Slicer (:func:`write_slicer_tfm`): an ITK text transform (``#Insight Transform File V1.0``,
``AffineTransform_double_3_3``) in LPS. ITK files hold the *resampling* transform, which maps
points of the fixed (here: world) space to the moving (here: the CT's physical) space, i.e.
``physical_from_world``; Slicer inverts it on reading and shows the "to parent" transform
``world_from_physical`` (converted to RAS for display). Put the subject's CT (its ct.nrrd) under
the loaded transform and it appears at its registered place among the lab's world
coordinates (shown in RAS: x and y negated).
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.io.limits import (MAX_FRAMES, check_frame_count, check_frame_numbers,
                                 check_regular_file, npz_member_header, open_npz, read_text)

__all__ = ["POSE_COLUMNS", "write_poses_csv", "read_poses_csv", "read_reference_poses", "write_tra", "read_tra",
           "write_slicer_tfm", "read_slicer_tfm", "run_subject_elsewhere"]

POSE_COLUMNS = (["frame", "status", "theta_x_deg", "theta_y_deg", "theta_z_deg", "tau_x_mm", "tau_y_mm",
                 "tau_z_mm"] + [f"m{r}{c}" for r in range(4) for c in range(4)]
                + ["objective", "rms_mm_view1", "rms_mm_view2", "rms_px_view1", "rms_px_view2", "n_vis",
                   "mirror_case"])


def _fmt(v) -> str:
    v = float(v)
    return "" if not math.isfinite(v) else repr(v)


def _column_field(v) -> str:
    """A field of an extra column: 1 / 0 for a boolean, empty for a non-finite number."""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else repr(float(v))
    return str(v)


def write_poses_csv(path, frames, status, poses, matrices, objective, rms_mm, rms_px, n_vis, mirror_case,
                    extra_columns: dict | None = None) -> Path:
    """Write the registration CSV (arrays of one length F: poses [F, 6] deg / mm, matrices
    [F, 4, 4], rms_* [F, 2]; NaN values become empty fields). ``extra_columns``: name -> [F]
    values, written after the pose file's own columns (the pipeline's gate and refinement
    figures; readers of poses.csv ignore columns they do not know)."""
    F = len(frames)
    extra = dict(extra_columns or {})
    for name, arr, shape in (("poses", poses, (F, 6)), ("matrices", matrices, (F, 4, 4)), ("rms_mm", rms_mm, (F, 2)),
                             ("rms_px", rms_px, (F, 2))):
        if np.shape(arr) != shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, expected {shape}")
    for name, values in extra.items():
        if len(values) != F:
            raise ValueError(f"column '{name}' holds {len(values)} values for {F} frames: expected one per frame")
    rows = [",".join(list(POSE_COLUMNS) + list(extra))]
    for i in range(F):
        vals = ([str(int(frames[i])), str(status[i])] + [_fmt(v) for v in poses[i]]
                + [_fmt(v) for v in np.asarray(matrices[i]).ravel()] + [_fmt(objective[i])]
                + [_fmt(v) for v in rms_mm[i]] + [_fmt(v) for v in rms_px[i]]
                + [str(int(n_vis[i])), str(int(mirror_case[i]))] + [_column_field(v[i]) for v in extra.values()])
        rows.append(",".join(vals))
    path = Path(path)
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path


def read_poses_csv(path) -> dict[str, np.ndarray]:
    """Read a registration CSV into arrays: frame [F], status [F] (str), poses [F, 6],
    matrices [F, 4, 4], objective [F], rms_mm [F, 2], rms_px [F, 2], n_vis [F],
    mirror_case [F] (missing values as NaN)."""
    path = Path(path)
    check_regular_file(path, "pose file")
    rows = _csv_rows(path, POSE_COLUMNS, "not a fluororeg pose file")
    col = _column_reader(path, rows)
    F = len(rows)
    frame = col("frame", integer=True)
    check_frame_numbers(frame, f"'{path}'")
    numbers, counts = np.unique(frame, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"'{path}': frame {numbers[counts > 1][0]} has {counts[counts > 1][0]} rows: expected one "
                         "row per frame")
    poses = np.stack([col(c) for c in POSE_COLUMNS[2:8]], axis=1) if F else np.zeros((0, 6))
    matrices = (np.stack([col(f"m{r}{c}") for r in range(4) for c in range(4)], axis=1).reshape(F, 4, 4)
                if F else np.zeros((0, 4, 4)))
    _check_rigid(matrices, path, "row")
    _check_angles_match(poses, matrices, frame, path)
    return {
        "frame": frame,
        "status": np.array([r["status"] for r in rows]),
        "poses": poses,
        "matrices": matrices,
        "objective": col("objective"),
        "rms_mm": np.stack([col("rms_mm_view1"), col("rms_mm_view2")], axis=1) if F else np.zeros((0, 2)),
        "rms_px": np.stack([col("rms_px_view1"), col("rms_px_view2")], axis=1) if F else np.zeros((0, 2)),
        "n_vis": col("n_vis", integer=True),
        "mirror_case": col("mirror_case", integer=True),
    }


def run_subject_elsewhere(poses_path, subject) -> dict | None:
    """The subject a run folder's poses were registered with when its origin (the model frame's)
    is not ``subject``'s: from the options.json beside ``poses_path`` (``subject``,
    ``subject_fingerprint``, ``subject_origin`` [3] mm); None when it is the same origin (to 1 um),
    or there is no such record (not a run folder, or an older run)."""
    import json

    p = Path(poses_path).parent / "options.json"
    if not p.is_file():
        return None
    try:
        record = json.loads(read_text(p, "run options file"))
        origin = np.asarray(record["subject_origin"], dtype=np.float64)
    except (ValueError, KeyError, TypeError):
        return None
    if origin.shape != (3,) or not np.isfinite(origin).all() or np.allclose(origin, subject.origin, rtol=0,
                                                                             atol=1e-6):
        return None
    return {"subject": record.get("subject"), "subject_fingerprint": record.get("subject_fingerprint"),
            "subject_origin": origin}


def _check_rigid(matrices: np.ndarray, path: Path, unit: str) -> None:
    """Every finite 4x4 of ``matrices`` [R, 4, 4] a rigid transform (rotation and translation, to
    1e-4; file values are rounded), else an error naming the ``unit`` ('row', 'line') and what is off."""
    finite = np.flatnonzero(np.isfinite(matrices).all(axis=(1, 2)))
    if not len(finite):
        return
    M = matrices[finite]
    R = M[:, :3, :3]
    off = np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bottom = np.abs(M[:, 3] - [0.0, 0.0, 0.0, 1.0]).max(axis=1)
    bad = np.flatnonzero((off > 1e-4) | (det < 0) | (bottom > 1e-6))
    if len(bad):
        k = bad[0]
        raise ValueError(f"'{path}' {unit} {finite[k] + 1}: not a rigid transform (its rotation part is "
                         f"{off[k]:.3g} off orthonormal, determinant {det[k]:.3g}, last row "
                         f"{M[k, 3].round(6).tolist()}): expected a rotation and a translation"
                         + (f"; {len(bad) - 1} more such {unit}(s)" if len(bad) > 1 else ""))


def _check_angles_match(poses: np.ndarray, matrices: np.ndarray, frames: np.ndarray, path: Path) -> None:
    """A pose file's angles and translation [F, 6] and its matrices [F, 4, 4] must say the same
    (the readers use one or the other: evaluate the angles, export the matrices)."""
    from fluororeg.core.geometry import pose_matrix

    both = np.flatnonzero(np.isfinite(poses).all(axis=1) & np.isfinite(matrices).all(axis=(1, 2)))
    if not len(both):
        return
    gap = np.abs(pose_matrix(poses[both]) - matrices[both])
    worst = gap.max(axis=(1, 2))
    bad = np.flatnonzero(worst > 1e-3)  # rotation entries: ~0.06 deg; translation: 1 um
    if len(bad):
        k = both[bad[0]]
        raise ValueError(f"'{path}': frame {frames[k]}'s angles and translation (theta_x_deg .. tau_z_mm) and its "
                         f"matrix (m00 .. m33) differ (by up to {worst[bad[0]]:.3g}): a pose file edited in one "
                         "place only; expected both to hold the same pose")


def _csv_rows(path: Path, required, what: str) -> list[dict]:
    """The rows of the CSV file ``path`` (csv.DictReader); an error naming the ``required``
    columns it lacks, followed by ``what`` the file should be."""
    text = read_text(path, "CSV file", encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"'{path}' lacks the columns {missing}: {what}")
        rows = []
        for r in reader:
            if any(v.strip() for v in r.get(None, ())):  # DictReader keeps fields beyond the header under None
                raise ValueError(f"'{path}' row {reader.line_num - 1} has {len(r) - 1 + len(r[None])} fields for "
                                 f"{len(reader.fieldnames)} columns: {what}")
            rows.append(r)
            if len(rows) > MAX_FRAMES:
                check_frame_count(len(rows), f"'{path}' (rows)")
    except csv.Error as exc:
        raise ValueError(f"'{path}' is not a readable CSV file: {exc}") from None
    return rows


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
            if math.isinf(v):
                raise ValueError(f"'{path}': row {i + 1}, column {name}: {text!r} is not finite (an empty field "
                                 f"means no value)")
            if integer:
                if not (math.isfinite(v) and v == int(v) and abs(v) < 2 ** 62):
                    raise ValueError(f"'{path}': row {i + 1}, column {name}: {text!r}, expected an integer")
                v = int(v)
            out[i] = v
        return out

    return col


REFERENCE_COLUMNS = ["frame"] + POSE_COLUMNS[2:8]


POSE_FRAMES = ("model", "ct")  # read_reference_poses(pose_frame=): the bone frame of a CSV's poses


def read_reference_poses(path, frames=None, *, subject=None, trial_frames=None, flip=(0, 0, 0),
                         body: str | None = None, pose_frame: str = "model") -> np.ndarray:
    """Reference poses (deg, mm; fluororeg's world_from_model) by frame number, by file type:

    * a CSV with at least the columns ``frame, theta_x_deg .. tau_z_mm`` (a fluororeg pose
      file, or manual registrations of some frames; empty fields: no pose): ``pose_frame``
      'model' (fluororeg's model frame: poses.csv) or 'ct' (world_from_physical, the bone in its
      CT's own physical frame, as a bone placed by hand in Autoscoper or 3D Slicer is; needs
      ``subject``, whose origin relates the two);
    * a 3D Slicer / ITK transform ``.tfm`` (as ``fluororeg export --format slicer`` writes it:
      physical_from_world, LPS; needs ``subject``): one pose, of the frame number its file name
      ends in (``radius_0099.tfm``: frame 99);
    * a simulation's ``truth.npz`` (``poses`` [F, 6], row i = frame i);
    * an Autoscoper ``.tra`` (world_from_volume in Autoscoper's volume frame, line n = trial
      frame n) or an XMALab rigid-body CSV (columns ``NAME_R11 .. NAME_1``; ``body`` picks
      one): one that fluororeg exported is read through its sidecar (the bone frame and each
      line's frame number); any other needs ``subject`` (the CT whose volume frame it uses,
      with Autoscoper's VolumeFlip ``flip``) and ``trial_frames`` (the frame number of each
      line in order, e.g. a recording's ``frame_numbers``; default: line n is frame n).

    Returns [len(frames), 6] for the given frame numbers, NaN where the reference has no pose;
    without ``frames``, [max frame + 1, 6]."""
    path = Path(path)
    check_regular_file(path, "reference file")
    if pose_frame not in POSE_FRAMES:
        raise ValueError(f"pose_frame {pose_frame!r} is unknown: expected one of {POSE_FRAMES}")
    # (frame numbers [R], poses [R, 6]): only the frames the file holds, never an array as long as
    # its largest frame number
    if path.suffix.lower() in (".tra",) or (path.suffix.lower() == ".csv" and _is_xmalab(path)):
        numbers, values = _body_reference(path, subject, trial_frames, flip, body)
    elif path.suffix.lower() == ".tfm":
        numbers, values = _slicer_reference(path, subject)
    elif path.suffix == ".npz":
        with open_npz(path, "reference poses: a simulation's truth.npz") as data:
            if "poses" not in data:
                raise ValueError(f"'{path}' has no 'poses' array (it has {sorted(data.files)})")
            shape, _ = npz_member_header(data, "poses")
            if len(shape) != 2 or shape[1] != 6:
                raise ValueError(f"'{path}': poses have shape {shape}, expected [F, 6]")
            check_frame_count(shape[0], f"'{path}' (poses)")
            values = np.asarray(data["poses"], dtype=float)
        numbers = np.arange(len(values), dtype=np.int64)
    else:
        rows = _csv_rows(path, REFERENCE_COLUMNS, f"expected a CSV with {', '.join(REFERENCE_COLUMNS)} (degrees, mm), "
                                                  "an XMALab rigid-body CSV or an Autoscoper .tra")
        col = _column_reader(path, rows)
        numbers = col("frame", integer=True)
        check_frame_numbers(numbers, f"'{path}'")
        values, counts = np.unique(numbers, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"'{path}': frame {values[counts > 1][0]} appears {counts[counts > 1][0]} times")
        values = (np.stack([col(c) for c in REFERENCE_COLUMNS[1:]], axis=1) if len(rows)
                  else np.zeros((0, 6)))
        if pose_frame == "ct":
            values = _model_from_ct(values, subject, path)
    values = np.where(np.isfinite(values).all(axis=1, keepdims=True), values, np.nan)  # a partial pose: none
    if frames is None:
        by_frame = np.full((int(numbers.max()) + 1 if len(numbers) else 0, 6), np.nan)
        by_frame[numbers] = values
        return by_frame
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    out = np.full((len(frames), 6), np.nan)
    if len(numbers):
        order = np.argsort(numbers, kind="stable")
        sorted_numbers = numbers[order]
        pos = np.clip(np.searchsorted(sorted_numbers, frames), 0, len(sorted_numbers) - 1)
        known = sorted_numbers[pos] == frames
        out[known] = values[order[pos[known]]]
    return out


def _is_xmalab(path: Path) -> bool:
    from fluororeg.io.limits import open_regular

    with open_regular(path, "reference file") as f:
        head = f.readline(1 << 20).decode("utf-8-sig", errors="replace")
    return any(re.fullmatch(r".+_R11(_[0-9.eE+-]+Hz)?", h.strip()) for h in head.split(","))


def _model_from_ct(values: np.ndarray, subject, path: Path) -> np.ndarray:
    """world_from_physical poses [R, 6] (NaN rows stay) in the subject's model frame."""
    from fluororeg.core.geometry import model_poses_from_physical

    if subject is None:
        raise ValueError(f"'{path}' holds poses in a CT's own frame: give the subject whose CT it is (--subject DIR; "
                         "subject= in Python)")
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values).all(axis=1)
    if finite.any():
        out[finite] = model_poses_from_physical(values[finite], subject.origin)
    return out


def _slicer_reference(path: Path, subject) -> tuple[np.ndarray, np.ndarray]:
    """(frame number [1], pose [1, 6] of the model frame) of a 3D Slicer transform file."""
    from fluororeg.core.geometry import pose_from_matrix

    digits = re.search(r"(\d+)$", path.stem)
    if digits is None:
        raise ValueError(f"'{path}': a transform file's name must end in its frame number (as "
                         f"'radius_0099.tfm' for frame 99), got '{path.name}'")
    physical_from_world = read_slicer_tfm(path)
    _check_rigid(physical_from_world[None], path, "transform")
    world_from_physical = np.linalg.inv(physical_from_world)
    pose = pose_from_matrix(world_from_physical)[None]
    return np.array([int(digits.group(1))], dtype=np.int64), _model_from_ct(pose, subject, path)


def _body_reference(path: Path, subject, trial_frames, flip, body) -> tuple[np.ndarray, np.ndarray]:
    """(frame numbers [R], poses [R, 6] of fluororeg's model frame) from a .tra or XMALab CSV."""
    from fluororeg.core.geometry import pose_from_matrix
    from fluororeg.io.autoscoper import autoscoper_from_model, read_pose_sidecar

    if path.suffix.lower() == ".tra":
        M = read_tra(path)
        index = np.arange(len(M))
    else:
        from fluororeg.io.xmalab import read_xmalab_rigid_body_csv

        _, M, index = read_xmalab_rigid_body_csv(path, body)
    _check_rigid(M, path, "line" if path.suffix.lower() == ".tra" else "row")
    side = read_pose_sidecar(path)
    if subject is not None:
        body_from_model = autoscoper_from_model(subject, flip)
        if side is not None and side.get("subject_fingerprint") not in (None, subject.fingerprint):
            raise ValueError(f"'{path}' was exported for another subject than {subject.name!r} (fingerprints differ)")
    elif side is not None:
        body_from_model = side["body_from_model"]
    else:
        raise ValueError(f"'{path}' holds poses of a bone frame fluororeg does not know (Autoscoper's volume frame of "
                         "some CT): give the subject whose CT it was made with (--subject DIR; subject= in Python)")
    n_trial = int(index.max()) + 1 if len(index) else 0
    if trial_frames is None:
        trial_frames = side["line_frame_numbers"] if side is not None else np.arange(n_trial)
    trial_frames = np.asarray(trial_frames, dtype=np.int64).reshape(-1)
    check_frame_numbers(trial_frames, f"'{path}' (frame numbers of its lines)")
    if path.suffix.lower() == ".tra" and len(trial_frames) != len(M):
        shown = ", ".join(str(f) for f in trial_frames[:6]) + (" ..." if len(trial_frames) > 6 else "")
        raise ValueError(f"'{path}' has {len(M)} lines but the trial has {len(trial_frames)} frames ({shown}): a .tra "
                         "holds one line per frame of the trial, in its order, with 16 NaN where a frame has no pose")
    if len(trial_frames) < n_trial:
        raise ValueError(f"'{path}' has poses of {n_trial} trial frames but {len(trial_frames)} frame numbers were "
                         "given for them")
    if len(trial_frames) and trial_frames.min() < 0:
        raise ValueError(f"'{path}': frame {trial_frames.min()} is negative")
    trial_frames = trial_frames[index]  # the frame number of each pose
    world_from_model = M @ body_from_model
    finite = np.isfinite(world_from_model).all(axis=(1, 2))
    values = np.full((len(trial_frames), 6), np.nan)
    if finite.any():
        values[finite] = pose_from_matrix(world_from_model[finite])
    numbers = np.unique(trial_frames)
    if len(numbers) != len(trial_frames):
        values = np.full((len(numbers), 6), np.nan)
        for n, f in enumerate(numbers):  # a frame on several lines: its last pose (as before)
            hits = np.nonzero(trial_frames == f)[0]
            last = hits[finite[hits]]
            if len(last):
                values[n] = pose_from_matrix(world_from_model[last[-1]][None])[0]
        return numbers, values
    return trial_frames, values


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
    check_regular_file(path, "tra file")
    out = []
    for n, line in enumerate(read_text(path, "tra file").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 16:
            raise ValueError(f"'{path}' line {n}: {len(parts)} values, expected 16")
        try:
            vals = np.array([float(p) for p in parts])
        except ValueError:
            raise ValueError(f"'{path}' line {n}: not all values are numbers") from None
        if np.isinf(vals).any():
            raise ValueError(f"'{path}' line {n}: a value is infinite (NaN marks a frame without a pose)")
        out.append(vals.reshape(4, 4) if as_rows else vals.reshape(4, 4).T)
        if len(out) > MAX_FRAMES:
            check_frame_count(len(out), f"'{path}' (lines)")
    return np.array(out).reshape(-1, 4, 4)


def write_slicer_tfm(path, world_from_model, subject) -> Path:
    """One pose (world_from_model [4, 4]) as a 3D Slicer / ITK text transform that places the
    subject's CT (its physical LPS frame) in the world; see the module docstring for the
    direction ITK files store (``physical_from_world``)."""
    M = np.asarray(world_from_model, dtype=np.float64)
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        raise ValueError(f"world_from_model must be a finite 4 x 4 matrix, got shape {M.shape}")
    model_from_physical = np.eye(4)
    model_from_physical[:3, 3] = -np.asarray(subject.origin, dtype=float)
    physical_from_world = np.linalg.inv(M @ model_from_physical)
    params = list(physical_from_world[:3, :3].ravel()) + list(physical_from_world[:3, 3])
    text = ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            f"Parameters: {' '.join(repr(float(v)) for v in params)}\nFixedParameters: 0 0 0\n")
    path = Path(path)
    atomic_write_text(path, text)
    return path


def read_slicer_tfm(path) -> np.ndarray:
    """The 4x4 ``physical_from_world`` (the resampling transform, LPS) of an ITK text
    transform file with one affine/rigid transform (center of rotation applied)."""
    path = Path(path)
    check_regular_file(path, "transform file")
    fields = {}
    for line in read_text(path, "transform file").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), v.strip())
    kind = fields.get("Transform", "")
    if not (re.fullmatch(r"(AffineTransform|MatrixOffsetTransformBase)_(double|float)_3_3", kind)):
        raise ValueError(f"'{path}': transform {kind!r}: expected a 3-D AffineTransform")
    try:
        p = np.array([float(v) for v in fields["Parameters"].split()])
        c = np.array([float(v) for v in fields.get("FixedParameters", "0 0 0").split()])
    except (KeyError, ValueError):
        raise ValueError(f"'{path}': missing or non-numeric Parameters / FixedParameters") from None
    if p.size != 12 or c.size != 3:
        raise ValueError(f"'{path}': {p.size} parameters and {c.size} fixed parameters, expected 12 and 3")
    A, t = p[:9].reshape(3, 3), p[9:]
    m = np.eye(4)
    m[:3, :3] = A
    m[:3, 3] = t + c - A @ c  # ITK: y = A (x - c) + t + c
    return m
