"""Intensity refinement: from the landmark pose to sub-degree, sub-millimetre registration.

Landmark registration (:mod:`fluororeg.core.registration`) is robust but only as precise as the
detector. :func:`refine_poses` starts from its poses and maximises the similarity between
cone-beam DRRs of the subject's CT (an attenuation :class:`~fluororeg.core.volume.Volume`) at the
pose and both undistorted X-ray images, over 6 DOF (thin layer over the C++ core,
``cpp/include/fluororeg/refine.h``):

* similarity per view: gradient correlation (default) or normalised cross-correlation over
  the projected bone region (a bone mask volume, or the attenuation volume thresholded at
  ``bone_threshold``), dilated by a margin, inside the usable image pixels (``image_masks``:
  the intensifier's field of view);
* both views in one objective, weighted (``weight_view1`` / ``weight_view2``; a weight of 0
  uses the other view alone); Levenberg-Marquardt with a Jacobian from one render of the
  region's pixels only with the renderer's pose gradients (``analytic_jacobian``; or finite
  differences of batched renders, optionally with Broyden updates); coarse to fine over
  an image and volume pyramid, the finest level chosen by :func:`auto_finest_level`;
* a quality gate: a frame whose pose moved far, or whose final similarity is low, is flagged
  (``status``); only ``'converged'`` frames passed. A far-off start ends with a low
  similarity, so the similarity doubles as a check of the landmark registration.

Images are line-integral-like (bone bright, e.g. DRRs or ``-ln(I / I_open)`` of an
intensifier frame): :func:`fluororeg.pipeline.refine_stage.recording_images` makes them from a recording (undistorted with
the geometry's distortion models), and ``image_kind='intensity'`` converts raw grey levels.
Poses are world_from_model in degrees / mm.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from fluororeg import _core
from fluororeg.core.geometry import (ConeView, as_poses, check_array_size, depth_reversed_poses, poses_to_radians,
                                     rotation_matrix, stack_views)
from fluororeg.core.memory import check_allocation
from fluororeg.core.volume import Volume

__all__ = ["RefineOptions", "RefineSimilarity", "RefineStatus", "STATUS_NAMES", "AMBIGUOUS_DEPTH", "DEPTH_MARGIN",
           "DEPTH_FIRST_LOOK", "RefineResult", "refine_options", "default_refine_options", "refine_poses", "refine_similarity",
           "intensity_to_line_integrals", "auto_finest_level", "check_pixel_mm", "check_min_similarity",
           "min_similarity_or_default", "bone_centre"]

RefineOptions = _core.RefineOptions
RefineSimilarity = _core.RefineSimilarity
RefineStatus = _core.RefineStatus
# A frame's refinement status: the core's RefineStatus values in order, then the one
# refine_poses itself sets (its depth check: the frame's pose and its depth-reversed twin
# explain the images about equally well).
STATUS_NAMES = ("converged", "moved_far", "low_similarity", "no_overlap", "invalid_start", "ambiguous_depth")
AMBIGUOUS_DEPTH = STATUS_NAMES.index("ambiguous_depth")
# The depth check's margin: the twin's refined similarity (total) must stay below this fraction
# of the frame's for its pose to stand, and the frame's below it of the twin's for the twin to
# replace it; in between the frame is 'ambiguous_depth'. Measured (refined from 3-10 deg off the
# truth, then from the twin of that result): the example head in 48 independent-renderer frames
# (plastimatch, 512 px) 0.79-0.95 at the truth, 0.33-0.72 from the twin (15 frames at 0.6 or
# more); the headsq head in 16 simulated frames of 160 and 512 px 0.91-0.99 and 0.23-0.60; the
# real wrist frames' radius 0.60-0.62 and 0.30-0.36. The twin reached at most 0.78 of the
# truth's. The margin is the relative gate's 0.97.
DEPTH_MARGIN = 0.97
# The depth check's first look, one pyramid level coarser than the finest (a seventh of a full
# refinement's time): a twin whose similarity there stays below this fraction of the frame's
# reading (at that level) is not refined further, and the reading stands. The coarser level
# brought the two closer in every frame measured (the 48 independent-renderer frames above:
# the twin at most 0.85 of the reading there, against 0.78 at the finest; the radius in
# Autoscoper's two real wrist frames: 0.65-0.67 against 0.54-0.55), so a twin that would win or
# tie at the finest passes the first look.
DEPTH_FIRST_LOOK = 0.9

DEFAULT_BONE_THRESHOLD = 0.024  # attenuation (1/mm): ~200 HU at mu_water 0.02
MIN_LEVEL_PX = 16  # the core's smallest image side at a pyramid level
# The finest level's largest pixel at the subject (mm) when none is given: a head's crop pixel
# size (DatasetConfig's 2 mm); refine_recording_poses passes the bone's.
DEFAULT_PIXEL_MM = 2.0


def check_pixel_mm(value) -> float:
    """``value`` as a pixel size at the subject (mm, > 0), else a ValueError naming it."""
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.number)) and np.isfinite(value) and value > 0):
        raise ValueError(f"pixel_mm = {value!r}: expected a positive pixel size in mm")
    return float(value)


def check_min_similarity(value) -> float:
    """``value`` as the refinement's floor (a similarity strictly between 0 and 1), else a
    ValueError naming it."""
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.number)) and 0 < value < 1):
        raise ValueError(f"min_similarity = {value!r}: expected a similarity between 0 and 1")
    return float(value)


def min_similarity_or_default(value) -> float:
    """The refinement gate's floor: ``value`` (checked), or RefineOptions' default (0.6) when None."""
    return RefineOptions().min_similarity if value is None else check_min_similarity(value)


def refine_options(**fields) -> RefineOptions:
    """A checked :class:`RefineOptions` from keyword fields; ``similarity`` may be given as
    ``'gradient_correlation'`` or ``'ncc'``. Unknown names and bad values raise ValueError.
    ``num_threads`` defaults to the process's count (:mod:`fluororeg.core.threads`)."""
    from fluororeg.core.threads import num_threads

    o = RefineOptions()
    o.num_threads = num_threads()
    for name, value in fields.items():
        if name.startswith("_") or not hasattr(o, name) or name == "check":
            raise ValueError(f"refine option '{name}' is unknown: expected one of "
                             f"{sorted(n for n in dir(o) if not n.startswith('_') and n != 'check')}")
        if name == "similarity" and isinstance(value, str):
            if value not in ("gradient_correlation", "ncc"):
                raise ValueError(f"similarity '{value}' is unknown: expected 'gradient_correlation' or 'ncc'")
            value = getattr(RefineSimilarity, value)
        try:
            setattr(o, name, value)
        except TypeError as exc:
            raise TypeError(f"refine option {name} = {value!r} has the wrong type: {exc}") from None
    o.check()
    return o


