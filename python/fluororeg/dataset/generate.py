"""The artificial radiograph-landmark dataset (the paper's Section 2.1): configuration, poses,
rendering, shards on disk and their reader (about 500 lines, most of them this docstring's
format description).

A subject (CT + landmarks + bone mask) becomes a reproducible set of DRRs at random poses, each
with its landmarks (pixels and network coordinates), visibility flags and the projected bone
mask; a configurable share of the images is bone-segmented (multiplied by the projected mask,
as the paper's skull-segmented images: 2139 of 9751).

Projection (``DatasetConfig.projection``):

* ``'parallel'`` (the paper's): shear-warp parallel-beam DRRs, ``pixel_mm`` per pixel, times
  the sample's scale.
* ``'cone'``: cone-beam DRRs from a point source ``source_distance_mm`` (uniform per sample)
  in front of the object centre, looking along camera +z, with the pixel size ``pixel_mm /
  scale`` at the object centre. A fluoroscope is a point source: parts of the bone nearer the
  source are magnified more, and no parallel projection followed by any 2-D affine map
  reproduces that. For the example skull, 650 mm from the sources, the best affine fit of
  parallel projections to the true cone-beam landmark projections leaves a mean residual of
  about 2 px at 2 mm per pixel: a detector trained on parallel DRRs carries that bias into
  the registration. Use ``'cone'`` with the source distances of your fluoroscopes
  (:func:`source_distance_range`); the pipeline crops frames to the same pixel size at the
  bone (:mod:`fluororeg.pipeline.register`). ``cone_method`` picks the renderer of the DRRs
  and masks (:func:`fluororeg.core.render.render_cone`): ``'shear_warp'`` (about 1 % from fine
  line integrals, as the parallel-beam DRRs, and about ten times faster on the CPU),
  ``'march'`` (ray marching, the reference quality, fast on CUDA through the texture unit) or
  ``'auto'`` (default: shear-warp on the CPU, ray marching on CUDA); dataset.json records the
  method used.

Poses. The parallel camera looks at the subject horizontally, the way both fluoroscopes of a
dual-fluoroscope system see a standing or walking subject: a base orientation puts the
subject's superior axis up in the image and its anterior axis toward the camera; on top of it
come, all uniformly drawn. The subject's superior and anterior axes are its anatomy's, measured
from the CT (:mod:`fluororeg.subject.orientation`) or given in subject.json, never the CT
header's axis labels: a CT whose header names the axes wrongly (rotated, relabelled, prone,
a TIFF stack) still gives views of the front of the subject; dataset.json records where the
axes came from (``"orientation"``).

* azimuth in [-90, 90] deg about the superior axis: every horizontal viewing direction from
  the subject's front half. The back half adds no new images, only ambiguous labels: a
  parallel projection seen from behind is the exact mirror image of the one seen from the
  front, and a near-symmetric skull's mirror image looks like another front view with its
  left and right landmarks exchanged, so a network trained on the full circle cannot tell
  which labels to give (it learns their average). From the front half the labels are a
  function of the image; a recording that sees the subject from behind gets mirror-swapped
  labels, which is what the registration's four mirror cases resolve (Table 1 of the paper).
  Both fluoroscopes (about 100 deg apart, sources in front of the subject) with axial
  rotations up to +-40 deg stay within the range; ``(-180, 180)`` gives the full circle;
* elevation in [-30, 30] deg (beam out of the horizontal plane: flexion-extension seen from
  the front, lateral bending seen from the side, and the tilt of the fluoroscopes);
* roll in [-30, 30] deg (in-plane rotation: flexion-extension seen from the side, lateral
  bending from the front);
* in-plane translation in [-15, 15] mm per axis (the bone is not centred in the field of
  view) and scale in [0.85, 1.15] (the magnification of a point-source beam changes with the
  subject's position between source and intensifier).

Storage. ``<root>/dataset.json`` holds the metadata (subject name and fingerprint, landmark
names and pairs, camera, pose ranges, segmented share, seed, split sizes, shard size, software
version). Samples live in HDF5 shards ``<root>/<split>/shard_NNNNN.h5`` with datasets
``image`` uint8 [n, H, W] (each image windowed to (0, its 99.5th percentile of line
integrals), as the paper's 8-bit inputs), ``mask`` uint8 [n, H, W] (projected bone
silhouette), ``landmarks_px`` float32 [n, L, 2] (x = column, y = row), ``landmarks_norm``
float32 [n, L, 2] (``(p - (N-1)/2) / ((N-1)/2)``), ``visible`` bool [n, L], ``segmented`` bool
[n], ``pose`` float64 [n, 6] (camera_from_model, deg / mm), ``scale`` float64 [n] and
``window_hi`` float32 [n] (the line integral shown as 255), and for cone-beam datasets
``source_distance_mm`` float64 [n]. Each shard is generated from its
own seed derived from (seed, split, shard index), so the same seed gives the same dataset and
a resumed run reproduces exactly what an uninterrupted one would; a shard file exists only
once complete (written to a temporary file, then renamed).
"""

