"""The landmark detector: training (torch), evaluation, ONNX export and onnxruntime inference.

Two architectures, both plain torch (no model zoo):

* ``arch='resnet'`` — the paper's network: a ResNet-18-like regressor (basic blocks, widths
  ``w, 2w, 4w, 8w`` with ``w = width``; ``width=64`` gives about 11 M trainable parameters for
  33 landmarks), global average pooling and a linear layer with ``2 L`` outputs: the landmarks
  in network coordinates. It has no confidence of its own: its ``confidence`` output is 1.
* ``arch='heatmap'`` — a lighter ResNet encoder with a small feature-pyramid decoder that
  produces one heatmap per landmark at 1/``heatmap_stride`` of the input resolution; a spatial
  softmax and its expectation (soft-argmax, integral regression) give the coordinates, and the
  probability mass in the 3 x 3 cells around the peak gives a per-landmark confidence in [0, 1].

Conventions. Inputs are uint8 images mapped to ``x / 127.5 - 1`` in [-1, 1]. Coordinates are
network coordinates of the network's own input size ``N``: ``n = (p - (N-1)/2) / ((N-1)/2)``
(p 0-based pixels, x = column, y = row). When the network's input size differs from an image's
size, the image is padded to a square (centred, zero = black) and resampled to ``N x N`` with
pixel edges aligned (the outer boundary of the image maps onto the outer boundary of the input);
:func:`convert_norm` / :meth:`LandmarkDetector.detect` convert coordinates accordingly.

Loss. MSE in network coordinates over the *visible* landmarks only: a landmark projected
outside the image has no meaningful target (the paper's MSE over all 66 outputs presumably
includes them; we mask them out and report both). With ``mirror_loss=True`` the loss of each
image is the smaller of the loss against its labels and against its labels with every
left/right pair swapped. It is meant for datasets whose azimuths cover the full circle: a
parallel DRR seen from behind is the mirror image of one seen from the front, so left and right
can then only be told apart from small asymmetries (the registration resolves the swap anyway:
it solves the 4 mirror combinations, see :mod:`fluororeg.core.registration`). The default datasets
see the subject from its front half only (see :mod:`fluororeg.dataset.generate`), where the labels are a
function of the image and the plain loss is right. Reported errors are strict (against the true
labels) and, as ``*_mirror``, up to that swap.

Training keeps the dataset in memory (uint8; the paper's 9751 samples take ~160 MB), splits a
validation share off the training split (early stopping on its loss, best checkpoint kept),
logs one CSV row per epoch with plots of its losses, shows progress (tqdm), stops cleanly on
Ctrl-C and resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fluororeg.training.augment import AugmentConfig, augment_batch

__all__ = ["DetectorConfig", "TrainResult", "PRESETS", "preset", "build_model", "count_parameters",
           "train_detector", "evaluate_detector", "export_detector", "LandmarkDetector", "convert_norm",
           "DETECTOR_KIND", "OUTPUT_NAMES"]

DETECTOR_KIND = "landmark_detector"
OUTPUT_NAMES = ("landmarks", "confidence")
INPUT_NORMALISATION = "x / 127.5 - 1 (uint8 [0, 255] -> [-1, 1])"


# ============================================================================ configuration
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
    num_threads: int = 0                 # 0: torch's default
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
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
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
    # (pre-shrunk once in memory), a one-cycle learning rate (driven by steps or by the 20-minute
    # time limit, whichever is further, so a run cut by the limit still ends annealed), light
    # augmentation. Measured on 2 CPU cores (benchmarks/bench_training.py, the default dataset:
    # parallel beam, front-half azimuths): below 2 px at 8.8 min, 60 epochs in 10.8 min, test
    # error 1.39 px (strict labels), log10 MSE -3.57 train / -3.45 test; on the cone-beam
    # dataset 1.43 px in 11.7 min (120 epochs: 1.45 px, no gain).
    "fast": dict(arch="resnet", width=32, input_size=64, epochs=60, batch_size=32,
                 lr=2e-3, weight_decay=1e-4, schedule="onecycle", patience=1000,
                 augment=AugmentConfig.light(), time_limit_minutes=20.0),
}


def preset(name: str, **overrides) -> DetectorConfig:
    """A :class:`DetectorConfig` from a preset name ('paper', 'fast') with overrides."""
    if name not in PRESETS:
        raise ValueError(f"preset '{name}' is unknown: expected one of {sorted(PRESETS)}")
    return DetectorConfig(**{**PRESETS[name], **overrides})


# ============================================================================ coordinates
def convert_norm(n, from_size, to_size):
    """Network coordinates of an ``from_size``-pixel axis to those of a ``to_size``-pixel axis
    of the same extent (pixel edges aligned): ``n * (N_from - 1) / N_from * N_to / (N_to - 1)``."""
    return np.asarray(n) * ((from_size - 1) / from_size) * (to_size / (to_size - 1))


def _norm_to_px(n, size):
    half = (size - 1) / 2
    return np.asarray(n) * half + half


# ============================================================================ networks
def _torch():
    from fluororeg.training.common import require_torch

    return require_torch()


def build_model(config: DetectorConfig, n_landmarks: int):
    """The torch module of ``config`` for ``n_landmarks``; ``forward(x [n,1,N,N])`` returns
    ``(landmarks [n, L, 2] network coordinates, confidence [n, L])``."""
    torch = _torch()
    nn = torch.nn
    if n_landmarks < 1:
        raise ValueError(f"n_landmarks {n_landmarks}: expected >= 1")

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    def stage(cin, cout, n, stride):
        return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout, 1) for _ in range(n - 1)])

    w, B, L = int(config.width), config.blocks, int(n_landmarks)

    class ResNetRegressor(nn.Module):
        """ResNet-18 layout: 7x7/2 stem, max-pool, 4 stages of basic blocks, avg-pool, linear."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
            self.layer1 = stage(w, w, B[0], 1)
            self.layer2 = stage(w, 2 * w, B[1], 2)
            self.layer3 = stage(2 * w, 4 * w, B[2], 2)
            self.layer4 = stage(4 * w, 8 * w, B[3], 2)
            self.fc = nn.Linear(8 * w, 2 * L)
            nn.init.zeros_(self.fc.bias)
            nn.init.normal_(self.fc.weight, std=1e-3)

        def forward(self, x):
            y = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
            y = self.fc(torch.flatten(torch.mean(y, dim=(2, 3), keepdim=True), 1))
            lm = y.view(-1, L, 2)
            return lm, torch.ones_like(lm[..., 0])

    N, S = int(config.input_size), int(config.heatmap_stride)

    class HeatmapNet(nn.Module):
        """Encoder (3x3/2 stem, stages at strides 2, 4, 8, 16), top-down decoder with lateral
        connections to stride ``S``, 1x1 head to L heatmaps, soft-argmax."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            self.layer1 = stage(w, w, B[0], 1)            # /2
            self.layer2 = stage(w, 2 * w, B[1], 2)        # /4
            self.layer3 = stage(2 * w, 4 * w, B[2], 2)    # /8
            self.layer4 = stage(4 * w, 8 * w, B[3], 2)    # /16
            d = 2 * w
            self.lat4 = nn.Conv2d(8 * w, d, 1)
            self.lat3 = nn.Conv2d(4 * w, d, 1)
            self.lat2 = nn.Conv2d(2 * w, d, 1)
            self.lat1 = nn.Conv2d(w, d, 1) if S == 2 else None
            self.smooth = nn.Sequential(nn.Conv2d(d, d, 3, 1, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True),
                                        nn.Conv2d(d, d, 3, 1, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
            self.head = nn.Conv2d(d, L, 1)
            M = N // S
            # Cell centres in input pixels: p = j S + (S - 1) / 2, in network coordinates.
            c = (torch.arange(M, dtype=torch.float32) * S + (S - 1) / 2 - (N - 1) / 2) / ((N - 1) / 2)
            self.register_buffer("grid", c, persistent=False)

        def forward(self, x):
            F = torch.nn.functional
            f1 = self.layer1(self.stem(x))
            f2 = self.layer2(f1)
            f3 = self.layer3(f2)
            f4 = self.layer4(f3)
            y = self.lat4(f4)
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lat3(f3)
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lat2(f2)
            if self.lat1 is not None:
                y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lat1(f1)
            h = self.head(self.smooth(y))                      # [n, L, M, M]
            n_, _, M1, M2 = h.shape
            p = torch.softmax(h.reshape(n_, L, M1 * M2), dim=-1).reshape(n_, L, M1, M2)
            px = p.sum(dim=2)                                  # [n, L, M2] marginal over rows
            py = p.sum(dim=3)                                  # [n, L, M1]
            xs = (px * self.grid[:M2]).sum(-1)
            ys = (py * self.grid[:M1]).sum(-1)
            conf = F.avg_pool2d(p, 3, 1, 1, count_include_pad=True) * 9.0
            conf = conf.reshape(n_, L, M1 * M2).amax(dim=-1)
            return torch.stack([xs, ys], dim=-1), conf.clamp(0.0, 1.0)

    return ResNetRegressor() if config.arch == "resnet" else HeatmapNet()


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


# ============================================================================ data
def _resize_uint8_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 [n, H, W] -> [n, size, size] uint8 (area resampling; pixel edges aligned)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    torch = _torch()
    out = np.empty((len(images), size, size), np.uint8)
    for s in range(0, len(images), 1024):
        t = torch.from_numpy(images[s:s + 1024]).float()[:, None]
        r = torch.nn.functional.interpolate(t, size=(size, size), mode="area" if size < images.shape[1] else "bilinear",
                                            **({} if size < images.shape[1] else {"align_corners": False}))
        out[s:s + 1024] = r[:, 0].round().clamp(0, 255).byte().numpy()
    return out


def _load_split(root, split: str, max_samples: int = 0) -> dict[str, np.ndarray]:
    from fluororeg.dataset.generate import DatasetReader

    reader = DatasetReader(root, split)
    parts = {"image": [], "landmarks_norm": [], "visible": []}
    total = 0
    for b in reader.batches(1024, shuffle=False):
        for k in parts:
            parts[k].append(b[k])
        total += len(b["image"])
        if max_samples and total >= max_samples:
            break
    data = {k: np.concatenate(v) for k, v in parts.items()}
    if max_samples:
        data = {k: v[:max_samples] for k, v in data.items()}
    return data


def _mirror_perm(meta: dict) -> np.ndarray:
    names = list(meta["landmark_names"])
    perm = np.arange(len(names))
    for a, b in meta.get("pairs", []):
        ia = a if isinstance(a, int) else names.index(a)
        ib = b if isinstance(b, int) else names.index(b)
        perm[ia], perm[ib] = ib, ia
    return perm


def _masked_loss(torch, pred, target, visible, perm=None):
    """Per-sample MSE over visible coordinates; with ``perm`` the min over the two labellings."""
    m = visible.float()[..., None]
    def one(t, mm):
        se = ((pred - t) ** 2 * mm).sum(dim=(1, 2))
        return se / (2 * mm.sum(dim=(1, 2))).clamp_min(1.0)
    loss = one(target, m)
    if perm is not None:
        loss = torch.minimum(loss, one(target[:, perm], m[:, perm]))
    return loss


# ============================================================================ training
@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    log_path: Path
    plot_path: Optional[Path]
    best_val_loss: float
    best_epoch: int
    epochs_done: int
    train_seconds: float
    stopped_early: bool
    interrupted: bool
    history: list = field(default_factory=list)


def _make_optimiser(torch, model, config, steps_per_epoch):
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _scheduled_lr(config, step, steps_per_epoch, train_seconds) -> float:
    """The learning rate of ``config.schedule``. 'onecycle': linear warm-up from lr/10 to lr over
    the first 15 % of the run, then cosine decay to lr/1000; the run's progress is the larger of
    its step fraction and, with a time limit, its training-time fraction, so a run cut by its
    time limit still ends annealed whatever the machine's speed."""
    if config.schedule == "constant":
        return config.lr
    progress = step / max(1, config.epochs * steps_per_epoch)
    if config.time_limit_minutes > 0:
        progress = max(progress, train_seconds / (60 * config.time_limit_minutes))
    progress = min(progress, 1.0)
    if progress < 0.15:
        return config.lr * (0.1 + 0.9 * progress / 0.15)
    t = (progress - 0.15) / 0.85
    return config.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * t)))