@dataclass
class RefineResult:
    """Per-frame arrays of one refinement (F frames)."""

    poses: np.ndarray                  # [F, 6] refined world_from_model, deg / mm
    start_poses: np.ndarray            # [F, 6] where each frame started (NaN: none)
    similarity: np.ndarray             # [F, 2] per view at the final pose (NaN: view unused)
    similarity_total: np.ndarray       # [F] weighted mean over the used views
    rotation_change_deg: np.ndarray    # [F] angle between start and refined rotation
    translation_change_mm: np.ndarray  # [F] |tau_refined - tau_start|
    iterations: np.ndarray             # [F]
    seconds: np.ndarray                # [F] wall-clock per frame (threads run frames in parallel)
    # [F] the frame's render work over all its tries (tracking retries included), the same on
    # every device: render calls (on CUDA, the gathered rounds it waited for) and rays
    # (pixels x poses).
    render_calls: np.ndarray
    rendered_rays: np.ndarray
    # [F] CPU seconds of the frame's own host work over all its tries (pyramids, regions,
    # features, Jacobians, steps on its thread), its renders excluded: what a GPU leaves to the
    # host's cores (on CUDA the frames' threads wait for the gathered renders meanwhile).
    host_seconds: np.ndarray
    converged: np.ndarray              # [F] bool: passed the quality gate
    status: np.ndarray                 # [F] str, one of STATUS_NAMES
    tracked: np.ndarray                # [F] bool: started from a neighbour frame's refined pose
    # [F] the depth check (refine_poses' check_depth): the similarity_total of the frame's other
    # reading, the depth-reversed twin of where it ended, refined (NaN: not checked, that
    # reading failed the gate or fell clearly short at the check's first look, or the frame was
    # tracked since); twin_chosen: the twin won, and
    # the kept pose is its refinement (twin_similarity is then where the frame's own start led).
    twin_similarity: np.ndarray
    twin_chosen: np.ndarray

    def __len__(self) -> int:
        return len(self.poses)


def _views(views) -> np.ndarray:
    views = list(views)
    if len(views) != 2:
        raise ValueError(f"got {len(views)} views: expected two ConeViews (view 1, view 2)")
    return stack_views(views)


