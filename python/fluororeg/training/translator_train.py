"""Training the X-ray <-> DRR style translator: a CycleGAN with the paper's content-preserving loss.

The detector is trained on DRRs only; X-ray crops are translated to DRR style before
detection (the paper's Section 2.2). Networks: :mod:`.translator_networks`; losses:
:mod:`.translator_losses`; settings: :mod:`.translator_config`; export: :mod:`.translator_export`.

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
averaging is off by default and snapshot selection (:mod:`fluororeg.training.translator_selection`) does
the choosing.

Training (:func:`train_translator`) shows a progress bar, logs to ``run_dir/log.csv`` with loss
plots (``losses.png``) and sample translations (``samples.png``), saves
``checkpoint_last.pt`` every ``checkpoint_every`` steps, on Ctrl-C and at the end, and resumes
from it. With ``snapshot_every`` it also keeps both generators every that many steps under
``snapshots/step_NNNNNN.pt``: the adversarial and cycle losses do not tell when a translation
moves structures, so the snapshot to use is chosen afterwards by what the detector makes of
its translations (:mod:`fluororeg.training.translator_selection`).

X-ray training crops are made by the one crop rule (:mod:`fluororeg.inference.crops`, through
:func:`fluororeg.training.xray_crops.xray_training_crops`) at the DRR dataset's pixel size.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fluororeg.dataset.generate import DatasetReader
from fluororeg.io.run_lock import locks_folder
from fluororeg.training import common
from fluororeg.training.translator_config import ARCH_KEYS, TranslatorConfig
from fluororeg.training.translator_export import CHECKPOINT_KIND
from fluororeg.training.translator_losses import ImagePool, content_loss
from fluororeg.training.translator_networks import GENERATOR_KEYS, build_networks
from fluororeg.training.xray_crops import xray_training_crops

__all__ = ["train_translator", "discard_run"]


def _load_xrays(source, size: int, crop_pixel_mm: float | None) -> np.ndarray:
    """Ready uint8 crops [n, size, size], or recordings cropped by the one crop rule."""
    if isinstance(source, np.ndarray):
        if source.ndim == 3 and source.dtype == np.uint8 and source.shape[1:] == (size, size):
            return source  # ready crops
        raise ValueError(f"X-ray crops have shape {source.shape} and dtype {source.dtype}: expected uint8 "
                         f"[n, {size}, {size}] (fluororeg.training.xray_crops.xray_training_crops), or pass recordings")
    if crop_pixel_mm is None:
        raise ValueError("cropping X-ray recordings needs crop_pixel_mm (the DRRs' pixel size at the subject): pass "
                         "it, or the DRR dataset folder whose pixel_mm it is")
    return xray_training_crops(source, size, crop_pixel_mm)


def _load_drrs(source, size: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        images = source
    else:
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

def _check_resume(saved: dict, config: TranslatorConfig, path: Path) -> None:
    if saved.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"'{path}' is a {saved.get('kind')!r} checkpoint, expected {CHECKPOINT_KIND!r}")
    old = saved["config"]
    diff = {k: (old.get(k), getattr(config, k)) for k in ARCH_KEYS if old.get(k) != getattr(config, k)}
    if diff:
        raise ValueError(f"cannot resume '{path}': the architecture differs from the checkpoint's "
                         f"(checkpoint, config): {diff}; use a new run folder or resume=False")


@locks_folder("run_dir", "train-translator")  # one writer per run folder
def train_translator(xray_source, drr_dataset_root, run_dir, config: TranslatorConfig = TranslatorConfig(), *,
                resume: bool = True, progress: bool = True, max_steps: int | None = None,
                num_threads: int | None = None, crop_pixel_mm: float | None = None, device: str = "auto") -> dict:
    """Train the style translator (see the module docstring).

    ``xray_source``: uint8 crops [n, S, S] (S = ``config.image_size``), or recordings
    (folders, :class:`~fluororeg.io.recording.Recording` objects, lists of these) cropped by
    :func:`fluororeg.training.xray_crops.xray_training_crops` with ``crop_pixel_mm`` per pixel
    at the subject (default: the DRR dataset's ``pixel_mm``). ``drr_dataset_root``: a
    :mod:`fluororeg.dataset.generate` folder (its train split) or uint8 DRR images [n, S, S]. ``run_dir``: the run folder; with
    ``resume`` an existing ``checkpoint_last.pt`` there is continued (same architecture; the
    config's other settings, e.g. more steps, apply), without it an existing checkpoint is an
    error. ``max_steps``: stop after this many steps in this call (the schedule still follows
    the config). ``num_threads``: torch CPU threads for this call (default: the process's count,
    :mod:`fluororeg.core.threads`; 1 is much faster for small networks on a busy machine). ``device``: 'auto' (torch's CUDA when it
    sees a GPU, else the CPU), 'cpu' or 'cuda'. Returns a summary dict (``step``,
    ``total_steps``, ``stopped``, ``checkpoint``, ``samples_per_s``, ``last`` log row).
    """
    if not isinstance(config, TranslatorConfig):
        raise TypeError(f"config must be a TranslatorConfig, got {type(config).__name__}")
    if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads < 1):
        raise ValueError(f"num_threads {num_threads!r}: expected None or an integer >= 1")
    from fluororeg.core.threads import num_threads as process_threads

    before = torch.get_num_threads()
    torch.set_num_threads(process_threads(num_threads or 0))
    try:
        return _train(xray_source, drr_dataset_root, run_dir, config, resume, progress, max_steps, crop_pixel_mm,
                      device)
    finally:
        torch.set_num_threads(before)


def discard_run(run_dir) -> None:
    """Delete a style training run's state in ``run_dir`` (checkpoint, snapshots, log, plots) so
    that :func:`train_translator` starts over there; other files are left alone."""
    run_dir = Path(run_dir)
    for name in ("checkpoint_last.pt", "log.csv", "losses.png", "samples.png"):
        (run_dir / name).unlink(missing_ok=True)
    for snap in run_dir.glob("snapshots/step_*.pt"):
        snap.unlink()


def _train(xray_source, drr_dataset_root, run_dir, config, resume, progress, max_steps, crop_pixel_mm,
           device) -> dict:
    dev = common.resolve_device(device)
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint_last.pt"
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"'{run_dir}' already holds a training run ({ckpt_path.name}): pass resume=True "
                              "to continue it, or choose a new run folder")
    saved = None
    if ckpt_path.exists():
        saved = common.load_resume_checkpoint(ckpt_path)
        _check_resume(saved, config, ckpt_path)

    S = config.image_size
    drrs = _load_drrs(drr_dataset_root, S)
    if crop_pixel_mm is None and not isinstance(drr_dataset_root, np.ndarray):
        crop_pixel_mm = float(DatasetReader(drr_dataset_root, "train").meta["config"]["pixel_mm"])
    xrays = _load_xrays(xray_source, S, crop_pixel_mm)
    total = config.total_steps(len(xrays), len(drrs))
    per_epoch = max(len(xrays), len(drrs)) / config.batch_size

    torch.manual_seed(config.seed)
    nets = {k: net.to(dev) for k, net in build_networks(config).items()}
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
        pool_x = ImagePool(config.pool_size, [t.to(dev) for t in saved["pool_x"]])
        pool_d = ImagePool(config.pool_size, [t.to(dev) for t in saved["pool_d"]])
        step = int(saved["step"])
        if saved.get("data") != {"n_xray": len(xrays), "n_drr": len(drrs)}:
            print(f"note: resuming with different data ({saved.get('data')} -> "
                  f"{{'n_xray': {len(xrays)}, 'n_drr': {len(drrs)}}})", flush=True)
    log = common.TrainLog(run_dir)
    if saved is None and log.path.exists():
        log.path.unlink()  # a log without a checkpoint belongs to a run that never checkpointed
        log = common.TrainLog(run_dir)
    elif saved is not None and log.path.exists():
        rows = log.rows()  # drop rows logged after the checkpoint (a crash between the two)
        keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
        if len(keep) != len(rows):
            with log.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=log.columns)
                writer.writeheader()
                writer.writerows(keep)

    def checkpoint():
        common.save_checkpoint(ckpt_path, {
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
    with common.GracefulStop() as stop:
        while step < stop_at:
            B = config.batch_size
            ix = rng.integers(len(xrays), size=B)
            idd = rng.integers(len(drrs), size=B)
            flips = rng.random((2, B)) < 0.5 if config.flip else np.zeros((2, B), bool)
            real_x, real_d = _to_tensor(xrays, ix, flips[0]).to(dev), _to_tensor(drrs, idd, flips[1]).to(dev)
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
                common.save_checkpoint(run_dir / "snapshots" / f"step_{step:06d}.pt", {
                    "kind": CHECKPOINT_KIND, "config": asdict(config), "step": step, "total_steps": total,
                    "nets": {k: (ema or nets)[k].state_dict() for k in GENERATOR_KEYS}})
            if stop.stop_requested:
                stopped = True
                break
    bar.close()
    checkpoint()
    return {"run_dir": run_dir, "step": step, "total_steps": total, "stopped": stopped, "checkpoint": ckpt_path,
            "samples_per_s": samples_total / t_total if t_total > 0 else float("nan"), "last": last_row}
