"""X-ray <-> DRR style translation: a CycleGAN with the paper's content-preserving loss.

The detector is trained on DRRs only; X-ray crops are translated to DRR style before
detection (the paper's Section 2.2). Networks (Zhu et al. 2017, the CycleGAN reference code):

- :class:`ResnetGenerator`: c7s1-w, d2w, d4w, ``blocks`` residual blocks (6 for 128 x 128),
  u2w, uw, c7s1-1, tanh; instance normalisation (no affine, no running statistics),
  reflection padding. ``w = 64`` in the paper preset.
- :class:`PatchDiscriminator`: the 70 x 70 PatchGAN (C64-C128-C256-C512, 4 x 4 convolutions,
  LeakyReLU 0.2, instance normalisation except on the first layer), one score per patch.

Losses per step (unpaired real X-ray ``rX`` and real DRR ``rD``, 1 x 128 x 128 in [-1, 1]);
``G`` maps X-ray -> DRR, ``F`` DRR -> X-ray, fakes ``fD = G(rX)``, ``fX = F(rD)``:

- adversarial (LSGAN, mean squared error): ``(D_D(fD) - 1)^2 + (D_X(fX) - 1)^2``;
  discriminators ``((D(real) - 1)^2 + D(fake)^2) / 2`` on fakes drawn from a pool of the last
  50 fakes (half the time the new fake, half an older one);
- cycle (L1, ``lambda_cycle = 10``): ``|F(fD) - rX| + |G(fX) - rD|``;
- content-preserving (Eq. 1, in place of CycleGAN's identity loss):
  ``l_cp = 1 - (phi(rX, fD) + phi(rD, fX)) / 2`` with ``phi`` the zero-normalised gradient
  correlation (:mod:`.gradient_correlation`, Sobel). Weight ``lambda_cp = 5``: the paper does
  not give one; 5 is the weight of the identity loss it replaces (``0.5 * lambda_cycle``).
  **Polarity**: fluoroscopy shows attenuation dark, our DRRs bright, so a content-preserving
  translation has *negative* gradient correlation with its input. ``xray_polarity = -1``
  (default) flips the X-ray side inside ``phi`` (``phi(-rX, fD)``, ``phi(rD, -fX)``), so
  ``l_cp = 0`` for a perfect, inverted-contrast translation; ``+1`` is Eq. 1 literally, for
  X-ray crops that were inverted beforehand.

Optimisation: Adam, lr 2e-4, betas (0.5, 0.999), batch size 1; the learning rate is constant
for the first ``epochs`` and falls linearly to 0 over ``epochs_decay`` (CycleGAN: 100 + 100);
an epoch is ``max(n_xray, n_drr)`` samples. Random horizontal flips of both domains.
``ema_decay`` > 0 keeps an exponential moving average of both generators' weights (decay
``min(ema_decay, (1 + t) / (10 + t))`` at step t, as in progressive GANs), which is what is
exported and snapshotted: with batch size 1 the generators' translations drift from one
thousand steps to the next, and the average smooths that out. Measured on the example
subject (fast preset, 6,000 steps, snapshots every 500, four test recordings): over the
snapshots of steps 500-3,500 the per-recording median landmark error of the registrations
spread over 3.4-7.2 mm without averaging and 3.6-5.0 mm with ``ema_decay = 0.999``; but the
raw snapshot chosen on a validation recording (step 3,000: 3.4-4.4 mm) beat the averaged one
chosen the same way (step 1,000: 3.9-4.3 mm), and both degraded in the last 2,000 steps. So
averaging is off by default and snapshot selection (:mod:`fluororeg.training.style_selection`) does
the choosing.

Training (:func:`train_style`) shows a progress bar, logs to ``run_dir/log.csv`` with loss
plots (``losses.png``) and sample translations (``samples.png``), saves
``checkpoint_last.pt`` every ``checkpoint_every`` steps, on Ctrl-C and at the end, and resumes
from it. With ``snapshot_every`` it also keeps both generators every that many steps under
``snapshots/step_NNNNNN.pt``: the adversarial and cycle losses do not tell when a translation
moves structures, so the snapshot to use is chosen afterwards by what the detector makes of
its translations (:mod:`fluororeg.training.style_selection`). :func:`export_generators` writes both generators as ONNX with the metadata inference
checks; :class:`StyleTranslator` runs one through onnxruntime (no torch needed).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from fluororeg.training.common import GracefulStop, TrainLog, load_checkpoint, require_torch, save_checkpoint

__all__ = ["StyleConfig", "PRESETS", "ResnetGenerator", "PatchDiscriminator", "ImagePool", "content_loss", "build_networks",
           "train_style", "discard_run", "load_generators", "export_generators", "StyleTranslator", "DIRECTIONS", "INPUT_NORMALISATION"]

DIRECTIONS = ("xray_to_drr", "drr_to_xray")
INPUT_NORMALISATION = "x / 127.5 - 1 (grey levels [0, 255] -> [-1, 1])"
OUTPUT_DESCRIPTION = "translated: [n, 1, H, W] in [-1, 1] (tanh); grey level = (y + 1) * 127.5"
CHECKPOINT_KIND = "style_translator"
ARCH_KEYS = ("image_size", "gen_width", "gen_blocks", "disc_width", "disc_layers")
GENERATOR_KEYS = ("G_xd", "G_dx")  # X-ray -> DRR, DRR -> X-ray (the DIRECTIONS' order)


@dataclass(frozen=True)
class StyleConfig:
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
    snapshot_every: int = 0      # steps between kept generator snapshots (0: none; see train_style)
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
    def preset(cls, name: str = "paper", **overrides) -> "StyleConfig":
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is unknown: expected one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown StyleConfig fields {sorted(unknown)}")
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


# --------------------------------------------------------------------------------------- networks

def _build_classes():
    torch = require_torch()
    nn = torch.nn

    class ResBlock(nn.Module):
        def __init__(self, ch: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(True),
                nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

        def forward(self, x):
            return x + self.body(x)

    class ResnetGenerator(nn.Module):
        """CycleGAN ResNet generator (see the module docstring); 1 channel in and out."""

        def __init__(self, width: int = 64, blocks: int = 6, channels: int = 1):
            super().__init__()
            w = int(width)
            layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True)]
            for m in (1, 2):  # d2w, d4w
                layers += [nn.Conv2d(w * m, w * m * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(w * m * 2),
                           nn.ReLU(True)]
            layers += [ResBlock(w * 4) for _ in range(int(blocks))]
            for m in (4, 2):  # u2w, uw
                layers += [nn.ConvTranspose2d(w * m, w * m // 2, 3, stride=2, padding=1, output_padding=1),
                           nn.InstanceNorm2d(w * m // 2), nn.ReLU(True)]
            layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
            self.model = nn.Sequential(*layers)
            self.width, self.blocks = w, int(blocks)

        def forward(self, x):
            return self.model(x)

    class PatchDiscriminator(nn.Module):
        """PatchGAN discriminator (70 x 70 receptive field with ``layers = 3``)."""

        def __init__(self, width: int = 64, layers: int = 3, channels: int = 1):
            super().__init__()
            w = int(width)
            seq = [nn.Conv2d(channels, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            mult = 1
            for n in range(1, int(layers)):
                prev, mult = mult, min(2 ** n, 8)
                seq += [nn.Conv2d(w * prev, w * mult, 4, stride=2, padding=1), nn.InstanceNorm2d(w * mult),
                        nn.LeakyReLU(0.2, True)]
            prev, mult = mult, min(2 ** int(layers), 8)
            seq += [nn.Conv2d(w * prev, w * mult, 4, stride=1, padding=1), nn.InstanceNorm2d(w * mult),
                    nn.LeakyReLU(0.2, True), nn.Conv2d(w * mult, 1, 4, stride=1, padding=1)]
            self.model = nn.Sequential(*seq)

        def forward(self, x):
            return self.model(x)

    return ResnetGenerator, PatchDiscriminator


_CLASSES = None


def _classes():
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _build_classes()
    return _CLASSES


def __getattr__(name):  # ResnetGenerator / PatchDiscriminator resolve lazily: torch is optional
    if name == "ResnetGenerator":
        return _classes()[0]
    if name == "PatchDiscriminator":
        return _classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _init_weights(module, gain: float = 0.02):
    """CycleGAN's init: N(0, 0.02) weights, zero biases."""
    torch = require_torch()
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def build_networks(config: StyleConfig) -> dict:
    """The four networks: ``G_xd`` (X-ray -> DRR), ``G_dx`` (DRR -> X-ray), ``D_x``, ``D_d``."""
    Gen, Disc = _classes()
    nets = {"G_xd": Gen(config.gen_width, config.gen_blocks), "G_dx": Gen(config.gen_width, config.gen_blocks),
            "D_x": Disc(config.disc_width, config.disc_layers), "D_d": Disc(config.disc_width, config.disc_layers)}
    for net in nets.values():
        _init_weights(net)
    return nets


