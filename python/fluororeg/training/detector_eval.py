"""Evaluating a landmark detector: error metrics on a dataset split, with torch or onnxruntime.

:func:`metrics` works in the dataset's network coordinates and pixels: MSE per coordinate over
the visible landmarks (the paper's figure) and over all, Euclidean pixel errors of the visible
landmarks, and the same up to a left/right swap per image (strict labels vs. the labelling the
registration's mirror solves would pick).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fluororeg.dataset.generate import DatasetReader
from fluororeg.inference.coordinates import convert_norm, px_to_norm
from fluororeg.subject.sides import mirror_permutation
from fluororeg.inference.detector import LandmarkDetector
from fluororeg.training.detector_checkpoint import load_detector_checkpoint
from fluororeg.training.detector_data import load_split, resize_uint8_batch

__all__ = ["to_input", "predict_norm", "metrics", "eval_arrays", "evaluate_detector", "dataset_mirror_permutation"]


def dataset_mirror_permutation(meta: dict) -> np.ndarray:
    """The left/right permutation of a dataset's landmarks (from its ``dataset.json`` metadata)."""
    return mirror_permutation(meta["landmark_names"], meta.get("pairs", []))


def to_input(images_u8, config):
    """uint8 [n, N, N] -> float tensor [n, 1, N, N] in [0, 1] (the caller maps it to [-1, 1])."""
    x = torch.from_numpy(images_u8).float()[:, None] / 255.0
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def predict_norm(model, images_u8, config, batch_size=256):
    """Network-coordinate predictions (of the network's input size) and confidences."""
    model.eval()
    device = next(model.parameters()).device
    outs, confs = [], []
    with torch.no_grad():
        for s in range(0, len(images_u8), batch_size):
            x = to_input(images_u8[s:s + batch_size], config).to(device) * 2.0 - 1.0
            lm, conf = model(x)
            outs.append(lm.cpu().numpy())
            confs.append(conf.cpu().numpy())
    return np.concatenate(outs), np.concatenate(confs)


def metrics(pred_norm_ds, conf, target_norm, visible, perm, size) -> dict:
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


def eval_arrays(model, config, images_u8_net, target_norm_ds, visible, perm, ds_size) -> dict:
    """:func:`metrics` of a torch detector on images already resized to its input size."""
    pred, conf = predict_norm(model, images_u8_net, config)
    pred_ds = convert_norm(pred, config.input_size, ds_size)
    return metrics(pred_ds, conf, target_norm_ds, visible, perm, ds_size)


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
    meta = DatasetReader(dataset_root, split).meta
    data = load_split(dataset_root, split, max_samples)
    ds_size = int(meta["config"]["image_size"])
    perm = dataset_mirror_permutation(meta)
    names = list(meta["landmark_names"])
    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        model = LandmarkDetector(model)
    if isinstance(model, LandmarkDetector):
        if model.landmark_names != names:
            raise ValueError(f"the detector's landmarks {model.landmark_names} are not the dataset's {names}")
        xy, conf = model.detect(data["image"])
        pred = px_to_norm(xy, ds_size)
        return metrics(pred, conf, data["landmarks_norm"], data["visible"], perm, ds_size)
    if isinstance(model, tuple):
        module, config = model
    else:
        module, config, state = load_detector_checkpoint(model)
        if list(state["landmark_names"]) != names:
            raise ValueError(f"the detector's landmarks {state['landmark_names']} are not the dataset's {names}")
    images = resize_uint8_batch(data["image"], config.input_size)
    return eval_arrays(module, config, images, data["landmarks_norm"], data["visible"], perm, ds_size)