def _pixel_at_object(views: Sequence[ConeView], poses_deg: np.ndarray, level: int) -> float:
    ok = np.isfinite(poses_deg).all(axis=1)
    centre = np.median(poses_deg[ok, 3:], axis=0) if ok.any() else np.zeros(3)
    px = []
    for v in views:
        sdd = v.source_intensifier_distance
        sod = max(abs(float(v.normal @ (centre - v.source))), 1.0)
        px.append(min(v.pitch_u, v.pitch_v) * (2 ** level) * sod / sdd)
    return float(min(px))


def default_refine_options(views, poses, pixel_mm: float = DEFAULT_PIXEL_MM, **fields) -> RefineOptions:
    """The options :func:`refine_poses` takes when given none: the finest level from
    :func:`auto_finest_level` (``views``, ``poses`` [F, 6] deg / mm, ``pixel_mm``), the default
    pyramid shortened where the images are too small for its coarsest level; ``fields`` as in
    :func:`refine_options` (e.g. ``min_similarity``)."""
    finest = auto_finest_level(views, poses, pixel_mm)
    options = refine_options(finest_level=finest, **fields)
    if "num_levels" not in fields:
        views = tuple(views)
        while options.num_levels > 1 and min(views[0].width, views[0].height) >> (
                finest + options.num_levels - 1) < MIN_LEVEL_PX:
            options.num_levels -= 1
    return options


def auto_finest_level(views, poses, pixel_mm: float = DEFAULT_PIXEL_MM, min_size: int = 64) -> int:
    """The coarsest pyramid level whose pixels at the subject (at the median pose's depth) are
    at most ``pixel_mm`` and whose images keep at least ``min_size`` px per side: the finest
    level :func:`refine_poses` uses by default (finer levels cost 4x per level and gained
    little in bench_refine on simulated 512 px frames)."""
    pixel_mm = check_pixel_mm(pixel_mm)
    views = tuple(views)
    p = np.atleast_2d(np.asarray(poses, np.float64))
    level = 0
    while (_pixel_at_object(views, p, level + 1) <= pixel_mm
           and min(views[0].width, views[0].height) >> (level + 1) >= min_size):
        level += 1
    return level


def _volumes(mu: Volume, bone, bone_threshold, pixel_mm: float):
    """The attenuation volume at the finest level's pixel size and the region-of-interest
    volume (float32, > 0 = bone) or None (the attenuation volume itself)."""
    if not isinstance(mu, Volume):
        raise TypeError(f"mu must be a fluororeg.Volume of attenuation, got {type(mu).__name__}")
    if mu.data.dtype != np.float32:
        raise TypeError(f"mu has dtype {mu.data.dtype}: expected float32 attenuation per mm "
                        "(Volume.hu_to_attenuation or Subject.attenuation_model)")
    vol = mu.for_pixel_size(pixel_mm)
    if bone is not None:
        if not isinstance(bone, Volume):
            raise TypeError(f"bone must be a fluororeg.Volume mask, got {type(bone).__name__}")
        b = bone.for_pixel_size(pixel_mm)
        return vol, Volume(np.asarray(b.data > 0, dtype=np.float32), b.spacing, b.origin, b.direction)
    if bone_threshold is None:
        return vol, None
    t = float(bone_threshold)
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"bone_threshold = {bone_threshold!r}: expected a finite attenuation >= 0 (1/mm) or None")
    mask = (vol.data >= t).astype(np.float32)
    if not mask.any():
        raise ValueError(f"no voxel of mu reaches bone_threshold = {t} /mm (max {float(vol.data.max()):.4g}): "
                         "lower it, or pass bone=None and bone_threshold=None to use the whole volume")
    return vol, Volume(mask, vol.spacing, vol.origin, vol.direction)


def bone_centre(mu: Volume, bone: Optional[Volume] = None,
                bone_threshold: Optional[float] = DEFAULT_BONE_THRESHOLD) -> np.ndarray:
    """The centroid [3] mm (model frame) of the refinement's region of interest (``bone`` and
    ``bone_threshold`` as :func:`refine_poses` takes them; without either, the attenuation's
    footprint), at 4 mm voxels: the point the depth check turns the bone about
    (:func:`fluororeg.core.geometry.depth_reversed_poses`'s ``centre_model``)."""
    vol, region = _volumes(mu, bone, bone_threshold, 4.0)
    inside = (region if region is not None else vol).data > 0
    k, j, i = np.nonzero(inside)
    return vol.voxel_to_physical(np.stack([i, j, k], axis=1).astype(np.float64)).mean(axis=0)


