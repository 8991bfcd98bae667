"""Training-time augmentation that prepares a DRR-trained detector for real fluoroscopy.

All operations work on torch batches of images in [0, 1] (``[n, 1, H, W]`` float32, before the
network's [-1, 1] normalisation) and are drawn independently per sample:

* **lens distortion** (geometric): a small random radial warp about a jittered centre
  (``u -> c + (u - c)(1 + k r^2)``, ``k`` in ``distortion_k``) with an S-shaped twist (rotation
  by ``s r^2``, ``s`` in ``distortion_twist``, radians), as an image intensifier's pincushion and
  S-distortion; the landmark targets are moved with the image (the inverse warp, solved by
  fixed-point iteration) and a landmark warped out of the image is no longer visible;
* **heel effect**: the intensity multiplied by a linear ramp ``1 + h (d . u)`` across the field
  (random direction ``d``, ``h`` in ``heel_strength``);
* **scatter**: a low-frequency additive glow ``x + w G_sigma(x)`` (a Gaussian blur of the image
  with ``sigma`` a fraction ``scatter_sigma`` of the side, ``w`` in ``scatter_strength``);
* **intensity curve**: gamma ``x ** g`` with ``log g`` uniform in ``log(gamma)``, then an
  S-shaped (sigmoid) curve mixed in with a random weight (image-intensifier / TV-camera
  response);
* **contrast and brightness**: ``(x - 0.5) * c + 0.5 + b``;
* **blur**: Gaussian with sigma uniform in ``blur_sigma`` (pixels of the network input);
* **noise**: additive Gaussian plus signal-dependent (quantum-like) noise
  ``sigma * sqrt(x) * N(0, 1)``;
* **partial field of view**: a circular field of view (the image intensifier's, centre jittered,
  radius a fraction of the image) and/or a straight band cut off one edge, filled with a dark
  level (collimation), or a bright one for a share ``fov_bright_share`` of the circular cuts
  (the field's outside after the image is inverted);
* **occlusions**: up to ``occlusion_max`` rectangles filled with a constant level (markers,
  electrodes, the other side's hardware, the positioning frame);
* **horizontal flip** (off by default): mirrors the image and swaps the labels of every
  left/right pair (``perm`` from the subject's pairs) so that targets stay anatomical.

Landmark targets keep their geometric positions under every photometric operation and under
the field-of-view cut and occlusions (the network learns to place a hidden landmark from its
context; the registration only uses landmarks inside both fields of view anyway). Only the flip
and the distortion change targets.

These are the training side's intensifier looks. The independent test recordings
(:mod:`fluororeg.simulation.plastimatch_drr`) have their own, different effects and parameters on
purpose: a detector must not be tested on the very corruptions it was trained on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from fluororeg.training.common import require_torch


@dataclass
class AugmentConfig:
    """Probabilities (``p_*``) and ranges of each operation; ``enabled=False`` turns all off."""

    enabled: bool = True
    p_distortion: float = 0.3
    distortion_k: tuple[float, float] = (-0.06, 0.08)    # radial coefficient (network coords, r = 1 at an edge)
    distortion_twist: tuple[float, float] = (-0.05, 0.05)  # S-distortion, radians at r = 1
    distortion_jitter: float = 0.2                       # centre shift, network coords
    p_heel: float = 0.3
    heel_strength: tuple[float, float] = (0.05, 0.3)     # relative change from centre to edge
    p_scatter: float = 0.3
    scatter_strength: tuple[float, float] = (0.05, 0.4)
    scatter_sigma: tuple[float, float] = (0.1, 0.3)      # fraction of the image side
    p_curve: float = 0.8
    gamma: tuple[float, float] = (0.6, 1.7)
    sigmoid_gain: tuple[float, float] = (4.0, 10.0)
    p_contrast: float = 0.8
    contrast: tuple[float, float] = (0.6, 1.3)
    brightness: tuple[float, float] = (-0.15, 0.15)
    p_blur: float = 0.4
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    p_noise: float = 0.6
    noise_sigma: tuple[float, float] = (0.0, 0.06)
    p_fov: float = 0.3
    fov_radius: tuple[float, float] = (0.45, 0.75)   # fraction of the image side
    fov_jitter: float = 0.15                         # centre shift, fraction of the side
    fov_bright_share: float = 0.3                    # share of circular cuts filled bright
    p_edge_cut: float = 0.2
    edge_cut: tuple[float, float] = (0.05, 0.3)      # band width, fraction of the side
    p_occlusion: float = 0.3
    occlusion_max: int = 3
    occlusion_size: tuple[float, float] = (0.05, 0.25)
    p_flip: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"augmentation {f.name}={v}: a probability must be in [0, 1]")
            if isinstance(v, (tuple, list)):
                if len(v) != 2 or float(v[0]) > float(v[1]):
                    raise ValueError(f"augmentation {f.name}={v}: expected a range (lo, hi) with lo <= hi")
                object.__setattr__(self, f.name, (float(v[0]), float(v[1])))
        if self.gamma[0] <= 0:
            raise ValueError(f"augmentation gamma={self.gamma}: must be positive")
        if not 0.0 <= float(self.fov_bright_share) <= 1.0:
            raise ValueError(f"augmentation fov_bright_share={self.fov_bright_share}: a share must be in [0, 1]")
        if self.scatter_sigma[0] <= 0:
            raise ValueError(f"augmentation scatter_sigma={self.scatter_sigma}: must be positive")
        if max(abs(v) for v in self.distortion_k + self.distortion_twist) > 0.3:
            raise ValueError(f"augmentation distortion_k={self.distortion_k}, distortion_twist={self.distortion_twist}: "
                             "expected small warps (|value| <= 0.3)")
        if self.occlusion_max < 0:
            raise ValueError(f"augmentation occlusion_max={self.occlusion_max}: must be >= 0")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | None) -> "AugmentConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(enabled=False)

    @classmethod
    def light(cls) -> "AugmentConfig":
        """Halved probabilities: for short trainings where full augmentation slows convergence."""
        base = cls()
        return cls(**{f.name: (getattr(base, f.name) / 2 if f.name.startswith("p_") else getattr(base, f.name))
                      for f in fields(cls)})


def _uniform(torch, gen, n, lo_hi, device):
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _distortion_map(torch, ux, uy, centre, k, twist):
    """The warp f(u) (x [n, ...], y [n, ...]) of network coordinates ``ux``, ``uy`` [n, ...]:
    radial ``k`` and twist ``twist`` [n] about ``centre`` [n, 2]; an output pixel at u shows the
    input at f(u)."""
    shape = (-1,) + (1,) * (ux.ndim - 1)
    cx, cy = centre[:, 0].view(shape), centre[:, 1].view(shape)
    dx, dy = ux - cx, uy - cy
    r2 = dx * dx + dy * dy
    ang = twist.view(shape) * r2
    c, s = torch.cos(ang), torch.sin(ang)
    scale = 1 + k.view(shape) * r2
    return cx + (c * dx - s * dy) * scale, cy + (s * dx + c * dy) * scale


def _distortion_inverse(torch, t, centre, k, twist):
    """u [n, L, 2] with f(u) = t [n, L, 2] (:func:`_distortion_map`): the radius rho of u - centre
    solves rho (1 + k rho^2) = |t - centre| (bisection, then Newton, where that is increasing: up to
    rho_max = (-3k)^-1/2 for k < 0), its angle is that of t - centre minus twist rho^2. A target
    the warp does not reach (beyond the fold of a strong barrel warp) goes far outside (rho 10)."""
    d = t - centre[:, None]
    R = d.norm(dim=-1, keepdim=True)
    kk = k.view(-1, 1, 1).to(R.dtype)
    rho_max = (-1.0 / (3 * kk.clamp_max(-1e-12))).sqrt()        # where a barrel warp folds
    hi = torch.where(kk >= 0, R, rho_max.expand_as(R))          # k >= 0: rho <= |t - centre|
    lo = torch.zeros_like(R)
    for _ in range(6):    # bisection: a safe start inside the increasing branch
        mid = 0.5 * (lo + hi)
        below = mid * (1 + kk * mid ** 2) < R
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    rho = 0.5 * (lo + hi)
    for _ in range(4):    # then Newton, kept within the bracket
        rho = (rho - (rho * (1 + kk * rho ** 2) - R) / (1 + 3 * kk * rho ** 2).clamp_min(1e-3)).clamp(lo, hi)
    reached = (rho * (1 + kk * rho ** 2) - R).abs() <= 1e-4 * (1 + R)
    rho = torch.where(reached, rho, torch.full_like(rho, 10.0))
    ang = -twist.view(-1, 1, 1) * rho ** 2
    unit = d / R.clamp_min(1e-12)
    c, s = torch.cos(ang), torch.sin(ang)
    rot = torch.cat([c * unit[..., :1] - s * unit[..., 1:], s * unit[..., :1] + c * unit[..., 1:]], dim=-1)
    return centre[:, None] + rho * rot


def _gaussian_blur(torch, x, sigma_px):
    """Per-sample separable Gaussian blur of x [n, 1, H, W] with sigma_px [n] (pixels)."""
    F = torch.nn.functional
    n = x.shape[0]
    r = max(1, int(math.ceil(3 * float(sigma_px.max()))))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma_px[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)
    xp = F.pad(x.transpose(0, 1), (r, r, r, r), mode="replicate")  # [1, n, H+2r, W+2r]
    xp = F.conv2d(xp, k.view(n, 1, 1, -1), groups=n)
    xp = F.conv2d(xp, k.view(n, 1, -1, 1), groups=n)
    return xp.transpose(0, 1)


def augment_batch(x, landmarks=None, visible=None, config: AugmentConfig | None = None, *, perm=None,
                  generator=None):
    """Augment ``x`` [n, 1, H, W] float in [0, 1]; returns ``(x, landmarks, visible)``.

    ``landmarks`` [n, L, 2] are network coordinates (x, y; -1 and 1 at the centres of the edge
    pixels) and ``visible`` [n, L] bool; they are changed only by the horizontal flip (x -> -x
    and pairs swapped with ``perm``) and the distortion (moved with the image; out of the
    image: not visible). ``generator`` (a ``torch.Generator``) makes it reproducible.
    """
    torch = require_torch()
    F = torch.nn.functional
    config = config or AugmentConfig()
    if not config.enabled:
        return x, landmarks, visible
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"augment_batch expects images [n, 1, H, W], got {tuple(x.shape)}")
    n, _, H, W = x.shape
    dev = x.device
    g = generator

    def chance(p):
        return torch.rand(n, generator=g, device=dev) < p

    def col(v):
        return v.view(n, 1, 1, 1)

    x = x.clone()
    # Horizontal flip with pair swap.
    if config.p_flip > 0 and landmarks is not None:
        flip = chance(config.p_flip)
        if bool(flip.any()):
            if perm is None:
                raise ValueError("p_flip > 0 needs perm (the left/right pair permutation)")
            perm_t = torch.as_tensor(perm, device=landmarks.device, dtype=torch.long)
            x[flip] = torch.flip(x[flip], dims=[3])
            lm = landmarks.clone()
            fl = lm[flip][:, perm_t]
            fl[..., 0] = -fl[..., 0]
            lm[flip] = fl
            landmarks = lm
            if visible is not None:
                vis = visible.clone()
                vis[flip] = visible[flip][:, perm_t]
                visible = vis
    # Lens distortion (geometric): the image is resampled, the targets follow.
    sel = chance(config.p_distortion)
    if bool(sel.any()):
        k = _uniform(torch, g, n, config.distortion_k, dev) * sel.float()
        tw = _uniform(torch, g, n, config.distortion_twist, dev) * sel.float()
        centre = (torch.rand(n, 2, generator=g, device=dev) * 2 - 1) * config.distortion_jitter
        i = sel.nonzero().view(-1)          # only the selected samples are resampled
        gx, gy = _distortion_map(torch, torch.linspace(-1, 1, W, device=dev).view(1, 1, W),
                                 torch.linspace(-1, 1, H, device=dev).view(1, H, 1), centre[i], k[i], tw[i])
        grid = torch.stack([gx, gy], -1)                                   # [m, H, W, 2] (x, y)
        x[i] = F.grid_sample(x[i], grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
        if landmarks is not None:
            il = i.to(landmarks.device)
            q = _distortion_inverse(torch, landmarks[il].to(dev, torch.float32), centre[i], k[i], tw[i])
            landmarks = landmarks.clone()
            landmarks[il] = q.to(landmarks.device, landmarks.dtype)
            if visible is not None:
                edge = torch.tensor([1 + 1 / max(W - 1, 1), 1 + 1 / max(H - 1, 1)], device=landmarks.device)
                inside = (landmarks.abs() <= edge).all(-1).to(visible.device)  # within the edge pixels
                visible = visible & (inside | ~sel.view(n, 1).to(visible.device))
    # Heel effect: a linear intensity ramp across the field.
    sel = chance(config.p_heel)
    if bool(sel.any()):
        h = _uniform(torch, g, n, config.heel_strength, dev) * sel.float()
        phi = torch.rand(n, generator=g, device=dev) * (2 * math.pi)
        gy, gx = torch.meshgrid(torch.linspace(-1, 1, H, device=dev), torch.linspace(-1, 1, W, device=dev),
                                indexing="ij")
        ramp = torch.cos(phi).view(n, 1, 1) * gx + torch.sin(phi).view(n, 1, 1) * gy
        x = x * (1 + h.view(n, 1, 1) * ramp)[:, None]
    # Scatter: low-frequency additive glow.
    sel = chance(config.p_scatter)
    if bool(sel.any()):
        w = _uniform(torch, g, n, config.scatter_strength, dev) * sel.float()
        sig = _uniform(torch, g, n, config.scatter_sigma, dev) * max(H, W)
        # blurred on a coarse grid (16 px across: the glow has no detail), then upsampled
        i = sel.nonzero().view(-1)
        coarse = F.adaptive_avg_pool2d(x[i], (min(H, 16), min(W, 16)))
        glow = _gaussian_blur(torch, coarse, sig[i] * coarse.shape[-1] / W)
        glow = F.interpolate(glow, size=(H, W), mode="bilinear", align_corners=False)
        x = x.clone()
        x[i] = x[i] + w[i].view(-1, 1, 1, 1) * glow
    # Intensity curve: gamma, then a partial sigmoid.
    sel = chance(config.p_curve)
    if bool(sel.any()):
        lg = _uniform(torch, g, n, (math.log(config.gamma[0]), math.log(config.gamma[1])), dev)
        gam = torch.where(sel, torch.exp(lg), torch.ones_like(lg))
        x = x.clamp(0, 1) ** col(gam)
        gain = _uniform(torch, g, n, config.sigmoid_gain, dev)
        mid = _uniform(torch, g, n, (0.35, 0.65), dev)
        w = torch.rand(n, generator=g, device=dev) * sel.float()
        s = torch.sigmoid((x - col(mid)) * col(gain))
        lo, hi = torch.sigmoid(-col(mid) * col(gain)), torch.sigmoid((1 - col(mid)) * col(gain))
        s = (s - lo) / (hi - lo)
        x = (1 - col(w)) * x + col(w) * s
    # Contrast and brightness.
    sel = chance(config.p_contrast)
    if bool(sel.any()):
        c = torch.where(sel, _uniform(torch, g, n, config.contrast, dev), torch.ones(n, device=dev))
        b = torch.where(sel, _uniform(torch, g, n, config.brightness, dev), torch.zeros(n, device=dev))
        x = (x - 0.5) * col(c) + 0.5 + col(b)
    # Blur (per-sample Gaussian kernels, one grouped convolution).
    sel = chance(config.p_blur)
    if bool(sel.any()):
        sig = torch.where(sel, _uniform(torch, g, n, config.blur_sigma, dev), torch.full((n,), 1e-3, device=dev))
        x = _gaussian_blur(torch, x, sig)
    # Partial field of view: circular intensifier FOV and straight collimator cuts.
    fill = _uniform(torch, g, n, (0.0, 0.1), dev)
    bright = torch.rand(n, generator=g, device=dev) < config.fov_bright_share
    fov_fill = torch.where(bright, 1.0 - fill, fill)
    yy = torch.linspace(-0.5, 0.5, H, device=dev).view(1, H, 1)
    xx = torch.linspace(-0.5, 0.5, W, device=dev).view(1, 1, W)
    sel = chance(config.p_fov)
    if bool(sel.any()):
        rad = _uniform(torch, g, n, config.fov_radius, dev).view(n, 1, 1)
        cx = ((torch.rand(n, generator=g, device=dev) * 2 - 1) * config.fov_jitter).view(n, 1, 1)
        cy = ((torch.rand(n, generator=g, device=dev) * 2 - 1) * config.fov_jitter).view(n, 1, 1)
        outside = ((xx - cx) ** 2 + (yy - cy) ** 2 > rad ** 2) & sel.view(n, 1, 1)
        x = torch.where(outside[:, None], col(fov_fill), x)
    sel = chance(config.p_edge_cut)
    if bool(sel.any()):
        width = _uniform(torch, g, n, config.edge_cut, dev).view(n, 1, 1)
        side = torch.randint(0, 4, (n,), generator=g, device=dev).view(n, 1, 1)
        cut = (((side == 0) & (xx < -0.5 + width)) | ((side == 1) & (xx > 0.5 - width))
               | ((side == 2) & (yy < -0.5 + width)) | ((side == 3) & (yy > 0.5 - width)))
        cut = cut & sel.view(n, 1, 1)
        x = torch.where(cut[:, None], col(fill), x)
    # Occlusions: rectangles of a constant level (dark or bright).
    sel = chance(config.p_occlusion)
    if bool(sel.any()) and config.occlusion_max > 0:
        count = torch.randint(1, config.occlusion_max + 1, (n,), generator=g, device=dev)
        for j in range(config.occlusion_max):
            on = (sel & (count > j)).view(n, 1, 1)
            w = _uniform(torch, g, n, config.occlusion_size, dev).view(n, 1, 1)
            h = _uniform(torch, g, n, config.occlusion_size, dev).view(n, 1, 1)
            x0 = (torch.rand(n, generator=g, device=dev).view(n, 1, 1) - 0.5)
            y0 = (torch.rand(n, generator=g, device=dev).view(n, 1, 1) - 0.5)
            level = torch.rand(n, generator=g, device=dev)
            box = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h) & on
            x = torch.where(box[:, None], col(level), x)
    # Noise: additive and signal-dependent.
    sel = chance(config.p_noise)
    if bool(sel.any()):
        s1 = _uniform(torch, g, n, config.noise_sigma, dev) * sel.float()
        s2 = _uniform(torch, g, n, config.noise_sigma, dev) * sel.float()
        noise = torch.randn(x.shape, generator=g, device=dev)
        x = x + noise * (col(s1) + col(s2) * x.clamp(0, 1).sqrt())
    return x.clamp(0, 1), landmarks, visible