def _to_input(torch, images_u8, config):
    x = torch.from_numpy(images_u8).float()[:, None] / 255.0
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _predict_norm(torch, model, images_u8, config, batch_size=256):
    """Network-coordinate predictions (of the network's input size) and confidences."""
    model.eval()
    outs, confs = [], []
    with torch.no_grad():
        for s in range(0, len(images_u8), batch_size):
            x = _to_input(torch, images_u8[s:s + batch_size], config) * 2.0 - 1.0
            lm, conf = model(x)
            outs.append(lm.numpy())
            confs.append(conf.numpy())
    return np.concatenate(outs), np.concatenate(confs)


def _metrics(pred_norm_ds, conf, target_norm, visible, perm, size) -> dict:
    """Metrics in the dataset's network coordinates / pixels (``size``-pixel images)."""
    half = (size - 1) / 2
    d2 = ((pred_norm_ds - target_norm) ** 2).sum(-1)                 # [n, L]
    d2m = ((pred_norm_ds - target_norm[:, perm]) ** 2).sum(-1)
    vis, vism = visible, visible[:, perm]
    mse_vis = float((d2 * vis).sum() / max(2 * vis.sum(), 1))
    mse_all = float(d2.mean() / 2)
    px = np.sqrt(d2) * half
    pxm = np.sqrt(d2m) * half
    # Per image: keep the labelling with the smaller mean visible error.
    per_img = (px * vis).sum(1) / np.maximum(vis.sum(1), 1)
    per_img_m = (pxm * vism).sum(1) / np.maximum(vism.sum(1), 1)
    swap = per_img_m < per_img
    pxbest = np.where(swap[:, None], pxm, px)
    visbest = np.where(swap[:, None], vism, vis)
    d2best = np.where(swap[:, None], d2m, d2)
    mse_mirror = float((d2best * visbest).sum() / max(2 * visbest.sum(), 1))
    e = px[vis]
    eb = pxbest[visbest]
    return {
        "n_images": int(len(pred_norm_ds)),
        "n_visible": int(vis.sum()),
        "mse": mse_vis,
        "log10_mse": float(np.log10(max(mse_vis, 1e-30))),
        "mse_all": mse_all,
        "log10_mse_all": float(np.log10(max(mse_all, 1e-30))),
        "mean_px": float(e.mean()) if e.size else float("nan"),
        "median_px": float(np.median(e)) if e.size else float("nan"),
        "p90_px": float(np.percentile(e, 90)) if e.size else float("nan"),
        "log10_mse_mirror": float(np.log10(max(mse_mirror, 1e-30))),
        "mean_px_mirror": float(eb.mean()) if eb.size else float("nan"),
        "median_px_mirror": float(np.median(eb)) if eb.size else float("nan"),
        "mirrored_share": float(swap.mean()),
        "mean_confidence": float(conf[vis].mean()) if e.size else float("nan"),
    }