class ImagePool:
    """History of generated images (Shrivastava et al. 2017), as in CycleGAN: until full each
    new fake is stored and returned; then with probability 1/2 a random stored fake is returned
    and replaced by the new one."""

    def __init__(self, size: int = 50, images=None):
        self.size = int(size)
        self.images = list(images or [])

    def query(self, batch, rng: np.random.Generator):
        torch = require_torch()
        if self.size == 0:
            return batch
        out = []
        for img in batch.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif rng.random() < 0.5:
                k = int(rng.integers(len(self.images)))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)


def content_loss(real_x, fake_d, real_d, fake_x, xray_polarity: int = -1):
    """Eq. 1: ``1 - (phi(rX, fD) + phi(rD, fX)) / 2`` averaged over the batch, with the X-ray
    side multiplied by ``xray_polarity``. Returns ``(loss, phi_xd, phi_dx)`` (tensors)."""
    from fluororeg.training.gradient_correlation import gradient_correlation_torch as gc

    phi_xd = gc(xray_polarity * real_x, fake_d).mean()
    phi_dx = gc(real_d, xray_polarity * fake_x).mean()
    return 1.0 - 0.5 * (phi_xd + phi_dx), phi_xd, phi_dx


# ------------------------------------------------------------------------------------------- data

def _load_xrays(source, size: int, progress: bool) -> np.ndarray:
    if isinstance(source, np.ndarray) and source.ndim == 3 and source.dtype == np.uint8 \
            and source.shape[1:] == (size, size):
        return source  # ready crops
    from fluororeg.inference.crops import xray_crops

    return xray_crops(source, size, progress=progress)


