"""Synthetic calibration images with known truth (tests, benchmarks, demos).

* :func:`plate_image`: an intensifier image of a square bead plate with pincushion and
  S-distortion, uneven brightness, a circular field of view cutting beads, missing beads
  and noise; returns the image and the truth.
* :class:`AnalyticDistortion`: the true distortion (undistorted -> distorted pixel) and its
  numerical inverse.
* :func:`bead_image`: dark bead shadows drawn at given pixel positions (e.g. beads of a 3D
  calibration object projected through a view).

Beads are rendered as projected steel spheres: transmission ``exp(-mu * chord)``, 4 x 4
sub-pixel samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AnalyticDistortion", "plate_image", "bead_image"]


@dataclass(frozen=True)
class AnalyticDistortion:
    """Undistorted -> distorted pixel: about ``centre``, with normalised radius
    ``r = |p - centre| / scale``, the point moves out by ``(1 + k_pin r^2)`` (pincushion) and
    turns by ``k_s r^2`` radians (S-distortion). Identity with unit Jacobian at the centre."""

    centre: tuple[float, float]
    scale: float
    k_pin: float = 0.04
    k_s: float = 0.03

    def distort(self, xy) -> np.ndarray:
        p = np.asarray(xy, dtype=np.float64)
        c = np.asarray(self.centre)
        d = (p - c) / self.scale
        r2 = (d ** 2).sum(axis=-1)
        ang = self.k_s * r2
        f = 1 + self.k_pin * r2
        x = f * (np.cos(ang) * d[..., 0] - np.sin(ang) * d[..., 1])
        y = f * (np.sin(ang) * d[..., 0] + np.cos(ang) * d[..., 1])
        return c + self.scale * np.stack([x, y], axis=-1)

    def undistort(self, xy, iterations: int = 30) -> np.ndarray:
        """Distorted -> undistorted pixel (Newton with a numerical Jacobian)."""
        q = np.asarray(xy, dtype=np.float64)
        p = q.copy()
        h = 1e-4
        for _ in range(iterations):
            r = self.distort(p) - q
            jx = (self.distort(p + [h, 0]) - self.distort(p - [h, 0])) / (2 * h)
            jy = (self.distort(p + [0, h]) - self.distort(p - [0, h])) / (2 * h)
            det = jx[..., 0] * jy[..., 1] - jy[..., 0] * jx[..., 1]
            dx = (jy[..., 1] * r[..., 0] - jy[..., 0] * r[..., 1]) / det
            dy = (-jx[..., 1] * r[..., 0] + jx[..., 0] * r[..., 1]) / det
            p = p - np.stack([dx, dy], axis=-1)
            if np.abs(r).max() < 1e-10:
                break
        return p


def _draw_beads(img: np.ndarray, centres: np.ndarray, radius: float, contrast: float) -> None:
    """Multiply ``img`` by bead transmissions (in place); centre transmission 1 - contrast."""
    mu = -np.log(1 - contrast) / (2 * radius)
    H, W = img.shape
    half = int(np.ceil(radius + 2))
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    for cx, cy in centres:
        ix, iy = int(round(cx)), int(round(cy))
        x0, x1 = max(ix - half, 0), min(ix + half + 1, W)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, H)
        if x0 >= x1 or y0 >= y1:
            continue
        gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        X = gx[..., None, None] + sub[None, None, None, :] - cx
        Y = gy[..., None, None] + sub[None, None, :, None] - cy
        chord = 2 * np.sqrt(np.clip(radius ** 2 - X ** 2 - Y ** 2, 0, None))
        img[y0:y1, x0:x1] *= np.exp(-mu * chord).mean(axis=(-1, -2))


def plate_image(size: int = 1024, *, spacing_px: float = 40.0, radius_px: float = 5.0,
                distortion: AnalyticDistortion | None = None, fov_radius: float | None = None,
                missing: float = 0.03, noise: float = 2.0, gradient: float = 0.4,
                contrast: float = 0.5, angle_deg: float = 2.0, seed: int = 0):
    """A ``size x size`` float image of a distorted bead plate and its truth.

    Returns ``(image, truth)`` with ``truth`` a dict: ``distortion`` (AnalyticDistortion),
    ``undistorted`` [m, 2] ideal bead positions (corrected pixels) and ``distorted`` [m, 2]
    positions of the beads that were drawn, ``fov_centre``, ``fov_radius``."""
    rng = np.random.default_rng(seed)
    c = ((size - 1) / 2, (size - 1) / 2)
    dist = distortion or AnalyticDistortion(c, size / 2)
    fov_radius = 0.47 * size if fov_radius is None else fov_radius
    fov_c = np.array(c) + np.array([6.0, -4.0])
    n = int(size / spacing_px) + 4
    k = np.arange(-n, n + 1)
    I, J = np.meshgrid(k, k)
    a = np.deg2rad(angle_deg)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    off = np.array([0.37, -0.21]) * spacing_px
    und = np.array(c) + (np.stack([I.ravel(), J.ravel()], axis=1) * spacing_px + off) @ R.T
    drawn = dist.distort(und)
    keep = np.linalg.norm(drawn - fov_c, axis=1) < fov_radius + 2 * radius_px
    keep &= rng.random(len(und)) >= missing
    und, drawn = und[keep], drawn[keep]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    bright = 200.0 * (1 - gradient * (xx / size - 0.5)) * (1 - 0.25 * ((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / size ** 2)
    img = bright.copy()
    _draw_beads(img, drawn, radius_px, contrast)
    outside = np.hypot(xx - fov_c[0], yy - fov_c[1]) > fov_radius
    img[outside] = 6.0
    img += rng.normal(0, noise, img.shape)
    truth = {"distortion": dist, "undistorted": und, "distorted": drawn,
             "fov_centre": fov_c, "fov_radius": fov_radius}
    return img, truth


def bead_image(width: int, height: int, centres, *, radius_px: float = 5.0, level: float = 180.0,
               contrast: float = 0.5, noise: float = 2.0, gradient: float = 0.3, seed: int = 0) -> np.ndarray:
    """Dark bead shadows at pixel ``centres`` [m, 2] on a bright, unevenly lit background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = level * (1 - gradient * (yy / height - 0.5))
    _draw_beads(img, np.asarray(centres, dtype=np.float64).reshape(-1, 2), radius_px, contrast)
    return img + rng.normal(0, noise, img.shape)
