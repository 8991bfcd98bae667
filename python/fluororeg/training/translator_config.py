"""The style translator's training configuration (:class:`TranslatorConfig`) and its presets.

Optimisation (CycleGAN): Adam, lr 2e-4, betas (0.5, 0.999), batch size 1; the learning rate is
constant for the first ``epochs`` and falls linearly to 0 over ``epochs_decay`` (CycleGAN:
100 + 100); an epoch is ``max(n_xray, n_drr)`` samples; ``steps`` overrides the epochs.
See :mod:`fluororeg.training.translator_train` for the losses and the other settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

__all__ = ["TranslatorConfig", "PRESETS", "ARCH_KEYS"]

ARCH_KEYS = ("image_size", "gen_width", "gen_blocks", "disc_width", "disc_layers")


@dataclass(frozen=True)
class TranslatorConfig:
    """Style-translator settings. :meth:`preset` gives 'paper' (the defaults) or 'fast'."""

    image_size: int = 128
    gen_width: int = 64          # generator's first-layer channels (c7s1-64)
    gen_blocks: int = 6          # residual blocks (6 for 128 x 128)
    disc_width: int = 64         # discriminator's first-layer channels (C64)
    disc_layers: int = 3         # strided layers after the first (3: the 70 x 70 PatchGAN)
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_adv: float = 1.0
    lambda_cycle: float = 10.0
    lambda_cp: float = 5.0
    xray_polarity: int = -1      # -1: X-rays show attenuation dark, DRRs bright (see module docstring)
    pool_size: int = 50
    epochs: int = 100            # constant learning rate
    epochs_decay: int = 100      # linear decay to 0
    steps: int | None = None     # total steps; overrides the epochs (decay over the same share)
    flip: bool = True            # random horizontal flips
    log_every: int = 50          # steps between log rows (and plots)
    checkpoint_every: int = 500  # steps between checkpoints
    snapshot_every: int = 0      # steps between kept generator snapshots (0: none; see train_translator)
    ema_decay: float = 0.0       # exponential moving average of the generators' weights (0: off)
    seed: int = 0

    def __post_init__(self):
        ints = {"image_size": 16, "gen_width": 1, "gen_blocks": 0, "disc_width": 1, "disc_layers": 1,
                "batch_size": 1, "pool_size": 0, "epochs": 0, "epochs_decay": 0, "log_every": 1,
                "checkpoint_every": 1, "snapshot_every": 0}
        for name, lo in ints.items():
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} = {v!r}: expected an integer >= {lo}")
        if self.image_size % 4:
            raise ValueError(f"image_size = {self.image_size}: expected a multiple of 4 (two down-samplings)")
        if self.image_size < 2 ** (self.disc_layers + 1) * 2:
            raise ValueError(f"image_size = {self.image_size} is too small for disc_layers = {self.disc_layers}")
        if self.steps is not None and (not isinstance(self.steps, (int, np.integer)) or self.steps < 1):
            raise ValueError(f"steps = {self.steps!r}: expected None or an integer >= 1")
        if self.steps is None and self.epochs + self.epochs_decay == 0:
            raise ValueError("epochs + epochs_decay = 0 and steps is None: nothing to train")
        for name in ("lr", "lambda_adv", "lambda_cycle", "lambda_cp"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} = {v!r}: expected a finite number >= 0")
        if self.lr <= 0:
            raise ValueError(f"lr = {self.lr!r}: expected > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)!r}: expected a value in [0, 1)")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay = {self.ema_decay!r}: expected a number in [0, 1) (0: off)")
        if self.xray_polarity not in (-1, 1):
            raise ValueError(f"xray_polarity = {self.xray_polarity!r}: expected -1 or +1")

    @classmethod
    def preset(cls, name: str = "paper", **overrides) -> "TranslatorConfig":
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is unknown: expected one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TranslatorConfig fields {sorted(unknown)}")
        return cls(**{**PRESETS[name], **overrides})

    def total_steps(self, n_xray: int, n_drr: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        per_epoch = math.ceil(max(n_xray, n_drr) / self.batch_size)
        return (self.epochs + self.epochs_decay) * per_epoch

    def lr_at(self, step: int, total: int) -> float:
        """Constant, then linear decay towards 0 over the ``epochs_decay`` share of the steps."""
        share = self.epochs_decay / max(1, self.epochs + self.epochs_decay)
        n_decay = int(round(total * share))
        n_const = total - n_decay
        if step < n_const or n_decay == 0:
            return self.lr
        return self.lr * (1.0 - (step - n_const + 1) / (n_decay + 1))


PRESETS = {
    "paper": {},
    # ~5x cheaper: half the channels, 4 residual blocks, 40 + 40 epochs
    "fast": {"gen_width": 32, "gen_blocks": 4, "disc_width": 32, "epochs": 40, "epochs_decay": 40},
}