def _eval_arrays(torch, model, config, images_u8_net, target_norm_ds, visible, perm, ds_size) -> dict:
    pred, conf = _predict_norm(torch, model, images_u8_net, config)
    pred_ds = convert_norm(pred, config.input_size, ds_size)
    return _metrics(pred_ds, conf, target_norm_ds, visible, perm, ds_size)


def train_detector(dataset_root, run_dir, config: DetectorConfig | str = "paper", *, resume: bool = True,
                   progress: bool = True, on_epoch_end: Callable[[dict, object], None] | None = None) -> TrainResult:
    """Train (or resume) a detector on the dataset at ``dataset_root`` into ``run_dir``.

    ``config`` is a :class:`DetectorConfig` or a preset name. Each epoch: train on the training
    split minus a validation share (augmented), evaluate the validation share, log a CSV row
    (``log.csv``) and redraw ``losses.png``, save ``checkpoint_last.pt`` and, when the
    validation loss improves, ``checkpoint_best.pt``. Stops after ``config.epochs``, after
    ``patience`` epochs without improvement, when its training time (cumulative over resumes)
    reaches ``time_limit_minutes`` (the last, partial epoch is evaluated and logged), or on Ctrl-C (saves,
    then returns with ``interrupted=True``); running again resumes from ``checkpoint_last.pt``
    (``resume=False`` starts over). ``on_epoch_end(row, model)`` is called after each epoch
    (e.g. to evaluate the test split for a curve; its time is not counted as training time).
    """
    torch = _torch()
    from tqdm import tqdm

    from fluororeg.training.common import GracefulStop, TrainLog, load_checkpoint, save_checkpoint

    if isinstance(config, str):
        config = preset(config)
    if not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig or a preset name, got {type(config).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "checkpoint_last.pt", run_dir / "checkpoint_best.pt"
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    torch.set_flush_denormal(True)  # subnormal floats slow CPU training by up to 10x

    from fluororeg.dataset.generate import DatasetReader

    meta = DatasetReader(dataset_root, "train").meta
    names = list(meta["landmark_names"])
    L = len(names)
    ds_size = int(meta["config"]["image_size"])
    perm = _mirror_perm(meta)

    state = None
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        if state.get("config") != config.to_json():
            raise ValueError(f"{run_dir} holds a run with another configuration; pass resume=False to start over "
                             "or choose another run folder")
        if state.get("subject_fingerprint") != meta["subject_fingerprint"]:
            raise ValueError(f"{run_dir} holds a run on another subject's dataset; choose another run folder")
        if "dataset_config" in state and state["dataset_config"] != meta["config"]:
            raise ValueError(f"{run_dir} holds a run on a dataset of another configuration (image size, projection, "
                             "poses, ...); pass resume=False (--restart) to start over or choose another run folder")
    elif not resume:
        for p in (last_path, best_path, run_dir / "log.csv", run_dir / "losses.png"):
            p.unlink(missing_ok=True)

    # Data in memory, pre-shrunk to the network size.
    data = _load_split(dataset_root, "train", 0)
    n_all = len(data["image"])
    order = np.random.default_rng(config.seed).permutation(n_all)
    n_val = max(1, int(round(config.val_fraction * n_all)))
    val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
    if config.max_train_samples:
        train_idx = train_idx[:config.max_train_samples]
    if len(train_idx) == 0:
        raise ValueError(f"the training split of '{dataset_root}' holds {n_all} sample(s), all taken for validation: "
                         "expected at least 2 (more for a useful detector)")
    train_idx = np.sort(train_idx)
    images_net = _resize_uint8_batch(data["image"], config.input_size)
    to_net = (ds_size - 1) / ds_size * config.input_size / (config.input_size - 1)
    tr_img = images_net[train_idx]
    tr_lm = torch.from_numpy(data["landmarks_norm"][train_idx] * to_net).float()
    tr_vis = torch.from_numpy(data["visible"][train_idx])
    va_img = images_net[val_idx]
    va_lm_ds, va_vis = data["landmarks_norm"][val_idx], data["visible"][val_idx]
    del data, images_net

    torch.manual_seed(config.seed)
    model = build_model(config, L)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(tr_img) // config.batch_size)
    opt = _make_optimiser(torch, model, config, steps_per_epoch)
    perm_t = torch.from_numpy(perm) if config.mirror_loss else None
    gen = torch.Generator().manual_seed(config.seed + 1)

    epoch, step, best_val, best_epoch, bad, train_seconds = 0, 0, math.inf, -1, 0, 0.0
    history = []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, step = state["epoch"], state["step"]
        best_val, best_epoch, bad = state["best_val_loss"], state["best_epoch"], state["bad_epochs"]
        train_seconds = state["train_seconds"]
        history = state.get("history", [])
        gen.set_state(state["generator"])
        if progress:
            print(f"resuming {run_dir} at epoch {epoch} (best validation loss {best_val:.3g} at epoch {best_epoch})")

    log = TrainLog(run_dir)

    def checkpoint(path):
        save_checkpoint(path, {
            "kind": DETECTOR_KIND, "config": config.to_json(), "landmark_names": names,
            "pairs": meta.get("pairs", []), "subject_fingerprint": meta["subject_fingerprint"],
            "dataset_image_size": ds_size, "dataset_config": meta["config"],
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "epoch": epoch, "step": step,
            "best_val_loss": best_val, "best_epoch": best_epoch, "bad_epochs": bad,
            "train_seconds": train_seconds, "generator": gen.get_state(), "history": history,
        })

    def finished():
        return (epoch >= config.epochs or bad >= config.patience
                or (config.time_limit_minutes > 0 and train_seconds >= 60 * config.time_limit_minutes))

    interrupted = False
    with GracefulStop() as stopper:
        while not finished() and not interrupted:
            model.train()
            rng = np.random.default_rng([config.seed, epoch])
            idx = rng.permutation(len(tr_img))[:steps_per_epoch * config.batch_size]
            t0 = time.perf_counter()
            losses = []
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                       leave=False, unit="step")
            for b in bar:
                sel = np.sort(idx[b * config.batch_size:(b + 1) * config.batch_size])
                x = torch.from_numpy(tr_img[sel]).float()[:, None] / 255.0
                y, vis = tr_lm[sel], tr_vis[sel]
                x, y, vis = augment_batch(x, y, vis, config.augment, perm=perm, generator=gen)
                x = x * 2.0 - 1.0
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = _scheduled_lr(config, step, steps_per_epoch, train_seconds + time.perf_counter() - t0)
                for group in opt.param_groups:
                    group["lr"] = lr
                pred, _ = model(x)
                loss = _masked_loss(torch, pred, y, vis, perm_t).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                losses.append(float(loss.detach()))
                if b % 10 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.2e}")
                if stopper.stop_requested:
                    interrupted = True
                    break
                if config.time_limit_minutes > 0 and train_seconds + time.perf_counter() - t0 >= 60 * config.time_limit_minutes:
                    break  # the time limit ends the run inside an epoch too
            bar.close()
            train_seconds += time.perf_counter() - t0
            if interrupted and b < steps_per_epoch - 1:
                checkpoint(last_path)  # mid-epoch: resume repeats this epoch from its start
                break
            epoch += 1
            val = _eval_arrays(torch, model, config, va_img, va_lm_ds, va_vis, perm, ds_size)
            val_loss = val["mse"]
            if config.mirror_loss:  # the criterion the network was trained on
                pred, _ = _predict_norm(torch, model, va_img, config)
                pl = _masked_loss(torch, torch.from_numpy(convert_norm(pred, config.input_size, ds_size)).float(),
                                  torch.from_numpy(va_lm_ds), torch.from_numpy(va_vis), perm_t)
                val_loss = float(pl.mean())
            improved = val_loss < best_val
            if improved:
                best_val, best_epoch, bad = val_loss, epoch, 0
            else:
                bad += 1
            row = {"epoch": epoch, "step": step, "train_seconds": round(train_seconds, 2),
                   "lr": opt.param_groups[0]["lr"], "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "val_loss": val_loss, "val_mean_px": val["mean_px"], "val_mean_px_mirror": val["mean_px_mirror"],
                   "samples_per_s": len(losses) * config.batch_size / max(time.perf_counter() - t0, 1e-9)}
            history.append(row)
            log.append(row)
            log.plot("epoch", ["train_loss", "val_loss"], title=f"detector ({config.arch}) losses")
            if improved:
                checkpoint(best_path)
            checkpoint(last_path)
            if progress:
                print(f"epoch {epoch}: train {row['train_loss']:.3e}  val {val_loss:.3e}  "
                      f"val {val['mean_px']:.2f} px (mirror-tolerant {val['mean_px_mirror']:.2f})  "
                      f"{train_seconds / 60:.1f} min{'  *' if improved else ''}", flush=True)
            if on_epoch_end is not None:
                on_epoch_end(row, model)
    if not best_path.exists() and last_path.exists():
        import shutil

        shutil.copyfile(last_path, best_path)
    return TrainResult(run_dir=run_dir, best_checkpoint=best_path, last_checkpoint=last_path,
                       log_path=log.path, plot_path=log.plot_path, best_val_loss=best_val, best_epoch=best_epoch,
                       epochs_done=epoch, train_seconds=train_seconds,
                       stopped_early=bad >= config.patience and epoch < config.epochs, interrupted=interrupted,
                       history=history)