def _grid(v: Volume):
    return (np.ascontiguousarray(v.data, dtype=np.float32),
            np.ascontiguousarray(v.physical_from_voxel[:3, :4], dtype=np.float64))


def _refine_volumes(mu: Volume, bone, bone_threshold, pixel_mm: float, num_levels: int) -> "_core.RefineVolumes":
    """The core's prepared volumes (:func:`_volumes`' pair, ``num_levels`` pyramid levels),
    made once and remembered on the attenuation volume at that pixel size (Volumes never
    change), so that a recording's chunks and tracking retries share them, and on CUDA their
    device copies."""
    bone_key = ("bone", id(bone)) if bone is not None else ("threshold", bone_threshold)
    vol = mu.for_pixel_size(pixel_mm) if isinstance(mu, Volume) and mu.data.dtype == np.float32 else None
    cache = getattr(vol, "_pyramid", None)
    key = ("refine_volumes", bone_key, int(num_levels))
    if cache is not None and key in cache:
        bone_ref, prepared = cache[key]
        if bone is None or bone_ref() is bone:  # not a new Volume at a freed one's address
            return prepared
    vol, bone_vol = _volumes(mu, bone, bone_threshold, pixel_mm)
    data, m = _grid(vol)
    bdata, bm = _grid(bone_vol) if bone_vol is not None else (None, None)
    prepared = _core.RefineVolumes(data, m, bdata, bm, int(num_levels))
    vol._pyramid[key] = (weakref.ref(bone) if bone is not None else None, prepared)  # type: ignore[attr-defined]
    return prepared


def _images(images, views, image_kind: str) -> np.ndarray:
    arr = np.asarray(images)
    W, H = views[0].width, views[0].height
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (2, H, W):
        raise ValueError(f"images have shape {np.shape(images)}, expected (F, 2, {H}, {W}) for the views' size")
    if len(arr) > _core.MAX_BATCH:  # before any copy (a zero-stride view costs nothing until copied)
        raise ValueError(f"images hold {len(arr):,} frame pairs: expected at most {_core.MAX_BATCH:,} per call")
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:  # the copy below must fit
        check_allocation(arr.size * 4, f"images {tuple(arr.shape)} as float32", "refine fewer frames per call")
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"images have dtype {arr.dtype}: expected numbers")
    arr = np.ascontiguousarray(arr, dtype=np.float32)  # a copy only where needed (frames are large)
    # A finite sum means finite values (one pass, no temporary); else check value by value (a sum
    # of huge finite values can overflow).
    if not np.isfinite(arr.sum(dtype=np.float64)) and not np.all(np.isfinite(arr)):
        raise ValueError("images hold non-finite values")
    if image_kind == "intensity":
        arr = intensity_to_line_integrals(arr)
    elif image_kind != "line_integrals":
        raise ValueError(f"image_kind '{image_kind}' is unknown: expected 'line_integrals' or 'intensity'")
    return arr


def intensity_to_line_integrals(images, mask=None, *, source_map=None, num_threads: int = 0) -> np.ndarray:
    """Beer-Lambert inversion of intensifier grey levels [..., H, W] into line integrals of the
    same shape, float32 (the core's ``FramesToLineIntegrals``, on ``num_threads`` CPU threads, 0:
    all): each image is first resampled at ``source_map`` (the (x, y) maps [H, W] of where every
    output pixel lies in the frame, e.g. :meth:`DistortionModel.source_map
    <fluororeg.calibration.distortion.DistortionModel.source_map>` to undistort; bilinear, edge
    values beyond the frame), then becomes ``max(0, -ln(max(I, 1e-4 I_open) / I_open))`` with
    ``I_open`` its 99th percentile within ``mask`` [H, W] (all pixels when None or empty).
    Values are taken as float32 (exact for 8- and 16-bit frames)."""
    from fluororeg.core.threads import num_threads as process_threads

    arr = np.asarray(images)
    if arr.ndim < 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"images have shape {arr.shape} and dtype {arr.dtype}: expected grey levels [..., H, W]")
    H, W = arr.shape[-2:]
    copied = arr.dtype != np.float32 or not arr.flags.c_contiguous
    check_allocation(arr.size * 4 * (2 if copied else 1), f"images {tuple(arr.shape)} and their line integrals "
                     "as float32", "convert fewer frames per call")
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1, H, W)
    m = None
    if mask is not None:
        m = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
        if m.shape != (H, W):
            raise ValueError(f"mask has shape {m.shape}, expected the images' ({H}, {W})")
    src = None
    if source_map is not None:
        src = np.ascontiguousarray(np.stack([np.asarray(source_map[0]), np.asarray(source_map[1])]), dtype=np.float64)
        if src.shape != (2, H, W):
            raise ValueError(f"source_map holds maps of shape {src.shape[1:]}, expected the images' ({H}, {W})")
    out = _core.frames_to_line_integrals(flat, src, m, process_threads(num_threads))
    return out.reshape(arr.shape)


