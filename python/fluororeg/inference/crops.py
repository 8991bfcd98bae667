"""X-ray frames -> square training/inference crops for the style translator (the X-ray domain).

The DRR domain (:mod:`fluororeg.dataset.generate`) shows the whole skull in a 128 x 128 frame, each
image windowed to its own intensity range. An X-ray frame (simulated: :mod:`fluororeg.simulation.simulate`;
real: any PNG/TIFF folder or multi-page TIFF read by :class:`fluororeg.io.recording.ImageSequence`)
is a larger image-intensifier picture with a circular field of view (FOV) and dark surround.
The same rule prepares training crops here and the frames the registration pipeline detects
landmarks on:

1. **Field of view** (:func:`detect_fov`): pixels brighter than the dark surround, holes
   filled, the largest region; a circle is fitted (algebraic least squares, then refitted on
   the points near it) to its boundary, ignoring boundary points on the image edge (a FOV
   larger than the frame is clipped there). A frame with no dark surround has no FOV (None):
   the whole frame counts.
2. **Crop box** (:func:`crop_box`, a :class:`CropBox`): ``mode='fov'`` (default) the square
   circumscribing the FOV circle (the whole frame's square hull when there is no FOV);
   ``mode='bone'`` the bounding box of the dark (attenuating: bone and soft tissue) pixels
   inside the FOV (Otsu threshold), squared about its centre and widened by ``margin`` on
   each side - the paper crops by hand; this is the automatic rule. Boxes may reach outside
   the frame (the outside is filled, see 3.).
3. **Crop** (:func:`crop_frame`): the box is resampled (area-aware bilinear, Pillow) to
   ``size`` x ``size``; intensities inside the FOV are stretched from their 0.5th to 99.5th
   percentile onto [0, 255] (each DRR is windowed per image too); pixels outside the FOV (less
   its rim: 1 px + 1 % of the radius, where intensifiers fade to dark) or the frame become
   255 (white: "nothing attenuates", which a generator maps to the black DRR background).
   Output uint8.

**Polarity**: crops keep the fluoroscopic polarity - bone and tissue dark, air bright - while
the DRR images show attenuation bright. The X-ray -> DRR generator learns the inversion; the
content-preserving loss accounts for it (:mod:`fluororeg.training.style`, ``xray_polarity``).

**Coordinates**: :class:`CropBox` maps points exactly both ways (image coordinates: x = column,
y = row, origin at the centre of the top-left pixel): crop pixel ``u = (x - left + 0.5) *
size / side - 0.5`` and back ``x = left + (u + 0.5) * side / size - 0.5``; ``left``/``top``
are the box's outer edges in frame pixel-edge units. So landmarks detected on a crop map back
to frame pixels with ``box.to_frame(uv)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

__all__ = ["FieldOfView", "CropBox", "detect_fov", "crop_box", "crop_frame", "prepare_crop", "iter_sequences",
           "xray_crops"]

MODES = ("fov", "bone")


@dataclass(frozen=True)
class FieldOfView:
    """The intensifier's circular field of view in frame pixels (centre x, y; radius)."""

    cx: float
    cy: float
    radius: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        H, W = shape
        yy, xx = np.mgrid[0:H, 0:W]
        return (xx - self.cx) ** 2 + (yy - self.cy) ** 2 <= self.radius ** 2


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
    a = np.asarray(frame)
    if a.ndim != 2:
        raise ValueError(f"frame has shape {a.shape}: expected a grey image [H, W]")
    if a.shape[0] < 8 or a.shape[1] < 8:
        raise ValueError(f"frame has shape {a.shape}: expected at least 8 x 8 pixels")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"frame has dtype {a.dtype}: expected numeric grey levels")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("frame holds NaN or infinite values")
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


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def crop_box(frame, size: int = 128, *, mode: str = "fov", fov="auto", margin: float = 0.05) -> CropBox:
    """The crop box of a frame (see the module docstring). ``fov``: 'auto' (detect), None (no
    FOV: the whole frame), or a :class:`FieldOfView`. ``margin``: for ``mode='bone'``, the
    fraction of the box side added on each side."""
    img = _as_frame(frame)
    if mode not in MODES:
        raise ValueError(f"crop mode {mode!r} is unknown: expected one of {MODES}")
    if not (0.0 <= margin <= 1.0):
        raise ValueError(f"margin {margin!r}: expected a fraction in [0, 1]")
    H, W = img.shape
    if isinstance(fov, str):
        if fov != "auto":
            raise ValueError(f"fov {fov!r}: expected 'auto', None or a FieldOfView")
        fov = detect_fov(img)
    elif fov is not None and not isinstance(fov, FieldOfView):
        raise TypeError(f"fov {fov!r}: expected 'auto', None or a FieldOfView")
    if fov is None:
        cx, cy, half = (W - 1) / 2, (H - 1) / 2, max(W, H) / 2
    else:
        cx, cy, half = fov.cx, fov.cy, fov.radius
    if mode == "bone":
        inside = fov.mask(img.shape) if fov is not None else np.ones(img.shape, bool)
        values = img[inside]
        if values.size and values.max() > values.min():
            from scipy import ndimage

            dark = inside & (img < _otsu(values))
            dark = ndimage.binary_opening(dark, iterations=max(1, min(H, W) // 128))
            ys, xs = np.nonzero(dark)
            if len(xs):
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1  # pixel edges
                side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
                return CropBox(float((x0 + x1) / 2 - side / 2), float((y0 + y1) / 2 - side / 2), float(side), int(size))
    # centre (cx, cy) is in pixel-centre coordinates: the edge coordinate is cx + 0.5
    return CropBox(float(cx + 0.5 - half), float(cy + 0.5 - half), float(2.0 * half), int(size))


def crop_frame(frame, box: CropBox, *, fov=None, normalise: bool = True, percentiles=(0.5, 99.5),
               fill: float = 255.0) -> np.ndarray:
    """Resample ``box`` of ``frame`` to a uint8 [size, size] crop (see the module docstring).
    ``fov`` (a :class:`FieldOfView` or None): pixels outside it become ``fill``; ``normalise``:
    stretch the FOV's ``percentiles`` onto [0, 255] (else grey levels are clipped to [0, 255])."""
    from PIL import Image

    img = _as_frame(frame)
    if not isinstance(box, CropBox):
        raise TypeError(f"box {box!r}: expected a CropBox")
    H, W = img.shape
    if fov is not None:  # leave out the FOV's dark rim (1 px + 1 % of the radius)
        inside = FieldOfView(fov.cx, fov.cy, fov.radius * 0.99 - 1.0).mask(img.shape)
    else:
        inside = np.ones(img.shape, bool)
    if normalise:
        vals = img[inside]
        lo, hi = np.percentile(vals, percentiles) if vals.size else (0.0, 255.0)
        if hi <= lo:
            hi = lo + 1.0
        img = (img - lo) * (255.0 / (hi - lo))
    img = np.clip(img, 0.0, 255.0)
    img[~inside] = fill
    # pad so that the box lies inside, then resample the box (Pillow boxes are in pixel-edge units)
    pad_l = int(np.ceil(max(0.0, -box.left))) + 1
    pad_t = int(np.ceil(max(0.0, -box.top))) + 1
    pad_r = int(np.ceil(max(0.0, box.left + box.side - W))) + 1
    pad_b = int(np.ceil(max(0.0, box.top + box.side - H))) + 1
    padded = np.pad(img, ((pad_t, pad_b), (pad_l, pad_r)), constant_values=fill)
    x0, y0 = box.left + pad_l, box.top + pad_t
    out = Image.fromarray(padded.astype(np.float32), mode="F").resize(
        (box.size, box.size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + box.side, y0 + box.side))
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


def prepare_crop(frame, size: int = 128, *, mode: str = "fov", fov="auto", margin: float = 0.05,
                 normalise: bool = True) -> tuple[np.ndarray, CropBox]:
    """Crop box and crop of one frame: ``(uint8 [size, size], CropBox)``."""
    img = _as_frame(frame)
    if isinstance(fov, str) and fov == "auto":
        fov = detect_fov(img)
    box = crop_box(img, size, mode=mode, fov=fov, margin=margin)
    return crop_frame(img, box, fov=fov, normalise=normalise), box


def iter_sequences(source) -> Iterator[Iterable[np.ndarray]]:
    """The image sequences of an X-ray source, each a sized indexable of frames [H, W]:
    a recording folder (recording.json: both views), an image folder or multi-page TIFF,
    a :class:`~fluororeg.io.recording.ImageSequence` or :class:`~fluororeg.io.recording.Recording`,
    an array [n, H, W] or [H, W], or a list/tuple of any of these."""
    from fluororeg.io.recording import ImageSequence, Recording, open_recording

    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("the X-ray source list is empty")
        for s in source:
            yield from iter_sequences(s)
        return
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            yield source[None]
        elif source.ndim == 3:
            yield source
        else:
            raise ValueError(f"X-ray array has shape {source.shape}: expected [n, H, W] or [H, W]")
        return
    if isinstance(source, Recording):
        yield from source.sequences
        return
    if isinstance(source, ImageSequence):
        yield source
        return
    if isinstance(source, (str, Path)):
        p = Path(source)
        if (p / "recording.json").is_file():
            yield from open_recording(p).sequences
        else:
            yield ImageSequence(p)
        return
    raise TypeError(f"X-ray source {type(source).__name__}: expected a folder, a TIFF file, an image array, "
                    "an ImageSequence, a Recording or a list of these")


def xray_crops(source, size: int = 128, *, mode: str = "fov", every: int = 1, max_frames: int | None = None,
               margin: float = 0.05, fov_per_frame: bool = False, return_boxes: bool = False,
               progress: bool = False):
    """X-ray crops of every ``every``-th frame of ``source`` (see :func:`iter_sequences`):
    uint8 [n, size, size], or ``(crops, boxes)`` with ``return_boxes`` (one :class:`CropBox`
    per crop, in order). The FOV is detected once per sequence on its first frame (the
    intensifier does not move) unless ``fov_per_frame``. ``max_frames`` caps the total."""
    from tqdm import tqdm

    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size {size!r}: expected an integer >= 8")
    if not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every {every!r}: expected an integer >= 1")
    crops, boxes = [], []
    bar = tqdm(desc="x-ray crops", unit="frame", disable=not progress)
    for seq in iter_sequences(source):
        fov = None
        for i in range(0, len(seq), every):
            if max_frames is not None and len(crops) >= max_frames:
                break
            frame = _as_frame(seq[i])
            if fov_per_frame or i == 0:
                fov = detect_fov(frame)
            crop, box = prepare_crop(frame, size, mode=mode, fov=fov, margin=margin)
            crops.append(crop)
            boxes.append(box)
            bar.update(1)
    bar.close()
    if not crops:
        raise ValueError("the X-ray source yielded no frames")
    out = np.stack(crops)
    return (out, boxes) if return_boxes else out
