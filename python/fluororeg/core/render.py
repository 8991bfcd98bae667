"""DRR rendering, landmark and mask projection (thin layer over the C++ core).

Two geometries:

* **Parallel beam** (the paper's artificial dataset): :class:`~fluororeg.core.geometry.ParallelCamera`
  plus per-image poses ``camera_from_model`` (deg, mm) and in-plane scales; shear-warp
  factorisation (Lacroute & Levoy 1994).
* **Cone beam** (a fluoroscope): :class:`~fluororeg.core.geometry.ConeView` plus poses
  ``world_from_model`` (deg, mm); ray marching with trilinear interpolation, rays clipped to
  the volume and empty blocks skipped.

A DRR holds line integrals of attenuation (dimensionless float32) through a volume of
attenuation per mm (``Volume.hu_to_attenuation``). :func:`to_uint8` maps them to 8-bit images.

Volumes are rendered in their physical frame, which is taken as the model frame: shift the
volume (``Volume.translated``) so that its origin is the subject origin. Unless ``level`` is
given, the renderer downsamples the volume (anti-aliased, cached on the Volume) to match the
output pixel size at the object, so a 128x128 DRR does not march through a full-resolution CT.

Every function takes batches: ``poses`` [n, 6] (or [6]) render n images in one call, spread
over all cores with the GIL released. ``device='cuda'`` runs the CUDA kernels and raises a
clear error where CUDA is not built or no device is present (see :func:`fluororeg.has_cuda`);
``device='auto'`` picks CUDA when a device is usable.

Rendering many batches of one volume: :func:`prepare_volume` returns a
:class:`PreparedVolume` that keeps what the renderers build from a volume (and, on CUDA, its
device copy, a 3D texture and work buffers) between calls; the renderers take it wherever
they take a Volume. With ``on_device=True`` (CUDA) the DRRs stay on the GPU and come back as
a DLPack array (``torch.from_dlpack(images)`` takes them without a copy).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

from fluororeg import _core
from fluororeg.core.geometry import (ConeView, ParallelCamera, as_poses, check_array_size, poses_to_radians,
                                     stack_views)
from fluororeg.core.memory import check_allocation
from fluororeg.core.threads import checked_request
from fluororeg.core.threads import num_threads as process_threads  # 0: the process's count
from fluororeg.core.volume import Volume

__all__ = [
    "PreparedVolume",
    "prepare_volume",
    "resolve_device",
    "render_parallel",
    "render_cone",
    "project_parallel",
    "project_cone",
    "prepare_mask",
    "project_mask_parallel",
    "project_mask_cone",
    "to_uint8",
    "window_to_uint8",
    "render_volume_for",
]

Views = Union[ConeView, Sequence[ConeView], np.ndarray]  # np.ndarray: packed [n, 16] (stack_views)


# The size limits of the core (cpp/include/fluororeg/limits.h; the C++ layer enforces them
# too): pixels per image side, images per call and bytes of one output array.
MAX_IMAGE_SIDE: int = _core.MAX_IMAGE_SIDE
MAX_BATCH: int = _core.MAX_BATCH
MAX_OUTPUT_BYTES: int = _core.MAX_OUTPUT_BYTES


def check_image_batch(count: int, width: int, height: int, *,
                      names: tuple[str, str, str] = ("poses", "width", "height")) -> None:
    """ValueError naming the argument unless ``count`` float32 images of ``width`` x
    ``height`` pixels lie within the core's limits (each side 1 to MAX_IMAGE_SIDE, at most
    MAX_BATCH images and MAX_OUTPUT_BYTES bytes per call); ``names``: how the caller calls
    the count, width and height (e.g. ``("--count", "--size", "--size")``)."""
    for name, side in ((names[1], width), (names[2], height)):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)):
            raise TypeError(f"{name} = {side!r}: expected a whole number of pixels")
        if not 1 <= side <= MAX_IMAGE_SIDE:
            raise ValueError(f"{name} = {side}: expected 1 to {MAX_IMAGE_SIDE} pixels per image side")
    if not 0 <= count <= MAX_BATCH:
        raise ValueError(f"{names[0]} = {count}: expected 0 to {MAX_BATCH} images per call")
    nbytes = 4 * int(count) * int(width) * int(height)
    if nbytes > MAX_OUTPUT_BYTES:
        raise ValueError(f"{names[0]} = {count} images of {width} x {height} px would take "
                         f"{nbytes / 2**30:.1f} GiB: expected at most {MAX_OUTPUT_BYTES / 2**30:.0f} GiB "
                         "per call; render in smaller batches")


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' for ``device`` in ('auto', 'cpu', 'cuda'): 'auto' is 'cuda' where a CUDA
    device is usable."""
    if device == "auto":
        return "cuda" if _core.cuda_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device '{device}' is unknown: expected 'auto', 'cpu' or 'cuda'")
    return device


