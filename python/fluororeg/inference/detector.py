"""The landmark detector at inference: an exported detector (ONNX) run with onnxruntime.

No torch: the network comes from :mod:`fluororeg.training` (``export_detector``) as an ONNX
file with metadata (:data:`DETECTOR_KIND`, input size and normalisation, landmark names and
pairs, the subject's fingerprint). Inputs are uint8 images mapped to ``x / 127.5 - 1``; the
outputs are ``landmarks`` [n, L, 2] in network coordinates of the network's own input size
(:mod:`fluororeg.inference.coordinates`) and ``confidence`` [n, L] in [0, 1]. The metadata
also carries ``crop_pixel_mm``, the training images' pixel size at the bone. Images of another
size than the network's are padded to a square (centred, black) and resampled to the network
size with pixel edges aligned (:func:`resample_square`); coordinates are mapped back to the
pixels of the given images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluororeg.inference.coordinates import convert_norm, norm_to_px
from fluororeg.inference.onnx_model import OnnxModel

__all__ = ["LandmarkDetector", "resample_square", "DETECTOR_KIND", "UNDERTRAINED_VAL_PX", "OUTPUT_NAMES", "INPUT_NORMALISATION",
           "OUTPUT_DESCRIPTION"]

DETECTOR_KIND = "landmark_detector"
# A detector whose validation error exceeds this many pixels (of its training images) is not
# trusted (``register`` refuses it without --allow-undertrained, the demo too): twice what the
# fast preset reaches on the cone-beam dataset (1.4-1.5 px, benchmarks/bench_training.py).
UNDERTRAINED_VAL_PX = 3.0
OUTPUT_NAMES = ("landmarks", "confidence")
INPUT_NORMALISATION = "x / 127.5 - 1 (uint8 [0, 255] -> [-1, 1])"
OUTPUT_DESCRIPTION = ("landmarks [n, L, 2]: (x, y) network coordinates n = (p - (N-1)/2) / ((N-1)/2) of the "
                      "N x N input (x = column, y = row); confidence [n, L] in [0, 1] (heatmap peak mass; "
                      "1 for direct regression)")


class LandmarkDetector:
    """An exported detector run with onnxruntime (no torch needed).

    ``LandmarkDetector(path, device='auto', subject=None)`` loads the model and checks its
    metadata and its input / output names and shapes; with ``subject`` it also checks that the
    landmark names and the subject fingerprint match (``ValueError`` otherwise).
    ``detect(images)`` takes uint8 ``[n, H, W]`` or ``[H, W]`` (floats are taken as [0, 255])
    and returns ``(xy_px [n, L, 2], confidence [n, L])`` in the pixels of the given images.
    ``crop_pixel_mm``: the pixel size at the bone (mm) of the images it was trained on, which
    the pipeline's crops must match (``PipelineOptions.crop_pixel_mm``); None for an export
    that predates it. Images of another size than the network's are padded to a square (centred, black) and
    resampled to the network size with pixel edges aligned; coordinates are mapped back.
    """

    def __init__(self, path, *, device: str = "auto", subject=None, batch_size: int = 64, num_threads: int = 0):
        self.model = OnnxModel(path, kind=DETECTOR_KIND, device=device, num_threads=num_threads)
        meta = self.model.meta
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.landmark_names = list(meta.get("landmark_names") or [])
        self.pairs = meta.get("pairs", [])
        self.subject_fingerprint = meta.get("subject_fingerprint")
        crop = meta.get("crop_pixel_mm")  # the training images' pixel size at the bone (mm); None: older export
        self.crop_pixel_mm = float(crop) if isinstance(crop, (int, float)) and np.isfinite(crop) and crop > 0 else None
        self.training = meta.get("training") if isinstance(meta.get("training"), dict) else None
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

    def undertrained(self, max_val_px: float = UNDERTRAINED_VAL_PX) -> str | None:
        """Why this detector is not to be trusted, or None: its training was cut short by a time
        cap, its validation error exceeds ``max_val_px`` pixels (of its training images), or it
        carries no training figures (an export older than them)."""
        t = self.training
        if t is None:
            return f"'{self.path}' carries no training figures (exported before they were recorded)"
        reasons = []
        if t.get("cut_short"):
            reasons.append(f"its training was cut short by a {t.get('time_limit_minutes')}-minute time limit after "
                           f"{t.get('epochs')} of {t.get('epochs_planned')} epochs")
        px = t.get("val_mean_px")
        if px is None or not px <= max_val_px:
            reasons.append(f"its validation error is {px} px, above the {max_val_px:g} px it should reach")
        return f"detector '{self.path}': " + "; ".join(reasons) if reasons else None

    def _prepare(self, images: np.ndarray):
        n, H, W = images.shape
        S = max(H, W)
        N = self.input_size[0]
        if H != W:
            sq = np.zeros((n, S, S), np.float32)
            oy, ox = (S - H) // 2, (S - W) // 2
            sq[:, oy:oy + H, ox:ox + W] = images
        else:
            sq, oy, ox = images.astype(np.float32, copy=False), 0, 0
        if S != N:
            sq = resample_square(sq, N)
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
            x = sq / 127.5  # float32 [n, N, N] in [-1, 1], one new array (not one per step)
            x -= 1.0
            out = self.model.run(x[:, None])
            nrm = convert_norm(out["landmarks"].astype(np.float64), N, S)
            p = norm_to_px(nrm, S)
            p[..., 0] -= ox
            p[..., 1] -= oy
            xy.append(p)
            conf.append(out["confidence"].astype(np.float64))
        xy, conf = np.concatenate(xy), np.concatenate(conf)
        return (xy[0], conf[0]) if single else (xy, conf)


def resample_square(images: np.ndarray, N: int) -> np.ndarray:
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