from __future__ import annotations

import json
import math
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from fluororeg.core import render as R
from fluororeg.io.atomic import atomic_write_text
from fluororeg.io.run_lock import locks_folder
from fluororeg.core.geometry import PACKED_VIEW_SIZE, ParallelCamera, euler_from_matrix

__all__ = ["PoseRanges", "DatasetConfig", "generate_dataset", "sample_poses", "cone_views", "source_distance_range",
           "prepare_subject_volumes", "render_samples", "DatasetReader", "bone_radius_mm", "CROP_MARGIN"]

FORMAT_VERSION = 1
# A crop's field of view over the diameter of the sphere that holds the bone (bone_size_settings).
CROP_MARGIN = 1.35
SPLITS = ("train", "test")


def _interval(value, name: str, lo=-math.inf, hi=math.inf) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r}: expected two numbers (low, high)") from None
    if not (math.isfinite(a) and math.isfinite(b) and a <= b and a >= lo and b <= hi):
        raise ValueError(f"{name} = {value!r}: expected finite low <= high within [{lo}, {hi}]")
    return a, b


@dataclass(frozen=True)
class PoseRanges:
    """Uniform ranges of the random poses (degrees, millimetres); see the module docstring."""

    azimuth_deg: tuple[float, float] = (-90.0, 90.0)
    elevation_deg: tuple[float, float] = (-30.0, 30.0)
    roll_deg: tuple[float, float] = (-30.0, 30.0)
    translation_mm: tuple[float, float] = (-15.0, 15.0)
    scale: tuple[float, float] = (0.85, 1.15)
    # Subject axes in the model frame (directions, LPS). None (the default): the subject's
    # orientation (Subject.orientation: measured from the CT, or subject.json's "orientation"),
    # filled in by generate_dataset / DatasetConfig.for_subject; never the CT header's labels.
    superior_axis: tuple[float, float, float] | None = None
    anterior_axis: tuple[float, float, float] | None = None

    def __post_init__(self):
        for name in ("azimuth_deg", "elevation_deg", "roll_deg"):
            object.__setattr__(self, name, _interval(getattr(self, name), name, -360, 360))
        object.__setattr__(self, "translation_mm", _interval(self.translation_mm, "translation_mm"))
        object.__setattr__(self, "scale", _interval(self.scale, "scale", 1e-3, 1e3))
        if (self.superior_axis is None) != (self.anterior_axis is None):
            raise ValueError(f"superior_axis {self.superior_axis} and anterior_axis {self.anterior_axis}: give both "
                             "or neither (None: the subject's orientation)")
        if self.superior_axis is None:
            return
        sup = np.asarray(self.superior_axis, float)
        ant = np.asarray(self.anterior_axis, float)
        if sup.shape != (3,) or ant.shape != (3,) or np.linalg.norm(sup) < 1e-9 or np.linalg.norm(ant) < 1e-9:
            raise ValueError(f"superior_axis {self.superior_axis} and anterior_axis {self.anterior_axis} must be non-zero 3-vectors")
        if abs(sup @ ant) > 1e-6 * np.linalg.norm(sup) * np.linalg.norm(ant):
            raise ValueError(f"superior_axis {self.superior_axis} and anterior_axis {self.anterior_axis} must be orthogonal")
        object.__setattr__(self, "superior_axis", tuple(float(v) for v in sup / np.linalg.norm(sup)))
        object.__setattr__(self, "anterior_axis", tuple(float(v) for v in ant / np.linalg.norm(ant)))

    @property
    def has_axes(self) -> bool:
        return self.superior_axis is not None

    def for_subject(self, subject) -> "PoseRanges":
        """These ranges with the subject's anatomical axes where none are given
        (:attr:`fluororeg.subject.subject.Subject.orientation`)."""
        if self.has_axes:
            return self
        o = subject.orientation
        return replace(self, superior_axis=o.superior, anterior_axis=o.anterior)

    def base_rotation(self) -> np.ndarray:
        """camera_from_model of the frontal view: anterior toward the camera (camera +z points
        posterior), superior up in the image (camera -y)."""
        if not self.has_axes:
            raise ValueError("these pose ranges have no subject axes (superior_axis/anterior_axis None): take them from "
                             "the subject first (PoseRanges.for_subject(subject) or DatasetConfig.for_subject)")
        sup, ant = np.array(self.superior_axis), np.array(self.anterior_axis)
        cam_z = -ant                # rays run from the front of the subject to its back
        cam_y = -sup                # image rows grow downward = inferior
        cam_x = np.cross(cam_y, cam_z)
        return np.stack([cam_x, cam_y, cam_z])  # rows: camera axes in model coordinates