# ============================================================================ loading / export
def _resolve_checkpoint(run_or_checkpoint, which: str = "best") -> Path:
    p = Path(run_or_checkpoint)
    if p.is_dir():
        p = p / f"checkpoint_{which}.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint '{p}' does not exist")
    return p


def load_detector_checkpoint(run_or_checkpoint, which: str = "best"):
    """``(model (eval, CPU), config, checkpoint dict)`` from a run folder or checkpoint file."""
    from fluororeg.training.common import load_checkpoint

    state = load_checkpoint(_resolve_checkpoint(run_or_checkpoint, which))
    if state.get("kind") != DETECTOR_KIND:
        raise ValueError(f"'{run_or_checkpoint}' is not a landmark-detector checkpoint (kind {state.get('kind')!r})")
    config = DetectorConfig.from_json(state["config"])
    model = build_model(config, len(state["landmark_names"]))
    model.load_state_dict(state["model"])
    return model.eval(), config, state


def export_detector(run_or_checkpoint, path, *, which: str = "best") -> Path:
    """Export a trained detector to ONNX with the metadata :class:`LandmarkDetector` needs:
    ``fluororeg_kind='landmark_detector'``, ``input_size``, ``input_normalisation``,
    ``landmark_names``, ``pairs``, ``subject_fingerprint``, ``architecture``, ``output`` (a
    description of the outputs ``landmarks`` [n, L, 2] and ``confidence`` [n, L])."""
    torch = _torch()
    from fluororeg.training.export import export_onnx

    model, config, state = load_detector_checkpoint(run_or_checkpoint, which)
    N = config.input_size
    example = torch.zeros(2, 1, N, N)
    meta = {
        "fluororeg_kind": DETECTOR_KIND,
        "input_size": f"{N},{N}",
        "input_normalisation": INPUT_NORMALISATION,
        "landmark_names": list(state["landmark_names"]),
        "pairs": state.get("pairs", []),
        "subject_fingerprint": state["subject_fingerprint"],
        "architecture": config.model_json(),
        "training_image_size": state.get("dataset_image_size", N),
        "output": ("landmarks [n, L, 2]: (x, y) network coordinates n = (p - (N-1)/2) / ((N-1)/2) of the "
                   "N x N input (x = column, y = row); confidence [n, L] in [0, 1] (heatmap peak mass; "
                   "1 for direct regression)"),
    }
    return export_onnx(model, example, path, meta, input_name="image", output_names=OUTPUT_NAMES)


