"""Gradient correlation: the zero-normalised cross-correlation of image gradients.

``phi`` of the paper's content-preserving loss (Eq. 1) and the 2D/3D registration similarity
of Penney et al. (1998), "A comparison of similarity measures for use in 2-D-3-D medical image
registration"::

    GC(a, b) = 1/2 * ( NCC(Gx a, Gx b) + NCC(Gy a, Gy b) )
    NCC(p, q) = sum (p - mean p)(q - mean q) / sqrt( sum (p - mean p)^2 * sum (q - mean q)^2 )

Gradients: the 3x3 **Sobel** operators (x = columns, y = rows), evaluated on the interior
pixels only ("valid": an H x W image gives (H-2) x (W-2) gradients, no padding, so the image
border adds no artificial edges). With a ``mask`` only the interior pixels where the mask is
true count (means and sums are over those pixels).

Properties: GC(a, a) = 1; GC(a, -a) = -1; GC(a, s*a + c) = sign(s) for any s != 0 (invariant
to brightness and contrast); unrelated images give about 0; the range is [-1, 1].

Undefined cases (documented choice, never NaN): a direction whose gradients are constant over
the counted pixels in either image (e.g. a flat image, or vertical stripes for the y
direction) contributes 0 to the average. So a constant image against anything gives 0, and an
image with structure in one direction only correlates at most 1/2 with itself.

:func:`gradient_correlation` is the NumPy reference (float64); :func:`gradient_correlation_torch`
is the batched, differentiable version used by the style translator's loss (it adds a tiny
``eps`` to the denominator, so a flat image gives 0 there too, with finite gradients).
"""

from __future__ import annotations

import numpy as np

__all__ = ["gradient_correlation", "gradient_correlation_torch", "sobel_gradients"]

# Sobel x kernel (cross-correlation, x = columns): [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]; y is its
# transpose. Both are evaluated in separable form below.


def sobel_gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel x- and y-gradients of a 2D image on its interior pixels: two (H-2, W-2) arrays."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 3 or a.shape[1] < 3:
        raise ValueError(f"image shape {a.shape}: expected a 2D image of at least 3 x 3 pixels")
    # Separable form (difference, then [1, 2, 1] smoothing across it): exact zeros where the
    # image does not change along a direction.
    dx = a[:, 2:] - a[:, :-2]
    dy = a[2:, :] - a[:-2, :]
    gx = dx[:-2] + 2.0 * dx[1:-1] + dx[2:]
    gy = dy[:, :-2] + 2.0 * dy[:, 1:-1] + dy[:, 2:]
    return gx, gy


def _ncc(p: np.ndarray, q: np.ndarray) -> float:
    p = p - p.mean()
    q = q - q.mean()
    pp, qq = float(np.dot(p, p)), float(np.dot(q, q))
    if pp <= 0.0 or qq <= 0.0 or not np.isfinite(pp * qq):
        return 0.0
    return float(np.clip(np.dot(p, q) / np.sqrt(pp * qq), -1.0, 1.0))


def _check_image(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} has dtype {a.dtype}: expected a numeric image")
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape}: expected a 2D image [H, W]")
    if a.shape[0] < 3 or a.shape[1] < 3:
        raise ValueError(f"{name} has shape {a.shape}: expected at least 3 x 3 pixels")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def gradient_correlation(a, b, mask=None) -> float:
    """Gradient correlation of two same-shaped 2D images (see the module docstring), in [-1, 1].

    ``mask`` (optional, bool [H, W]): only interior pixels where it is true count. Raises
    ValueError for shapes that differ, non-2D input, non-finite values, or a mask that leaves
    fewer than 2 pixels; a flat direction contributes 0 (never NaN).
    """
    a = _check_image(a, "a")
    b = _check_image(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: a {a.shape}, b {b.shape}")
    ax, ay = sobel_gradients(a)
    bx, by = sobel_gradients(b)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != a.shape:
            raise ValueError(f"mask shape {m.shape} differs from the image shape {a.shape}")
        m = m.astype(bool)[1:-1, 1:-1]
        if m.sum() < 2:
            raise ValueError(f"the mask keeps {int(m.sum())} interior pixel(s): expected at least 2")
        ax, ay, bx, by = ax[m], ay[m], bx[m], by[m]
    return 0.5 * (_ncc(ax.ravel(), bx.ravel()) + _ncc(ay.ravel(), by.ravel()))


def _sobel_torch(torch, x):
    dx = x[..., :, 2:] - x[..., :, :-2]
    dy = x[..., 2:, :] - x[..., :-2, :]
    gx = dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]
    gy = dy[..., :, :-2] + 2.0 * dy[..., :, 1:-1] + dy[..., :, 2:]
    return torch.cat([gx, gy], dim=1)


def gradient_correlation_torch(a, b, mask=None, eps: float = 1e-8):
    """Batched, differentiable gradient correlation: ``a``, ``b`` tensors [n, 1, H, W] (or
    [n, H, W] / [H, W]); returns a tensor [n] (a 0-d tensor for [H, W] input).

    ``mask`` (optional): broadcastable to the images, weights in {0, 1}. ``eps`` is added to
    each denominator: flat directions give 0 and finite gradients (images in about [-1, 1]
    or [0, 255] are unaffected by it to within float32 precision).
    """
    from fluororeg.training.common import require_torch

    torch = require_torch()
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        raise TypeError("gradient_correlation_torch expects two torch tensors")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: a {tuple(a.shape)}, b {tuple(b.shape)}")
    squeeze = None
    if a.ndim == 2:
        a, b, squeeze = a[None, None], b[None, None], "all"
    elif a.ndim == 3:
        a, b = a[:, None], b[:, None]
    elif a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"image shape {tuple(a.shape)}: expected [n, 1, H, W], [n, H, W] or [H, W]")
    if a.shape[-1] < 3 or a.shape[-2] < 3:
        raise ValueError(f"image shape {tuple(a.shape)}: expected at least 3 x 3 pixels")
    dtype = a.dtype if a.is_floating_point() else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    ga = _sobel_torch(torch, a)  # [n, 2, H-2, W-2]
    gb = _sobel_torch(torch, b)
    if mask is None:
        w = torch.ones_like(ga[:, :1])
    else:
        m = torch.as_tensor(mask, dtype=dtype, device=a.device)
        while m.ndim < 4:
            m = m[None]
        w = m.expand(a.shape[0], 1, a.shape[-2], a.shape[-1])[..., 1:-1, 1:-1]
    count = w.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    ga = (ga - (ga * w).sum(dim=(-2, -1), keepdim=True) / count) * w
    gb = (gb - (gb * w).sum(dim=(-2, -1), keepdim=True) / count) * w
    num = (ga * gb).sum(dim=(-2, -1))
    den = torch.sqrt((ga * ga).sum(dim=(-2, -1)) * (gb * gb).sum(dim=(-2, -1)) + eps)
    gc = (num / den).mean(dim=1)
    return gc[0] if squeeze else gc
