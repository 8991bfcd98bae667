"""Autoscoper interoperability: trial ``.cfg`` files, its volume frame, ``.tra`` pose files.

Autoscoper (Brown University; https://github.com/BrownBiomechanics/Autoscoper) tracks bones
by matching DRRs of a TIFF-stack volume to X-ray frames. Everything below was read from its
source (libautoscoper ``Trial.cpp``, ``Volume.cpp``, ``VolumeDescription.cpp``,
``gpu/cuda/RayCaster*.cu``, ``CoordFrame.cpp``, ``Camera.cpp`` and the main window's
``save_tracking_results``).

Trial configuration (``.cfg``)
------------------------------
One ``key value`` per line, ``#`` starts a comment line. Keys: ``Version`` (1.0 has absolute
paths, 1.1 and later resolve relative paths against the cfg's folder), ``mayaCam_csv``
(one camera calibration per view, MayaCam 1.0 or 2.0), ``CameraRootDir`` (one folder of
TIFF frames per view, same order as the cameras), ``VolumeFile`` (one multi-page TIFF per
bone), ``VolumeFlip`` (``fx fy fz``, 0/1 per volume), ``VoxelSize`` (``sx sy sz`` mm per
volume: column, row, page spacing), ``RenderResolution`` (``w h``), ``OptimizationOffsets``
(six numbers), ``MeshFile`` (ignored here). A trial's frames are the ``.tif`` files of each
``CameraRootDir`` in plain (byte-wise) name order; frame ``n`` of the trial is the n-th file.

Autoscoper's volume frame
-------------------------
A volume of W columns, H rows and D pages with voxel size (sx, sy, sz) is first flipped as
``VolumeFlip`` says (``i' = W - 1 - i`` for a flipped x, likewise rows and pages), then the
ray caster samples it at ``tex3D(p.x, 1 - p.y, -p.z)`` over the box [0, 1] x [0, 1] x [-1, 0]
of the *uncropped* volume (its cropping to the non-zero voxels changes only the texture
bounds). The centre of voxel (column i', row j', page k') therefore sits at::

    A = (sx (i' + 1/2),  sy (H - j' - 1/2),  -sz (k' + 1/2))    (mm)

x along the columns, y up the rows (row 0 at the top), z against the page order: the volume
lies in x >= 0, y >= 0, z <= 0 with a corner of its first page's top-left voxel at the
origin. (Autoscoper's pivot, the centre of the non-zero voxels, only moves the manipulator
in its GUI; it is not part of the saved poses.)

``.tra`` poses
--------------
One line per trial frame, the 4x4 ``world_from_volume`` matrix (volume frame above to the
MayaCam world, mm) row by row with commas (Autoscoper's default "as matrix, as rows, with
commas" export; :func:`fluororeg.io.poses.write_tra`), 16 ``NaN`` for a frame without a pose.
Line n is frame n of the trial (the n-th image file), *not* the number in the file name.

fluororeg's frames and the transform between them
-------------------------------------------------
fluororeg's world frame for a trial is the MayaCam world itself (the geometry file is made
from the same calibrations), so poses differ only in the bone's frame. A fluororeg pose
maps the model frame: ``X_world = world_from_model X_model`` with ``X_model = X_phys -
subject.origin`` (``X_phys`` the CT's physical LPS position of a voxel). A TIFF stack read by
:func:`fluororeg.io.volume_formats.load_tiff_stack` is *placed in Autoscoper's volume frame*
(its physical frame is the volume frame: :func:`autoscoper_volume_geometry`), so for such a
CT ``autoscoper_from_physical`` is the identity. For a CT from any other file,
:func:`autoscoper_from_physical` is the rigid map from its physical frame to the volume
frame Autoscoper builds from the same voxel array written as a TIFF stack
(:func:`write_autoscoper_volume`); it exists only when both index frames have the same
handedness (else a flip of one axis in ``VolumeFlip`` fixes it; the error says which). Then::

    world_from_volume = world_from_model @ model_from_physical @ physical_from_autoscoper
    model_from_physical = translation by -subject.origin

so every voxel lands at the same world position through either pose
(:func:`tra_from_model_poses`, :func:`model_poses_from_tra`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.io.limits import (MAX_IMAGE_FILE_BYTES, check_frame_count, check_frame_numbers, check_regular_file,
                                 read_text)

__all__ = ["AutoscoperTrial", "read_trial_cfg", "write_trial_cfg", "autoscoper_volume_geometry",
           "autoscoper_from_physical", "autoscoper_from_model", "tra_from_model_poses", "model_poses_from_tra",
           "write_autoscoper_tra", "read_autoscoper_tra", "autoscoper_info", "subject_volume_flip", "check_volume_flip",
           "sidecar_path",
           "write_pose_sidecar", "read_pose_sidecar", "write_autoscoper_volume", "trial_frame_files",
           "import_autoscoper_trial", "AUTOSCOPER_INFO_FILE"]

#: Written into a subject folder made from an Autoscoper volume: which volume, flip and voxel
#: size its CT came from (the export to .tra reads the flip from it).
AUTOSCOPER_INFO_FILE = "autoscoper.json"


def check_volume_flip(flip) -> tuple[int, int, int]:
    """``flip`` as Autoscoper's VolumeFlip (three 0 / 1 values), or a ValueError naming it."""
    try:
        f = [int(v) for v in flip]
    except (TypeError, ValueError):
        raise ValueError(f"flip = {flip!r}: expected three 0/1 values (Autoscoper's VolumeFlip)") from None
    if len(f) != 3 or any(v not in (0, 1) for v in f):
        raise ValueError(f"flip = {flip!r}: expected three 0/1 values (Autoscoper's VolumeFlip)")
    return f[0], f[1], f[2]