def _axis_rotation(axis: np.ndarray, angle_deg: np.ndarray) -> np.ndarray:
    """Rodrigues rotations [n, 3, 3] about a unit axis by angles [n] (deg)."""
    a = np.deg2rad(angle_deg)[:, None, None]
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * (K @ K)


def sample_poses(rng: np.random.Generator, n: int, ranges: PoseRanges) -> tuple[np.ndarray, np.ndarray]:
    """Random camera_from_model poses [n, 6] (deg, mm) and scales [n]; ``ranges`` with the
    subject's axes (:meth:`PoseRanges.for_subject`)."""
    if not ranges.has_axes:
        raise ValueError("sample_poses needs pose ranges with the subject's axes: pass ranges.for_subject(subject)")
    az = rng.uniform(*ranges.azimuth_deg, n)
    el = rng.uniform(*ranges.elevation_deg, n)
    roll = rng.uniform(*ranges.roll_deg, n)
    t = rng.uniform(*ranges.translation_mm, (n, 2))
    scale = rng.uniform(*ranges.scale, n)
    R0 = ranges.base_rotation()
    Rm = (_axis_rotation(np.array([0.0, 0.0, 1.0]), roll)      # roll about the beam
          @ _axis_rotation(np.array([1.0, 0.0, 0.0]), el)      # elevation about image x
          @ R0 @ _axis_rotation(np.array(ranges.superior_axis), az))  # azimuth about superior
    poses = np.zeros((n, 6))
    poses[:, :3] = euler_from_matrix(Rm)
    poses[:, 3:5] = t
    return poses, scale


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate. Defaults follow the paper: 9251 train / 500 test images of 128 x 128,
    2139 of 9751 bone-segmented."""

    n_train: int = 9251
    n_test: int = 500
    image_size: int = 128
    pixel_mm: float = 2.0
    segmented_share: float = 2139 / 9751
    seed: int = 0
    shard_size: int = 512
    poses: PoseRanges = field(default_factory=PoseRanges)
    projection: str = "parallel"                          # 'parallel' (the paper's) | 'cone'
    source_distance_mm: tuple[float, float] = (550.0, 900.0)  # cone: source to object centre
    cone_method: str = "auto"                             # cone: render_cone's method, or 'auto'

    def __post_init__(self):
        for name in ("n_train", "n_test"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} = {v!r}: expected a whole number >= 0")
        if self.n_train + self.n_test == 0:
            raise ValueError("n_train + n_test = 0: nothing to generate")
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 8:
            raise ValueError(f"image_size = {self.image_size!r}: expected an integer >= 8")
        if not (math.isfinite(self.pixel_mm) and self.pixel_mm > 0):
            raise ValueError(f"pixel_mm = {self.pixel_mm!r}: expected a positive size in mm")
        if not (0.0 <= self.segmented_share <= 1.0):
            raise ValueError(f"segmented_share = {self.segmented_share!r}: expected a fraction in [0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed = {self.seed!r}: expected a whole number >= 0")
        if not isinstance(self.shard_size, (int, np.integer)) or self.shard_size < 1:
            raise ValueError(f"shard_size = {self.shard_size!r}: expected an integer >= 1")
        if self.projection not in ("parallel", "cone"):
            raise ValueError(f"projection '{self.projection}' is unknown: expected 'parallel' or 'cone'")
        if self.cone_method not in ("auto",) + R.CONE_METHODS:
            raise ValueError(f"cone_method '{self.cone_method}' is unknown: expected 'auto' or one of "
                             f"{R.CONE_METHODS}")
        lo, hi = _interval(self.source_distance_mm, "source_distance_mm", 1.0)
        if lo < 200.0:
            raise ValueError(f"source_distance_mm = {self.source_distance_mm!r}: expected distances of at least "
                             "200 mm (a skull must fit between the source and the object centre)")
        object.__setattr__(self, "source_distance_mm", (lo, hi))

    @property
    def camera(self) -> ParallelCamera:
        return ParallelCamera(self.image_size, self.image_size, self.pixel_mm)

    def count(self, split: str) -> int:
        return self.n_train if split == "train" else self.n_test

    def n_shards(self, split: str) -> int:
        return -(-self.count(split) // self.shard_size)

    def to_json(self) -> dict:
        d = asdict(self)
        d["poses"] = asdict(self.poses)
        return d

    def with_subject_axes(self, subject) -> "DatasetConfig":
        """This configuration with the subject's anatomical axes where the pose ranges give none."""
        return self if self.poses.has_axes else replace(self, poses=self.poses.for_subject(subject))

    @classmethod
    def for_subject(cls, subject, *, image_size: int = 128, margin: float = CROP_MARGIN, **overrides) -> "DatasetConfig":
        """A configuration sized to the subject's bone (any bone, not only a skull): see
        :func:`bone_size_settings`; ``overrides`` (any field, e.g. ``n_train``, ``projection``,
        ``source_distance_mm``) win over the derived values."""
        derived = bone_size_settings(subject, image_size=image_size, margin=margin)
        poses = overrides.pop("poses", None) or derived.pop("poses")
        derived.pop("poses", None)
        derived.update(overrides)
        return cls(image_size=image_size, poses=poses, **derived)