def _load_drrs(source, size: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        images = source
    else:
        from fluororeg.dataset.generate import DatasetReader

        reader = DatasetReader(source, "train")
        if len(reader) == 0:
            raise ValueError(f"DRR dataset '{source}' has no training images")
        images = np.concatenate([b["image"] for b in reader.batches(512, shuffle=False)])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"DRR images have shape {images.shape} and dtype {images.dtype}: expected uint8 [n, H, W]")
    if images.shape[1:] != (size, size):
        raise ValueError(f"DRR images are {images.shape[2]} x {images.shape[1]} px but image_size is {size}: "
                         "generate the dataset with the same image_size")
    if len(images) == 0:
        raise ValueError("no DRR images")
    return images


def _to_tensor(images: np.ndarray, idx: np.ndarray, flips: np.ndarray):
    torch = require_torch()
    x = images[idx].astype(np.float32) / 127.5 - 1.0
    x[flips] = x[flips, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(x))[:, None]


def _save_samples(path, rows) -> None:
    """A PNG grid: one row per sample (real X-ray, fake DRR, reconstructed X-ray, real DRR,
    fake X-ray, reconstructed DRR)."""
    from PIL import Image

    tiles = [np.concatenate([np.clip((t[0] + 1) * 127.5, 0, 255).astype(np.uint8) for t in r], axis=1)
             for r in rows]
    img = np.concatenate(tiles, axis=0)
    scale = max(1, 128 // (img.shape[0] // len(rows)))  # small test images are enlarged
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.Resampling.NEAREST).save(path)


# --------------------------------------------------------------------------------------- training

def _check_resume(saved: dict, config: StyleConfig, path: Path) -> None:
    if saved.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"'{path}' is a {saved.get('kind')!r} checkpoint, expected {CHECKPOINT_KIND!r}")
    old = saved["config"]
    diff = {k: (old.get(k), getattr(config, k)) for k in ARCH_KEYS if old.get(k) != getattr(config, k)}
    if diff:
        raise ValueError(f"cannot resume '{path}': the architecture differs from the checkpoint's "
                         f"(checkpoint, config): {diff}; use a new run folder or resume=False")


