"""Detection of calibration beads (steel balls) in X-ray images, with sub-pixel centres.

Steel attenuates, so on an intensifier image a bead is a dark disc on a bright background
(``polarity='dark'``, the default); on inverted images or DRRs it is bright
(``polarity='bright'``). The detector

1. flattens the background with a grey-level closing (dark beads) or opening (bright beads)
   wider than a bead, smoothed with a median (edge-preserving: the step at the edge of an
   acrylic block's shadow stays a step and makes no contrast); dark beads are measured as relative contrast
   ``(background - image) / background`` so that uneven brightness of the intensifier does
   not change their weight (X-ray attenuation is multiplicative);
2. masks the circular field of view (given, or found as the bright disc of the image) and
   drops beads the edge of the field of view cuts;
3. finds peaks of a Gaussian-smoothed contrast map above a threshold set from the *local*
   noise (median absolute deviation in tiles of about 8 bead radii, interpolated between
   tile centres) and from the typical bead contrast, so faint missing or half beads do not
   count. Inside the shadow of a calibration object (an acrylic cube) the relative noise is
   several times that of the open field; a global threshold would report its noise peaks;
4. refines each centre by an iterated, Gaussian-windowed centroid of the background-free
   contrast (sub-pixel, unbiased for symmetric beads).

Image coordinates: x = column, y = row, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["BeadDetections", "detect_beads", "load_image", "field_of_view_mask"]


@dataclass(frozen=True)
class BeadDetections:
    """Detected beads: centres ``xy`` [n, 2] px, peak ``contrast`` [n] (relative for dark
    beads), the field-of-view mask used (or None) and the detection threshold."""

    xy: np.ndarray
    contrast: np.ndarray
    fov_mask: np.ndarray | None
    threshold: float

    def __len__(self) -> int:
        return len(self.xy)


def load_image(image, name: str = "image") -> np.ndarray:
    """A 2D float64 image from an array or a file path (TIFF via tifffile, else Pillow).
    Raises ValueError naming the path for missing or unreadable files and for non-2D data."""
    if isinstance(image, (str, Path)):
        from fluororeg.io.limits import MAX_IMAGE_FILE_BYTES, check_frame_shape, check_regular_file, open_regular

        path = Path(image)
        check_regular_file(path, f"{name} file", max_bytes=MAX_IMAGE_FILE_BYTES, missing_error=ValueError)
        try:
            if path.suffix.lower() in (".tif", ".tiff"):
                import tifffile
                with tifffile.TiffFile(str(path)) as tif:  # the declared size before any pixel is decoded
                    shape = tuple(tif.series[0].shape)
                    if len(shape) == 3 and shape[-1] in (3, 4):  # RGB(A)
                        shape = shape[:2]
                    if len(shape) != 2:
                        raise ValueError(f"{name} file '{path}' holds an image of shape {shape}: expected one 2D image")
                    check_frame_shape(shape[1], shape[0], f"{name} file '{path}'")
                    arr = tif.asarray()
            else:
                from PIL import Image
                with open_regular(path, f"{name} file", max_bytes=MAX_IMAGE_FILE_BYTES) as fh, Image.open(fh) as im:
                    check_frame_shape(im.size[0], im.size[1], f"{name} file '{path}'")
                    arr = np.asarray(im.convert("F") if im.mode not in ("L", "I", "I;16", "F") else im)
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is an unreadable file
            raise ValueError(f"{name} file '{path}' could not be read as an image: {exc}") from exc
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].mean(axis=-1)
        image = arr
    try:
        arr = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric 2D array or an image path, got {type(image).__name__}") from exc
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise ValueError(f"{name} has shape {arr.shape}: expected a 2D image of at least 8 x 8 pixels")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite pixel values")
    return arr


def field_of_view_mask(image, *, fraction: float = 0.5, shrink_px: int = 2) -> np.ndarray:
    """The circular field of view of an intensifier image: the largest connected region
    brighter than ``fraction`` of the way from the 1st to the 99th brightness percentile
    (after light smoothing), holes filled (dark beads inside it stay in), then shrunk by
    ``shrink_px`` so that no dark rim pixel stays in."""
    img = load_image(image)
    sm = ndimage.gaussian_filter(img, 1.0)
    lo, hi = np.percentile(sm, [1, 99])
    mask = sm > lo + fraction * (hi - lo)
    lab, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("no bright field of view found in the image")
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    mask = ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))
    if shrink_px > 0:
        mask = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] > shrink_px
    return mask


def _smooth_masked(a: np.ndarray, sigma: float, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return ndimage.gaussian_filter(a, sigma)
    m = mask.astype(np.float64)
    num = ndimage.gaussian_filter(a * m, sigma)
    den = ndimage.gaussian_filter(m, sigma)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)


def _contrast_maps(img: np.ndarray, radius: float, polarity: str, mask: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(for detection, for centring): contrast against the closing (opening) of the image,
    once with an edge-preserving median of the background (no contrast at the edge of a
    block's shadow) and once with a Gaussian-smoothed one (least noise in the centroids)."""
    size = 2 * int(np.ceil(2.0 * radius)) + 3
    closed = (ndimage.grey_closing if polarity == "dark" else ndimage.grey_opening)(img, size=(size, size))
    out = []
    for bg in (ndimage.median_filter(closed, size=3), _smooth_masked(closed, radius, mask)):
        if polarity == "dark":
            scale = np.maximum(bg, 1e-6 * max(float(np.abs(bg).max()), 1e-30))
            out.append((bg - img) / scale)
        else:
            out.append(img - bg)
    return out[0], out[1]