def cuda_unusable_reason() -> str | None:
    """Why the renderers cannot use CUDA here (no usable device, or a build without CUDA), or
    None when they can."""
    if _core.cuda_available():
        return None
    return "no CUDA device is usable" if _core.cuda_built() else "fluororeg was built without CUDA"


def check_device_usable(device: str) -> str:
    """:func:`resolve_device`'s answer, after checking that a 'cuda' request can be met (a
    RuntimeError naming why not, :func:`cuda_unusable_reason`)."""
    resolved = resolve_device(device)
    reason = cuda_unusable_reason() if resolved == "cuda" else None
    if reason is not None:
        raise RuntimeError(f"device='cuda' was requested but {reason}; use device='cpu' or 'auto'")
    return resolved


class PreparedVolume:
    """A :class:`~fluororeg.core.volume.Volume` prepared once for rendering on ``device``: per
    pyramid level the renderers use, a ``_core.RenderVolume`` (voxels, cone-beam occupancy,
    shear-warp slice stacks, and on CUDA the device copies and work buffers) made on first use
    and kept. The volume's voxels must not change while it is in use."""

    def __init__(self, volume: Volume, device: str = "cpu"):
        _check_volume(volume)
        self.volume = volume
        self.device = check_device_usable(device)
        self._handles: dict[int, tuple[Volume, "_core.RenderVolume"]] = {}

    def handle(self, level_volume: Volume) -> "_core.RenderVolume":
        """The core's RenderVolume of ``level_volume`` (this volume or one of its levels)."""
        entry = self._handles.get(id(level_volume))
        if entry is None or entry[0] is not level_volume:
            _check_volume(level_volume)
            data, m = _grid(level_volume)
            entry = (level_volume, _core.RenderVolume(data, m, self.device))
            self._handles[id(level_volume)] = entry
        return entry[1]

    def __repr__(self) -> str:
        return f"PreparedVolume(shape={self.volume.data.shape}, device='{self.device}', levels={len(self._handles)})"


def prepare_volume(volume: Volume, device: str = "cpu") -> PreparedVolume:
    """Prepare ``volume`` (float32 attenuation per mm) for repeated rendering on ``device``
    ('cpu', 'cuda' or 'auto'); pass the result to the renderers instead of the Volume."""
    return PreparedVolume(volume, device)


def _split(volume, device) -> tuple[Volume, PreparedVolume | None, str]:
    """(the Volume, its PreparedVolume or None, the device) of a renderer call."""
    if isinstance(volume, PreparedVolume):
        return volume.volume, volume, resolve_device(device if device is not None else volume.device)
    _check_volume(volume)
    return volume, None, resolve_device(device if device is not None else "cpu")


def _threads(num_threads: int, dev: str) -> int:
    """The CPU threads of a renderer call on ``dev``: the process's count on the CPU; a CUDA call
    runs none (its argument is only checked)."""
    return process_threads(num_threads) if dev == "cpu" else checked_request(num_threads)


def _check_volume(volume: Volume) -> None:
    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a fluororeg.Volume, got {type(volume).__name__}")
    if volume.data.dtype != np.float32:
        raise TypeError(
            f"volume data has dtype {volume.data.dtype}: expected float32 attenuation per mm "
            "(convert HU with Volume.hu_to_attenuation())")


