"""The crop rule: X-ray frames -> the square crops the networks see, in training and at inference.

One rule, used to make the style translator's X-ray training crops
(:func:`fluororeg.training.xray_crops.xray_training_crops`) and by the registration pipeline
(:mod:`fluororeg.pipeline.register`); exported style generators name it in their metadata
(:data:`CROP_RULE`). The DRR domain (:mod:`fluororeg.dataset.generate`) shows the subject at
``pixel_mm`` per pixel; a crop shows a frame at the same pixel size at the subject:

1. **Field of view** (:func:`detect_fov`, once per view on the recording's first frame): pixels
   brighter than the dark surround, holes filled, the largest region; a circle is fitted
   (algebraic least squares, then refitted on the points near it) to its boundary, ignoring
   boundary points on the image edge (a FOV larger than the frame is clipped there). A frame
   with no dark surround has no FOV (None): the whole frame counts.
2. **Crop box** (a :class:`CropBox`, :func:`crop_box_for_view`): a square of ``size`` crop
   pixels whose pixels measure ``crop_pixel_mm`` at a reference point: the side in frame pixels
   is ``size * crop_pixel_mm / (pitch * SOD / SDD)`` with SOD the source's distance to that
   point along the view's normal. :func:`recording_crop_boxes` centres it on the field of view
   with the point where the principal rays cross as reference
   (:func:`~fluororeg.core.geometry.beam_crossing`); :func:`bone_crop_boxes` centres it on where
   a pose puts the model origin (the pipeline's ``recentre`` pass), with that origin as reference.
   Boxes may reach outside the frame (the outside is filled, see 3.).
3. **Crop** (:func:`crop_frame`, :func:`view_crops`): the box is resampled (area-aware
   bilinear: Pillow's BILINEAR box resize, which the core's ``CropFrames`` reproduces to the bit)
   to ``size`` x ``size``; intensities inside the FOV are stretched from their
   0.5th to 99.5th percentile onto [0, 255] (each DRR is windowed per image too); pixels outside
   the FOV (less its rim: 1 px + 1 % of the radius, where intensifiers fade to dark) or the frame
   become 255 (white: "nothing attenuates", which a generator maps to the black DRR background).
   Output uint8. ``style='log'`` instead inverts Beer-Lambert (:func:`log_attenuation_crop`).

**Polarity**: crops keep the fluoroscopic polarity - bone and tissue dark, air bright - while
the DRR images show attenuation bright. The X-ray -> DRR generator learns the inversion; the
content-preserving loss accounts for it (:mod:`fluororeg.training.translator_train`, ``xray_polarity``).

**Coordinates**: :class:`CropBox` maps points exactly both ways (image coordinates: x = column,
y = row, origin at the centre of the top-left pixel): crop pixel ``u = (x - left + 0.5) *
size / side - 0.5`` and back ``x = left + (u + 0.5) * side / size - 0.5``; ``left``/``top``
are the box's outer edges in frame pixel-edge units. So landmarks detected on a crop map back
to frame pixels with ``box.to_frame(uv)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fluororeg.core.geometry import ConeView, beam_crossing

__all__ = ["CROP_RULE", "FieldOfView", "CropBox", "detect_fov", "crop_frame", "crop_box_for_view",
           "recording_fovs", "recording_crop_boxes", "bone_crop_boxes", "frame_stack", "view_crops",
           "log_attenuation_crop"]

CROP_RULE = ("fluororeg.inference.crops: square crops of crop_pixel_mm per pixel at the subject, centred on the "
             "intensifier's field of view (recording_crop_boxes) or on the located bone (bone_crop_boxes), grey "
             "levels stretched over the field of view, outside it white (crop_frame); attenuation dark")


@dataclass(frozen=True)
class FieldOfView:
    """The intensifier's circular field of view in frame pixels (centre x, y; radius)."""

    cx: float
    cy: float
    radius: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """[H, W] bool, read-only: the pixels whose centres lie inside the circle. Remembered for
        the last few circles and shapes (a recording's frames share their views' circles)."""
        return _circle_mask(float(self.cx), float(self.cy), float(self.radius), int(shape[0]), int(shape[1]))