def _median_last_axis(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, count) over the last axis ignoring NaN, vectorised (NaN sort last)."""
    srt = np.sort(blocks, axis=-1)
    count = np.isfinite(srt).sum(axis=-1)
    lo = np.clip((count - 1) // 2, 0, None)
    hi = np.clip(count // 2, 0, None)
    a = np.take_along_axis(srt, lo[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(srt, np.minimum(hi, srt.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    return np.where(count > 0, 0.5 * (a + b), np.nan), count


class _LocalNoise:
    """Robust local level and noise of a map: median and 1.4826 * MAD over the valid pixels of
    ``tile`` x ``tile`` tiles, bilinearly interpolated between tile centres (tiles with too few
    valid pixels take the global values); evaluated only where asked (at candidate peaks)."""

    def __init__(self, a: np.ndarray, valid: np.ndarray, tile: int):
        H, W = a.shape
        self.tile = tile
        ty, tx = -(-H // tile), -(-W // tile)
        pad = np.full((ty * tile, tx * tile), np.nan)
        pad[:H, :W] = np.where(valid, a, np.nan)
        blocks = pad.reshape(ty, tile, tx, tile).transpose(0, 2, 1, 3).reshape(ty, tx, tile * tile)
        med, count = _median_last_axis(blocks)
        mad, _ = _median_last_axis(np.abs(blocks - med[..., None]))
        vals = a[valid] if valid.any() else a.ravel()
        g_med = float(np.median(vals))
        g_mad = 1.4826 * float(np.median(np.abs(vals - g_med))) + 1e-12
        few = count < max(16, tile * tile // 8)
        self.level = np.where(few, g_med, med)
        self.noise = np.where(few, g_mad, np.maximum(1.4826 * mad, 1e-12))

    def at(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(level, noise) at pixels (ys, xs): bilinear between tile centres ((t + 1/2) tile - 1/2)."""
        ty, tx = self.level.shape
        fy = np.clip((ys + 0.5) / self.tile - 0.5, 0, ty - 1)
        fx = np.clip((xs + 0.5) / self.tile - 0.5, 0, tx - 1)
        y0, x0 = np.floor(fy).astype(int), np.floor(fx).astype(int)
        y1, x1 = np.minimum(y0 + 1, ty - 1), np.minimum(x0 + 1, tx - 1)
        wy, wx = fy - y0, fx - x0

        def interp(g):
            return ((1 - wy) * ((1 - wx) * g[y0, x0] + wx * g[y0, x1]) + wy * ((1 - wx) * g[y1, x0] + wx * g[y1, x1]))

        return interp(self.level), interp(self.noise)