def autoscoper_volume_geometry(shape_zyx, voxel_size_mm, flip=(0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """(origin [3], direction [3, 3]) of a :class:`~fluororeg.core.volume.Volume` whose voxel
    (i, j, k) (= ``data[k, j, i]``, page k, row j, column i) sits where Autoscoper puts it
    (module docstring): ``A = origin + direction @ (spacing * (i, j, k))``."""
    nz, ny, nx = (int(v) for v in shape_zyx)
    s = np.asarray(voxel_size_mm, dtype=np.float64).reshape(3)
    fx, fy, fz = check_volume_flip(flip)
    # x: A = sx (i' + 1/2), i' = i or W - 1 - i
    ox, dx = (s[0] * (nx - 0.5), -1.0) if fx else (0.5 * s[0], 1.0)
    # y: A = sy (H - j' - 1/2), j' = j or H - 1 - j
    oy, dy = (0.5 * s[1], 1.0) if fy else (s[1] * (ny - 0.5), -1.0)
    # z: A = -sz (k' + 1/2), k' = k or D - 1 - k
    oz, dz = (-s[2] * (nz - 0.5), 1.0) if fz else (-0.5 * s[2], -1.0)
    return np.array([ox, oy, oz]), np.diag([dx, dy, dz])


def autoscoper_from_physical(volume, flip=(0, 0, 0)) -> np.ndarray:
    """4x4 rigid map from ``volume``'s physical frame to the Autoscoper volume frame of its
    voxel array (as :func:`write_autoscoper_volume` writes it) with ``flip``. Raises when
    the two index frames differ in handedness (no rigid map exists)."""
    origin_a, dir_a = autoscoper_volume_geometry(volume.data.shape, volume.spacing, flip)
    # A = oA + DA S ijk, P = oP + DP S ijk  =>  A = oA + DA DP^T (P - oP)
    rot = dir_a @ volume.direction.T
    if np.linalg.det(rot) < 0:
        f = list(check_volume_flip(flip))
        f[2] = 1 - f[2]
        raise ValueError(f"the CT's index axes (direction {np.round(volume.direction, 6).tolist()}) and Autoscoper's "
                         f"volume frame with VolumeFlip {list(check_volume_flip(flip))} differ in handedness: no rigid map "
                         f"exists; use VolumeFlip {f} (or flip the stack's pages) for this volume")
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = origin_a - rot @ volume.origin
    return m


def autoscoper_from_model(subject, flip=(0, 0, 0)) -> np.ndarray:
    """4x4 map from the subject's model frame to Autoscoper's volume frame of its CT."""
    physical_from_model = np.eye(4)
    physical_from_model[:3, 3] = subject.origin
    return autoscoper_from_physical(subject.ct, flip) @ physical_from_model


def tra_from_model_poses(world_from_model, subject, flip=(0, 0, 0)) -> np.ndarray:
    """world_from_volume [F, 4, 4] (Autoscoper's .tra matrices) of fluororeg's
    world_from_model [F, 4, 4] (NaN rows stay NaN)."""
    M = np.asarray(world_from_model, dtype=np.float64)
    if M.ndim != 3 or M.shape[1:] != (4, 4):
        raise ValueError(f"world_from_model has shape {M.shape}, expected [F, 4, 4]")
    return M @ np.linalg.inv(autoscoper_from_model(subject, flip))


def model_poses_from_tra(world_from_volume, subject, flip=(0, 0, 0)) -> np.ndarray:
    """fluororeg's world_from_model [F, 4, 4] of Autoscoper's world_from_volume [F, 4, 4]."""
    M = np.asarray(world_from_volume, dtype=np.float64)
    if M.ndim != 3 or M.shape[1:] != (4, 4):
        raise ValueError(f"world_from_volume has shape {M.shape}, expected [F, 4, 4]")
    return M @ autoscoper_from_model(subject, flip)


def write_autoscoper_tra(path, frames, world_from_model, subject, *, trial_frames=None, flip=(0, 0, 0)) -> Path:
    """Write poses as an Autoscoper ``.tra`` that Autoscoper loads in place for the subject's
    volume: ``frames`` [F] are fluororeg frame numbers (e.g. ``poses.csv``'s column, the
    numbers in the image file names), ``world_from_model`` [F, 4, 4] their poses.
    ``trial_frames``: the frame numbers of the trial's frames in order (a recording's
    ``frame_numbers``), line n gets the pose of ``trial_frames[n]``; without it, line n is
    frame number n. Frames without a pose are NaN lines; a frame number the trial does not
    have is an error."""
    from fluororeg.io.poses import write_tra

    trial_frames, out = trial_matrices(world_from_model, frames, subject, flip, trial_frames)
    path = write_tra(path, out)
    write_pose_sidecar(path, autoscoper_from_model(subject, flip), trial_frames, subject)
    return path


def trial_matrices(world_from_model, frames, subject, flip=None, trial_frames=None):
    """Autoscoper's ``world_from_volume`` matrices of poses [F, 6] (deg, mm) of ``frames`` [F],
    laid out one per frame of the trial: (trial_frames [T], matrices [T, 4, 4], NaN where a
    trial frame has no pose). ``trial_frames`` None: frame numbers 0..max(frames). A frame
    number the trial does not have is an error."""
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    M = tra_from_model_poses(world_from_model, subject, flip)
    if len(frames) != len(M):
        raise ValueError(f"{len(frames)} frame numbers but {len(M)} poses")
    if trial_frames is None:
        if len(frames) and frames.min() < 0:
            raise ValueError(f"frame {frames.min()} is negative: a trial frame index cannot be negative")
        check_frame_numbers(frames, "poses to export")  # bounds the trial's length below
        trial_frames = np.arange(int(frames.max()) + 1 if len(frames) else 0)
    trial_frames = np.asarray(trial_frames, dtype=np.int64).reshape(-1)
    index_of = {int(f): n for n, f in enumerate(trial_frames)}
    missing = [int(f) for f in frames if int(f) not in index_of]
    if missing:
        raise ValueError(f"frames {missing[:10]} are not frames of the trial (its frames: "
                         f"{trial_frames[:10].tolist()}{' ...' if len(trial_frames) > 10 else ''})")
    out = np.full((len(trial_frames), 4, 4), np.nan)
    for f, m in zip(frames, M):
        out[index_of[int(f)]] = m
    return trial_frames, out


def sidecar_path(path) -> Path:
    """``<file>.fluororeg.json``: how to read a pose file fluororeg exported (the bone frame it
    is in and which frame number each line holds)."""
    path = Path(path)
    return path.with_name(path.name + ".fluororeg.json")


def write_pose_sidecar(path, body_from_model, trial_frames, subject=None) -> Path:
    """Write the sidecar of an exported pose file: ``body_from_model`` (4x4: the file's bone
    frame from fluororeg's model frame) and the frame number of each line."""
    meta = {"format": "fluororeg-pose-export", "version": 1,
            "body_from_model": np.asarray(body_from_model, dtype=float).tolist(),
            "line_frame_numbers": [int(f) for f in trial_frames]}
    if subject is not None:
        meta["subject_fingerprint"] = subject.fingerprint
    p = sidecar_path(path)
    atomic_write_text(p, json.dumps(meta, indent=1))
    return p


def read_pose_sidecar(path) -> dict | None:
    """The sidecar of ``path`` as (``body_from_model`` [4, 4], ``line_frame_numbers`` [L]) in a
    dict, or None when there is none."""
    p = sidecar_path(path)
    if not p.exists():
        return None
    try:
        meta = json.loads(read_text(p, "pose-export sidecar"))
        m = np.asarray(meta["body_from_model"], dtype=float)
        lines = np.asarray(meta["line_frame_numbers"], dtype=np.int64)
    except (KeyError, TypeError, OverflowError, ValueError) as exc:
        raise ValueError(f"'{p}' is not a fluororeg pose-export sidecar: {exc}") from None
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"'{p}': body_from_model has shape {m.shape}, expected 4 x 4 finite values")
    check_frame_numbers(lines, f"'{p}' (line_frame_numbers)")
    return {"body_from_model": m, "line_frame_numbers": lines, "subject_fingerprint": meta.get("subject_fingerprint")}


def read_autoscoper_tra(path, subject, *, trial_frames=None, flip=(0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """(frames [F], world_from_model [F, 4, 4]) from an Autoscoper ``.tra`` of the subject's
    volume (with its ``VolumeFlip`` ``flip``; :func:`autoscoper_info` has it for an imported
    subject); line n is frame ``trial_frames[n]`` (default n). NaN lines stay NaN."""
    from fluororeg.io.poses import read_tra

    M = read_tra(path)
    if trial_frames is None:
        frames = np.arange(len(M))
    else:
        frames = np.asarray(trial_frames, dtype=np.int64).reshape(-1)
        if len(frames) != len(M):
            raise ValueError(f"'{path}' has {len(M)} lines but the trial has {len(frames)} frames")
    return frames, model_poses_from_tra(M, subject, flip)


def autoscoper_info(subject_dir) -> dict | None:
    """The autoscoper.json of a subject folder made by :func:`import_autoscoper_trial`
    (volume file, voxel size, ``flip``, intensity), or None."""
    p = Path(subject_dir) / AUTOSCOPER_INFO_FILE
    if not p.exists():
        return None
    try:
        info = json.loads(read_text(p, "Autoscoper info file"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"'{p}' is not valid JSON: {exc}") from None
    info["flip"] = check_volume_flip(info.get("flip", (0, 0, 0)))
    return info


def subject_volume_flip(subject_dir) -> tuple[int, int, int]:
    """The ``VolumeFlip`` Autoscoper loads the subject's CT with: its autoscoper.json's (a subject
    imported from a trial), else none (0, 0, 0). ``subject_dir`` None: none."""
    info = autoscoper_info(subject_dir) if subject_dir is not None else None
    return info["flip"] if info else (0, 0, 0)


def write_autoscoper_volume(volume, path, *, intensity=None) -> Path:
    """Write a Volume as the uint16 multi-page TIFF Autoscoper reads (page k = ``data[k]``).
    ``intensity`` (an :class:`~fluororeg.io.volume_formats.IntensityMapping` of kind 'raw')
    maps HU back to stored values: value = (HU - offset) / slope, rounded and clipped to
    0..65535; the default stores HU + 1024 (raw:1:-1024). Voxels below air stay 0 so that
    Autoscoper's crop to the non-zero voxels keeps only the body."""
    import tifffile

    from fluororeg.io.volume_formats import IntensityMapping

    m = IntensityMapping("raw", 1.0, -1024.0) if intensity is None else IntensityMapping.parse(intensity)
    if m.kind != "raw":
        raise ValueError(f"write_autoscoper_volume needs a 'raw' intensity mapping (value -> HU), got {m.kind!r}")
    hu = np.asarray(volume.data, dtype=np.float64)
    raw = np.clip(np.rint((hu - m.offset) / m.slope), 0, 65535).astype(np.uint16)
    path = Path(path)
    tifffile.imwrite(str(path), raw, photometric="minisblack")
    return path


# ------------------------------------------------------------------------------ trial cfg
@dataclass
class AutoscoperTrial:
    """An Autoscoper trial configuration; paths are absolute (resolved like Autoscoper does)."""

    cameras: list            # [Path] MayaCam 1.0 / 2.0 files, one per view
    image_folders: list      # [Path] CameraRootDir, one per view
    volumes: list            # [Path] VolumeFile
    voxel_sizes: list        # [(sx, sy, sz)] mm, one per volume
    flips: list              # [(fx, fy, fz)] 0/1, one per volume (default 0 0 0)
    render_resolution: tuple | None = None
    optimization_offsets: tuple | None = None
    version: tuple = (1, 0)
    path: Path | None = None
    extra: dict = field(default_factory=dict)


def _numbers(text: str, n: int, what: str, where: str, integer: bool = False) -> tuple:
    parts = text.replace(",", " ").split()
    try:
        vals = [int(p) if integer else float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{where}: {what} {text!r}: expected {n} numbers") from None
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{where}: {what} {text!r}: expected {n} finite numbers")
    return tuple(vals)


def read_trial_cfg(path) -> AutoscoperTrial:
    """Read an Autoscoper trial ``.cfg`` (module docstring); errors name the file and line."""
    path = Path(path)
    check_regular_file(path, "Autoscoper trial file")
    lists: dict[str, list] = {k: [] for k in ("mayaCam_csv", "CameraRootDir", "VolumeFile", "VolumeFlip",
                                             "VoxelSize", "RenderResolution", "OptimizationOffsets", "MeshFile")}
    version = None
    for no, raw in enumerate(read_text(path, "Autoscoper trial file").splitlines(), 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        value = value.strip()
        where = f"'{path}' line {no}"
        if key == "Version":
            m = re.fullmatch(r"(\d+)(?:\.(\d+))?", value)
            if not m:
                raise ValueError(f"{where}: Version {value!r}: expected MAJOR.MINOR")
            version = (int(m.group(1)), int(m.group(2) or 0))
        elif key in lists:
            lists[key].append((value, where))
        # Autoscoper ignores unknown keys; so do we.
    version = version or (1, 0)
    base = path.parent

    def resolve(v: str) -> Path:
        p = Path(v.replace("\\", "/"))
        return p if p.is_absolute() or version < (1, 1) else (base / p)

    n_cam, n_dir = len(lists["mayaCam_csv"]), len(lists["CameraRootDir"])
    if n_cam != n_dir:
        raise ValueError(f"'{path}': {n_cam} mayaCam_csv but {n_dir} CameraRootDir lines: one of each per view")
    if not lists["VolumeFile"]:
        raise ValueError(f"'{path}' has no VolumeFile line")
    if len(lists["VoxelSize"]) != len(lists["VolumeFile"]):
        raise ValueError(f"'{path}': {len(lists['VolumeFile'])} VolumeFile but {len(lists['VoxelSize'])} VoxelSize "
                         f"lines: each volume needs its voxel size")
    voxel = []
    for v, w in lists["VoxelSize"]:
        s = _numbers(v, 3, "VoxelSize", w)
        if min(s) <= 0:
            raise ValueError(f"{w}: VoxelSize {v!r}: expected positive sizes (mm)")
        voxel.append(s)
    flips = [check_volume_flip(_numbers(v, 3, "VolumeFlip", w, integer=True)) for v, w in lists["VolumeFlip"]]
    flips += [(0, 0, 0)] * (len(voxel) - len(flips))
    rr = lists["RenderResolution"]
    oo = lists["OptimizationOffsets"]
    return AutoscoperTrial(
        cameras=[resolve(v) for v, _ in lists["mayaCam_csv"]],
        image_folders=[resolve(v) for v, _ in lists["CameraRootDir"]],
        volumes=[resolve(v) for v, _ in lists["VolumeFile"]],
        voxel_sizes=voxel, flips=flips[:len(voxel)],
        render_resolution=_numbers(rr[0][0], 2, "RenderResolution", rr[0][1], integer=True) if rr else None,
        optimization_offsets=_numbers(oo[0][0], 6, "OptimizationOffsets", oo[0][1]) if oo else None,
        version=version, path=path, extra={"mesh_files": [v for v, _ in lists["MeshFile"]]})


def write_trial_cfg(path, trial: AutoscoperTrial) -> Path:
    """Write a Version 1.1 trial cfg, paths relative to its folder where possible."""
    import os

    path = Path(path)
    base = path.parent.resolve()

    def rel(p) -> str:
        p = Path(p).resolve()
        try:
            r = os.path.relpath(p, base)
        except ValueError:  # another drive
            return p.as_posix()
        return Path(r).as_posix()

    lines = ["# written by fluororeg", "Version 1.1", ""]
    lines += [f"mayaCam_csv {rel(c)}" for c in trial.cameras] + [""]
    lines += [f"CameraRootDir {rel(d)}/" for d in trial.image_folders] + [""]
    for v, s, f in zip(trial.volumes, trial.voxel_sizes, trial.flips):
        lines += [f"VolumeFile {rel(v)}", f"VolumeFlip {f[0]} {f[1]} {f[2]}",
                  f"VoxelSize {' '.join(repr(float(x)) for x in s)}", ""]
    if trial.render_resolution:
        lines.append(f"RenderResolution {trial.render_resolution[0]} {trial.render_resolution[1]}")
    if trial.optimization_offsets:
        lines.append("OptimizationOffsets " + " ".join(repr(float(x)) for x in trial.optimization_offsets))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def trial_frame_files(folder) -> list[Path]:
    """The frames of one Autoscoper view: the folder's ``.tif`` files in byte-wise name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff")), key=lambda p: p.name)
    check_frame_count(len(files), f"image folder '{folder}'")
    for f in files:  # a FIFO or device named like a frame would block or never end
        check_regular_file(f, "frame file", max_bytes=MAX_IMAGE_FILE_BYTES)
    return files


def import_autoscoper_trial(cfg, out, *, pitch_mm: float, intensity, volume: int | str = 0,
                            n_landmarks: int = 12, landmarks=None, threshold_hu: float = 300.0,
                            frame_rate_hz: float | None = None, distortion=None) -> dict:
    """Import an Autoscoper trial into fluororeg folders under ``out``: ``subject/`` (the
    chosen volume as CT in HU, its landmarks: given (a file) or proposed without symmetric
    pairs, its autoscoper.json) and ``recording/`` (recording.json pointing at the trial's
    image folders, frame numbers from the file names, geometry.json from the MayaCam files
    with pixel pitch ``pitch_mm``, which MayaCam files do not record). ``volume`` is an index
    or the volume file's name stem. Returns the paths and the trial."""
    from fluororeg.calibration.geometry_file import geometry_from_mayacam, save_geometry
    from fluororeg.io.recording import init_recording
    from fluororeg.io.volume_formats import IntensityMapping, load_tiff_stack
    from fluororeg.subject.landmarks import load_landmarks
    from fluororeg.subject.proposal import propose_landmarks
    from fluororeg.subject.subject import make_subject, save_subject

    trial = read_trial_cfg(cfg)
    if len(trial.cameras) != 2:
        raise ValueError(f"'{cfg}' has {len(trial.cameras)} cameras; fluororeg registers two views")
    if isinstance(volume, str):
        stems = [Path(v).stem for v in trial.volumes]
        if volume not in stems:
            raise ValueError(f"volume {volume!r} is not in '{cfg}' (its volumes: {stems})")
        index = stems.index(volume)
    else:
        index = int(volume)
        if not 0 <= index < len(trial.volumes):
            raise ValueError(f"volume {volume}: '{cfg}' has volumes 0..{len(trial.volumes) - 1}")
    mapping = IntensityMapping.parse(intensity)
    out = Path(out)
    ct = load_tiff_stack(trial.volumes[index], trial.voxel_sizes[index], mapping, flip=trial.flips[index])
    name = Path(trial.volumes[index]).stem
    if landmarks is not None:
        lms, pairs = load_landmarks(landmarks), ()
    else:
        lms, pairs = propose_landmarks(ct, n_landmarks, 0, threshold_hu=threshold_hu)
    subject = make_subject(name, ct, lms, pairs, threshold_hu=threshold_hu)
    subject_dir = out / "subject"
    save_subject(subject, subject_dir, ct_filename="ct.nrrd")
    atomic_write_text(subject_dir / AUTOSCOPER_INFO_FILE, json.dumps({
        "cfg": str(Path(cfg).resolve()), "volume_file": str(Path(trial.volumes[index]).resolve()),
        "voxel_size_mm": list(trial.voxel_sizes[index]), "flip": list(trial.flips[index]),
        "intensity": mapping.to_json(), "volume_frame": "autoscoper"}, indent=2))
    rec_dir = out / "recording"
    rec_dir.mkdir(parents=True, exist_ok=True)
    geometry = geometry_from_mayacam(trial.cameras, pitch_mm, distortion=distortion)
    save_geometry(rec_dir / "geometry.json", geometry)
    init_recording([Path(d).resolve() for d in trial.image_folders], rec_dir / "geometry.json", rec_dir,
                   frame_rate_hz=frame_rate_hz)
    return {"subject": subject_dir, "recording": rec_dir, "trial": trial, "subject_object": subject}
