"""Training the landmark detector (torch): the epoch loop with validation, early stopping,
logs, checkpoints, Ctrl-C and resume.

Training keeps the dataset in memory (:mod:`.detector_data`), splits a validation share off the
training split (early stopping on its loss, best checkpoint kept), minimises
:func:`~fluororeg.training.detector_loss.masked_loss`, logs one CSV row per epoch with plots of
its losses, shows progress (tqdm), stops cleanly on Ctrl-C and resumes from its last
checkpoint. Reported validation errors are strict (against the true labels) and, as
``*_mirror``, up to a left/right swap (:mod:`.detector_eval`).
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from fluororeg.core.threads import num_threads
from fluororeg.dataset.generate import DatasetReader
from fluororeg.inference.coordinates import convert_norm
from fluororeg.inference.detector import DETECTOR_KIND
from fluororeg.io.run_lock import locks_folder
from fluororeg.training import common
from fluororeg.training.augment import augment_batch
from fluororeg.training.detector_config import DetectorConfig, preset
from fluororeg.training.detector_data import load_split, resize_uint8_batch
from fluororeg.training.detector_eval import dataset_mirror_permutation, eval_arrays, predict_norm
from fluororeg.training.detector_loss import masked_loss
from fluororeg.training.detector_network import build_model

__all__ = ["TrainResult", "scheduled_lr", "train_detector"]


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
    cut_short: bool = False      # the wall-clock cap (time_limit_minutes) ended the run early
    steps: int = 0               # optimiser steps done


def scheduled_lr(config, step, steps_per_epoch, train_seconds) -> float:
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


@locks_folder("run_dir", "train-detector")  # one writer per run folder
def train_detector(dataset_root, run_dir, config: DetectorConfig | str = "paper", *, resume: bool = True,
                   progress: bool = True, on_epoch_end: Callable[[dict, object], None] | None = None,
                   device: str = "auto") -> TrainResult:
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
    ``device``: 'auto' (torch's CUDA when it sees a GPU, else the CPU), 'cpu' or 'cuda'.
    """
    if isinstance(config, str):
        config = preset(config)
    if not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig or a preset name, got {type(config).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "checkpoint_last.pt", run_dir / "checkpoint_best.pt"
    torch.set_num_threads(num_threads(config.num_threads))  # 0: the process's count (fluororeg.core.threads)
    torch.set_flush_denormal(True)  # subnormal floats slow CPU training by up to 10x

    meta = DatasetReader(dataset_root, "train").meta
    names = list(meta["landmark_names"])
    L = len(names)
    ds_size = int(meta["config"]["image_size"])
    perm = dataset_mirror_permutation(meta)

    state = None
    if resume and last_path.exists():
        state = common.load_resume_checkpoint(last_path)
        runtime = ("num_threads",)  # how fast, not what: a resume may use other thread counts
        if {k: v for k, v in (state.get("config") or {}).items() if k not in runtime} != \
                {k: v for k, v in config.to_json().items() if k not in runtime}:
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
    data = load_split(dataset_root, "train", 0)
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
    images_net = resize_uint8_batch(data["image"], config.input_size)
    tr_img = images_net[train_idx]
    tr_lm = torch.from_numpy(convert_norm(data["landmarks_norm"][train_idx], ds_size, config.input_size)).float()
    tr_vis = torch.from_numpy(data["visible"][train_idx])
    va_img = images_net[val_idx]
    va_lm_ds, va_vis = data["landmarks_norm"][val_idx], data["visible"][val_idx]
    del data, images_net

    torch.manual_seed(config.seed)
    dev = common.resolve_device(device)  # batches are made (and augmented) on the CPU, then moved
    model = build_model(config, L).to(dev)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(tr_img) // config.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    perm_cpu = torch.from_numpy(perm) if config.mirror_loss else None
    perm_t = perm_cpu.to(dev) if perm_cpu is not None else None
    gen = torch.Generator().manual_seed(config.seed + 1)

    epoch, step, best_val, best_epoch, bad, train_seconds = 0, 0, math.inf, -1, 0, 0.0
    epoch_batch, epoch_losses = 0, []  # batches (and their losses) of an interrupted epoch already done
    history = []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, step = state["epoch"], state["step"]
        best_val, best_epoch, bad = state["best_val_loss"], state["best_epoch"], state["bad_epochs"]
        train_seconds = state["train_seconds"]
        history = state.get("history", [])
        gen.set_state(state["generator"])
        epoch_batch, epoch_losses = int(state.get("epoch_batch", 0)), list(state.get("epoch_losses", []))
        if progress:
            print(f"resuming {run_dir} at epoch {epoch} (best validation loss {best_val:.3g} at epoch {best_epoch})")

    log = common.TrainLog(run_dir)

    def checkpoint(path):
        common.save_checkpoint(path, {
            "kind": DETECTOR_KIND, "config": config.to_json(), "landmark_names": names,
            "pairs": meta.get("pairs", []), "subject_fingerprint": meta["subject_fingerprint"],
            "dataset_image_size": ds_size, "dataset_config": meta["config"],
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "epoch": epoch, "step": step,
            "best_val_loss": best_val, "best_epoch": best_epoch, "bad_epochs": bad,
            "train_seconds": train_seconds, "generator": gen.get_state(), "history": history,
            "epoch_batch": epoch_batch, "epoch_losses": epoch_losses, "cut_short": cut_short(),
        })

    def time_limit_reached():
        return config.time_limit_minutes > 0 and train_seconds >= 60 * config.time_limit_minutes

    def cut_short():
        """The wall-clock cap ended the run before its epochs or its patience did."""
        return time_limit_reached() and epoch < config.epochs and bad < config.patience

    def finished():
        return epoch >= config.epochs or bad >= config.patience or time_limit_reached()

    interrupted = False
    with common.GracefulStop() as stopper:
        while not finished() and not interrupted:
            model.train()
            rng = np.random.default_rng([config.seed, epoch])
            idx = rng.permutation(len(tr_img))[:steps_per_epoch * config.batch_size]
            t0 = time.perf_counter()
            # A resumed epoch continues after its last finished batch: the same batches, augmentations
            # (the generator's state is in the checkpoint) and learning rates as without the interruption.
            first_batch, losses = epoch_batch, list(epoch_losses)
            epoch_batch, epoch_losses = 0, []
            bar = tqdm(range(first_batch, steps_per_epoch), total=steps_per_epoch, initial=first_batch,
                       desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False, unit="step")
            for b in bar:
                sel = np.sort(idx[b * config.batch_size:(b + 1) * config.batch_size])
                x = torch.from_numpy(tr_img[sel]).float()[:, None] / 255.0
                y, vis = tr_lm[sel], tr_vis[sel]
                x, y, vis = augment_batch(x, y, vis, config.augment, perm=perm, generator=gen)
                x, y, vis = x.to(dev), y.to(dev), vis.to(dev)
                x = x * 2.0 - 1.0
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = scheduled_lr(config, step, steps_per_epoch, train_seconds + time.perf_counter() - t0)
                for group in opt.param_groups:
                    group["lr"] = lr
                pred, _ = model(x)
                loss = masked_loss(pred, y, vis, perm_t).mean()
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
                epoch_batch, epoch_losses = b + 1, losses
                checkpoint(last_path)  # mid-epoch: a resume continues with batch b + 1
                break
            epoch += 1
            val = eval_arrays(model, config, va_img, va_lm_ds, va_vis, perm, ds_size)
            val_loss = val["mse"]
            if config.mirror_loss:  # the criterion the network was trained on
                pred, _ = predict_norm(model, va_img, config)
                pl = masked_loss(torch.from_numpy(convert_norm(pred, config.input_size, ds_size)).float(),
                                  torch.from_numpy(va_lm_ds), torch.from_numpy(va_vis), perm_cpu)
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
            if not finished() and stopper.stop_requested:  # Ctrl-C during validation: stop here, saved
                interrupted = True
    if cut_short():
        best_px = next((h["val_mean_px"] for h in history if h["epoch"] == best_epoch), float("nan"))
        message = (f"detector training was CUT SHORT by its {config.time_limit_minutes:g}-minute time limit after "
                   f"{epoch} of {config.epochs} epochs (best validation error {best_px:.2f} px); the exported model "
                   "records cut_short=true")
        warnings.warn(message, stacklevel=2)
        if progress:
            print(f"WARNING: {message}", flush=True)
    if not best_path.exists() and last_path.exists() and epoch > 0:
        shutil.copyfile(last_path, best_path)  # (never an untrained model: no epoch, no best checkpoint)
    return TrainResult(run_dir=run_dir, best_checkpoint=best_path, last_checkpoint=last_path,
                       log_path=log.path, plot_path=log.plot_path, best_val_loss=best_val, best_epoch=best_epoch,
                       epochs_done=epoch, train_seconds=train_seconds,
                       stopped_early=bad >= config.patience and epoch < config.epochs, interrupted=interrupted,
                       history=history, cut_short=cut_short(), steps=step)