def detect_beads(image, *, radius_px: float = 4.0, polarity: str = "dark", fov="auto",
                 min_contrast: float | None = None, snr: float = 6.0,
                 relative_threshold: float = 0.35) -> BeadDetections:
    """Find beads of about ``radius_px`` pixels and return their sub-pixel centres.

    ``fov``: ``'auto'`` (find the bright circular field of view; only for dark beads on a
    bright field), ``None`` (whole image) or a boolean mask of the image's shape. Beads
    closer than ``radius_px + 2`` px to the edge of the field of view or the image are
    dropped, and in a field of view so are beads within ``1.6 radius_px + 3`` px of its edge
    (cut beads bias the centre). Peaks must exceed ``snr`` times the noise, the
    optional ``min_contrast`` and ``relative_threshold`` times the 90th percentile of the
    candidate contrasts.
    """
    img = load_image(image)
    if not np.isfinite(radius_px) or radius_px < 1.0 or radius_px > min(img.shape) / 4:
        raise ValueError(f"radius_px = {radius_px!r}: expected a bead radius between 1 px and a quarter of the image")
    if polarity not in ("dark", "bright"):
        raise ValueError(f"polarity = {polarity!r}: expected 'dark' or 'bright'")
    if isinstance(fov, str):
        if fov != "auto":
            raise ValueError(f"fov = {fov!r}: expected 'auto', None or a boolean mask")
        mask = field_of_view_mask(img) if polarity == "dark" else None
    elif fov is None:
        mask = None
    else:
        mask = np.asarray(fov, dtype=bool)
        if mask.shape != img.shape:
            raise ValueError(f"fov mask has shape {mask.shape}, expected the image's {img.shape}")

    r = float(radius_px)
    contrast, centring = _contrast_maps(img, r, polarity, mask)
    margin = int(np.ceil(r + 2))
    valid = np.zeros(img.shape, dtype=bool)
    valid[margin:-margin, margin:-margin] = True
    if mask is not None:
        contrast = np.where(mask, contrast, 0.0)
        centring = np.where(mask, centring, 0.0)
        # The bead and the ring that sets its local baseline must lie inside the field.
        valid &= ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] > 1.6 * r + 3
    smooth = ndimage.gaussian_filter(contrast, max(r / 2, 0.8))
    tile = max(24, int(np.ceil(8 * r)))
    local = _LocalNoise(smooth, valid if np.any(valid) else np.ones_like(valid), tile)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=2 * int(np.ceil(r)) + 1)) & valid
    ys, xs = np.nonzero(peaks)
    level, noise = local.at(ys.astype(float), xs.astype(float))
    thr_at = level + snr * noise
    if min_contrast is not None:
        thr_at = np.maximum(thr_at, float(min_contrast))
    keep = smooth[ys, xs] > thr_at
    cand = smooth[ys[keep], xs[keep]]
    rel = relative_threshold * float(np.percentile(cand, 90)) if len(cand) else -np.inf
    keep &= smooth[ys, xs] > rel
    ys, xs = ys[keep], xs[keep]
    thr = max(float(np.median(local.level + snr * local.noise)), rel)

    centres, values = [], []
    half = int(np.ceil(2.5 * r))
    sigma_w = 1.5 * r
    H, W = img.shape
    for y0, x0 in zip(ys, xs):
        cx, cy = float(x0), float(y0)
        ok = True
        for _ in range(8):
            ix, iy = int(round(cx)), int(round(cy))
            if ix - half < 0 or iy - half < 0 or ix + half >= W or iy + half >= H:
                ok = False
                break
            patch = centring[iy - half:iy + half + 1, ix - half:ix + half + 1]
            inside = np.ones_like(patch, dtype=bool) if mask is None else mask[iy - half:iy + half + 1, ix - half:ix + half + 1]
            gy, gx = np.mgrid[iy - half:iy + half + 1, ix - half:ix + half + 1]
            ring = (gx - cx) ** 2 + (gy - cy) ** 2
            annulus = (ring > (1.6 * r) ** 2) & inside
            base = np.median(patch[annulus]) if np.any(annulus) else 0.0
            # Unclipped weights: background noise has zero mean and does not pull the centre.
            wgt = (patch - base) * np.exp(-ring / (2 * sigma_w ** 2)) * (inside & (ring < (2.2 * r) ** 2))
            s = wgt.sum()
            if s <= 0:
                ok = False
                break
            nx, ny = float((wgt * gx).sum() / s), float((wgt * gy).sum() / s)
            step = np.hypot(nx - cx, ny - cy)
            cx, cy = nx, ny
            if step < 1e-4:
                break
        if not ok or np.hypot(cx - x0, cy - y0) > r:
            continue
        if mask is not None and not valid[int(round(cy)), int(round(cx))]:
            continue
        # A bead is darker (brighter) than its own surround in the image itself, by about the
        # contrast the background map claims; an artefact of the background (a corner of a
        # block's shadow) is not.
        ix, iy = int(round(cx)), int(round(cy))
        pimg = img[iy - half:iy + half + 1, ix - half:ix + half + 1]
        gy, gx = np.mgrid[iy - half:iy + half + 1, ix - half:ix + half + 1]
        ring = (gx - cx) ** 2 + (gy - cy) ** 2
        pin = np.ones_like(pimg, dtype=bool) if mask is None else mask[iy - half:iy + half + 1, ix - half:ix + half + 1]
        sur = pimg[(ring > (1.6 * r) ** 2) & (ring < (2.5 * r) ** 2) & pin]
        core = pimg[ring <= (0.5 * r) ** 2]
        if len(sur) and len(core):
            # the darker (brighter) quarter of the surround: next to the corner of a shadow it is
            # the shadow itself, around a bead the background
            around = float(np.percentile(sur, 25 if polarity == "dark" else 75))
            depth = ((around - core.mean()) / max(abs(around), 1e-12) if polarity == "dark"
                     else core.mean() - around)
            if depth < 0.5 * float(smooth[y0, x0]):
                continue
        centres.append((cx, cy))
        values.append(float(smooth[y0, x0]))
    xy = np.array(centres, dtype=np.float64).reshape(-1, 2)
    vals = np.array(values, dtype=np.float64)
    # Merge duplicates (plateau maxima of one bead).
    if len(xy) > 1:
        from scipy.spatial import cKDTree
        keep = np.ones(len(xy), dtype=bool)
        order = np.argsort(-vals)
        tree = cKDTree(xy)
        for i in order:
            if not keep[i]:
                continue
            for j in tree.query_ball_point(xy[i], r):
                if j != i and keep[j] and vals[j] <= vals[i]:
                    keep[j] = False
        xy, vals = xy[keep], vals[keep]
    return BeadDetections(xy, vals, mask, float(thr))
