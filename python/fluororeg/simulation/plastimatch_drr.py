"""Cone-beam DRRs by plastimatch's ``drr`` command, and recordings rendered with it.

fluororeg's own simulator (:mod:`fluororeg.simulate`) renders test recordings with the same
ray marcher the training DRRs come from, which flatters the method. This module renders them
with an independent renderer: plastimatch's exact (Siddon) ray tracer, run as a separate
program (Debian package ``plastimatch``), and turns them into intensifier frames with effects
that differ from both :class:`fluororeg.simulate.FluoroStyle` and the training augmentation
(:class:`IntensifierEffects`: scatter as a blurred fraction of the primary, anode heel
gradient, electronic plus quantum noise, a logarithmic camera response, veiling glare,
different distortion and blur, an off-centre circular field cut by a collimator edge).

Geometry mapping (checked by beads in ``tests/test_plastimatch_drr.py``): the view is moved
into the model frame (the inverse pose applied to source, detector centre and axes), so the
volume file is written once per volume and reused for every pose. plastimatch places the
source at ``isocenter + sad * nrm`` and the panel ``sid`` mm from the source, perpendicular to
``nrm``; panel column ``c`` and row ``r`` lie at ``ic_room + (c - ic_col) ps_col prt +
(r - ic_row) ps_row pdn`` with ``pdn = -vup`` and ``prt = vup x nrm``: with ``nrm = -(u x v)``
and ``vup = -v``, plastimatch's columns and rows are the view's u and v axes, and its pixel
coordinates are fluororeg's (origin at the centre of the top-left pixel). Its ``-r``, ``-z``
and ``-c`` options take (columns, rows) in this order in plastimatch 1.9 (its help text says
"row col"), and its output is the line integral of the voxel values divided by 10 (mm to cm):
with ``-P none`` (no HU conversion) the result times 10 is the line integral of attenuation
per mm, the quantity :func:`fluororeg.render.render_cone` returns. plastimatch ignores the
volume's direction cosines in its ray tracer, so volumes are written axis-aligned: exactly
(axes permuted and flipped) when the direction is a signed permutation, else resampled
(trilinear) onto an axis-aligned grid of the same spacing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..geometry import ConeView, as_poses, pose_matrix
from ..volume import Volume, save_volume

__all__ = ["plastimatch_available", "plastimatch_version", "render_cone_plastimatch", "IntensifierEffects",
           "independent_dual_views", "intensifier_image", "simulate_independent_recording", "PlastimatchError"]

PLASTIMATCH = "plastimatch"
_TIMEOUT_S = 600.0


class PlastimatchError(RuntimeError):
    """plastimatch is missing or one of its commands failed (the message names the command)."""


@lru_cache(maxsize=1)
def _executable() -> str | None:
    return shutil.which(PLASTIMATCH)


def plastimatch_available() -> bool:
    """True when the ``plastimatch`` program is on PATH and its ``drr`` command answers."""
    exe = _executable()
    if exe is None:
        return False
    try:
        r = subprocess.run([exe, "drr", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--sid" in (r.stdout + r.stderr)


@lru_cache(maxsize=1)
def plastimatch_version() -> str:
    """plastimatch's version string (e.g. ``'1.9.4'``)."""
    out = _run([_require(), "--version"]).strip()
    return out.split()[-1] if out else "unknown"


def _require() -> str:
    exe = _executable()
    if exe is None:
        raise PlastimatchError("the 'plastimatch' program was not found on PATH: install the Debian package "
                               "'plastimatch' (apt-get install plastimatch) to render independent DRRs")
    return exe