def _bone_points(subject) -> tuple[np.ndarray, float]:
    """The bone mask's voxel centres [M, 3] (model frame, mm) and half a voxel's diagonal (mm)."""
    mask = subject.mask_model()
    k, j, i = np.nonzero(np.asarray(mask.data))
    if not len(i):
        raise ValueError("the subject's bone mask is empty: cannot size a dataset to it")
    pts = mask.voxel_to_physical(np.stack([i, j, k], axis=1).astype(np.float64))
    return pts, 0.5 * float(np.linalg.norm(mask.spacing))


def bone_radius_mm(subject) -> float:
    """The radius (mm) of the sphere about the bone mask's centroid that holds the whole mask: the
    bone's own size, whatever the subject's origin (:func:`bone_size_settings` sizes the dataset's
    crops about the origin instead, where they are centred)."""
    pts, half_voxel = _bone_points(subject)
    return float(np.linalg.norm(pts - pts.mean(axis=0), axis=1).max()) + half_voxel


def bone_size_settings(subject, *, image_size: int = 128, margin: float = CROP_MARGIN) -> dict:
    """Dataset settings derived from the bone's size and shape (for :meth:`DatasetConfig.for_subject`):

    * ``pixel_mm`` (the crop pixel size the pipeline then uses): the largest extent of the bone
      mask seen from any direction (its bounding sphere's diameter about the model origin,
      i.e. the landmark centroid) times ``margin``, over ``image_size`` pixels, so that the
      whole bone fits a crop at any pose and scale of the ranges below;
    * ``poses.translation_mm``: +-8 % of that field of view;
    * for a subject with symmetric pairs (a skull): the default viewing ranges (front half,
      the mirror cases resolve the rest) about the subject's anatomical axes
      (:attr:`fluororeg.subject.subject.Subject.orientation`, not the CT header's); for one
      without pairs (a radius, a femur): no
      mirror case can resolve a view from behind, so the whole sphere of directions about the
      bone's long axis (its largest principal axis, as ``superior_axis``): azimuth
      (-180, 180), elevation (-45, 45), roll (-180, 180).
    """
    pts, half_voxel = _bone_points(subject)
    radius = float(np.linalg.norm(pts, axis=1).max()) + half_voxel
    fov = 2.0 * radius * float(margin)
    pixel_mm = fov / int(image_size)
    translation = 0.08 * fov
    if subject.pairs:
        o = subject.orientation
        poses = PoseRanges(translation_mm=(-translation, translation), superior_axis=o.superior,
                           anterior_axis=o.anterior)
    else:
        centred = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
        long_axis, second = vt[0], vt[1]
        poses = PoseRanges(azimuth_deg=(-180.0, 180.0), elevation_deg=(-45.0, 45.0), roll_deg=(-180.0, 180.0),
                           translation_mm=(-translation, translation),
                           superior_axis=tuple(float(v) for v in long_axis),
                           anterior_axis=tuple(float(v) for v in second))
    return {"pixel_mm": float(pixel_mm), "poses": poses}