def _masks(image_masks, views) -> Optional[np.ndarray]:
    if image_masks is None:
        return None
    m = np.asarray(image_masks)
    W, H = views[0].width, views[0].height
    if m.shape != (2, H, W):
        raise ValueError(f"image_masks have shape {m.shape}, expected (2, {H}, {W}): one usable-pixel mask per view")
    return np.ascontiguousarray(m != 0, dtype=np.uint8)


def _check_threads(options: RefineOptions) -> None:
    """The core's bound on num_threads (RefineOptions.check accepts any count >= 0)."""
    if not 0 <= options.num_threads <= _core.MAX_THREADS:
        raise ValueError(f"options.num_threads = {options.num_threads}: expected 0 (all cores) to "
                         f"{_core.MAX_THREADS}")


def refine_poses(mu: Volume, views, images, init_poses, *, options: Optional[RefineOptions] = None,
                 bone: Optional[Volume] = None, bone_threshold: Optional[float] = DEFAULT_BONE_THRESHOLD,
                 image_masks=None, image_kind: str = "line_integrals", track: bool = False,
                 relative_similarity: Optional[float] = 0.97, view_weights=None, check_depth=None,
                 device: Optional[str] = None, pixel_mm: float = DEFAULT_PIXEL_MM) -> RefineResult:
    """Refine ``init_poses`` [F, 6] (deg, mm; NaN rows: no start) against ``images``.

    mu: attenuation Volume in the model frame; views: the two ConeViews; images: [F, 2, H, W]
    undistorted (``image_kind`` 'line_integrals': bone bright; 'intensity': raw grey levels,
    Beer-Lambert inverted here; a recording's frames: :mod:`fluororeg.pipeline.refine_stage`);
    bone: optional
    bone mask Volume for the region of interest (else ``mu >= bone_threshold``; None for
    both: the whole volume's footprint); image_masks: [2, H, W] usable pixels or None.
    options: :func:`refine_options`; default (:func:`default_refine_options`): the C++ defaults
    with the finest level from :func:`auto_finest_level` for ``pixel_mm``, the finest level's
    largest pixel at the subject, sized to the bone so that it spans as many pixels at every
    level (the pipeline's :func:`~fluororeg.pipeline.register.refine_pixel_mm`: 2 mm for a head,
    about 1 mm for a radius). ``relative_similarity``: besides the absolute gate
    (``options.min_similarity``), a frame ending below this fraction of the median similarity
    of the batch's converged frames (when there are at least 3) is flagged ``'low_similarity'``:
    the similarity a correct pose reaches depends on the images (noise, style), so a frame stuck
    in a wrong optimum stands out against its neighbours rather than against a fixed number.
    Measured on 144 independent-renderer frames of two CTs (refined from landmark poses): frames
    within 1 deg / 1 mm of the truth ended at >= 0.985 of their recording's median, the frames
    stuck 1.5-3 deg off at 0.93-0.96, hence 0.97 (0.9 let those through as registered).
    With ``options.analytic_jacobian`` (the default), a frame that passed the absolute gate but
    not this one is refined again from its start with central differences, whose 1.5 px steps
    bridge hollows of the similarity where the analytic Jacobian can stop; the result that
    passes is kept (``render_calls`` and ``rendered_rays`` count both tries).
    ``track``: a frame without a start (NaN), or whose refinement failed the gate, starts
    again from a neighbour's refined pose that passed it (the previous frame's, then the
    next frame's; ``tracked`` in the result); a frame with a start keeps its first result
    unless the retry passes.
    ``check_depth``: [F] bool, the frames whose result is checked against its depth-reversed
    twin (:func:`~fluororeg.core.geometry.depth_reversed_poses`, about the bone's centre), or
    None (none): frames whose start nothing else vouches for (the pipeline's: landmark poses the
    landmark gate held back). A checked frame that passed is refined again from the twin of its
    refined pose, first one pyramid level short of the finest (:data:`DEPTH_FIRST_LOOK`: a twin
    clearly worse there is not refined further), then fully; the better reading is kept when
    the other's similarity is below
    :data:`DEPTH_MARGIN` of it (``twin_chosen`` when that is the twin's), and the frame is
    ``'ambiguous_depth'`` (not passed) when neither is. This runs before tracking, so an
    ambiguous frame may still be tracked from a neighbour, and a chosen twin is what neighbours
    track from. Two views only: with one weighted 0 the frame is not checked.
    ``view_weights``: [F, 2] per-frame factors (>= 0) on the options' view weights, 0 leaving
    that view out of the frame's objective (a view the landmark gate found failed: the frame is
    refined against the other alone), or None (both views). Its similarity is still reported.
    ``device``: where the renders run, 'cpu', 'cuda' or 'auto' (CUDA when usable); None: the
    options' (default 'cpu'). Both run the same per-ray code and agree to rounding.
    """
    views = tuple(views)
    packed = _views(views)
    if options is not None and not isinstance(options, RefineOptions):
        raise TypeError(f"options must be a fluororeg.core.refine.RefineOptions, got {type(options).__name__}")
    for value, name in ((init_poses, "init_poses"), (view_weights, "view_weights")):
        check_array_size(value, name)  # before any copy (the images' frame count: _images)
    imgs = _images(images, views, image_kind)
    masks = _masks(image_masks, views)
    init = np.asarray(init_poses, dtype=np.float64)
    if init.ndim == 1:
        init = init[None]
    if init.shape != (len(imgs), 6):
        raise ValueError(f"init_poses have shape {np.shape(init_poses)}, expected ({len(imgs)}, 6) (deg, mm): "
                         "one start per frame")
    if np.isinf(init).any():
        raise ValueError("init_poses hold an infinite value: expected finite poses or NaN rows (no start)")
    weights = None if view_weights is None else np.ascontiguousarray(view_weights, dtype=np.float64)
    if weights is not None and weights.shape != (len(imgs), 2):
        raise ValueError(f"view_weights have shape {np.shape(view_weights)}, expected ({len(imgs)}, 2): "
                         "one weight per frame and view")
    if options is None:
        options = default_refine_options(views, init, pixel_mm)
    if device is not None:
        from fluororeg.core.render import resolve_device

        options = copy.copy(options)  # the caller's options stay as they are
        options.device = resolve_device(device)
    options.check()
    _check_threads(options)
    volumes = _refine_volumes(mu, bone, bone_threshold, _pixel_at_object(views, init, options.finest_level),
                              options.num_levels)

    def run(frames: Optional[np.ndarray], starts_deg: np.ndarray, opts: RefineOptions = options,
            prepared=volumes) -> dict:
        """The core's refinement of the frames listed (None: all, without copying the images)."""
        starts = np.where(np.isfinite(starts_deg), starts_deg, np.nan)
        rad = np.ascontiguousarray(np.concatenate([np.deg2rad(starts[:, :3]), starts[:, 3:]], axis=1))
        frame_imgs, frame_weights = imgs, weights
        if frames is not None:
            frame_imgs = np.ascontiguousarray(imgs[frames])
            frame_weights = None if weights is None else np.ascontiguousarray(weights[frames])
        out = _core.refine_frames(prepared, packed, frame_imgs, masks, rad, opts, frame_weights)
        out["poses"] = np.concatenate([np.rad2deg(out["poses"][:, :3]), out["poses"][:, 3:]], axis=1)
        return out

    if relative_similarity is not None and not (0 < float(relative_similarity) <= 1):
        raise ValueError(f"relative_similarity = {relative_similarity!r}: expected a fraction in (0, 1] or None")

    def relative_gate(r: dict) -> None:
        ok = r["status"] == 0
        if relative_similarity is None or ok.sum() < 3:
            return
        low = ok & (r["similarity_total"] < float(relative_similarity) * float(np.median(r["similarity_total"][ok])))
        r["status"][low] = int(RefineStatus.low_similarity.value)
        r["converged"][low] = False

    F = len(imgs)
    check = np.zeros(F, bool) if check_depth is None else np.asarray(check_depth, dtype=bool)
    if check.shape != (F,):
        raise ValueError(f"check_depth has shape {np.shape(check_depth)}, expected ({F},): one flag per frame")
    if weights is not None:
        check = check & (weights > 0).all(axis=1)
    r = run(None, init)
    relative_gate(r)
    tracked = np.zeros(F, bool)
    starts = init.copy()
    work = {key: r[key].astype(np.float64 if key == "host_seconds" else np.int64)  # summed over tries
            for key in ("render_calls", "rendered_rays", "host_seconds")}

    def charge(frames: np.ndarray, out: dict) -> None:
        """A further try's render work, added to its frames' (positions, each once)."""
        for key in work:
            work[key][frames] += out[key]

    def first_look(frames: np.ndarray, twins: np.ndarray) -> np.ndarray:
        """[len(frames)] bool: the twins refined one level coarser than the finest reach
        DEPTH_FIRST_LOOK of the frames' readings there (both similarities at that level). Their
        refined poses replace ``twins``' rows: where the full refinement starts."""
        coarse = copy.copy(options)
        coarse.finest_level, coarse.num_levels = options.finest_level + 1, options.num_levels - 1
        prepared = _refine_volumes(mu, bone, bone_threshold, _pixel_at_object(views, init, coarse.finest_level),
                                   coarse.num_levels)
        out = run(frames, twins, coarse, prepared)
        own, _ = _core.evaluate_refine_similarity(prepared, packed, np.ascontiguousarray(imgs[frames]), masks,
                                                  poses_to_radians(r["poses"][frames]), coarse.finest_level, coarse)
        w = np.array([options.weight_view1, options.weight_view2]) * (1.0 if weights is None else weights[frames])
        own_total = np.nansum(w * own, axis=1) / np.sum(np.where(np.isfinite(own), w, 0.0), axis=1)
        charge(frames, out)
        r["seconds"][frames] += out["seconds"]
        twins[:] = np.where(np.isfinite(out["poses"]), out["poses"], twins)
        return (out["status"] == 0) & (out["similarity_total"] >= DEPTH_FIRST_LOOK * own_total)

    if options.analytic_jacobian:
        # A near miss (above the absolute floor, below the recording's typical similarity) is
        # refined again from its start with the Jacobian of central differences, whose 1.5 px
        # steps bridge the small hollows of the similarity where the analytic Jacobian's exact
        # derivative can stop (measured on 96 independent-renderer frames from landmark poses:
        # 2 frames; see RefineOptions::analytic_jacobian). It keeps the result that passes.
        near = np.flatnonzero((r["status"] == int(RefineStatus.low_similarity.value))
                              & (r["similarity_total"] >= options.min_similarity) & np.isfinite(init).all(axis=1))
        if len(near):
            differences = copy.copy(options)
            differences.analytic_jacobian = False
            out = run(near, init[near], differences)
            charge(near, out)
            for k, i in enumerate(near):
                if int(out["status"][k]) == 0:
                    for key in r:
                        r[key][i] = out[key][k]
            relative_gate(r)
    twin_similarity, twin_chosen = np.full(F, np.nan), np.zeros(F, bool)
    checked = np.flatnonzero(check & (r["status"] == 0))
    if len(checked):
        twins = depth_reversed_poses(r["poses"][checked], views, bone_centre(mu, bone, bone_threshold))
        if options.num_levels > 1:  # the first look: a twin that falls clearly short goes no further
            looked = first_look(checked, twins)
            checked, twins = checked[looked], twins[looked]
        out = run(checked, twins)
        charge(checked, out)
        r["seconds"][checked] += out["seconds"]  # the frame's time: both readings
        for k, i in enumerate(checked):
            if int(out["status"][k]) != 0:
                continue  # the twin fails the gate: the frame's reading stands
            own, twin = float(r["similarity_total"][i]), float(out["similarity_total"][k])
            if own < DEPTH_MARGIN * twin:  # the twin explains the images better: it replaces the reading
                for key in r.keys() - {"seconds"}:
                    r[key][i] = out[key][k]
                twin_similarity[i], twin_chosen[i] = own, True
                # the changes from the frame's own start, as for every other frame
                r["rotation_change_deg"][i] = _rotation_angle_deg(init[i, :3], r["poses"][i, :3])
                r["translation_change_mm"][i] = float(np.linalg.norm(r["poses"][i, 3:] - init[i, 3:]))
            else:
                twin_similarity[i] = twin
                if twin >= DEPTH_MARGIN * own:  # both readings about as good: the images do not decide
                    r["status"][i], r["converged"][i] = AMBIGUOUS_DEPTH, False
        relative_gate(r)  # against the batch's similarity after the check, before tracking retries
    if track:
        # A frame without a start, or whose refinement failed the gate, starts again from a
        # neighbour's refined pose that passed it: first the previous frame's (forward, so a
        # run of failed frames is followed), then the next frame's (backward). A frame that
        # had a start keeps its first result unless the retry passes.
        # The retries go in waves: every failed frame next to a passed one, then the frames
        # after those that now passed, and so on; the frame-after-frame order's results, since
        # frames are refined independently. On CUDA a wave is one core call (its frames' renders
        # gathered into shared rounds: 256 frames at once took 5.9 ms each on an H100, 6 frames
        # 21 ms); on the CPU each retry is a call of its own, which spreads its renders over all
        # threads (waves of 3 frames were slower on 2 cores: 45-49 s against 36-43 s).
        gathered = _retries_together(options)
        for step in (-1, 1):  # the neighbour a retry starts from: previous, then next
            wave = [i for i in range(F) if 0 <= i + step < F
                    and int(r["status"][i]) != 0 and int(r["status"][i + step]) == 0]
            while wave:
                frames = np.array(wave)
                begin = r["poses"][frames + step].copy()  # [len(wave), 6] the neighbours' poses
                following = []
                every = np.arange(len(frames))
                for part in ([every] if gathered else np.split(every, len(frames))):  # positions in the wave
                    out = run(frames[part], begin[part])
                    charge(frames[part], out)
                    for k, i in enumerate(frames[part]):
                        if int(out["status"][k]) != 0 and np.isfinite(init[i]).all():
                            continue
                        for key in r:
                            r[key][i] = out[key][k]
                        tracked[i] = True
                        starts[i] = begin[part[k]]
                        after = i - step  # the next frame in this pass's direction
                        if int(out["status"][k]) == 0 and 0 <= after < F and int(r["status"][after]) != 0:
                            following.append(after)
                wave = following
    relative_gate(r)
    return RefineResult(
        poses=r["poses"], start_poses=starts, similarity=r["similarity"], similarity_total=r["similarity_total"],
        rotation_change_deg=r["rotation_change_deg"], translation_change_mm=r["translation_change_mm"],
        iterations=r["iterations"], seconds=r["seconds"], render_calls=work["render_calls"],
        rendered_rays=work["rendered_rays"], host_seconds=work["host_seconds"], converged=r["converged"].astype(bool),
        status=np.array([STATUS_NAMES[int(s)] for s in r["status"]]), tracked=tracked,
        twin_similarity=np.where(tracked, np.nan, twin_similarity), twin_chosen=twin_chosen & ~tracked)