def _run(cmd: list[str], *, env: dict | None = None) -> str:
    text = " ".join(cmd)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise PlastimatchError(f"command `{text}` did not finish within {_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise PlastimatchError(f"command `{text}` could not be started: {exc}") from exc
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip()[-800:]
        raise PlastimatchError(f"command `{text}` failed with exit status {r.returncode}: {tail}")
    return r.stdout


# ---------------------------------------------------------------------------- volume files
def _axis_aligned(volume: Volume) -> Volume:
    """The same volume with an identity direction: axes permuted and flipped exactly when the
    direction is a signed permutation, else resampled (trilinear, same spacing)."""
    D = np.asarray(volume.direction)
    if np.allclose(D, np.eye(3), atol=1e-9):
        return volume
    data_ijk = np.asarray(volume.data).transpose(2, 1, 0)           # [nx, ny, nz]: index axes i, j, k
    A = np.abs(D)
    if np.allclose(np.sort(A, axis=0), [[0, 0, 0], [0, 0, 0], [1, 1, 1]], atol=1e-9):
        src_axis = [int(np.argmax(A[a])) for a in range(3)]        # index axis along physical axis a
        if sorted(src_axis) == [0, 1, 2]:
            arr = data_ijk.transpose(src_axis)
            spacing = np.array([volume.spacing[c] for c in src_axis])
            origin = np.array(volume.origin, dtype=np.float64)
            for a, c in enumerate(src_axis):
                if D[a, c] < 0:
                    arr = np.flip(arr, axis=a)
                    origin[a] -= (volume.data.shape[2 - c] - 1) * volume.spacing[c]
            return Volume(np.ascontiguousarray(arr.transpose(2, 1, 0)), spacing, origin, np.eye(3))
    from scipy import ndimage

    lo, hi = volume.bounds
    step = float(np.min(volume.spacing))
    n = np.maximum(np.round((hi - lo) / step).astype(int) + 1, 1)
    # new voxel (x, y, z) -> physical -> old continuous index (i, j, k)
    M = volume.voxel_from_physical[:3, :3] * step
    off = volume.voxel_from_physical[:3, :3] @ lo + volume.voxel_from_physical[:3, 3]
    out_xyz = ndimage.affine_transform(data_ijk.astype(np.float32), M, off, output_shape=tuple(n), order=1,
                                       mode="constant", cval=0.0)
    return Volume(np.ascontiguousarray(out_xyz.transpose(2, 1, 0)), (step,) * 3, lo, np.eye(3))


class _VolumeFiles:
    """One axis-aligned MetaImage file per live Volume (in a temporary folder removed when the
    Volume is garbage collected or the interpreter exits)."""

    def __init__(self):
        self._files: "weakref.WeakKeyDictionary[Volume, Path]" = weakref.WeakKeyDictionary()

    def path_for(self, volume: Volume) -> Path:
        path = self._files.get(volume)
        if path is not None and path.exists():
            return path
        folder = Path(tempfile.mkdtemp(prefix="fluororeg_plastimatch_vol_"))
        weakref.finalize(volume, shutil.rmtree, str(folder), True)
        aligned = _axis_aligned(volume)
        path = folder / "volume.mhd"
        save_volume(Volume(np.asarray(aligned.data, dtype=np.float32), aligned.spacing, aligned.origin,
                           np.eye(3)), path)
        self._files[volume] = path
        return path


_VOLUME_FILES = _VolumeFiles()


# ---------------------------------------------------------------------------- rendering
def _fmt(values) -> str:
    return " ".join(f"{float(x):.10g}" for x in np.ravel(values))


def render_cone_plastimatch(mu: Volume, view: ConeView, pose, *, num_threads: int | None = None) -> np.ndarray:
    """Line integrals of attenuation [H, W] float32 through ``mu`` (attenuation per mm, model
    frame) placed at ``pose`` (world_from_model [6] deg / mm) as seen by ``view``: the same
    quantity and image convention as one frame of :func:`fluororeg.render.render_cone`, computed
    by plastimatch's exact (Siddon) ray tracer. ``num_threads``: OpenMP threads (default: all)."""
    if not isinstance(mu, Volume):
        raise TypeError(f"mu must be a fluororeg.Volume, got {type(mu).__name__}")
    if not np.issubdtype(np.asarray(mu.data).dtype, np.floating):
        raise TypeError(f"mu data has dtype {mu.data.dtype}: expected float attenuation per mm "
                        "(convert HU with Volume.hu_to_attenuation())")
    if not isinstance(view, ConeView):
        raise TypeError(f"view must be a fluororeg.ConeView, got {type(view).__name__}")
    p = as_poses(pose, "pose")
    if len(p) != 1:
        raise ValueError(f"pose has shape {np.shape(pose)}: expected one pose (6,) in deg / mm")
    exe = _require()
    M = pose_matrix(p[0])
    Rm, tau = M[:3, :3], M[:3, 3]
    # the view in the model frame: x_model = R^T (x_world - tau)
    S = Rm.T @ (view.source - tau)
    D = Rm.T @ (view.detector_centre - tau)
    u, v = Rm.T @ view.u, Rm.T @ view.v
    n = np.cross(u, v)                                   # unit, source -> detector side when sdd > 0
    sdd = float(n @ (D - S))
    if sdd < 0:                                          # detector normal pointing at the source
        n, sdd = -n, -sdd
    P = S + sdd * n                                      # foot of the perpendicular from S on the panel
    ic_col = float((P - D) @ u) / view.pitch_u + (view.width - 1) / 2
    ic_row = float((P - D) @ v) / view.pitch_v + (view.height - 1) / 2
    nrm = -n                                             # plastimatch: from the isocenter toward the source
    # prt = vup x nrm must be u; with vup = -v and nrm = -(u x v) that holds for a right-handed
    # (u, v, n); a view whose normal was flipped above is mirrored: render with prt = -u, flip back.
    mirrored = float(np.cross(-v, nrm) @ u) < 0
    sad = 0.5 * sdd
    iso = S - sad * nrm
    if mirrored:
        ic_col = (view.width - 1) - ic_col
    vol_path = _VOLUME_FILES.path_for(mu)
    with tempfile.TemporaryDirectory(prefix="fluororeg_plastimatch_drr_") as tmp:
        prefix = str(Path(tmp) / "drr_")
        cmd = [exe, "drr", "-A", "cpu", "-i", "exact", "-P", "none", "-t", "raw",
               "-r", f"{view.width} {view.height}",
               "-z", _fmt([view.width * view.pitch_u, view.height * view.pitch_v]),
               "-c", _fmt([ic_col, ic_row]),
               "-o", _fmt(iso), "-n", _fmt(nrm), "--vup", _fmt(-v),
               "--sad", f"{sad:.10g}", "--sid", f"{sdd:.10g}",
               "-O", prefix, str(vol_path)]
        env = dict(os.environ)
        if num_threads:
            env["OMP_NUM_THREADS"] = str(int(num_threads))
        _run(cmd, env=env)
        out = Path(prefix + "0000.raw")
        if not out.exists():
            raise PlastimatchError(f"command `{' '.join(cmd)}` wrote no image {out.name} (found "
                                   f"{sorted(x.name for x in Path(tmp).iterdir())})")
        raw = np.fromfile(out, dtype="<f4")
    if raw.size != view.width * view.height:
        raise PlastimatchError(f"plastimatch drr wrote {raw.size} values, expected {view.height} x {view.width}")
    img = raw.reshape(view.height, view.width) * np.float32(10.0)   # cm -> mm line integrals
    if mirrored:
        img = img[:, ::-1]
    return np.ascontiguousarray(img, dtype=np.float32)
