"""Training-time augmentation that prepares a DRR-trained detector for real fluoroscopy.

All operations work on torch batches of images in [0, 1] (``[n, 1, H, W]`` float32, before the
network's [-1, 1] normalisation) and are drawn independently per sample:

* **intensity curve**: gamma ``x ** g`` with ``log g`` uniform in ``log(gamma)``, then an
  S-shaped (sigmoid) curve mixed in with a random weight (image-intensifier / TV-camera
  response);
* **contrast and brightness**: ``(x - 0.5) * c + 0.5 + b``;
* **blur**: Gaussian with sigma uniform in ``blur_sigma`` (pixels of the network input);
* **noise**: additive Gaussian plus signal-dependent (quantum-like) noise
  ``sigma * sqrt(x) * N(0, 1)``;
* **partial field of view**: a circular field of view (the image intensifier's, centre jittered,
  radius a fraction of the image) and/or a straight band cut off one edge, filled with a dark
  level (collimation);
* **occlusions**: up to ``occlusion_max`` rectangles filled with a constant level (markers,
  electrodes, the other side's hardware, the positioning frame);
* **horizontal flip** (off by default): mirrors the image and swaps the labels of every
  left/right pair (``perm`` from the subject's pairs) so that targets stay anatomical.

Landmark targets keep their geometric positions under every photometric operation and under
the field-of-view cut and occlusions (the network learns to place a hidden landmark from its
context; the registration only uses landmarks inside both fields of view anyway). Only the flip
changes targets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from fluororeg.training.common import require_torch


@dataclass
class AugmentConfig:
    """Probabilities (``p_*``) and ranges of each operation; ``enabled=False`` turns all off."""

    enabled: bool = True
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


def augment_batch(x, landmarks=None, visible=None, config: AugmentConfig | None = None, *, perm=None,
                  generator=None):
    """Augment ``x`` [n, 1, H, W] float in [0, 1]; returns ``(x, landmarks, visible)``.

    ``landmarks`` [n, L, 2] are network coordinates (x, y) and ``visible`` [n, L] bool; they are
    changed only by the horizontal flip (x -> -x and pairs swapped with ``perm``). ``generator``
    (a ``torch.Generator``) makes it reproducible.
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
        r = max(1, int(math.ceil(3 * config.blur_sigma[1])))
        t = torch.arange(-r, r + 1, device=dev, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / sig[:, None]) ** 2)
        k = k / k.sum(1, keepdim=True)
        xp = F.pad(x.transpose(0, 1), (r, r, r, r), mode="replicate")  # [1, n, H+2r, W+2r]
        xp = F.conv2d(xp, k.view(n, 1, 1, -1), groups=n)
        xp = F.conv2d(xp, k.view(n, 1, -1, 1), groups=n)
        x = xp.transpose(0, 1)
    # Partial field of view: circular intensifier FOV and straight collimator cuts.
    fill = _uniform(torch, g, n, (0.0, 0.1), dev)
    yy = torch.linspace(-0.5, 0.5, H, device=dev).view(1, H, 1)
    xx = torch.linspace(-0.5, 0.5, W, device=dev).view(1, 1, W)
    sel = chance(config.p_fov)
    if bool(sel.any()):
        rad = _uniform(torch, g, n, config.fov_radius, dev).view(n, 1, 1)
        cx = ((torch.rand(n, generator=g, device=dev) * 2 - 1) * config.fov_jitter).view(n, 1, 1)
        cy = ((torch.rand(n, generator=g, device=dev) * 2 - 1) * config.fov_jitter).view(n, 1, 1)
        outside = ((xx - cx) ** 2 + (yy - cy) ** 2 > rad ** 2) & sel.view(n, 1, 1)
        x = torch.where(outside[:, None], col(fill), x)
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