def _grid(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    data = np.ascontiguousarray(volume.data, dtype=np.float32)
    return data, np.ascontiguousarray(volume.physical_from_voxel[:3, :4], dtype=np.float64)


def _scales(scales, n: int) -> np.ndarray:
    if scales is None:
        return np.ones(n)
    check_array_size(scales, "scales")
    s = np.asarray(scales, dtype=np.float64)
    if s.ndim == 0:
        s = np.full(n, float(s))
    if s.shape != (n,):
        raise ValueError(f"scales has shape {s.shape}, expected ({n},) for {n} poses or a scalar")
    if not np.all(np.isfinite(s) & (s > 0)):
        bad = s[~(np.isfinite(s) & (s > 0))][0]
        raise ValueError(f"scale {bad} is invalid: expected finite positive magnifications")
    return np.ascontiguousarray(s)


def _cone_pixels_at_object(views: np.ndarray, poses_deg: np.ndarray) -> np.ndarray:
    """Each image's smaller intensifier pitch scaled back to the model origin, [n] mm: the finest
    detail it can show at the object (``ConePixelsAtObject`` of the core). views: packed
    [n, 16]; poses_deg: [n, 6]."""
    return _core.cone_pixels_at_object(np.ascontiguousarray(views, dtype=np.float64),
                                       np.ascontiguousarray(poses_deg, dtype=np.float64))


def _cone_pixel_at_object(views: np.ndarray, poses_deg: np.ndarray) -> float:
    """The finest of :func:`_cone_pixels_at_object` (mm): a batch's level when it shares one."""
    return float(_cone_pixels_at_object(views, poses_deg).min(initial=math.inf))


def render_volume_for(volume: Volume, pixel_mm_at_object: float, level) -> Volume:
    """The volume the renderers march through: ``level='auto'`` picks per-axis factors
    matching the pixel size at the object, an int picks that isotropic pyramid level,
    ``None`` keeps full resolution."""
    if level is None or (isinstance(level, (int, np.integer)) and not isinstance(level, bool) and level == 0):
        return volume
    if isinstance(level, str):
        if level != "auto":
            raise ValueError(f"level '{level}' is unknown: expected 'auto', None or a level number")
        return volume.for_pixel_size(pixel_mm_at_object)
    return volume.level(level)


def _per_image_levels(level, on_device: bool, n: int) -> bool:
    """Whether a batch of n images may need more than one level: level='auto' renders each image
    at the level its own pixel size at the object gives, as a call of its own would (images
    kept on the device share the batch's finest level)."""
    return isinstance(level, str) and level == "auto" and not on_device and n > 1


def _level_groups(base: Volume, pixel_mm) -> list[np.ndarray] | None:
    """The indices of the images that share the 'auto' level of their pixel sizes at the object
    (mm, [n]), in order of first appearance, or None when one level serves them all."""
    factors = base.factors_for_pixel_sizes(pixel_mm)  # [n, 3]
    _, first, which = np.unique(factors, axis=0, return_index=True, return_inverse=True)
    if len(first) == 1:
        return None
    which = which.reshape(-1)
    return [np.flatnonzero(which == g) for g in np.argsort(first)]


def render_parallel(volume: Union[Volume, PreparedVolume], poses, camera: ParallelCamera = ParallelCamera(),
                    scales=None, *, level="auto", device: str | None = None, num_threads: int = 0,
                    on_device: bool = False):
    """Parallel-beam DRRs [n, H, W] float32 by shear-warp.

    volume: a Volume or a :class:`PreparedVolume`; poses: [n, 6] or [6] camera_from_model
    (deg, mm); scales: [n], scalar or None (1); device: 'cpu', 'cuda', 'auto' or None (the
    prepared volume's device, else 'cpu'); on_device: keep the images on the GPU (DLPack
    array; needs device 'cuda'); level: 'auto' renders each image at the pyramid level that
    matches its pixel size at the object (a batch gives what single calls give; images kept on
    the device share the batch's finest level), an int picks that level, None full resolution.
    """
    base, prepared, dev = _split(volume, device)
    if not isinstance(camera, ParallelCamera):
        raise TypeError(f"camera must be a ParallelCamera, got {type(camera).__name__}")
    p = as_poses(poses)
    check_image_batch(len(p), camera.width, camera.height, names=("poses", "camera.width", "camera.height"))
    s = _scales(scales, len(p))
    groups = _level_groups(base, camera.pixel_mm / s) if _per_image_levels(level, on_device, len(p)) else None
    if groups is not None:
        out = np.empty((len(p), camera.height, camera.width), np.float32)
        for idx in groups:
            out[idx] = render_parallel(volume, p[idx], camera, s[idx], level=level, device=device,
                                       num_threads=num_threads)
        return out
    vol = render_volume_for(base, camera.pixel_mm / float(s.max(initial=1.0)), level)
    if prepared is None and not on_device:
        data, m = _grid(vol)
        return _core.render_parallel(data, m, camera.pixel_mm, camera.width, camera.height,
                                     poses_to_radians(p), s, dev, _threads(num_threads, dev))
    if prepared is None:
        prepared = PreparedVolume(base, dev)
    return _core.render_parallel_prepared(prepared.handle(vol), camera.pixel_mm, camera.width, camera.height,
                                          poses_to_radians(p), s, dev, _threads(num_threads, dev), bool(on_device))


CONE_METHODS = ("march", "shear_warp")


def render_cone(volume: Union[Volume, PreparedVolume], views: Views, poses, *, level="auto",
                step_voxels: float = 1.0, device: str | None = None, num_threads: int = 0,
                on_device: bool = False, cuda_texture: bool = True, stop_above: float | None = None,
                method: str = "march"):
    """Cone-beam DRRs [n, H, W] float32.

    views: one ConeView (used for every pose), one per pose (all the same image size), or
    those packed [n, 16] (:func:`~fluororeg.core.geometry.stack_views`);
    poses: [n, 6] or [6] world_from_model (deg, mm); volume, device, on_device: as
    :func:`render_parallel`; level: as :func:`render_parallel`, the pixel size at the object
    being the view's pitch scaled back to the model origin. cuda_texture: on CUDA, sample
    through the texture unit (fast,
    ~1e-3 relative difference to the CPU) or, False, with the CPU's exact trilinear code.
    stop_above: a ray stops once its line integral exceeds this, and its pixel holds that
    partial integral (enough for silhouettes, see :func:`project_mask_cone`); None: whole rays.
    method: 'march' (each ray marched at ``step_voxels``: the reference quality) or
    'shear_warp' (perspective shear-warp: whole images many times faster on the CPU, about 1 %
    more error against fine line integrals, as the parallel-beam renderer; images whose source
    or intensifier lies within the volume's slab of slices are ray-marched; ``step_voxels`` and
    ``cuda_texture`` are not used; pixels above ``stop_above`` hold their whole integral).
    """
    if method not in CONE_METHODS:
        raise ValueError(f"method {method!r} is unknown: expected one of {CONE_METHODS}")
    base, prepared, dev = _split(volume, device)
    p = as_poses(poses)
    packed = stack_views(views, len(p))
    if len(packed) and math.isfinite(packed[0, 14]) and math.isfinite(packed[0, 15]):
        check_image_batch(len(p), int(packed[0, 14]), int(packed[0, 15]), names=("poses", "view width", "view height"))
    pixels = _cone_pixels_at_object(packed, p) if len(p) else None  # [n] mm at the object
    if _per_image_levels(level, on_device, len(p)):
        groups = _level_groups(base, pixels)
        if groups is not None:
            out = np.empty((len(p), int(packed[0, 15]), int(packed[0, 14])), np.float32)
            for idx in groups:
                out[idx] = render_cone(volume, packed[idx], p[idx], level=level, step_voxels=step_voxels, device=device,
                                       num_threads=num_threads, cuda_texture=cuda_texture, stop_above=stop_above,
                                       method=method)
            return out
    vol = render_volume_for(base, float(pixels.min()), level) if len(p) else base  # the batch's finest
    stop = math.inf if stop_above is None else float(stop_above)
    if prepared is None and not on_device and cuda_texture:
        data, m = _grid(vol)
        return _core.render_cone(data, m, packed, poses_to_radians(p), float(step_voxels), dev,
                                 _threads(num_threads, dev), stop, method)
    if prepared is None:
        prepared = PreparedVolume(base, dev)
    return _core.render_cone_prepared(prepared.handle(vol), packed, poses_to_radians(p), float(step_voxels), dev,
                                      _threads(num_threads, dev), bool(on_device), bool(cuda_texture), stop,
                                      method)


def _points(points) -> np.ndarray:
    check_array_size(points, "points")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points has shape {pts.shape}, expected (m, 3) in mm")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points hold a non-finite coordinate: expected finite millimetres")
    return np.ascontiguousarray(pts)


