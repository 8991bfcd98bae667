"""Exporting a trained landmark detector to ONNX for :class:`fluororeg.inference.detector.LandmarkDetector`."""

from __future__ import annotations

from pathlib import Path

import torch

from fluororeg.inference.detector import DETECTOR_KIND, INPUT_NORMALISATION, OUTPUT_DESCRIPTION, OUTPUT_NAMES
from fluororeg.training.detector_checkpoint import load_detector_checkpoint, training_figures
from fluororeg.training.export import export_onnx

__all__ = ["export_detector"]


def export_detector(run_or_checkpoint, path, *, which: str = "best") -> Path:
    """Export a trained detector to ONNX with the metadata :class:`LandmarkDetector` needs:
    ``fluororeg_kind='landmark_detector'``, ``input_size``, ``input_normalisation``,
    ``landmark_names``, ``pairs``, ``subject_fingerprint``, ``crop_pixel_mm`` (the pixel size
    at the bone of the training dataset's images, its ``dataset.json`` ``config.pixel_mm`` as
    :attr:`~fluororeg.dataset.generate.DatasetReader.crop_pixel_mm` reads it: the crop pixel
    size the pipeline must use), ``architecture``, ``output`` (a
    description of the outputs ``landmarks`` [n, L, 2] and ``confidence`` [n, L]) and
    ``training``: the run's quality figures (:func:`~.detector_checkpoint.training_figures`:
    validation error in px and mm at the bone, epochs, steps, ``cut_short``, the dataset's
    fingerprint)."""
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
        "crop_pixel_mm": _crop_pixel_mm(state),
        "architecture": config.model_json(),
        "training_image_size": state.get("dataset_image_size", N),
        "output": OUTPUT_DESCRIPTION,
        "training": training_figures(run_or_checkpoint, which),
    }
    return export_onnx(model, example, path, meta, input_name="image", output_names=OUTPUT_NAMES)


def _crop_pixel_mm(state: dict) -> float | None:
    """The training dataset's pixel size at the bone (mm): ``dataset.json`` ``config.pixel_mm``,
    which the checkpoint keeps as ``dataset_config``; None for a checkpoint without it."""
    value = (state.get("dataset_config") or {}).get("pixel_mm")
    return None if value is None else float(value)