@functools.lru_cache(maxsize=16)
def _circle_mask(cx: float, cy: float, radius: float, H: int, W: int) -> np.ndarray:
    yy, xx = np.ogrid[0:H, 0:W]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
    mask.flags.writeable = False
    return mask


@dataclass(frozen=True)
class CropBox:
    """A square region of a frame resampled to ``size`` x ``size`` crop pixels.

    ``left``, ``top``: the region's outer top-left corner in frame pixel-edge units (frame
    pixel (0, 0) covers [0, 1) x [0, 1)); ``side``: its edge length in frame pixels.
    """

    left: float
    top: float
    side: float
    size: int

    def __post_init__(self):
        if not (np.isfinite(self.side) and self.side > 0):
            raise ValueError(f"crop box side {self.side!r}: expected a positive length in pixels")
        if not (isinstance(self.size, (int, np.integer)) and self.size >= 1):
            raise ValueError(f"crop size {self.size!r}: expected a whole number of pixels >= 1")

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel."""
        return self.size / self.side

    def to_crop(self, xy) -> np.ndarray:
        """Frame image coordinates [..., 2] (x, y) -> crop image coordinates [..., 2]."""
        xy = np.asarray(xy, dtype=np.float64)
        origin = np.array([self.left, self.top])
        return (xy - origin + 0.5) * self.scale - 0.5

    def to_frame(self, uv) -> np.ndarray:
        """Crop image coordinates [..., 2] (u, v) -> frame image coordinates [..., 2]."""
        uv = np.asarray(uv, dtype=np.float64)
        origin = np.array([self.left, self.top])
        return origin + (uv + 0.5) / self.scale - 0.5

    def as_tuple(self) -> tuple[float, float, float, int]:
        return (float(self.left), float(self.top), float(self.side), int(self.size))


def _as_frame(frame) -> np.ndarray:
    a = _checked_frame(frame)
    a = np.asarray(a, dtype=np.float32)  # no copy for float32 frames: callers do not write to it
    if not np.isfinite(a).all():
        raise ValueError("frame holds NaN or infinite values")
    return a


def _checked_frame(frame) -> np.ndarray:
    """``frame`` as an array, its shape and dtype checked (not its values)."""
    a = np.asarray(frame)
    if a.ndim != 2:
        raise ValueError(f"frame has shape {a.shape}: expected a grey image [H, W]")
    if a.shape[0] < 8 or a.shape[1] < 8:
        raise ValueError(f"frame has shape {a.shape}: expected at least 8 x 8 pixels")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"frame has dtype {a.dtype}: expected numeric grey levels")
    return a


def _circle_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through points."""
    A = np.stack([x, y, np.ones_like(x)], axis=1)
    rhs = x ** 2 + y ** 2
    (a, b, c), *_ = np.linalg.lstsq(A, rhs, rcond=None)
    cx, cy = a / 2, b / 2
    return float(cx), float(cy), float(np.sqrt(max(c + cx ** 2 + cy ** 2, 0.0)))