def _rotation_angle_deg(a_deg, b_deg) -> float:
    """The angle (deg) of the rotation between two Euler triples (deg)."""
    Ra, Rb = rotation_matrix(a_deg), rotation_matrix(b_deg)
    return float(np.rad2deg(np.arccos(np.clip((np.trace(Ra.T @ Rb) - 1.0) / 2.0, -1.0, 1.0))))


def _retries_together(options: RefineOptions) -> bool:
    """Whether a wave of tracking retries goes to the core in one call (see refine_poses)."""
    return options.device == "cuda"


def refine_similarity(mu: Volume, views, images, poses, *, level: int = 0, options: Optional[RefineOptions] = None,
                      bone: Optional[Volume] = None, bone_threshold: Optional[float] = DEFAULT_BONE_THRESHOLD,
                      image_masks=None, image_kind: str = "line_integrals") -> tuple[np.ndarray, np.ndarray]:
    """The similarity :func:`refine_poses` maximises, at ``poses`` [F, 6] (deg, mm) and one
    pyramid ``level`` (>= options.finest_level): (similarity [F, 2], region of interest
    [F, 2, H >> level, W >> level] bool)."""
    views = tuple(views)
    packed = _views(views)
    options = RefineOptions() if options is None else options
    options.check()
    _check_threads(options)
    imgs = _images(images, views, image_kind)
    p = as_poses(poses)
    if len(p) != len(imgs):
        raise ValueError(f"got {len(p)} poses for {len(imgs)} frames: expected one pose per frame")
    volumes = _refine_volumes(mu, bone, bone_threshold, _pixel_at_object(views, p, options.finest_level),
                              options.num_levels)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise TypeError(f"level must be an integer, got {level!r}")
    sim, roi = _core.evaluate_refine_similarity(volumes, packed, imgs, _masks(image_masks, views),
                                                poses_to_radians(p), int(level), options)
    return sim, roi.astype(bool)
