"""Cone-beam DRRs by plastimatch's ``drr`` command, and recordings rendered with it.

fluororeg's own simulator (:mod:`fluororeg.simulation.simulate`) renders test recordings with the same
ray marcher the training DRRs come from, which flatters the method. This module renders them
with an independent renderer: plastimatch's exact (Siddon) ray tracer, run as a separate
program (Debian package ``plastimatch``), and turns them into intensifier frames with effects
that differ from both :class:`fluororeg.simulation.simulate.FluoroStyle` and the training augmentation
(:class:`IntensifierEffects`: scatter as a blurred fraction of the primary, anode heel
gradient, electronic plus quantum noise, a logarithmic camera response, veiling glare,
different distortion and blur, an off-centre circular field cut by a collimator edge).

Geometry mapping (checked by beads in ``tests/test_plastimatch_drr.py``): the view is moved
into the model frame (the inverse pose applied to source, intensifier centre and axes), so the
volume file is written once per volume and reused for every pose. plastimatch places the
source at ``isocenter + sad * nrm`` and the panel ``sid`` mm from the source, perpendicular to
``nrm``; panel column ``c`` and row ``r`` lie at ``ic_room + (c - ic_col) ps_col prt +
(r - ic_row) ps_row pdn`` with ``pdn = -vup`` and ``prt = vup x nrm``: with ``nrm = -(u x v)``
and ``vup = -v``, plastimatch's columns and rows are the view's u and v axes, and its pixel
coordinates are fluororeg's (origin at the centre of the top-left pixel). Its ``-r``, ``-z``
and ``-c`` options take (columns, rows) in this order in plastimatch 1.9 (its help text says
"row col"), and its output is the line integral of the voxel values divided by 10 (mm to cm):
with ``-P none`` (no HU conversion) the result times 10 is the line integral of attenuation
per mm, the quantity :func:`fluororeg.core.render.render_cone` returns. plastimatch ignores the
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

from fluororeg.core.geometry import ConeView, as_poses, pose_matrix
from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import save_volume

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
    quantity and image convention as one frame of :func:`fluororeg.core.render.render_cone`, computed
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
    D = Rm.T @ (view.intensifier_centre - tau)
    u, v = Rm.T @ view.u, Rm.T @ view.v
    n = np.cross(u, v)                                   # unit, source -> intensifier side when sdd > 0
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


# ---------------------------------------------------------------------------- recordings
def independent_dual_views(width: int = 512, height: int = 512, pitch: float = 0.8,
                           angle_deg: float = 112.0) -> tuple[ConeView, ConeView]:
    """The independent recordings' fluoroscopes: like :func:`fluororeg.simulation.simulate.default_dual_views`
    (sources 650 mm from the beam crossing, intensifiers 400 mm beyond) but ``angle_deg`` (112)
    apart instead of 100."""
    from fluororeg.simulation.simulate import default_dual_views

    return default_dual_views(width, height, pitch=pitch, angle_deg=angle_deg)


@dataclass(frozen=True)
class IntensifierEffects:
    """Image-intensifier effects of the independent recordings, chosen unlike
    :class:`fluororeg.simulation.simulate.FluoroStyle`'s defaults and the training styles of
    ``benchmarks/prepare_pipeline_models.py`` (see :func:`intensifier_image`)."""

    photons: float = 700.0               # quanta per pixel where nothing attenuates (FluoroStyle: 1500)
    electronic_noise: float = 0.012      # Gaussian camera noise, fraction of the unattenuated signal
    scatter_fraction: float = 0.25       # scatter = fraction x Gaussian-blurred primary (added to it)
    scatter_sigma: float = 0.06          # scatter kernel sigma, fraction of the image size
    heel: float = 0.2                    # anode heel: brightness ramps linearly by +-heel/2 across the field
    heel_angle_deg: float = 30.0         # direction of the ramp in view 1 (view 2: + 90 deg)
    log_response: float = 10.0           # brightness ~ log(1 + a q) / log(1 + a), q transmitted (FluoroStyle: q^0.6)
    glare: float = 0.03                  # veiling glare: fraction of the field's mean brightness added everywhere
    blur_px: float = 1.6                 # Gaussian blur sigma of intensifier and camera, px (FluoroStyle: 1.0)
    fov_radius: float = 0.46             # circular field of view, radius / image size (FluoroStyle: 0.47)
    fov_offset: tuple[float, float] = (0.015, -0.01)   # field centre offset, fraction of the image size
    collimator: float = 0.44             # a straight collimator edge this far from the centre (fraction of size)
    collimator_angle_deg: float = 200.0  # direction of the edge's normal in view 1 (view 2: + 150 deg)
    pincushion: float = 0.065            # AnalyticDistortion k_pin (FluoroStyle: 0.04)
    s_distortion: float = -0.025         # AnalyticDistortion k_s (FluoroStyle: 0.03)
    distortion_offset: tuple[float, float] = (-0.012, 0.008)  # distortion centre offset, fraction of size
    background: float = 18.0             # grey level outside the field (FluoroStyle: 8)

    def distortion(self, width: int, height: int):
        from fluororeg.calibration.synthetic import AnalyticDistortion

        c = ((width - 1) / 2 + self.distortion_offset[0] * width, (height - 1) / 2 + self.distortion_offset[1] * height)
        return AnalyticDistortion(c, min(width, height) / 2, self.pincushion, self.s_distortion)

    def field(self, xy, width: int, height: int, view_index: int) -> np.ndarray:
        """True where distorted image points ``xy`` [..., 2] lie inside the field of view of view
        ``view_index`` (0 or 1): the offset circle cut by the collimator edge."""
        xy = np.asarray(xy, dtype=np.float64)
        size = min(width, height)
        c = np.array([(width - 1) / 2 + self.fov_offset[0] * width, (height - 1) / 2 + self.fov_offset[1] * height])
        inside = np.linalg.norm(xy - c, axis=-1) < self.fov_radius * size
        a = np.deg2rad(self.collimator_angle_deg + 150.0 * view_index)
        along = (xy - np.array([(width - 1) / 2, (height - 1) / 2])) @ np.array([np.cos(a), np.sin(a)])
        return inside & (along < self.collimator * size)


def intensifier_image(line_integrals: np.ndarray, effects: IntensifierEffects, rng: np.random.Generator,
                      view_index: int = 0, source_map: np.ndarray | None = None) -> np.ndarray:
    """One intensifier frame (uint8 [H, W]) from undistorted line integrals [H, W]: primary
    transmission plus scatter, heel ramp, quantum and camera noise, veiling glare, logarithmic
    response, blur, distortion (``source_map`` from :func:`fluororeg.simulation.simulate._source_map`) and
    the field of view."""
    from scipy import ndimage

    H, W = line_integrals.shape
    primary = np.exp(-line_integrals.astype(np.float64))
    scatter = effects.scatter_fraction * ndimage.gaussian_filter(primary, effects.scatter_sigma * min(H, W))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    a = np.deg2rad(effects.heel_angle_deg + 90.0 * view_index)
    ramp = ((xx - (W - 1) / 2) * np.cos(a) + (yy - (H - 1) / 2) * np.sin(a)) / min(H, W)
    expected = effects.photons * (primary + scatter) / (1 + effects.scatter_fraction) * (1 + effects.heel * ramp)
    q = rng.poisson(np.clip(expected, 0, None)) / effects.photons
    q = q + rng.normal(0.0, effects.electronic_noise, q.shape)
    q = q + effects.glare * float(np.mean(q))
    bright = 18.0 + 222.0 * np.log1p(effects.log_response * np.clip(q, 0, None)) / np.log1p(effects.log_response)
    if effects.blur_px > 0:
        bright = ndimage.gaussian_filter(bright, effects.blur_px)
    if source_map is not None:
        bright = ndimage.map_coordinates(bright, source_map, order=1, mode="constant", cval=effects.background)
    bright[~effects.field(np.stack([xx, yy], axis=-1), W, H, view_index)] = effects.background
    return np.clip(np.round(bright), 0, 255).astype(np.uint8)


def simulate_independent_recording(subject, out, *, scenario: str = "walking", n_frames: int = 24,
                                   views: tuple[ConeView, ConeView] | None = None, seed: int = 0,
                                   effects: IntensifierEffects = IntensifierEffects(),
                                   num_threads: int | None = None) -> Path:
    """Simulate a recording of ``subject`` into ``out`` in the format of
    :func:`fluororeg.simulation.simulate.simulate_recording` (recording.json, view1/ and view2/ PNG
    folders, geometry.json with each view's distortion fitted from a simulated bead plate in
    calibration/, truth.npz and truth.json), but rendered by plastimatch with
    :class:`IntensifierEffects`. Poses from :func:`fluororeg.simulation.simulate.motion_sequence`; views
    default to :func:`independent_dual_views` (512 px, 112 deg apart). truth.json records the
    renderer, the effects and the rendering seconds per frame."""
    from PIL import Image

    from fluororeg.core import render as R
    from fluororeg.calibration.geometry_file import DualGeometry, save_geometry
    from fluororeg.io.atomic import atomic_write_text
    from fluororeg.io.recording import write_recording_manifest
    from fluororeg.simulation.simulate import (_source_map, calibrate_simulated_view, motion_sequence,
                                               start_recording_folder, truth_arrays)

    if not isinstance(effects, IntensifierEffects):
        raise TypeError(f"effects must be an IntensifierEffects, got {type(effects).__name__}")
    views = independent_dual_views() if views is None else tuple(views)
    _require()
    out = start_recording_folder(out, views)
    rng = np.random.default_rng(seed)
    # standing upright facing the sources by its anatomy, whatever its CT header says
    poses = motion_sequence(scenario, n_frames, seed=seed,
                            rest_rotation=subject.orientation.world_from_model_rotation())
    mu = subject.attenuation_model()
    L = len(subject.landmark_names)
    landmarks_px, landmarks_image, in_fov = truth_arrays(n_frames, L)
    models, render_s = [], 0.0
    (out / "calibration").mkdir(exist_ok=True)
    for k, view in enumerate(views):
        dist = effects.distortion(view.width, view.height)
        models.append(calibrate_simulated_view(out, k, view, dist, effects.fov_radius * view.width, seed + 7 + k))
        src_map = _source_map(dist, view.width, view.height)
        folder = out / f"view{k + 1}"
        folder.mkdir(exist_ok=True)
        xy, _ = R.project_cone(subject.landmarks_model, view, poses)
        landmarks_px[:, k] = xy
        landmarks_image[:, k] = dist.distort(xy)
        in_fov[:, k] = np.isfinite(xy[..., 0]) & effects.field(landmarks_image[:, k], view.width, view.height, k)
        for f in range(n_frames):
            t0 = time.perf_counter()
            drr = render_cone_plastimatch(mu, view, poses[f], num_threads=num_threads)
            render_s += time.perf_counter() - t0
            Image.fromarray(intensifier_image(drr, effects, rng, k, src_map)).save(folder / f"frame_{f:05d}.png")
    save_geometry(out / "geometry.json", DualGeometry(views, ("view1", "view2"), tuple(models)))
    np.savez_compressed(out / "truth.npz", poses=poses, landmarks_px=landmarks_px,
                        landmarks_image_px=landmarks_image, in_fov=in_fov,
                        landmark_names=np.array(subject.landmark_names))
    effects_json = asdict(effects)
    atomic_write_text(out / "truth.json", json.dumps({
        "scenario": scenario, "n_frames": n_frames, "seed": seed,
        "renderer": f"plastimatch drr {plastimatch_version()} (exact / Siddon)",
        "effects": effects_json,
        "distortion": [{"centre": list(d.centre), "scale": d.scale, "k_pin": d.k_pin, "k_s": d.k_s}
                       for d in (effects.distortion(v.width, v.height) for v in views)],
        "distortion_fit_rms_px": [float(m.rms_px) for m in models],
        "render_seconds_per_image": render_s / (2 * n_frames),
        "subject": subject.name, "subject_fingerprint": subject.fingerprint,
        "landmark_names": list(subject.landmark_names),
    }, indent=2))
    write_recording_manifest(out, frames=n_frames, source="simulated by fluororeg.simulation.plastimatch_drr")
    return out