def train_style(xray_source, drr_dataset_root, run_dir, config: StyleConfig = StyleConfig(), *,
                resume: bool = True, progress: bool = True, max_steps: int | None = None,
                num_threads: int | None = None) -> dict:
    """Train the style translator (see the module docstring).

    ``xray_source``: uint8 crops [n, S, S] (S = ``config.image_size``), or anything
    :func:`fluororeg.inference.crops.xray_crops` reads (recording folders, image folders,
    arrays of frames, lists of these). ``drr_dataset_root``: a :mod:`fluororeg.dataset.generate` folder
    (its train split) or uint8 DRR images [n, S, S]. ``run_dir``: the run folder; with
    ``resume`` an existing ``checkpoint_last.pt`` there is continued (same architecture; the
    config's other settings, e.g. more steps, apply), without it an existing checkpoint is an
    error. ``max_steps``: stop after this many steps in this call (the schedule still follows
    the config). ``num_threads``: torch CPU threads for this call (default: torch's; 1 is
    much faster for small networks on a busy machine). Returns a summary dict (``step``,
    ``total_steps``, ``stopped``, ``checkpoint``, ``samples_per_s``, ``last`` log row).
    """
    torch = require_torch()
    if not isinstance(config, StyleConfig):
        raise TypeError(f"config must be a StyleConfig, got {type(config).__name__}")
    if num_threads is None:
        return _train(torch, xray_source, drr_dataset_root, run_dir, config, resume, progress, max_steps)
    if not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"num_threads {num_threads!r}: expected None or an integer >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        return _train(torch, xray_source, drr_dataset_root, run_dir, config, resume, progress, max_steps)
    finally:
        torch.set_num_threads(before)


def discard_run(run_dir) -> None:
    """Delete a style training run's state in ``run_dir`` (checkpoint, snapshots, log, plots) so
    that :func:`train_style` starts over there; other files are left alone."""
    run_dir = Path(run_dir)
    for name in ("checkpoint_last.pt", "log.csv", "losses.png", "samples.png"):
        (run_dir / name).unlink(missing_ok=True)
    for snap in run_dir.glob("snapshots/step_*.pt"):
        snap.unlink()


