"""Overlays that let a person check a registration at a glance (like the paper's Fig. 11):
the model's landmarks and bone outline projected with the registered pose, drawn on the
X-ray frames of both views; single frames as PNG, the whole recording as a video (MP4, H.264)
or an animated GIF.

Frames are expected in undistorted (corrected) pixel coordinates, as the registration uses
them; pass ``distortion`` (a calibration DistortionModel) to draw on raw intensifier frames,
where the projections are then moved by the distortion before drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fluororeg.core import render as R
from fluororeg.core.geometry import ConeView

__all__ = ["bone_outline", "overlay_frame", "overlay_pair", "save_overlay_gif", "save_overlay_video"]

LANDMARK_RGB = (60, 255, 60)
DETECTED_RGB = (255, 60, 60)
OUTLINE_RGB = (255, 220, 0)


def bone_outline(subject, view: ConeView, pose, *, scale: float = 0.5) -> np.ndarray:
    """Pixels [K, 2] (x, y) on the outline of the bone mask's silhouette seen by ``view`` at
    ``pose`` (deg, mm); rendered at ``scale`` of the image size for speed."""
    from scipy.ndimage import binary_erosion

    small = ConeView(view.source, view.detector_centre, view.u, view.v, view.pitch_u / scale, view.pitch_v / scale,
                     max(8, int(round(view.width * scale))), max(8, int(round(view.height * scale))))
    sil = R.project_mask_cone(subject.mask_model(), small, pose)[0]
    edge = sil & ~binary_erosion(sil)
    ys, xs = np.nonzero(edge)
    # Back to full-resolution pixel coordinates (pixel centres of the small image).
    fx = (xs - (small.width - 1) / 2) * (small.pitch_u / view.pitch_u) + (view.width - 1) / 2
    fy = (ys - (small.height - 1) / 2) * (small.pitch_v / view.pitch_v) + (view.height - 1) / 2
    return np.stack([fx, fy], axis=1)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image has shape {img.shape}, expected a grey image (H, W)")
    above = img[img > img.min()]  # leave out the dark surround of the field of view
    lo, hi = np.percentile(above if above.size else img, [0.5, 99.5])
    g = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def overlay_frame(image, subject, view: ConeView, pose, *, detected=None, distortion=None,
                  outline: bool = True, label: str | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3]: ``image`` with the projected landmarks (green rings), the bone
    outline (yellow) and, optionally, the detected landmarks ``detected`` [N, 2] (undistorted
    frame px, as the pipeline's detections; red crosses; NaN rows skipped). With
    ``distortion`` (the view's model), everything is drawn where it lies in the raw image."""
    from PIL import Image, ImageDraw

    rgb = _to_rgb(image)
    H, W = rgb.shape[:2]
    if (W, H) != (view.width, view.height):
        raise ValueError(f"image is {W} x {H} px but the view is {view.width} x {view.height}")
    pose = np.asarray(pose, dtype=np.float64)
    finite = bool(np.all(np.isfinite(pose)))
    move = (lambda p: distortion.distort_points(p)) if distortion is not None else (lambda p: p)
    if finite and outline:
        pts = move(bone_outline(subject, view, pose))
        xi, yi = np.round(pts).astype(int).T
        ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        rgb[yi[ok], xi[ok]] = OUTLINE_RGB
    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    r = max(3, W // 120)
    if finite:
        xy, inside = R.project_cone(subject.landmarks_model, view, pose)
        for (x, y), vis in zip(move(xy[0]), inside[0]):
            if vis:
                d.ellipse([x - r, y - r, x + r, y + r], outline=LANDMARK_RGB, width=2)
    if detected is not None:
        pts = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
        pts = move(pts[np.all(np.isfinite(pts), axis=1)])
        for x, y in pts:
            if np.isfinite(x) and np.isfinite(y):
                d.line([x - r, y - r, x + r, y + r], fill=DETECTED_RGB, width=2)
                d.line([x - r, y + r, x + r, y - r], fill=DETECTED_RGB, width=2)
    text = label if label is not None else ("no pose" if not finite else None)
    if text:
        d.text((6, 6), text, fill=(255, 255, 255))
    return np.asarray(img)


def overlay_pair(images: Sequence[np.ndarray], subject, views: Sequence[ConeView], pose, *, detected=None,
                 distortion=None, label: str | None = None) -> np.ndarray:
    """Both views side by side (RGB uint8)."""
    tiles = []
    for k in range(2):
        tiles.append(overlay_frame(images[k], subject, views[k], pose,
                                   detected=None if detected is None else detected[k],
                                   distortion=None if distortion is None else distortion[k],
                                   label=f"view {k + 1}" + (f"  {label}" if label else "")))
    h = max(t.shape[0] for t in tiles)
    return np.concatenate([np.pad(t, ((0, h - t.shape[0]), (0, 4), (0, 0))) for t in tiles], axis=1)


def _check_fps(fps: float) -> None:
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps = {fps!r}: expected a positive frame rate")


def save_overlay_gif(pairs: Sequence[np.ndarray], path, *, fps: float = 10.0, max_width: int = 800) -> Path:
    """Animated GIF of overlay pairs (RGB arrays), downscaled to ``max_width``."""
    from PIL import Image

    if not len(pairs):
        raise ValueError("no frames to write")
    _check_fps(fps)
    frames = []
    for p in pairs:
        im = Image.fromarray(np.asarray(p, dtype=np.uint8))
        if im.width > max_width:
            im = im.resize((max_width, round(im.height * max_width / im.width)), Image.BILINEAR)
        frames.append(im.convert("P", palette=Image.ADAPTIVE, colors=128))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def save_overlay_video(pairs, path, *, fps: float = 10.0, max_width: int = 1200) -> Path:
    """The overlay pairs (RGB arrays, or an iterable producing them, so a long recording need not
    be held in memory) as a video: ``.mp4``/``.mkv``/``.avi`` are H.264 (yuv420p, the size rounded
    to even pixels), ``.gif`` an animated GIF (held in memory; see :func:`save_overlay_gif`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    _check_fps(fps)  # before the (possibly long) rendering of the frames
    if suffix == ".gif":
        return save_overlay_gif(list(pairs), path, fps=fps, max_width=max_width)
    if suffix not in (".mp4", ".mkv", ".avi"):
        raise ValueError(f"overlay video '{path}': expected a .mp4, .mkv, .avi or .gif file name")
    import av
    from fractions import Fraction
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    container, stream, count = None, None, 0
    try:
        for p in pairs:
            im = Image.fromarray(np.asarray(p, dtype=np.uint8)).convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, round(im.height * max_width / im.width)), Image.BILINEAR)
            if stream is None:
                container = av.open(str(path), mode="w")
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height = im.width // 2 * 2, im.height // 2 * 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18"}
            im = im.crop((0, 0, stream.width, stream.height)) if im.size != (stream.width, stream.height) else im
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    finally:
        if container is not None:
            container.close()
    return path

