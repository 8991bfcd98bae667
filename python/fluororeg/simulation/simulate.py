"""Simulated dual-fluoroscope recordings with known poses, to test the whole pipeline.

:func:`simulate_recording` moves a subject through a motion sequence between two point-source
fluoroscopes in a non-orthogonal layout like the paper's (beams 100 degrees apart, sources
about 1 m from the intensifiers), renders cone-beam DRRs and turns them into image-intensifier
frames with what makes real fluoroscopy differ from the parallel-beam training DRRs
(:class:`FluoroStyle`): Beer-Lambert transmission with quantum (Poisson) noise, a non-linear
intensity response (bone dark, soft tissue grey), vignetting, blur, pincushion and S-distortion
(:class:`~fluororeg.calibration.synthetic.AnalyticDistortion`) and a circular field of view.
Some poses leave parts of the skull outside the field of view.

The recording is written in the format real recordings use (:mod:`fluororeg.io.recording`): one
PNG folder per view, ``geometry.json`` with both views and each view's distortion correction
fitted, as a lab would, from a simulated bead-plate image (kept in ``calibration/``), plus the
ground truth: ``truth.npz`` (``poses`` [F, 6] world_from_model deg / mm, ``landmarks_px``
[F, 2, L, 2] ideal undistorted projections, ``landmarks_image_px`` [F, 2, L, 2] where they
appear in the distorted frames, ``in_fov`` [F, 2, L]) and ``truth.json`` (scenario, style,
true distortion, subject fingerprint, landmark names).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fluororeg.core import render as R
from fluororeg.io.atomic import atomic_write_text
from fluororeg.calibration.synthetic import AnalyticDistortion, plate_image
from fluororeg.core.geometry import ConeView, pose_from_matrix, rotation_matrix

__all__ = ["FluoroStyle", "SCENARIOS", "default_dual_views", "motion_sequence", "fluoro_image",
           "simulate_recording", "start_recording_folder", "truth_arrays",
           "calibrate_simulated_view", "perturbed_poses"]


def perturbed_poses(poses, deg, mm, rng: np.random.Generator) -> np.ndarray:
    """``poses`` [N, 6] (world_from_model, deg / mm) each turned by ``deg`` about a random axis
    (through the model origin, applied in the world frame) and shifted ``mm`` in a random
    direction: starts a given distance off the truth. ``deg`` and ``mm``: a value, or a (low,
    high) range drawn uniformly per pose. Draws per pose, in order: the axis, the angle (a
    range), the direction, the shift (a range)."""
    from scipy.spatial.transform import Rotation

    def size(value):
        return rng.uniform(*value) if np.ndim(value) else float(value)

    out = np.array(poses, dtype=float).reshape(-1, 6)
    for i in range(len(out)):
        ax = rng.normal(size=3)
        R = Rotation.from_rotvec(np.deg2rad(size(deg)) * ax / np.linalg.norm(ax)) * \
            Rotation.from_euler("zyx", out[i, 2::-1], degrees=True)
        out[i, :3] = R.as_euler("zyx", degrees=True)[::-1]
        d = rng.normal(size=3)
        out[i, 3:] += size(mm) * d / np.linalg.norm(d)
    return out


def default_dual_views(width: int = 512, height: int = 512, pitch: float = 0.8,
                       angle_deg: float = 100.0) -> tuple[ConeView, ConeView]:
    """Two fluoroscopes like the paper's: sources 650 mm from the beam crossing (the world
    origin), intensifiers 400 mm beyond it (1050 mm from the source), the beams ``angle_deg``
    apart in the horizontal plane, symmetric about the -y axis; world z is up. The default
    512 px of 0.8 mm make a 16-inch (41 cm) intensifier, whose field of view (about 24 cm at
    the subject) holds most of a skull."""
    views = []
    for sign in (-1.0, 1.0):
        a = np.deg2rad(sign * angle_deg / 2)
        src = 650.0 * np.array([np.sin(a), -np.cos(a), 0.0])
        views.append(ConeView.looking_at(src, [0.0, 0.0, 0.0], distance_to_intensifier=1050.0, pitch=pitch,
                                         width=width, height=height))
    return tuple(views)


@dataclass(frozen=True)
class FluoroStyle:
    """How an image-intensifier frame differs from a DRR (see the module docstring)."""

    photons: float = 1500.0        # mean quanta per pixel where nothing attenuates (quantum noise)
    gamma: float = 0.6             # brightness ~ transmitted ** gamma (intensity response)
    vignetting: float = 0.35       # brightness lost at the edge of the field of view
    blur_px: float = 1.0           # Gaussian blur sigma of intensifier and camera, px
    fov_radius: float = 0.47       # circular field of view, radius / image size
    pincushion: float = 0.04       # AnalyticDistortion k_pin
    s_distortion: float = 0.03     # AnalyticDistortion k_s (radians at the normalised radius 1)
    background: float = 8.0        # grey level outside the field of view

    def distortion(self, width: int, height: int) -> AnalyticDistortion:
        return AnalyticDistortion(((width - 1) / 2, (height - 1) / 2), min(width, height) / 2,
                                  self.pincushion, self.s_distortion)


# Motion scenarios: sinusoidal amplitudes (deg about x, y, z; mm along x, y, z) about the
# cranio-cervical pivot, like the paper's recordings (walking, flexion-extension, lateral
# bending, axial rotation).
SCENARIOS = {
    "walking": {"angles": (6.0, 4.0, 10.0), "shift": (25.0, 35.0, 12.0)},
    "flexion_extension": {"angles": (30.0, 3.0, 3.0), "shift": (5.0, 10.0, 5.0)},
    "lateral_bending": {"angles": (3.0, 25.0, 3.0), "shift": (10.0, 5.0, 5.0)},
    "axial_rotation": {"angles": (3.0, 3.0, 45.0), "shift": (5.0, 5.0, 5.0)},
    "static": {"angles": (0.0, 0.0, 0.0), "shift": (0.0, 0.0, 0.0)},
}


def motion_sequence(scenario: str, n_frames: int, *, seed: int = 0,
                    pivot_model_mm=(0.0, 20.0, -70.0), centre_world_mm=(0.0, 0.0, 0.0),
                    rest_rotation=None) -> np.ndarray:
    """world_from_model poses [n_frames, 6] (deg, mm). The subject stands upright facing -y with
    its model origin at ``centre_world_mm``; it rotates about a pivot below the skull and sways.
    ``rest_rotation`` [3, 3]: the world_from_model rotation that stands it so (from its anatomy:
    :meth:`fluororeg.subject.orientation.SubjectOrientation.world_from_model_rotation`; None: the
    identity, i.e. model LPS axes = world axes, true when the CT header names the anatomical
    axes). ``pivot_model_mm``: the pivot relative to the model origin in those upright axes
    (LPS: 20 mm posterior, 70 mm inferior)."""
    R0 = np.eye(3) if rest_rotation is None else np.asarray(rest_rotation, dtype=np.float64)
    if R0.shape != (3, 3) or not np.allclose(R0 @ R0.T, np.eye(3), atol=1e-6) or np.linalg.det(R0) < 0:
        raise ValueError(f"rest_rotation must be a [3, 3] rotation matrix, got {np.shape(rest_rotation)} "
                         f"{'(not a rotation)' if R0.shape == (3, 3) else ''}")
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario '{scenario}' is unknown: expected one of {sorted(SCENARIOS)}")
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames = {n_frames!r}: expected an integer >= 1")
    spec = SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n_frames)
    phase = rng.uniform(0, 2 * np.pi, 6)
    freq = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 2.0])  # walking: bob twice per stride, progress once
    wave = np.sin(2 * np.pi * freq[None, :] * t[:, None] + phase[None, :])
    angles = wave[:, :3] * np.array(spec["angles"])
    shift = wave[:, 3:] * np.array(spec["shift"])
    pivot = np.asarray(pivot_model_mm, float)                         # world directions, from the origin
    Rm = rotation_matrix(angles)                                      # [F, 3, 3] the motion, in world axes
    tau = pivot - Rm @ pivot + np.asarray(centre_world_mm, float) + shift
    M = np.zeros((n_frames, 4, 4))
    M[:, :3, :3], M[:, :3, 3], M[:, 3, 3] = Rm @ R0, tau, 1.0
    return pose_from_matrix(M)


def _source_map(dist: AnalyticDistortion, width: int, height: int) -> np.ndarray:
    """For each distorted image pixel, its undistorted position [2, H, W] (y, x order for
    map_coordinates): evaluated on a coarse grid and interpolated (the map is smooth)."""
    from scipy import ndimage

    step = 8
    gx = np.unique(np.r_[np.arange(0, width, step), width - 1]).astype(float)
    gy = np.unique(np.r_[np.arange(0, height, step), height - 1]).astype(float)
    G = np.stack(np.meshgrid(gx, gy), axis=-1)
    und = dist.undistort(G)
    fx = np.interp(np.arange(width), gx, np.arange(len(gx)))
    fy = np.interp(np.arange(height), gy, np.arange(len(gy)))
    FY, FX = np.meshgrid(fy, fx, indexing="ij")
    ux = ndimage.map_coordinates(und[..., 0], [FY, FX], order=3, mode="nearest")
    uy = ndimage.map_coordinates(und[..., 1], [FY, FX], order=3, mode="nearest")
    return np.stack([uy, ux])


def fluoro_image(line_integrals: np.ndarray, style: FluoroStyle, rng: np.random.Generator,
                 source_map: np.ndarray | None = None) -> np.ndarray:
    """One intensifier frame (uint8 [H, W]) from the undistorted line integrals [H, W]."""
    from scipy import ndimage

    H, W = line_integrals.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    r = np.hypot(xx - (W - 1) / 2, yy - (H - 1) / 2) / (style.fov_radius * min(W, H))
    vignette = 1.0 - style.vignetting * np.clip(r, 0, 1) ** 2
    expected = style.photons * np.exp(-line_integrals.astype(np.float64)) * vignette
    quanta = rng.poisson(expected) / style.photons
    bright = np.clip(quanta, 0, None) ** style.gamma * 235.0 + 10.0
    if style.blur_px > 0:
        bright = ndimage.gaussian_filter(bright, style.blur_px)
    if source_map is not None:
        bright = ndimage.map_coordinates(bright, source_map, order=1, mode="constant", cval=style.background)
    bright[r > 1.0] = style.background
    return np.clip(np.round(bright), 0, 255).astype(np.uint8)


def start_recording_folder(out, views) -> Path:
    """Check the two views and make (or clean) a simulated recording's folder. recording.json
    is written last and marks a complete recording: a rerun into the same folder first removes
    it and the old frames, so old and new never mix."""
    if len(views) != 2 or not all(isinstance(v, ConeView) for v in views):
        raise ValueError("views must be two ConeView objects (view 1, view 2)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recording.json").unlink(missing_ok=True)
    for old in out.glob("view[12]/frame_*.png"):
        old.unlink()
    return out


def truth_arrays(n_frames: int, n_landmarks: int):
    """Empty ground-truth arrays of a recording: ideal undistorted landmark projections
    [F, 2, L, 2] px, where they appear in the distorted frames [F, 2, L, 2] px, in the field of
    view [F, 2, L]."""
    return (np.zeros((n_frames, 2, n_landmarks, 2)), np.zeros((n_frames, 2, n_landmarks, 2)),
            np.zeros((n_frames, 2, n_landmarks), dtype=bool))


def calibrate_simulated_view(out: Path, k: int, view: ConeView, dist, fov_radius_px: float, seed: int):
    """The lab's calibration of view ``k`` (0, 1): a bead plate seen through the same
    intensifier (its distortion ``dist``), saved as ``calibration/plate_view{k+1}.png``, and the
    distortion model fitted to it, as a lab would."""
    from PIL import Image

    from fluororeg.calibration.distortion import fit_distortion

    bead_px = max(3.0, view.width / 200)
    plate, _ = plate_image(view.width, spacing_px=max(view.width / 24, 12.0), radius_px=bead_px,
                           distortion=dist, fov_radius=fov_radius_px, seed=seed)
    Image.fromarray(np.clip(plate, 0, 255).astype(np.uint8)).save(out / "calibration" / f"plate_view{k + 1}.png")
    return fit_distortion(plate, radius_px=bead_px).model


def simulate_recording(subject, out, *, scenario: str = "walking", n_frames: int = 20,
                       views: tuple[ConeView, ConeView] | None = None, style: FluoroStyle = FluoroStyle(),
                       seed: int = 0, device: str = "cpu", progress: bool = False) -> Path:
    """Simulate a recording of ``subject`` into the folder ``out`` (see the module docstring)."""
    from PIL import Image
    from tqdm import tqdm

    from fluororeg.calibration.geometry_file import DualGeometry, save_geometry
    from fluororeg.io.limits import MAX_FRAMES
    from fluororeg.io.recording import write_recording_manifest

    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or not 1 <= n_frames <= MAX_FRAMES:
        raise ValueError(f"n_frames = {n_frames!r}: expected a whole number of 1 to {MAX_FRAMES:,} frame pairs")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed = {seed!r}: expected a whole number >= 0")
    views = default_dual_views() if views is None else tuple(views)
    for k, view in enumerate(views):
        if isinstance(view, ConeView):
            R.check_image_batch(1, view.width, view.height, names=("frames", f"view {k + 1} width",
                                                                   f"view {k + 1} height"))
    out = start_recording_folder(out, views)
    rng = np.random.default_rng(seed)
    # standing upright facing the sources by its anatomy, whatever its CT header says
    poses = motion_sequence(scenario, n_frames, seed=seed,
                            rest_rotation=subject.orientation.world_from_model_rotation())
    mu = subject.attenuation_model()
    landmarks_px, landmarks_image, in_fov = truth_arrays(n_frames, len(subject.landmark_names))
    models = []
    (out / "calibration").mkdir(exist_ok=True)
    for k, view in enumerate(views):
        dist = style.distortion(view.width, view.height)
        models.append(calibrate_simulated_view(out, k, view, dist, style.fov_radius * view.width, seed + k))
        src_map = _source_map(dist, view.width, view.height)
        folder = out / f"view{k + 1}"
        folder.mkdir(exist_ok=True)
        xy, _ = R.project_cone(subject.landmarks_model, view, poses, device=device)
        landmarks_px[:, k] = xy
        landmarks_image[:, k] = dist.distort(xy)
        centre = np.array([(view.width - 1) / 2, (view.height - 1) / 2])
        radius = style.fov_radius * min(view.width, view.height)
        in_fov[:, k] = np.isfinite(xy[..., 0]) & (np.linalg.norm(landmarks_image[:, k] - centre, axis=-1) < radius)
        batch = 8
        it = range(0, n_frames, batch)
        for b in tqdm(it, desc=f"view {k + 1}", disable=not progress):
            drr = R.render_cone(mu, view, poses[b:b + batch], device=device)
            for f in range(len(drr)):
                img = fluoro_image(drr[f], style, rng, src_map)
                Image.fromarray(img).save(folder / f"frame_{b + f:05d}.png")
    save_geometry(out / "geometry.json", DualGeometry(views, ("view1", "view2"), tuple(models)))
    np.savez_compressed(out / "truth.npz", poses=poses, landmarks_px=landmarks_px,
                        landmarks_image_px=landmarks_image, in_fov=in_fov,
                        landmark_names=np.array(subject.landmark_names))
    atomic_write_text(out / "truth.json", json.dumps({
        "scenario": scenario, "n_frames": n_frames, "seed": seed, "style": asdict(style),
        "distortion": [{"centre": list(d.centre), "scale": d.scale, "k_pin": d.k_pin, "k_s": d.k_s}
                       for d in (style.distortion(v.width, v.height) for v in views)],
        "distortion_fit_rms_px": [float(m.rms_px) for m in models],
        "subject": subject.name, "subject_fingerprint": subject.fingerprint,
        "landmark_names": list(subject.landmark_names),
    }, indent=2))
    write_recording_manifest(out, frames=n_frames, source="simulated by fluororeg.simulation.simulate")
    return out
