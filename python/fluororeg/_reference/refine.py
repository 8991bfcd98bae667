"""NumPy references of the intensity refinement's kernels (cpp/src/refine/refine.cc).

* :func:`gradient_correlation` / :func:`normalized_cross_correlation`: the C++
  ``GradientCorrelation`` / ``NormalizedCrossCorrelation`` written plainly with NumPy.
* :func:`pyramid_view`: ``PyramidView`` from the pixel geometry (where the level's pixel
  centres lie on the intensifier).
* :func:`downsample_image`: the image pyramid (means of 2^level x 2^level blocks).
* :func:`region_of_interest`: the projected bone region (``RegionOfInterest``) from full DRRs
  of the bone volume, dilated by a square of the margin, inside the usable pixels eroded by 2,
  off the image border.
* :func:`evaluate_refine_similarity`: the similarity ``EvaluateRefineSimilarity`` reports, from
  full DRRs (:func:`fluororeg.core.render.render_cone`) of the level's view, over a given region.
* :func:`frames_to_line_integrals` (checks ``FramesToLineIntegrals``, picture.h): undistortion by
  ``scipy.ndimage.map_coordinates`` and Beer-Lambert inversion with ``np.percentile``.

Poses are in degrees and millimetres, as in the public API.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fluororeg.core.geometry import ConeView


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean() if a.size else a
    b = b - b.mean() if b.size else b
    saa, sbb = float(a @ a), float(b @ b)
    return float(a @ b) / np.sqrt(saa * sbb) if saa > 1e-30 and sbb > 1e-30 else 0.0


def gradient_correlation(a, b, mask=None) -> float:
    """Mean of the NCCs of the central-difference x and y gradients over the mask's pixels
    off the image border."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask) != 0
    inner = np.zeros(a.shape, bool)
    inner[1:-1, 1:-1] = True
    sel = m & inner
    gx = lambda im: 0.5 * (np.roll(im, -1, axis=1) - np.roll(im, 1, axis=1))  # noqa: E731
    gy = lambda im: 0.5 * (np.roll(im, -1, axis=0) - np.roll(im, 1, axis=0))  # noqa: E731
    return 0.5 * (_ncc(gx(a)[sel], gx(b)[sel]) + _ncc(gy(a)[sel], gy(b)[sel]))


def normalized_cross_correlation(a, b, mask=None) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sel = np.ones(a.shape, bool) if mask is None else np.asarray(mask) != 0
    return _ncc(a[sel], b[sel])


def pyramid_view(view: ConeView, level: int) -> ConeView:
    f = 2 ** level
    w, h = view.width // f, view.height // f
    # Level pixel (0, 0) is the mean of full pixels 0..f-1: centred at full pixel (f - 1) / 2;
    # the level image's centre ((w - 1) / 2) is at full pixel f (w - 1) / 2 + (f - 1) / 2.
    centre = view.pixel_to_world([f * (w - 1) / 2 + (f - 1) / 2, f * (h - 1) / 2 + (f - 1) / 2])
    return ConeView(view.source, centre, view.u, view.v, view.pitch_u * f, view.pitch_v * f, w, h)


def downsample_image(img, level: int) -> np.ndarray:
    f = 2 ** level
    a = np.asarray(img, np.float64)
    h, w = a.shape[0] // f, a.shape[1] // f
    return a[:h * f, :w * f].reshape(h, f, w, f).mean(axis=(1, 3))


def region_of_interest(bone_path: np.ndarray, margin_px: float, usable=None) -> np.ndarray:
    """bone_path [H, W]: line integrals through the bone volume at the pose."""
    r = int(np.ceil(margin_px))
    proj = bone_path > 1e-6
    roi = ndimage.binary_dilation(proj, np.ones((2 * r + 1, 2 * r + 1), bool)) if r > 0 else proj
    if usable is not None:
        bad = ndimage.binary_dilation(~np.asarray(usable, bool), np.ones((5, 5), bool))
        roi &= ~bad
    border = np.zeros(roi.shape, bool)
    border[1:-1, 1:-1] = True
    return roi & border


def evaluate_refine_similarity(mu, views, images, poses, roi, level: int, similarity: str = "gradient_correlation",
                               step_voxels: float = 1.0) -> np.ndarray:
    """similarity [F, 2] of DRRs of ``mu`` (the volume the C++ core marched through, passed
    as is: no further downsampling) against the level images over ``roi`` [F, 2, h, w]."""
    from fluororeg.core import render

    fn = gradient_correlation if similarity == "gradient_correlation" else normalized_cross_correlation
    poses = np.atleast_2d(np.asarray(poses, np.float64))
    out = np.full((len(poses), 2), np.nan)
    for k in range(2):
        lv = pyramid_view(views[k], level)
        drr = render.render_cone(mu, lv, poses, level=None, step_voxels=step_voxels)
        for f in range(len(poses)):
            out[f, k] = fn(drr[f], downsample_image(images[f, k], level), roi[f, k])
    return out


def frames_to_line_integrals(images, mask=None, source_map=None) -> np.ndarray:
    """Line integrals [..., H, W] float32 of grey levels [..., H, W]: resampled at ``source_map``
    ((x, y) maps, bilinear, mode 'nearest'), ``I_open`` the 99th percentile within ``mask`` (all
    pixels when None or empty) floored at 1e-6, ``max(0, -ln(max(I, 1e-4 I_open) / I_open))``."""
    img = np.asarray(images, dtype=np.float64)
    flat = img.reshape(-1, *img.shape[-2:])
    out = np.empty(flat.shape, dtype=np.float32)
    for i, im in enumerate(flat):
        if source_map is not None:
            im = ndimage.map_coordinates(im, [source_map[1], source_map[0]], order=1, mode="nearest")
        vals = im[mask] if mask is not None and np.any(mask) else im
        i_open = max(float(np.percentile(vals, 99)), 1e-6)
        out[i] = np.clip(-np.log(np.clip(im, i_open * 1e-4, None) / i_open), 0.0, None)
    return out.reshape(img.shape)