def source_distance_range(views, margin: float = 0.15) -> tuple[float, float]:
    """Source-to-object distances (mm) for a cone-beam dataset that matches a lab's fluoroscopes:
    the distances from each view's source to the beams' crossing (where the pipeline measures its
    crop pixel size), widened by ``margin`` either way for subjects off the crossing."""
    from fluororeg.core.geometry import beam_crossing

    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin = {margin!r}: expected a fraction in [0, 1)")
    centre = beam_crossing(views)
    d = [abs(float(v.normal @ (centre - v.source))) for v in views]
    return (min(d) * (1.0 - margin), max(d) * (1.0 + margin))


def _shard_rng(seed: int, split: str, shard: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), shard]))


def cone_views(camera: ParallelCamera, scales: np.ndarray, source_distance_mm: np.ndarray) -> np.ndarray:
    """The cone-beam counterparts of ``camera`` at ``scales`` [n], packed [n, 16] as the
    renderers take them (:func:`~fluororeg.core.geometry.stack_views`): in camera coordinates,
    the source ``source_distance_mm`` [n] in front of the origin on the -z axis, the intensifier
    beyond the origin (1.5 times as far from the source), the pixel size at the origin
    ``camera.pixel_mm / scale`` and the principal point at the image centre."""
    s = np.asarray(scales, np.float64).reshape(-1)
    sod = np.asarray(source_distance_mm, np.float64).reshape(-1)
    if s.shape != sod.shape:
        raise ValueError(f"got {len(s)} scales and {len(sod)} source distances: expected one of each per sample")
    if not np.all(np.isfinite(s) & (s > 0) & np.isfinite(sod) & (sod > 0)):
        raise ValueError("scales and source distances must be finite and positive")
    sdd = 1.5 * sod
    pitch = camera.pixel_mm / s * sdd / sod
    packed = np.zeros((len(s), PACKED_VIEW_SIZE))
    packed[:, 2] = -sod                # source
    packed[:, 5] = sdd - sod           # intensifier centre
    packed[:, 6] = packed[:, 10] = 1   # u = x, v = y
    packed[:, 12] = packed[:, 13] = pitch
    packed[:, 14], packed[:, 15] = camera.width, camera.height
    return packed


def prepare_subject_volumes(subject, device: str = "cpu") -> tuple:
    """The subject's attenuation and bone-mask volumes prepared once for rendering on
    ``device`` ('cpu', 'cuda' or 'auto'): pass them to :func:`render_samples` as ``volumes``."""
    device = R.resolve_device(device)
    return R.prepare_volume(subject.attenuation_model(), device), R.prepare_mask(subject.mask_model(), device)


def _cone_method_for(method: str, device: str) -> str:
    """``'auto'`` resolved for a device ('cpu' or 'cuda'): the faster renderer there (on an H100,
    ray marching gave 4,700-6,000 dataset samples/s, shear-warp 2,700-3,500;
    ``benchmarks/results/h100_*bench_dataset.json``)."""
    if method != "auto":
        return method
    return "march" if device == "cuda" else "shear_warp"