def _train(torch, xray_source, drr_dataset_root, run_dir, config, resume, progress, max_steps) -> dict:
    from tqdm import tqdm

    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint_last.pt"
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"'{run_dir}' already holds a training run ({ckpt_path.name}): pass resume=True "
                              "to continue it, or choose a new run folder")
    saved = None
    if ckpt_path.exists():
        saved = load_checkpoint(ckpt_path)
        _check_resume(saved, config, ckpt_path)

    S = config.image_size
    xrays = _load_xrays(xray_source, S, progress)
    drrs = _load_drrs(drr_dataset_root, S)
    total = config.total_steps(len(xrays), len(drrs))
    per_epoch = max(len(xrays), len(drrs)) / config.batch_size

    torch.manual_seed(config.seed)
    nets = build_networks(config)
    G_xd, G_dx, D_x, D_d = nets["G_xd"], nets["G_dx"], nets["D_x"], nets["D_d"]
    g_params = list(G_xd.parameters()) + list(G_dx.parameters())
    d_params = list(D_x.parameters()) + list(D_d.parameters())
    opt_G = torch.optim.Adam(g_params, lr=config.lr, betas=(config.beta1, config.beta2))
    opt_D = torch.optim.Adam(d_params, lr=config.lr, betas=(config.beta1, config.beta2))
    rng = np.random.default_rng(config.seed)
    pool_x, pool_d = ImagePool(config.pool_size), ImagePool(config.pool_size)
    step = 0
    ema = {}  # averaged generators (config.ema_decay > 0)
    if config.ema_decay > 0:
        import copy

        ema = {k: copy.deepcopy(nets[k]).requires_grad_(False) for k in GENERATOR_KEYS}
    if saved is not None:
        for name, net in nets.items():
            net.load_state_dict(saved["nets"][name])
        for name, net in ema.items():
            net.load_state_dict(saved["ema"][name] if saved.get("ema") else saved["nets"][name])
        opt_G.load_state_dict(saved["opt_G"])
        opt_D.load_state_dict(saved["opt_D"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        pool_x, pool_d = ImagePool(config.pool_size, saved["pool_x"]), ImagePool(config.pool_size, saved["pool_d"])
        step = int(saved["step"])
        if saved.get("data") != {"n_xray": len(xrays), "n_drr": len(drrs)}:
            print(f"note: resuming with different data ({saved.get('data')} -> "
                  f"{{'n_xray': {len(xrays)}, 'n_drr': {len(drrs)}}})", flush=True)
    log = TrainLog(run_dir)
    if saved is None and log.path.exists():
        log.path.unlink()  # a log without a checkpoint belongs to a run that never checkpointed
        log = TrainLog(run_dir)
    elif saved is not None and log.path.exists():
        rows = log.rows()  # drop rows logged after the checkpoint (a crash between the two)
        keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
        if len(keep) != len(rows):
            import csv

            with log.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=log.columns)
                writer.writeheader()
                writer.writerows(keep)

    def checkpoint():
        save_checkpoint(ckpt_path, {
            "kind": CHECKPOINT_KIND, "config": asdict(config), "step": step, "total_steps": total,
            "nets": {k: v.state_dict() for k, v in nets.items()}, "opt_G": opt_G.state_dict(),
            "opt_D": opt_D.state_dict(), "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "pool_x": pool_x.images, "pool_d": pool_d.images, "ema": {k: v.state_dict() for k, v in ema.items()},
            "data": {"n_xray": len(xrays), "n_drr": len(drrs)}})

    def update_ema():
        decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for k, avg in ema.items():
                for pa, p in zip(avg.parameters(), nets[k].parameters()):
                    pa.mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    mse, l1 = torch.nn.functional.mse_loss, torch.nn.functional.l1_loss
    sums: dict[str, float] = {}
    n_sum = 0
    last_row: dict = {}
    t_window = time.perf_counter()
    t_total, samples_total = 0.0, 0
    stop_at = total if max_steps is None else min(total, step + int(max_steps))
    stopped = False
    for net in nets.values():
        net.train()
    bar = tqdm(total=total, initial=step, desc="style", unit="step", disable=not progress)
    with GracefulStop() as stop:
        while step < stop_at:
            B = config.batch_size
            ix = rng.integers(len(xrays), size=B)
            idd = rng.integers(len(drrs), size=B)
            flips = rng.random((2, B)) < 0.5 if config.flip else np.zeros((2, B), bool)
            real_x, real_d = _to_tensor(xrays, ix, flips[0]), _to_tensor(drrs, idd, flips[1])
            lr = config.lr_at(step, total)
            for opt in (opt_G, opt_D):
                for group in opt.param_groups:
                    group["lr"] = lr

            # generators
            for p in d_params:
                p.requires_grad_(False)
            fake_d = G_xd(real_x)
            fake_x = G_dx(real_d)
            rec_x = G_dx(fake_d)
            rec_d = G_xd(fake_x)
            pred_fd, pred_fx = D_d(fake_d), D_x(fake_x)
            adv = mse(pred_fd, torch.ones_like(pred_fd)) + mse(pred_fx, torch.ones_like(pred_fx))
            cyc = l1(rec_x, real_x) + l1(rec_d, real_d)
            cp, phi_xd, phi_dx = content_loss(real_x, fake_d, real_d, fake_x, config.xray_polarity)
            loss_G = config.lambda_adv * adv + config.lambda_cycle * cyc + config.lambda_cp * cp
            opt_G.zero_grad(set_to_none=True)
            loss_G.backward()
            opt_G.step()
            if ema:
                update_ema()

            # discriminators
            for p in d_params:
                p.requires_grad_(True)
            old_d = pool_d.query(fake_d, rng)
            old_x = pool_x.query(fake_x, rng)
            pr_d, pf_d = D_d(real_d), D_d(old_d)
            pr_x, pf_x = D_x(real_x), D_x(old_x)
            loss_Dd = 0.5 * (mse(pr_d, torch.ones_like(pr_d)) + mse(pf_d, torch.zeros_like(pf_d)))
            loss_Dx = 0.5 * (mse(pr_x, torch.ones_like(pr_x)) + mse(pf_x, torch.zeros_like(pf_x)))
            loss_D = loss_Dd + loss_Dx
            opt_D.zero_grad(set_to_none=True)
            loss_D.backward()
            opt_D.step()

            step += 1
            values = {"loss_G": loss_G.item(), "loss_D": loss_D.item(), "adversarial": adv.item(),
                      "cycle": cyc.item(), "content": cp.item(), "phi_xray_to_drr": phi_xd.item(),
                      "phi_drr_to_xray": phi_dx.item()}
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"training diverged at step {step}: {values}")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            bar.update(1)
            if step % config.log_every == 0 or step == stop_at or stop.stop_requested:
                now = time.perf_counter()
                sps = n_sum * B / max(now - t_window, 1e-9)
                t_total += now - t_window
                samples_total += n_sum * B
                last_row = {"step": step, "epoch": round(step / per_epoch, 4), "lr": lr,
                            **{k: round(v / n_sum, 6) for k, v in sums.items()}, "samples_per_s": round(sps, 3)}
                log.append(last_row)
                log.plot("step", ["loss_G", "loss_D", "cycle", "content"], title="style translator losses")
                _save_samples(run_dir / "samples.png",
                              [[t[0].detach().cpu().numpy() for t in (real_x, fake_d, rec_x, real_d, fake_x, rec_d)]])
                bar.set_postfix(G=f"{last_row['loss_G']:.3f}", D=f"{last_row['loss_D']:.3f}",
                                cyc=f"{last_row['cycle']:.3f}", cp=f"{last_row['content']:.3f}")
                sums, n_sum = {}, 0
                t_window = time.perf_counter()
            if step % config.checkpoint_every == 0:
                checkpoint()
            if config.snapshot_every and step % config.snapshot_every == 0:
                save_checkpoint(run_dir / "snapshots" / f"step_{step:06d}.pt", {
                    "kind": CHECKPOINT_KIND, "config": asdict(config), "step": step, "total_steps": total,
                    "nets": {k: (ema or nets)[k].state_dict() for k in GENERATOR_KEYS}})
            if stop.stop_requested:
                stopped = True
                break
    bar.close()
    checkpoint()
    return {"run_dir": run_dir, "step": step, "total_steps": total, "stopped": stopped, "checkpoint": ckpt_path,
            "samples_per_s": samples_total / t_total if t_total > 0 else float("nan"), "last": last_row}


