"""The landmark detector's training data: a dataset split in memory, shrunk to the network size.

Training keeps the dataset in memory (uint8; the paper's 9751 samples take ~160 MB). When the
network's input size differs from the dataset's image size the images are resampled once
(area averaging when shrinking, bilinear when enlarging, pixel edges aligned), and targets are
converted with :func:`fluororeg.inference.coordinates.convert_norm`.
"""

from __future__ import annotations

import numpy as np
import torch

from fluororeg.dataset.generate import DatasetReader

__all__ = ["resize_uint8_batch", "load_split"]


def resize_uint8_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 [n, H, W] -> [n, size, size] uint8 (area resampling; pixel edges aligned)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size), np.uint8)
    for s in range(0, len(images), 1024):
        t = torch.from_numpy(images[s:s + 1024]).float()[:, None]
        r = torch.nn.functional.interpolate(t, size=(size, size), mode="area" if size < images.shape[1] else "bilinear",
                                            **({} if size < images.shape[1] else {"align_corners": False}))
        out[s:s + 1024] = r[:, 0].round().clamp(0, 255).byte().numpy()
    return out


def load_split(root, split: str, max_samples: int = 0) -> dict[str, np.ndarray]:
    """``{'image': uint8 [n, S, S], 'landmarks_norm': [n, L, 2], 'visible': bool [n, L]}`` of a
    dataset split (the first ``max_samples`` with ``max_samples`` > 0)."""
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