def render_samples(subject, poses: np.ndarray, scales: np.ndarray, segmented: np.ndarray,
                   camera: ParallelCamera, device: str = "cpu",
                   source_distance_mm: np.ndarray | None = None, volumes: tuple | None = None,
                   num_threads: int = 0, cone_method: str = "auto") -> dict[str, np.ndarray]:
    """Render one batch of samples (see the module docstring for the fields): parallel-beam,
    or cone-beam when ``source_distance_mm`` [n] is given (see :func:`cone_views`), rendered by
    ``cone_method`` (see :class:`DatasetConfig`).
    ``volumes``: :func:`prepare_subject_volumes` (saves preparing the volumes per batch).
    ``num_threads``: CPU threads of the renderers (0: all cores)."""
    projections = _project_samples(subject, poses, scales, camera, device, source_distance_mm, volumes,
                                   num_threads, cone_method)
    return _finish_samples(projections, poses, scales, segmented, camera, source_distance_mm, num_threads)


def _project_samples(subject, poses, scales, camera, device, source_distance_mm, volumes, num_threads,
                     cone_method) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The renderers' part of :func:`render_samples` (on ``device``): DRRs [n, H, W] float32,
    masks [n, H, W] bool, landmark pixels [n, L, 2] and visibility [n, L]."""
    device = R.resolve_device(device)
    cone_method = _cone_method_for(cone_method, device)
    mu, bone = volumes if volumes is not None else (subject.attenuation_model(), subject.mask_model())
    if source_distance_mm is None:
        drr = R.render_parallel(mu, poses, camera, scales, device=device, num_threads=num_threads)
        mask = R.project_mask_parallel(bone, poses, camera, scales, device=device, num_threads=num_threads)
        xy, visible = R.project_parallel(subject.landmarks_model, poses, camera, scales, device=device)
    else:
        views = cone_views(camera, scales, source_distance_mm)
        drr = R.render_cone(mu, views, poses, device=device, num_threads=num_threads, method=cone_method)
        mask = R.project_mask_cone(bone, views, poses, device=device, num_threads=num_threads, method=cone_method)
        xy, visible = R.project_cone(subject.landmarks_model, views, poses, device=device)
    return drr, mask, xy, visible


def _finish_samples(projections, poses, scales, segmented, camera, source_distance_mm,
                    num_threads) -> dict[str, np.ndarray]:
    """The CPU part of :func:`render_samples`: 8-bit pictures and the sample's fields."""
    drr, mask, xy, visible = projections
    # Segmented samples show the bone alone: the DRR where the mask is set.
    image, hi = R.window_to_uint8(drr, percentile=99.5, keep=mask | ~segmented[:, None, None],
                                  num_threads=num_threads)
    half = np.array([(camera.width - 1) / 2, (camera.height - 1) / 2])
    sample = {
        "image": image,
        "mask": mask.astype(np.uint8),
        "landmarks_px": xy.astype(np.float32),
        "landmarks_norm": ((xy - half) / half).astype(np.float32),
        "visible": visible,
        "segmented": segmented.astype(bool),
        "pose": poses,
        "scale": scales,
        "window_hi": hi,
    }
    if source_distance_mm is not None:
        sample["source_distance_mm"] = np.asarray(source_distance_mm, np.float64)
    return sample


def _orientation_json(subject, config: DatasetConfig) -> dict:
    """Where the viewing directions' anatomical axes came from (for dataset.json)."""
    o = getattr(subject, "_orientation", None)  # computed already where the axes came from the subject
    same = o is not None and np.allclose(o.superior, config.poses.superior_axis) and \
        np.allclose(o.anterior, config.poses.anterior_axis)
    if same:
        return {"source": o.source, "detail": o.detail}
    return {"source": "dataset configuration", "detail": "superior_axis/anterior_axis given in the pose ranges"}


def _metadata(subject, config: DatasetConfig) -> dict:
    from fluororeg import __version__

    return {
        "format_version": FORMAT_VERSION,
        "software": f"fluororeg {__version__}",
        "subject": subject.name,
        "subject_fingerprint": subject.fingerprint,
        "crop_pixel_mm": float(config.pixel_mm),
        "landmark_names": list(subject.landmark_names),
        "pairs": [list(p) for p in subject.pairs],
        "config": config.to_json(),
        "orientation": _orientation_json(subject, config),
        "splits": {s: config.count(s) for s in SPLITS},
    }