# ----------------------------------------------------------------------------------------- export

def load_generators(run_dir_or_checkpoint) -> tuple[dict, StyleConfig, dict]:
    """``({'xray_to_drr': G, 'drr_to_xray': F}, config, checkpoint)`` from a run folder, a
    checkpoint or a snapshot file (eval mode, CPU); the averaged generators where the run keeps
    them (``ema_decay``)."""
    p = Path(run_dir_or_checkpoint)
    path = p / "checkpoint_last.pt" if p.is_dir() else p
    saved = load_checkpoint(path)
    if saved.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"'{path}' is a {saved.get('kind')!r} checkpoint, expected {CHECKPOINT_KIND!r}")
    known = {f.name for f in fields(StyleConfig)}
    config = StyleConfig(**{k: v for k, v in saved["config"].items() if k in known})
    Gen, _ = _classes()
    weights = saved.get("ema") or saved["nets"]
    gens = {}
    for direction, key in zip(DIRECTIONS, GENERATOR_KEYS):
        g = Gen(config.gen_width, config.gen_blocks)
        g.load_state_dict(weights[key])
        gens[direction] = g.eval()
    return gens, config, saved


def export_generators(run_dir_or_checkpoint, out_dir, *, opset: int = 17) -> tuple[Path, Path]:
    """Export both generators as ``out_dir/xray_to_drr.onnx`` and ``out_dir/drr_to_xray.onnx``
    (dynamic batch; input ``image`` [n, 1, S, S], output ``translated``) with metadata:
    ``fluororeg_kind='style_generator'``, ``direction``, ``input_size``, ``input_normalisation``,
    ``output``, ``input_domain``/``output_domain``, ``xray_polarity``, ``architecture``,
    ``training_step``. Returns the two paths."""
    torch = require_torch()
    from fluororeg.training.export import export_onnx

    gens, config, saved = load_generators(run_dir_or_checkpoint)
    S = config.image_size
    domains = {"xray": "X-ray crop (fluororeg.inference.crops.prepare_crop; attenuation dark)",
               "drr": "DRR style (fluororeg.dataset.generate images; attenuation bright)"}
    out = []
    for direction, gen in gens.items():
        src, dst = direction.split("_to_")
        meta = {"fluororeg_kind": "style_generator", "direction": direction, "input_size": f"{S},{S}",
                "input_normalisation": INPUT_NORMALISATION, "output": OUTPUT_DESCRIPTION,
                "input_domain": domains[src], "output_domain": domains[dst],
                "xray_polarity": str(config.xray_polarity),
                "architecture": {"generator": "resnet", "width": config.gen_width, "blocks": config.gen_blocks,
                                 "norm": "instance", "padding": "reflection"},
                "training_step": str(int(saved["step"]))}
        example = torch.zeros(1, 1, S, S)
        with warnings.catch_warnings():
            # instance norm always normalises with the input's own statistics (no running
            # statistics): exporting it "with train=True" is what it does in eval mode too
            warnings.filterwarnings("ignore", message=".*instance_norm.*")
            warnings.filterwarnings("ignore", message=".*Constant folding.*")
            warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python boolean.*")
            out.append(export_onnx(gen, example, Path(out_dir) / f"{direction}.onnx", meta, input_name="image",
                                   output_names=("translated",), opset=opset))
    return out[0], out[1]


