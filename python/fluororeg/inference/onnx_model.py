"""ONNX inference with onnxruntime (no torch needed).

:class:`OnnxModel` loads an exported model, reads its fluororeg metadata, checks the input and
output names and shapes, and runs batches. The ``onnxruntime`` package is the default; with
the ``gpu`` extra (``onnxruntime-gpu``) the CUDA execution provider is used when present.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError("device='cuda' needs onnxruntime-gpu with its CUDA provider "
                               f"(available providers: {available})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    raise ValueError(f"device '{device}' is unknown: expected 'auto', 'cpu' or 'cuda'")


class OnnxModel:
    """An exported fluororeg network. ``kind`` (if given) must match the model's
    ``fluororeg_kind``; ``meta`` holds the parsed metadata."""

    def __init__(self, path, *, kind: str | None = None, device: str = "auto", num_threads: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        if self.path.is_dir():
            onnx = sorted(p.name for p in self.path.glob("*.onnx"))
            raise ValueError(f"model file '{self.path}' is a folder: give the .onnx file itself"
                             + (f" (the folder holds {', '.join(onnx[:4])})" if onnx else " (the folder holds no .onnx)"))
        if not self.path.is_file():
            raise FileNotFoundError(f"model file '{self.path}' does not exist")
        from fluororeg.core.threads import num_threads as process_threads

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = process_threads(num_threads)  # 0: the process's count (core.threads)
        # Idle threads of the pool sleep instead of spinning: the pipeline runs several chunks'
        # detections at once beside the core's threads, and spinning threads take their cores
        # (bench_long, 2 cores: detection 1.9-2.1 -> 1.3 ms per frame pair).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"'{self.path}' is not a loadable ONNX model: {exc}") from exc
        raw = self.session.get_modelmeta().custom_metadata_map
        self.meta = {}
        for key, value in raw.items():
            try:
                self.meta[key] = json.loads(value)
            except (json.JSONDecodeError, TypeError):
                self.meta[key] = value
        if kind is not None and self.meta.get("fluororeg_kind") != kind:
            raise ValueError(f"'{self.path}' is a {self.meta.get('fluororeg_kind')!r} model, expected {kind!r}")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(f"'{self.path}' has {len(inputs)} inputs, expected 1")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape  # e.g. ['batch', 1, 128, 128]
        self.output_names = [o.name for o in outputs]
        size = self.meta.get("input_size")
        if isinstance(size, str):
            size = [int(v) for v in size.split(",")]
        self.input_size = tuple(size) if size else tuple(int(s) for s in self.input_shape[2:4])
        if tuple(self.input_shape[2:4]) != self.input_size:
            raise ValueError(f"'{self.path}': input shape {self.input_shape} does not match its metadata "
                             f"input_size {self.input_size}")

    @functools.cached_property
    def digest(self) -> str:
        """sha256 hex digest of the model file (identifies the network in saved results)."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a float32 batch [n, 1, H, W] (already normalised as the metadata says)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        expected = (1,) + self.input_size
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"input batch has shape {x.shape}, expected (n, {', '.join(map(str, expected))})")
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs))