class _DeferInterrupt:
    """Let the current shard finish writing its temporary file before Ctrl-C stops the run."""

    def __enter__(self):
        self.hit = False
        try:
            self.old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not in the main thread
            self.old = None
        return self

    def _handler(self, signum, frame):
        self.hit = True

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        if self.hit:
            raise KeyboardInterrupt
        return False


class _Shard(NamedTuple):
    """One shard still to make, with its draws (from the shard's own seed)."""

    split: str
    first_index: int
    path: Path | None             # None: not written
    poses: np.ndarray             # [n, 6]
    scales: np.ndarray            # [n]
    segmented: np.ndarray         # [n] bool
    source_distance_mm: np.ndarray | None  # [n] (cone beam) or None


def _render_ahead(device: str) -> bool:
    """Whether generate_dataset renders the next shard (in a worker thread: the core releases
    the GIL) while it windows and writes this one: on CUDA, where the renders run on the device;
    on the CPU both would share the cores."""
    return device == "cuda"


@locks_folder("root", "dataset")  # one writer per dataset folder
def generate_dataset(subject, root, config: DatasetConfig = DatasetConfig(), *, device: str = "cpu",
                     progress: bool = True, write: bool = True, num_threads: int = 0) -> Path | None:
    """Generate (or resume) the dataset of ``subject`` under ``root``.

    Finished shards of an earlier run with the same subject and configuration are kept; a
    different subject or configuration in ``root`` is an error (use another folder). Ctrl-C
    stops after the shard being written; running again resumes. ``write=False`` renders
    without writing (for benchmarks; ``root`` may then be None). ``device``: 'cpu', 'cuda' or
    'auto' (CUDA where a device is usable). ``num_threads``: CPU threads of the renderers (0: the
    process's count, :mod:`fluororeg.core.threads`; a study's workers use 1 each so that they do
    not oversubscribe the machine).
    """
    import h5py
    from tqdm import tqdm

    if not isinstance(config, DatasetConfig):
        raise TypeError(f"config must be a DatasetConfig, got {type(config).__name__}")
    config = config.with_subject_axes(subject)
    device = R.resolve_device(device)
    if config.projection == "cone":  # dataset.json records the renderer used
        config = replace(config, cone_method=_cone_method_for(config.cone_method, device))
    root = Path(root) if root is not None else None
    if write and root is None:
        raise ValueError("root is None: a folder is needed to write the dataset")
    meta = json.loads(json.dumps(_metadata(subject, config)))  # as it reads back (lists, not tuples)
    if write:
        root.mkdir(parents=True, exist_ok=True)
        meta_path = root / "dataset.json"
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"'{meta_path}' is not valid JSON ({exc}): delete it (or the folder) to generate "
                                 "the dataset again") from None
            keys = ("format_version", "subject_fingerprint", "config", "landmark_names", "pairs")
            if any(old.get(k) != meta[k] for k in keys):
                raise ValueError(
                    f"{root} holds a dataset of another subject or configuration; choose an empty "
                    "folder (or delete it) to generate a new one")
        else:
            atomic_write_text(meta_path, json.dumps(meta, indent=2))
    volumes = prepare_subject_volumes(subject, device)
    device = volumes[0].device
    total = config.n_train + config.n_test
    bar = tqdm(total=total, unit="sample", disable=not progress, desc="dataset")
    # The shards still to make, in order; each one's draws come from its own seed.
    jobs = []
    for split in SPLITS:
        if write:
            (root / split).mkdir(exist_ok=True)
        for shard in range(config.n_shards(split)):
            n = min(config.shard_size, config.count(split) - shard * config.shard_size)
            path = root / split / f"shard_{shard:05d}.h5" if write else None
            if write and path.exists():
                bar.update(n)
                continue
            rng = _shard_rng(config.seed, split, shard)
            poses, scales = sample_poses(rng, n, config.poses)
            segmented = rng.random(n) < config.segmented_share
            sod = rng.uniform(*config.source_distance_mm, n) if config.projection == "cone" else None
            jobs.append(_Shard(split, shard * config.shard_size, path, poses, scales, segmented, sod))

    def project(job: _Shard):
        return _project_samples(subject, job.poses, job.scales, config.camera, device, job.source_distance_mm,
                                volumes, num_threads, config.cone_method)

    ahead = ThreadPoolExecutor(max_workers=1) if _render_ahead(device) and len(jobs) > 1 else None
    try:
        pending = ahead.submit(project, jobs[0]) if ahead and jobs else None
        for i, job in enumerate(jobs):
            if ahead:
                projections = pending.result()
                pending = ahead.submit(project, jobs[i + 1]) if i + 1 < len(jobs) else None
            else:
                projections = project(job)
            sample = _finish_samples(projections, job.poses, job.scales, job.segmented, config.camera,
                                     job.source_distance_mm, num_threads)
            if write:
                with _DeferInterrupt():
                    tmp = job.path.with_suffix(".h5.tmp")
                    with h5py.File(tmp, "w") as f:
                        for key, value in sample.items():
                            if value.ndim == 3:
                                f.create_dataset(key, data=value, chunks=(1,) + value.shape[1:],
                                                 compression="gzip", compression_opts=1)
                            else:
                                f.create_dataset(key, data=value)
                        f.attrs["split"] = job.split
                        f.attrs["first_index"] = job.first_index
                    os.replace(tmp, job.path)
            bar.update(len(job.poses))
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: finished shards are kept in {root}; run again to resume")
        raise
    finally:
        if ahead:
            ahead.shutdown(wait=True, cancel_futures=True)
    bar.close()
    return root if write else None


