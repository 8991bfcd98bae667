"""The style translator at inference: an exported CycleGAN generator (ONNX) run with onnxruntime.

No torch: the generators come from :mod:`fluororeg.training` (``export_translator``) as ONNX
files with metadata (:data:`STYLE_KIND`, ``direction`` one of :data:`DIRECTIONS`, input size
and normalisation). Grey levels [0, 255] map to ``x / 127.5 - 1``; the output is in [-1, 1]
(tanh) and maps back to ``(y + 1) * 127.5``. The X-ray side is what
:func:`fluororeg.inference.crops.view_crops` makes of a recording's frames (the one crop rule).
"""

from __future__ import annotations

import numpy as np

from fluororeg.inference.onnx_model import OnnxModel

__all__ = ["StyleTranslator", "preferred_style", "STYLE_KIND", "DIRECTIONS", "INPUT_NORMALISATION", "OUTPUT_DESCRIPTION"]

STYLE_KIND = "style_generator"
DIRECTIONS = ("xray_to_drr", "drr_to_xray")
INPUT_NORMALISATION = "x / 127.5 - 1 (grey levels [0, 255] -> [-1, 1])"
OUTPUT_DESCRIPTION = "translated: [n, 1, H, W] in [-1, 1] (tanh); grey level = (y + 1) * 127.5"


def preferred_style(verdict: dict | None) -> tuple[str, str | None]:
    """(style, why) of a snapshot selection's verdict (the ``selection`` metadata of an exported
    translator, :func:`fluororeg.training.translator_selection.select_translator_snapshot`):
    'translate', or the no-learning style that scored better, with the reason to print."""
    verdict = verdict or {}
    style = verdict.get("use_style", "translate")
    if style not in ("log", "invert"):
        return "translate", None

    def fmt(v) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) else str(v)

    base = verdict.get("baseline_scores", {}).get(style)
    return style, (f"its snapshot selection found no translation better than style '{style}' on the validation "
                   f"recording ({verdict.get('criterion', 'score')}: translator {fmt(verdict.get('snapshot_score'))}"
                   f", {style} {fmt(base)})")


class StyleTranslator:
    """An exported style generator run by onnxruntime (no torch needed).

    ``direction`` (optional) must match the model's; the model must be a ``style_generator``
    with one input [n, 1, S, S], one output of the same shape and the expected input
    normalisation, else ValueError. :meth:`translate` maps uint8 images [n, S, S] (or one
    [S, S]) to uint8 images of the same shape, in batches of ``batch_size``.
    """

    def __init__(self, path, device: str = "auto", *, direction: str | None = None, batch_size: int = 16,
                 num_threads: int = 0):
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is unknown: expected one of {DIRECTIONS}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected an integer >= 1")
        self.model = OnnxModel(path, kind=STYLE_KIND, device=device, num_threads=num_threads)
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

    @property
    def selection(self) -> dict | None:
        """The verdict of the snapshot selection that exported this generator
        (:func:`fluororeg.training.translator_selection.select_translator_snapshot`): ``criterion``,
        ``use_style`` ('translate', or the no-learning style that registered its validation
        recording better), the scores; None when it was exported without one."""
        import json

        raw = self.meta.get("selection")
        if raw is None:
            return None
        try:
            verdict = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return None
        return verdict if isinstance(verdict, dict) else None

    def preferred_style(self) -> tuple[str, str | None]:
        """(style, why): 'translate', or the no-learning style its selection found better on the
        validation recording, with the reason to print (:func:`preferred_style`)."""
        return preferred_style(self.selection)

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
                             "fluororeg.inference.crops.view_crops at the model's size)")
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
