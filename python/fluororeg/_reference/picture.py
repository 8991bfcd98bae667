"""NumPy references of the core's picture kernels (fluororeg/picture.h) not checked elsewhere."""

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