class DatasetReader:
    """Reads one split of a dataset shard by shard, never all at once.

    ``len(reader)``, ``reader[i]`` (a dict of one sample), ``reader.batches(batch_size,
    shuffle=True, seed=0)`` (dicts of stacked arrays; shuffles shard order and samples within
    a shard, so memory stays at one shard). ``reader.meta`` is the dataset.json content.
    """

    def __init__(self, root, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split '{split}' is unknown: expected one of {SPLITS}")
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a fluororeg dataset folder")
        try:
            self.meta = json.loads(meta_path.read_text())
            shard_size, count = int(self.meta["config"]["shard_size"]), int(self.meta["splits"][split])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"'{meta_path}' is not valid JSON ({exc}): the dataset's description is damaged; "
                             "generate the dataset again in an empty folder") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"'{meta_path}' is not a fluororeg dataset description (no valid config.shard_size "
                             f"and splits.{split}: {exc!r}); generate the dataset again in an empty folder") from None
        if shard_size < 1 or count < 0:
            raise ValueError(f"'{meta_path}': config.shard_size = {shard_size}, splits.{split} = {count}: expected a "
                             "positive shard size and a sample count of 0 or more")
        self.split = split
        n_shards = -(-count // shard_size)
        self.shards = [self.root / split / f"shard_{s:05d}.h5" for s in range(n_shards)]
        missing = [p.name for p in self.shards if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) of split '{split}' are missing (e.g. {missing[0]}): "
                                    "the dataset is incomplete; run the generation again to resume")
        self.sizes = [min(shard_size, count - s * shard_size) for s in range(n_shards)]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def crop_pixel_mm(self) -> float:
        """The pixel size (mm) of the dataset's images at the bone: the crop pixel size the
        pipeline must use with a detector trained on them."""
        return float(self.meta["config"]["pixel_mm"])

    @property
    def subject_fingerprint(self) -> str:
        """The fingerprint of the subject the dataset was rendered from."""
        return str(self.meta["subject_fingerprint"])

    @property
    def landmark_names(self) -> list[str]:
        return list(self.meta["landmark_names"])

    def _read(self, shard: int, index) -> dict[str, np.ndarray]:
        import h5py

        path = self.shards[shard]
        try:
            with h5py.File(path, "r") as f:
                return {k: f[k][index] for k in f.keys()}
        except OSError as exc:  # h5py's errors do not name the file
            raise ValueError(f"dataset shard '{path}' cannot be read ({exc}): it is damaged; delete it and run "
                             "`fluororeg dataset` again with the same options to make it again") from exc

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i %= len(self)
        shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self._read(shard, int(i - self.offsets[shard]))

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: expected >= 1")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.shards)) if shuffle else np.arange(len(self.shards))
        for s in order:
            data = self._read(int(s), slice(None))
            idx = rng.permutation(self.sizes[s]) if shuffle else np.arange(self.sizes[s])
            for b in range(0, len(idx), batch_size):
                sel = idx[b:b + batch_size]
                yield {k: v[sel] for k, v in data.items()}
