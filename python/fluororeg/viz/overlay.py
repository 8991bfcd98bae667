"""Overlays that let a person check a registration at a glance (like the paper's Fig. 11):
the bone's projected contour (scikit-image ``find_contours`` on the projected bone mask), the
model's landmarks projected with the registered pose, the detected landmarks and the
residual vector from each detection to its projected landmark, the frame number and the
frame's status, drawn with anti-aliased lines (the drawing is made at twice the resolution
and averaged down) on the X-ray frames of both views; single frames as PNG, the whole
recording as a video (MP4, H.264) or an animated GIF.

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

__all__ = ["bone_outline", "bone_contours", "overlay_frame", "overlay_pair", "save_overlay_gif", "save_overlay_video"]

LANDMARK_RGB = (60, 255, 60)
DETECTED_RGB = (255, 60, 60)
RESIDUAL_RGB = (255, 80, 255)
OUTLINE_RGB = (255, 220, 0)
STATUS_RGB = {"ok": (90, 255, 90), "one_view": (255, 200, 60)}
_SUPERSAMPLE = 2


def bone_contours(subject, view: ConeView, pose, *, scale: float = 0.5) -> list[np.ndarray]:
    """Polylines [K_i, 2] (x, y frame pixels) of the contour of the bone mask's projection seen
    by ``view`` at ``pose`` (deg, mm): scikit-image's marching squares at level 0.5 on the
    silhouette rendered at ``scale`` of the image size (for speed), so the lines follow the
    silhouette's edge with sub-pixel steps."""
    from skimage.measure import find_contours

    small = ConeView(view.source, view.intensifier_centre, view.u, view.v, view.pitch_u / scale, view.pitch_v / scale,
                     max(8, int(round(view.width * scale))), max(8, int(round(view.height * scale))))
    sil = R.project_mask_cone(subject.mask_model(), small, pose)[0].astype(np.float32)
    sil = np.pad(sil, 1)  # closed contours also where the bone leaves the image
    out = []
    for c in find_contours(sil, 0.5):
        ys, xs = c[:, 0] - 1, c[:, 1] - 1
        # Back to full-resolution pixel coordinates (pixel centres of the small image).
        fx = (xs - (small.width - 1) / 2) * (small.pitch_u / view.pitch_u) + (view.width - 1) / 2
        fy = (ys - (small.height - 1) / 2) * (small.pitch_v / view.pitch_v) + (view.height - 1) / 2
        out.append(np.stack([fx, fy], axis=1))
    return out


def bone_outline(subject, view: ConeView, pose, *, scale: float = 0.5) -> np.ndarray:
    """Points [K, 2] (x, y) along the projected bone contour (all polylines of
    :func:`bone_contours` together)."""
    cs = bone_contours(subject, view, pose, scale=scale)
    return np.concatenate(cs) if cs else np.zeros((0, 2))


