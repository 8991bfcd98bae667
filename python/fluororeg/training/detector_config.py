"""The landmark detector's training configuration (:class:`DetectorConfig`) and its presets.

Everything that defines a detector training run; stored in its checkpoints (a resumed run
must have the same configuration). :func:`preset` gives 'paper' (the paper's ResNet-18
regressor, 128 px) or 'fast' (a narrow ResNet on 64 px inputs for CPUs), with overrides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from fluororeg.training.augment import AugmentConfig

__all__ = ["DetectorConfig", "PRESETS", "preset"]


@dataclass
class DetectorConfig:
    """Everything that defines a detector training run (stored in its checkpoints)."""

    arch: str = "resnet"                 # 'resnet' (direct regression) or 'heatmap'
    width: int = 64                      # channels of the first stage (64: ResNet-18 widths)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    input_size: int = 128
    heatmap_stride: int = 4              # heatmap arch: 2 or 4
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"           # 'constant' (the paper's Adam) or 'onecycle'
    patience: int = 20                   # epochs without validation improvement before stopping
    val_fraction: float = 0.05
    mirror_loss: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    time_limit_minutes: float = 0.0      # 0: no limit (else training stops when its time reaches it)
    max_train_samples: int = 0           # 0: all of the training split (after the validation share)
    seed: int = 0
    num_threads: int = 0                 # torch threads; 0: the process's count (fluororeg.core.threads)
    channels_last: bool = False

    def __post_init__(self):
        if self.arch not in ("resnet", "heatmap"):
            raise ValueError(f"arch '{self.arch}' is unknown: expected 'resnet' or 'heatmap'")
        if self.schedule not in ("constant", "onecycle"):
            raise ValueError(f"schedule '{self.schedule}' is unknown: expected 'constant' or 'onecycle'")
        if self.heatmap_stride not in (2, 4):
            raise ValueError(f"heatmap_stride {self.heatmap_stride}: expected 2 or 4")
        if self.input_size < 32 or self.input_size % 16:
            raise ValueError(f"input_size {self.input_size}: expected a multiple of 16, at least 32")
        for name in ("width", "epochs", "batch_size"):
            v = getattr(self, name)  # a whole number, also from a JSON or TOML float such as 60.0
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v < 1:
                raise ValueError(f"{name}={v!r}: expected an integer >= 1")
            setattr(self, name, int(v))
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction {self.val_fraction}: expected in (0, 0.5)")
        if not (math.isfinite(self.time_limit_minutes) and self.time_limit_minutes >= 0):
            raise ValueError(f"time_limit_minutes = {self.time_limit_minutes!r}: expected a number >= 0 (0: no limit)")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_json(self.augment)
        self.blocks = tuple(int(b) for b in self.blocks)
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks {self.blocks}: expected 4 stage depths >= 1")

    def to_json(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_json()
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DetectorConfig":
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown detector option(s) {sorted(unknown)}")
        return cls(**d)

    def model_json(self) -> dict:
        """The options that define the network (what export and inference need)."""
        return {k: self.to_json()[k] for k in ("arch", "width", "blocks", "input_size", "heatmap_stride")}


PRESETS = {
    # The paper: ResNet (~11 M parameters), 128 x 128, Adam lr 1e-3, up to 300 epochs with
    # early stopping; augmentation on (our default; pass augment=AugmentConfig.off() to match
    # the paper's plain training).
    "paper": dict(arch="resnet", width=64, input_size=128, epochs=300, batch_size=32, lr=1e-3,
                  schedule="constant", patience=20),
    # CPU preset: a narrow ResNet regressor (width 32, ~2.8 M parameters) on 64 x 64 inputs
    # (pre-shrunk once in memory), a one-cycle learning rate over its 60 epochs of work (the same
    # on any machine: no wall-clock limit unless one is asked for; with one, the schedule follows
    # steps or time, whichever is further, so a run cut by it still ends annealed), light
    # augmentation. Measured on 2 CPU cores (benchmarks/bench_training.py, the default dataset:
    # parallel beam, front-half azimuths): below 2 px at 8.8 min, 60 epochs in 10.8 min, test
    # error 1.39 px (strict labels), log10 MSE -3.57 train / -3.45 test; on the cone-beam
    # dataset 1.43 px in 11.7 min (120 epochs: 1.45 px, no gain). These figures predate the
    # intensifier augmentations (distortion, heel, scatter, bright field: issue 13); on a short
    # check (10 epochs on 1,500 cone-beam DRRs of the example) they raised the DRR test error
    # from 3.17 to 3.45 px, the price of training for X-ray looks.
    "fast": dict(arch="resnet", width=32, input_size=64, epochs=60, batch_size=32,
                 lr=2e-3, weight_decay=1e-4, schedule="onecycle", patience=1000,
                 augment=AugmentConfig.light()),
}


def preset(name: str, **overrides) -> DetectorConfig:
    """A :class:`DetectorConfig` from a preset name ('paper', 'fast') with overrides."""
    if name not in PRESETS:
        raise ValueError(f"preset '{name}' is unknown: expected one of {sorted(PRESETS)}")
    return DetectorConfig(**{**PRESETS[name], **overrides})