# -------------------------------------------------------------------------------------- inference

class StyleTranslator:
    """An exported style generator run by onnxruntime (no torch needed).

    ``direction`` (optional) must match the model's; the model must be a ``style_generator``
    with one input [n, 1, S, S], one output of the same shape and the expected input
    normalisation, else ValueError. :meth:`translate` maps uint8 images [n, S, S] (or one
    [S, S]) to uint8 images of the same shape, in batches of ``batch_size``.
    """

    def __init__(self, path, device: str = "auto", *, direction: str | None = None, batch_size: int = 16,
                 num_threads: int = 0):
        from fluororeg.inference.onnx_model import OnnxModel

        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is unknown: expected one of {DIRECTIONS}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected an integer >= 1")
        self.model = OnnxModel(path, kind="style_generator", device=device, num_threads=num_threads)
        meta = self.model.meta
        self.direction = meta.get("direction")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"'{path}' has direction {self.direction!r}: expected one of {DIRECTIONS}")
        if direction is not None and direction != self.direction:
            raise ValueError(f"'{path}' translates {self.direction}, expected {direction}")
        if meta.get("input_normalisation") != INPUT_NORMALISATION:
            raise ValueError(f"'{path}' expects input normalisation {meta.get('input_normalisation')!r}, "
                             f"this translator supports {INPUT_NORMALISATION!r}")
        self.input_size = self.model.input_size
        if len(self.input_size) != 2:
            raise ValueError(f"'{path}': input size {self.input_size}, expected (H, W)")
        outs = self.model.session.get_outputs()
        if len(outs) != 1:
            raise ValueError(f"'{path}' has {len(outs)} outputs, expected 1 translated image")
        shape = outs[0].shape
        if len(shape) != 4 or [s for s in shape[1:]] != [1, *self.input_size]:
            raise ValueError(f"'{path}': output shape {shape} does not match its input [n, 1, "
                             f"{self.input_size[0]}, {self.input_size[1]}]")
        in_shape = self.model.input_shape
        if len(in_shape) != 4 or in_shape[1] != 1:
            raise ValueError(f"'{path}': input shape {in_shape}, expected [n, 1, H, W]")
        self.batch_size = int(batch_size)
        self.meta = meta

    def translate(self, images) -> np.ndarray:
        a = np.asarray(images)
        single = a.ndim == 2
        if single:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"images have shape {a.shape}: expected [n, H, W] or [H, W]")
        if tuple(a.shape[1:]) != tuple(self.input_size):
            raise ValueError(f"images are {a.shape[1]} x {a.shape[2]} px but the model takes "
                             f"{self.input_size[0]} x {self.input_size[1]} (crop with "
                             "fluororeg.inference.crops.prepare_crop(size=...))")
        if a.dtype != np.uint8:
            if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
                raise TypeError(f"images have dtype {a.dtype}: expected uint8 grey levels")
            if a.size and not (np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 255):
                raise ValueError("images must be grey levels in [0, 255] (uint8)")
        out = np.empty(a.shape, np.uint8)
        for b in range(0, len(a), self.batch_size):
            x = a[b:b + self.batch_size].astype(np.float32)[:, None] / 127.5 - 1.0
            y = self.model.run(x)[self.model.output_names[0]][:, 0]
            out[b:b + self.batch_size] = np.clip(np.round((y + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return out[0] if single else out