def project_parallel(points, poses, camera: ParallelCamera = ParallelCamera(), scales=None,
                     *, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [n, m, 2] and in-image flags [n, m] (bool) of model points [m, 3] mm."""
    p = as_poses(poses)
    xy, fov = _core.project_parallel(camera.pixel_mm, camera.width, camera.height,
                                     poses_to_radians(p), _scales(scales, len(p)), _points(points),
                                     resolve_device(device))
    return xy, fov.astype(bool)


def project_cone(points, views: Views, poses, *, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [n, m, 2] (NaN behind the source) and in-image flags [n, m] (bool)."""
    p = as_poses(poses)
    xy, fov = _core.project_cone(stack_views(views, len(p)), poses_to_radians(p), _points(points),
                                 resolve_device(device))
    return xy, fov.astype(bool)


def _mask_as_attenuation(mask: Volume) -> Volume:
    if not isinstance(mask, Volume):
        raise TypeError(f"mask must be a fluororeg.Volume, got {type(mask).__name__}")
    data = np.asarray(mask.data)
    if data.dtype == np.float32 and np.all((data == 0) | (data == 1)):
        return mask
    if data.dtype not in (np.uint8, np.bool_) and not np.all((data == 0) | (data == 1)):
        raise ValueError(f"mask data of dtype {data.dtype} holds values other than 0 and 1")
    return Volume(data.astype(np.float32), mask.spacing, mask.origin, mask.direction)


def _silhouette_threshold(mask: Volume, threshold_mm) -> float:
    """Path length (mm) through the mask above which a pixel is in the silhouette."""
    return 0.5 * float(np.min(mask.spacing)) if threshold_mm is None else float(threshold_mm)


def _silhouette(path_mm: np.ndarray, mask: Volume, threshold_mm) -> np.ndarray:
    return path_mm > _silhouette_threshold(mask, threshold_mm)


def prepare_mask(mask: Volume, device: str = "cpu") -> PreparedVolume:
    """A binary mask volume (0/1, any numeric dtype) prepared for repeated
    :func:`project_mask_parallel` / :func:`project_mask_cone` calls."""
    return PreparedVolume(_mask_as_attenuation(mask), device)


def _mask_and_device(mask, device):
    if isinstance(mask, PreparedVolume):
        return mask, mask.volume, device
    m = _mask_as_attenuation(mask)
    return m, m, "cpu" if device is None else device


def project_mask_parallel(mask, poses, camera: ParallelCamera = ParallelCamera(), scales=None,
                          *, threshold_mm=None, device: str | None = None, num_threads: int = 0) -> np.ndarray:
    """Silhouette [n, H, W] bool of a binary mask volume (or :func:`prepare_mask`): pixels
    whose ray runs through more than ``threshold_mm`` (default: half the finest voxel spacing)
    of the mask."""
    source, m, dev = _mask_and_device(mask, device)
    path = render_parallel(source, poses, camera, scales, level=None, device=dev, num_threads=num_threads)
    return _silhouette(path, m, threshold_mm)


def project_mask_cone(mask, views: Views, poses, *, threshold_mm=None,
                      device: str | None = None, num_threads: int = 0, method: str = "march") -> np.ndarray:
    """Silhouette [n, H, W] bool of a binary mask volume (or :func:`prepare_mask`) seen by cone
    views; method: as :func:`render_cone`."""
    source, m, dev = _mask_and_device(mask, device)
    # Rays stop once inside (path above the threshold): the same silhouette, less marching.
    path = render_cone(source, views, poses, level=None, device=dev, num_threads=num_threads,
                       stop_above=_silhouette_threshold(m, threshold_mm), method=method)
    return _silhouette(path, m, threshold_mm)


def window_to_uint8(drr, *, percentile: float = 99.5, keep=None, num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8-bit pictures [n, H, W] uint8 of line integrals ``drr`` [n, H, W] and their windows'
    upper ends [n] float32, computed by the core on ``num_threads`` CPU threads (0: all): each
    image's window is (0, p), p the ``percentile`` of its positive values (1 when it has none;
    linear interpolation between order statistics, as ``np.percentile``), and a value v becomes
    round(255 * clip(v / p, 0, 1)). ``keep`` [n, H, W] bool: pixels where it is False count as
    0 (the dataset's bone-only images). :func:`to_uint8` without a window uses it."""
    check_allocation(np.size(drr) * 5, "drr as float32 and its 8-bit pictures", "window fewer images per call")
    arr = np.ascontiguousarray(drr, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"drr has shape {arr.shape}, expected (n, H, W)")
    k = None
    if keep is not None:
        k = np.ascontiguousarray(keep, dtype=np.uint8)
        if k.shape != arr.shape:
            raise ValueError(f"keep has shape {k.shape}, expected the images' shape {arr.shape}")
    return _core.window_to_uint8(arr, k, float(percentile), process_threads(num_threads))


def to_uint8(drr, window=None, *, percentile: float = 99.5, invert: bool = False,
             gamma: float = 1.0) -> np.ndarray:
    """Map line integrals to 8-bit images (the documented step from DRR to picture).

    Each value is clipped to ``window = (lo, hi)`` (line-integral units, shared by all images)
    and scaled linearly to 0..255. Without a window, each image gets its own
    ``(0, p)`` window with ``p`` its ``percentile`` of the non-zero pixels, so the background
    (no attenuation) stays black and a few very dense rays do not wash out the bone.
    ``gamma`` != 1 applies ``v ** gamma`` to the scaled [0, 1] values. By default more
    attenuation is brighter (film-radiograph look); ``invert=True`` makes it darker
    (image-intensifier look). Accepts [H, W] or [n, H, W]; returns uint8 of the same shape.
    """
    check_allocation(np.size(drr) * 5, "drr as float32 and its 8-bit pictures", "convert fewer images per call")
    arr = np.asarray(drr, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"drr has shape {arr.shape}, expected (H, W) or (n, H, W)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("drr holds non-finite values: expected finite line integrals")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma {gamma!r} must be finite and positive")
    if not (0 < percentile <= 100):
        raise ValueError(f"percentile {percentile!r} must lie in (0, 100]")
    if window is not None:
        lo, hi = (float(w) for w in window)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"window {window!r} must be two finite values with lo < hi")
    imgs = arr[None] if arr.ndim == 2 else arr
    if window is None:
        out, auto_hi = window_to_uint8(imgs, percentile=percentile)
        if gamma == 1.0 and not invert:
            return out[0] if arr.ndim == 2 else out
    out = np.empty(imgs.shape, dtype=np.uint8)
    for i, img in enumerate(imgs):
        if window is None:
            lo, hi = 0.0, float(auto_hi[i])
        v = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
        if gamma != 1.0:
            v = v ** gamma
        if invert:
            v = 1.0 - v
        out[i] = np.round(v * 255.0).astype(np.uint8)
    return out[0] if arr.ndim == 2 else out
