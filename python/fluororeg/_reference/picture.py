"""NumPy (and Pillow) references of the core's picture kernels (fluororeg/picture.h) not checked
elsewhere: FrameStatistics, CropFrames (crop_frame) and LogAttenuationPictures
(log_attenuation_crop)."""

from __future__ import annotations

import numpy as np


def frame_statistics(frames, side: int, inside=None, stride: int = 1):
    """``FrameStatistics`` of frames [n, H, W]: (thumbs [n, side, side] block means, rows first;
    spread [n] = p99 - p1; level [n] = max(|p1|, |p99|)), the percentiles of every ``stride``-th
    pixel where ``inside`` [H, W] is true (all pixels when None)."""
    frames = np.asarray(frames, dtype=np.float64)
    n, H, W = frames.shape
    ys = np.linspace(0, H, side + 1).astype(int)
    xs = np.linspace(0, W, side + 1).astype(int)
    ys[-1], xs[-1] = H, W
    keep = np.ones((H, W), bool) if inside is None else np.asarray(inside, bool)
    thumbs, spread, level = np.empty((n, side, side)), np.empty(n), np.empty(n)
    for f, img in enumerate(frames):
        rows = np.add.reduceat(img, ys[:-1], axis=0) / np.maximum(np.diff(ys), 1)[:, None]
        thumbs[f] = np.add.reduceat(rows, xs[:-1], axis=1) / np.maximum(np.diff(xs), 1)[None, :]
        lo, hi = np.percentile(img[keep][::stride], [1.0, 99.0])
        spread[f], level[f] = hi - lo, max(abs(lo), abs(hi))
    return thumbs, spread, level


def crop_frame(frame, box, *, fov=None, normalise: bool = True, percentiles=(0.5, 99.5),
               fill: float = 255.0) -> np.ndarray:
    """``CropFrames`` of one frame [H, W] (see fluororeg.inference.crops.crop_frame): the frame's
    grey levels (stretched or clipped) in a padded float32 picture, resampled by Pillow."""
    from PIL import Image

    from fluororeg.inference.crops import FieldOfView

    img = np.asarray(frame, dtype=np.float32)
    H, W = img.shape
    inside = FieldOfView(fov.cx, fov.cy, fov.radius * 0.99 - 1.0).mask(img.shape) if fov is not None \
        else np.ones(img.shape, bool)
    if normalise:
        vals = img[inside]
        lo, hi = np.percentile(vals, percentiles) if vals.size else (0.0, 255.0)
        if hi <= lo:
            hi = lo + 1.0
        img = np.clip((img.astype(np.float64) - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    pad_l = int(np.ceil(max(0.0, -box.left))) + 1
    pad_t = int(np.ceil(max(0.0, -box.top))) + 1
    pad_r = int(np.ceil(max(0.0, box.left + box.side - W))) + 1
    pad_b = int(np.ceil(max(0.0, box.top + box.side - H))) + 1
    padded = np.full((H + pad_t + pad_b, W + pad_l + pad_r), fill, dtype=np.float32)
    core = padded[pad_t:pad_t + H, pad_l:pad_l + W]
    core[...] = img if normalise else np.clip(img, 0.0, 255.0)
    core[~inside] = np.float32(fill)
    x0, y0 = box.left + pad_l, box.top + pad_t
    out = Image.fromarray(padded, mode="F").resize(
        (box.size, box.size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + box.side, y0 + box.side))
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


def log_attenuation_crop(raw, percentile: float = 99.5) -> np.ndarray:
    """``LogAttenuationPictures`` of one crop (see fluororeg.inference.crops.log_attenuation_crop)."""
    from fluororeg._reference.render import window_to_uint8

    img = np.asarray(raw, dtype=np.float32).astype(np.float64)
    i_open = max(float(np.percentile(img, 99)), 1.0)
    L = np.clip(-np.log(np.clip(img, 0.5, None) / i_open), 0.0, None).astype(np.float32)
    return window_to_uint8(L[None], percentile)[0][0]