# ============================================================================ inference
class LandmarkDetector:
    """An exported detector run with onnxruntime (no torch needed).

    ``LandmarkDetector(path, device='auto', subject=None)`` loads the model and checks its
    metadata and its input / output names and shapes; with ``subject`` it also checks that the
    landmark names and the subject fingerprint match (``ValueError`` otherwise).
    ``detect(images)`` takes uint8 ``[n, H, W]`` or ``[H, W]`` (floats are taken as [0, 255])
    and returns ``(xy_px [n, L, 2], confidence [n, L])`` in the pixels of the given images.
    Images of another size than the network's are padded to a square (centred, black) and
    resampled to the network size with pixel edges aligned; coordinates are mapped back.
    """

    def __init__(self, path, *, device: str = "auto", subject=None, batch_size: int = 64, num_threads: int = 0):
        from fluororeg.inference.onnx_model import OnnxModel

        self.model = OnnxModel(path, kind=DETECTOR_KIND, device=device, num_threads=num_threads)
        meta = self.model.meta
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.landmark_names = list(meta.get("landmark_names") or [])
        self.pairs = meta.get("pairs", [])
        self.subject_fingerprint = meta.get("subject_fingerprint")
        if not self.landmark_names:
            raise ValueError(f"'{path}' has no landmark_names metadata: not a fluororeg detector export")
        L = len(self.landmark_names)
        outs = {o.name: o.shape for o in self.model.session.get_outputs()}
        for name, tail in (("landmarks", [L, 2]), ("confidence", [L])):
            if name not in outs:
                raise ValueError(f"'{path}' has outputs {sorted(outs)}; expected {list(OUTPUT_NAMES)}")
            shape = outs[name]
            if len(shape) != len(tail) + 1 or any(isinstance(a, int) and a != b for a, b in zip(shape[1:], tail)):
                raise ValueError(f"'{path}': output '{name}' has shape {shape}, expected [n, {', '.join(map(str, tail))}] "
                                 f"for its {L} landmarks")
        in_shape = self.model.input_shape
        if len(in_shape) != 4 or in_shape[1] != 1:
            raise ValueError(f"'{path}': input shape {in_shape}, expected [n, 1, H, W]")
        self.input_size = self.model.input_size
        # Symbolic output shapes may hide a mismatch: probe once with a blank batch of two.
        probe = self.model.run(np.zeros((2, 1) + tuple(self.input_size), np.float32))
        for name, shape in (("landmarks", (2, L, 2)), ("confidence", (2, L))):
            if probe[name].shape != shape:
                raise ValueError(f"'{path}': output '{name}' has shape {probe[name].shape} for a batch of 2, "
                                 f"expected {shape} for its {L} landmarks")
        if subject is not None:
            self.check_subject(subject)

    def check_subject(self, subject) -> None:
        names = list(subject.landmark_names)
        if names != self.landmark_names:
            raise ValueError(f"detector '{self.path}' was trained for landmarks {self.landmark_names} "
                             f"but subject '{getattr(subject, 'name', '?')}' has {names}")
        fp = getattr(subject, "fingerprint", None)
        if self.subject_fingerprint and fp and fp != self.subject_fingerprint:
            raise ValueError(f"detector '{self.path}' was trained on subject fingerprint {self.subject_fingerprint}, "
                             f"not on subject '{getattr(subject, 'name', '?')}' (fingerprint {fp}); "
                             "train a detector on this subject's dataset")

    def _prepare(self, images: np.ndarray):
        n, H, W = images.shape
        S = max(H, W)
        N = self.input_size[0]
        if H != W:
            sq = np.zeros((n, S, S), np.float32)
            oy, ox = (S - H) // 2, (S - W) // 2
            sq[:, oy:oy + H, ox:ox + W] = images
        else:
            sq, oy, ox = images.astype(np.float32), 0, 0
        if S != N:
            sq = _resample_square(sq, N)
        return sq, S, ox, oy

    def detect(self, images) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(images)
        single = a.ndim == 2
        if single:
            a = a[None]
        if a.ndim != 3 or a.shape[0] < 1 or min(a.shape[1:]) < 2:
            raise ValueError(f"images have shape {np.shape(images)}: expected [H, W] or [n, H, W]")
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.number):
                raise TypeError(f"images have dtype {a.dtype}: expected uint8 (or numbers in [0, 255])")
            a = np.clip(a, 0, 255)
        N = self.input_size[0]
        xy, conf = [], []
        for s in range(0, len(a), self.batch_size):
            sq, S, ox, oy = self._prepare(a[s:s + self.batch_size])
            x = (sq / 127.5 - 1.0).astype(np.float32)[:, None]
            out = self.model.run(x)
            nrm = convert_norm(out["landmarks"].astype(np.float64), N, S)
            p = _norm_to_px(nrm, S)
            p[..., 0] -= ox
            p[..., 1] -= oy
            xy.append(p)
            conf.append(out["confidence"].astype(np.float64))
        xy, conf = np.concatenate(xy), np.concatenate(conf)
        return (xy[0], conf[0]) if single else (xy, conf)