def _to_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image has shape {img.shape}, expected a grey image (H, W)")
    above = img[img > img.min()]  # leave out the dark surround of the field of view
    lo, hi = np.percentile(above if above.size else img, [0.5, 99.5])
    g = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def overlay_frame(image, subject, view: ConeView, pose, *, detected=None, distortion=None,
                  outline: bool = True, label: str | None = None, frame: int | None = None,
                  status: str | None = None, residuals: bool = True) -> np.ndarray:
    """RGB uint8 [H, W, 3]: ``image`` with the bone's projected contour (yellow), the
    projected landmarks (green rings), optionally the detected landmarks ``detected`` [N, 2]
    (undistorted frame px, as the pipeline's detections, in landmark order; red crosses; NaN
    rows skipped) with the residual vector from each to its projected landmark (magenta), and a
    header with ``label``, the frame number ``frame`` and the ``status`` (green ok, amber
    one_view, red otherwise). With ``distortion`` (the view's model), everything is drawn
    where it lies in the raw image."""
    from PIL import Image, ImageDraw

    rgb = _to_rgb(image)
    H, W = rgb.shape[:2]
    if (W, H) != (view.width, view.height):
        raise ValueError(f"image is {W} x {H} px but the view is {view.width} x {view.height}")
    pose = np.asarray(pose, dtype=np.float64)
    finite = bool(np.all(np.isfinite(pose)))
    move = (lambda p: distortion.distort_points(p)) if distortion is not None else (lambda p: p)
    s = _SUPERSAMPLE
    layer = Image.new("RGBA", (W * s, H * s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    lw = max(1, W // 600) * s  # line width in supersampled pixels
    up = lambda p: [((x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5) for x, y in p]  # noqa: E731 - pixel centres
    if finite and outline:
        for c in bone_contours(subject, view, pose):
            pts = move(c)
            if len(pts) > 1:
                d.line(up(pts), fill=OUTLINE_RGB + (255,), width=lw, joint="curve")
    r = max(3, W // 120)
    projected = None
    if finite:
        xy, inside = R.project_cone(subject.landmarks_model, view, pose)
        projected = np.where(inside[0][:, None], xy[0], np.nan)
        for (x, y) in move(projected[np.all(np.isfinite(projected), axis=1)]):
            (cx, cy), = up([(x, y)])
            d.ellipse([cx - r * s, cy - r * s, cx + r * s, cy + r * s], outline=LANDMARK_RGB + (255,), width=lw)
    if detected is not None:
        det = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
        ok = np.all(np.isfinite(det), axis=1)
        if residuals and projected is not None and len(projected) == len(det):
            both = ok & np.all(np.isfinite(projected), axis=1)
            for a, b in zip(move(det[both]), move(projected[both])):
                d.line(up([a, b]), fill=RESIDUAL_RGB + (255,), width=lw)
        for x, y in move(det[ok]):
            (cx, cy), = up([(x, y)])
            q = r * s * 0.8
            d.line([cx - q, cy - q, cx + q, cy + q], fill=DETECTED_RGB + (255,), width=lw)
            d.line([cx - q, cy + q, cx + q, cy - q], fill=DETECTED_RGB + (255,), width=lw)
    words = [w for w in (label, None if frame is None else f"frame {int(frame)}") if w]
    state = status if status is not None else (None if finite else "no pose")
    font = _font(max(12, W // 50) * s)
    y0 = 6 * s
    if words:
        d.text((8 * s, y0), "  ".join(words), fill=(255, 255, 255, 255), font=font, stroke_width=s,
               stroke_fill=(0, 0, 0, 255))
        y0 += int(max(12, W // 50) * s * 1.25)
    if state:
        colour = STATUS_RGB.get(state, (255, 70, 70))
        d.text((8 * s, y0), state, fill=colour + (255,), font=font, stroke_width=s, stroke_fill=(0, 0, 0, 255))
    small = layer.resize((W, H), Image.BOX)  # average the supersampled drawing: anti-aliased
    base = Image.fromarray(rgb).convert("RGBA")
    return np.asarray(Image.alpha_composite(base, small).convert("RGB"))


def overlay_pair(images: Sequence[np.ndarray], subject, views: Sequence[ConeView], pose, *, detected=None,
                 distortion=None, label: str | None = None, frame: int | None = None,
                 status: str | None = None) -> np.ndarray:
    """Both views side by side (RGB uint8), each with the frame number and status."""
    tiles = []
    for k in range(2):
        tiles.append(overlay_frame(images[k], subject, views[k], pose,
                                   detected=None if detected is None else detected[k],
                                   distortion=None if distortion is None else distortion[k],
                                   label=f"view {k + 1}" + (f"  {label}" if label else ""), frame=frame,
                                   status=status))
    h = max(t.shape[0] for t in tiles)
    return np.concatenate([np.pad(t, ((0, h - t.shape[0]), (0, 4), (0, 0))) for t in tiles], axis=1)


MAX_VIDEO_FPS = 1000.0  # an overlay video's playback rate; players show at most a few hundred frames/s


def _check_fps(fps: float) -> None:
    if not (np.isfinite(fps) and 0 < fps <= MAX_VIDEO_FPS):
        raise ValueError(f"fps = {fps!r}: expected a playback frame rate above 0 and at most {MAX_VIDEO_FPS:g} "
                         "frames/s")


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