def detect_fov(frame, *, min_surround: float = 0.03) -> FieldOfView | None:
    """The circular field of view of an intensifier frame, or None when the frame has no dark
    surround (less than ``min_surround`` of its pixels). See the module docstring."""
    from scipy import ndimage

    img = _as_frame(frame)
    H, W = img.shape
    f = max(1, int(np.ceil(max(H, W) / 512)))  # work on <= 512 px for speed
    small = img[: H // f * f, : W // f * f].reshape(H // f, f, W // f, f).mean(axis=(1, 3)) if f > 1 else img
    lo, hi = np.percentile(small, [1.0, 90.0])
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return None
    bright = small > lo + 0.05 * (hi - lo)
    bright = ndimage.binary_opening(bright, iterations=2)
    labels, n = ndimage.label(bright)
    if n == 0:
        return None
    sizes = ndimage.sum(bright, labels, index=np.arange(1, n + 1))
    region = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    region = ndimage.binary_closing(region, iterations=3, border_value=1)
    region = ndimage.binary_fill_holes(region)
    if region.mean() > 1.0 - min_surround:
        return None
    edge = region & ~ndimage.binary_erosion(region, border_value=1)
    ys, xs = np.nonzero(edge)
    h, w = region.shape
    keep = (xs > 1) & (xs < w - 2) & (ys > 1) & (ys < h - 2)
    xs, ys = xs[keep].astype(float), ys[keep].astype(float)
    if len(xs) < 10:
        return None
    cx, cy, r = _circle_fit(xs, ys)
    for _ in range(2):  # refit on the points near the circle (notches from dark bone at the edge)
        res = np.abs(np.hypot(xs - cx, ys - cy) - r)
        near = res <= max(2.0, 2.5 * np.median(res))
        if near.sum() < 10:
            break
        cx, cy, r = _circle_fit(xs[near], ys[near])
    # back to full-resolution image coordinates (pixel centres); +0.5 px: the boundary pixels
    # lie just inside the edge
    return FieldOfView((cx + 0.5) * f - 0.5, (cy + 0.5) * f - 0.5, (r + 0.5) * f)


def crop_frame(frame, box: CropBox, *, fov=None, normalise: bool = True, percentiles=(0.5, 99.5),
               fill: float = 255.0) -> np.ndarray:
    """Resample ``box`` of ``frame`` to a uint8 [size, size] crop (see the module docstring).
    ``fov`` (a :class:`FieldOfView` or None): pixels outside it become ``fill``; ``normalise``:
    stretch the FOV's ``percentiles`` onto [0, 255] (else grey levels are clipped to [0, 255]).
    The core's ``CropFrames`` (Pillow's bilinear box resampling reproduced; the Pillow/NumPy
    reference: ``fluororeg._reference.picture.crop_frame``)."""
    img = np.asarray(_checked_frame(frame), dtype=np.float32)  # grey levels checked by the core
    if not isinstance(box, CropBox):
        raise TypeError(f"box {box!r}: expected a CropBox")
    return _crops(img[None], [box], box.size, fov, normalise, percentiles, fill, 1)[0]


def _crops(frames: np.ndarray, boxes, size: int, fov, normalise: bool, percentiles, fill: float,
           num_threads: int) -> np.ndarray:
    """The core's crops [n, size, size] uint8 of float32 frames [n, H, W] in ``boxes``."""
    from fluororeg import _core

    lo, hi = (float(p) for p in percentiles)
    # The FOV less its dark rim (1 px + 1 % of the radius).
    inside = None if fov is None else \
        _rim_mask(float(fov.cx), float(fov.cy), float(fov.radius), frames.shape[1], frames.shape[2])
    table = np.array([[b.left, b.top, b.side] for b in boxes], dtype=np.float64).reshape(-1, 3)
    return _core.crop_frames(frames, table, int(size), inside, bool(normalise), lo, hi, float(fill), num_threads)


@functools.lru_cache(maxsize=16)
def _rim_mask(cx: float, cy: float, radius: float, H: int, W: int) -> np.ndarray:
    """uint8 [H, W], read-only: the field of view less its rim, as the crops use it."""
    mask = FieldOfView(cx, cy, radius * 0.99 - 1.0).mask((H, W)).astype(np.uint8)
    mask.flags.writeable = False
    return mask


def crop_box_for_view(view: ConeView, centre_px, size: int, pixel_mm: float, reference_point):
    """The square crop (a :class:`~fluororeg.inference.crops.CropBox`) of ``size`` px
    centred on ``centre_px`` (x, y) whose pixels measure ``pixel_mm`` at ``reference_point``."""
    cx, cy = centre_px
    return _centred_box(cx, cy, float(_crop_sides(view, reference_point, size, pixel_mm)[0]), size)


def _centred_box(cx: float, cy: float, side: float, size: int) -> CropBox:
    """The box of ``side`` frame px centred on pixel (cx, cy)."""
    return CropBox(float(cx + 0.5 - side / 2), float(cy + 0.5 - side / 2), float(side), int(size))


def _crop_sides(view: ConeView, reference_points, size: int, pixel_mm: float) -> np.ndarray:
    """Box sides [n] (frame px) of crops of ``size`` px whose pixels measure ``pixel_mm`` at
    ``reference_points`` [n, 3] (or [3]) mm: the frame's pixel at a point's depth is
    ``pitch * SOD / SDD``, SOD along the view's normal (inf for a point on the source's plane)."""
    sod = np.abs((np.asarray(reference_points, float).reshape(-1, 3) - view.source) @ view.normal)
    with np.errstate(divide="ignore"):
        return size * pixel_mm / (view.pitch_u * sod / view.source_intensifier_distance)


def recording_fovs(recording) -> list:
    """Per view, the circular field of view (:func:`detect_fov`, or None) of the recording's
    first frame: the one the pipeline's crops and input checks use."""
    return [detect_fov(image) for image in recording.frame(0)]


def recording_crop_boxes(recording, size: int, crop_pixel_mm: float = 2.0, *, fovs=None):
    """Per view: the circular field of view (or None) and the crop box the pipeline uses.
    ``fovs``: the recording's fields of view when already found (:func:`recording_fovs`)."""
    views = recording.geometry.views
    centre = beam_crossing(views)
    fovs = recording_fovs(recording) if fovs is None else list(fovs)
    boxes = []
    for k, fov in enumerate(fovs):
        c = (fov.cx, fov.cy) if fov is not None else ((views[k].width - 1) / 2, (views[k].height - 1) / 2)
        boxes.append(crop_box_for_view(views[k], c, size, crop_pixel_mm, centre))
    return fovs, boxes


def bone_crop_boxes(recording, poses, fallback, size: int, crop_pixel_mm: float):
    """Per frame and view, the crop box centred on where ``poses`` [n, 6] (world_from_model,
    deg / mm) put the model origin in the raw (distorted) frame, with ``crop_pixel_mm`` pixels
    at its depth; ``fallback[k]`` where a pose is NaN or implausible for the view (origin
    outside the frame, or a crop more than 30 % larger or smaller than the fallback's). Returns
    a list [n] of (box1, box2)."""
    from fluororeg.core.render import project_cone

    views = recording.geometry.views
    dist = recording.geometry.distortion or (None, None)
    poses = np.asarray(poses, float).reshape(-1, 6)
    ok = np.all(np.isfinite(poses), axis=1)
    centres = np.full((len(poses), 2, 2), np.nan)  # [n, view, (x, y)] raw frame px of the model origin
    for k, view in enumerate(views):
        if ok.any():
            xy, _ = project_cone(np.zeros((1, 3)), view, poses[ok])
            xy = xy[:, 0]
            front = np.all(np.isfinite(xy), axis=1)  # NaN: behind the source
            if dist[k] is not None and front.any():
                xy[front] = dist[k].distort_points(xy[front])
            centres[ok, k] = xy
    # crop_box_for_view of every frame at once: the side at the origin's depth, then the box.
    boxes = []  # per view, [n] CropBox or the fallback
    for k, view in enumerate(views):
        c = centres[:, k]
        side = _crop_sides(view, poses[:, 3:], size, crop_pixel_mm)
        with np.errstate(invalid="ignore"):  # NaN poses
            plausible = np.isfinite(c).all(axis=1) & (c[:, 0] >= 0.0) & (c[:, 0] < view.width) \
                & (c[:, 1] >= 0.0) & (c[:, 1] < view.height) \
                & (side / fallback[k].side >= 1 / 1.3) & (side / fallback[k].side <= 1.3)
        boxes.append([_centred_box(c[i, 0], c[i, 1], side[i], size) if plausible[i] else fallback[k]
                      for i in range(len(poses))])
    return list(zip(*boxes))


def log_attenuation_crop(raw: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """A DRR-like uint8 image from a raw intensifier crop (grey levels, open field bright):
    Beer-Lambert inverted, ``L = -ln(I / I_open)`` with ``I_open`` the crop's 99th percentile
    (the open field), clipped at 0 and windowed like the dataset's DRRs (0 to the
    ``percentile`` of the positive values). The intensity response's gamma only scales L,
    which the window removes. The core's ``LogAttenuationPictures`` (grey levels as float32;
    reference: ``fluororeg._reference.picture.log_attenuation_crop``)."""
    from fluororeg import _core

    img = np.asarray(raw, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"crop has shape {img.shape}: expected a grey image [H, W]")
    return _core.log_attenuation_pictures(img[None], float(percentile), 1)[0]


# Frames cropped per core call by view_crops (bounds the float32 copy of large frames).
CROP_BATCH = 16


def frame_stack(images) -> np.ndarray | list:
    """A view's frames ``images`` (a sequence of [H, W]) as one float32 array [n, H, W] for the
    calls that take frames (:func:`view_crops`, the input checks' figures), made once; the
    frames as they are when their sizes differ (those calls refuse or treat them one by one)."""
    arrays = [_checked_frame(img) for img in images]
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays).astype(np.float32, copy=False)
    return arrays


def view_crops(images, boxes, fov, size: int, style: str = "translate", *, num_threads: int = 0):
    """uint8 crops [n, size, size] of one view's frames ``images`` (a sequence of [H, W], or a
    float32 array [n, H, W] as :func:`frame_stack` makes it) in
    ``boxes`` (one CropBox each): for 'log', DRR-like log-attenuation images; otherwise the grey
    levels stretched over the field of view (outside it: open field). :func:`crop_frame` and
    :func:`log_attenuation_crop` of each frame, made by the core without the GIL on
    ``num_threads`` threads (0: the process's count), :data:`CROP_BATCH` frames at a time."""
    from fluororeg import _core
    from fluororeg.core.threads import num_threads as process_threads

    boxes = list(boxes)
    if len(boxes) != len(images):
        raise ValueError(f"got {len(boxes)} crop boxes for {len(images)} frames: expected one box per frame")
    for box in boxes:
        if not isinstance(box, CropBox):
            raise TypeError(f"box {box!r}: expected a CropBox")
    threads = process_threads(num_threads)
    out = np.empty((len(images), size, size), np.uint8)
    # A float32 stack [n, H, W] (frame_stack) goes to the core as it is, without a copy.
    stacked = isinstance(images, np.ndarray) and images.ndim == 3 and images.dtype == np.float32
    if stacked and len(images):
        _checked_frame(images[0])  # the frames' size
    for s in range(0, len(images), CROP_BATCH):
        # Shapes and dtypes checked by frame_stack, grey levels by the core (a non-finite one is an
        # error); frames of one size go to the core together (a view's frames share theirs).
        batch = images[s:s + CROP_BATCH] if stacked else frame_stack(images[s:s + CROP_BATCH])
        groups = [(0, batch)] if isinstance(batch, np.ndarray) else \
            [(j, f[None].astype(np.float32, copy=False)) for j, f in enumerate(batch)]
        for j, group in groups:
            try:
                crops = _crops(group, boxes[s + j:s + j + len(group)], size, fov, style != "log", (0.5, 99.5),
                               255.0, threads)
            except ValueError as exc:  # the core counts frames from the batch's first
                raise ValueError(f"frames {s + j} to {s + j + len(group) - 1} of the {len(images)}: {exc}") from None
            if style == "log":
                crops = _core.log_attenuation_pictures(crops.astype(np.float32), 99.5, threads)
            out[s + j:s + j + len(crops)] = crops
    return out