def _resample_square(images: np.ndarray, N: int) -> np.ndarray:
    """Float [n, S, S] -> [n, N, N] with pixel edges aligned: area averaging when shrinking,
    bilinear (half-pixel centres) when enlarging. NumPy only (inference needs no torch)."""
    n, S, _ = images.shape
    if S == N:
        return images
    if S > N and S % N == 0:
        k = S // N
        return images.reshape(n, N, k, N, k).mean(axis=(2, 4))
    # Separable linear operator: area weights (shrink) or bilinear (enlarge).
    def matrix(S, N):
        Mx = np.zeros((N, S))
        if S > N:
            edges = np.linspace(0, S, N + 1)
            for i in range(N):
                lo, hi = edges[i], edges[i + 1]
                for j in range(int(np.floor(lo)), int(np.ceil(hi))):
                    Mx[i, j] = max(0.0, min(hi, j + 1) - max(lo, j))
            Mx /= Mx.sum(1, keepdims=True)
        else:
            c = (np.arange(N) + 0.5) * S / N - 0.5
            c = np.clip(c, 0, S - 1)
            j0 = np.floor(c).astype(int)
            j1 = np.minimum(j0 + 1, S - 1)
            f = c - j0
            Mx[np.arange(N), j0] += 1 - f
            Mx[np.arange(N), j1] += f
        return Mx
    M = matrix(S, N)
    return np.einsum("ij,njk,lk->nil", M, images, M, optimize=True).astype(np.float32)


# ============================================================================ evaluation
def evaluate_detector(model, dataset_root, split: str = "test", *, batch_size: int = 128,
                      max_samples: int = 0) -> dict:
    """Metrics of a detector on a dataset split (the dataset's pixels and network coordinates).

    ``model``: a run folder or checkpoint (evaluated with torch), a ``.onnx`` path or a
    :class:`LandmarkDetector` (onnxruntime), or a ``(torch module, DetectorConfig)`` pair.
    Returns ``log10_mse`` (MSE per coordinate in normalised coordinates over visible landmarks;
    the paper's figure), ``log10_mse_all`` (all landmarks, visible or not), ``mean_px``,
    ``median_px``, ``p90_px`` (Euclidean error of the visible landmarks in pixels), the same
    up to a left/right swap per image (``log10_mse_mirror``, ``*_px_mirror``: the labelling with
    the smaller error, as the registration's mirror solves pick; ``mirrored_share``: how often the
    swapped one) and ``mean_confidence``.
    """
    from fluororeg.dataset.generate import DatasetReader

    meta = DatasetReader(dataset_root, split).meta
    data = _load_split(dataset_root, split, max_samples)
    ds_size = int(meta["config"]["image_size"])
    perm = _mirror_perm(meta)
    names = list(meta["landmark_names"])
    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        model = LandmarkDetector(model)
    if isinstance(model, LandmarkDetector):
        if model.landmark_names != names:
            raise ValueError(f"the detector's landmarks {model.landmark_names} are not the dataset's {names}")
        xy, conf = model.detect(data["image"])
        pred = (xy - (ds_size - 1) / 2) / ((ds_size - 1) / 2)
        return _metrics(pred, conf, data["landmarks_norm"], data["visible"], perm, ds_size)
    torch = _torch()
    if isinstance(model, tuple):
        module, config = model
    else:
        module, config, state = load_detector_checkpoint(model)
        if list(state["landmark_names"]) != names:
            raise ValueError(f"the detector's landmarks {state['landmark_names']} are not the dataset's {names}")
    images = _resize_uint8_batch(data["image"], config.input_size)
    return _eval_arrays(torch, module, config, images, data["landmarks_norm"], data["visible"], perm, ds_size)
