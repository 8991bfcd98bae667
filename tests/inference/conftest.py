"""Tiny ONNX models built with the ``onnx`` package's helper API (no torch, nothing binary in
the repository), with the metadata fluororeg's exports carry.

- :func:`spot_detector`: a real, if simple, landmark detector: a soft-argmax over the input's
  brightness (temperature ``sharpness``) gives one point in network coordinates, repeated for
  every landmark; its confidence is the softmax's peak mass. A bright spot at pixel p of the
  network input is detected at p, which exercises the pixel <-> network coordinate
  conversions and the resampling of other image sizes.
- :func:`inverting_translator`: a style generator that maps x -> -x (grey level g -> 255 - g).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fluororeg.inference.coordinates import px_to_norm

OPSET = 17
DETECTOR_NORMALISATION = "x / 127.5 - 1 (uint8 [0, 255] -> [-1, 1])"   # fluororeg.inference.detector's
STYLE_NORMALISATION = "x / 127.5 - 1 (grey levels [0, 255] -> [-1, 1])"  # fluororeg.inference.translator's


def _onnx():
    """The onnx package (the models are built with its helper API) or a skip."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return onnx


def _save(graph, path, meta: dict):
    import json

    onnx = _onnx()
    helper = onnx.helper
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def spot_detector(path, size: int, landmark_names, *, n_outputs: int | None = None, sharpness: float = 60.0,
                  pairs=(), fingerprint: str | None = None, kind: str = "landmark_detector",
                  crop_pixel_mm: float | None = None):
    """A soft-argmax detector for ``size`` x ``size`` inputs (see the module docstring);
    ``n_outputs`` landmarks (default: one per name); ``crop_pixel_mm``: the training pixel size
    its metadata records (default: none, as an older export)."""
    onnx = _onnx()
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    L = len(landmark_names) if n_outputs is None else int(n_outputs)
    N = int(size)
    yy, xx = np.mgrid[0:N, 0:N]
    grid = np.stack([px_to_norm(xx.ravel(), N), px_to_norm(yy.ravel(), N)], axis=1)  # [N*N, 2] (x, y)
    inits = [
        numpy_helper.from_array(np.array([-1, N * N], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([sharpness], np.float32), "sharpness"),
        numpy_helper.from_array(np.tile(grid, (1, L)).astype(np.float32), "grid"),       # [N*N, 2L]
        numpy_helper.from_array(np.array([-1, L, 2], np.int64), "out_shape"),
        numpy_helper.from_array(np.ones((1, L), np.float32), "ones"),
    ]
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "sharpness"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=1),
        helper.make_node("MatMul", ["p", "grid"], ["xy_flat"]),
        helper.make_node("Reshape", ["xy_flat", "out_shape"], ["landmarks"]),
        helper.make_node("ReduceMax", ["p"], ["peak"], axes=[1], keepdims=1),
        helper.make_node("MatMul", ["peak", "ones"], ["confidence"]),
    ]
    graph = helper.make_graph(
        nodes, "spot_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, N, N])],
        [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["batch", L, 2]),
         helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["batch", L])],
        initializer=inits)
    meta = {"fluororeg_kind": kind, "input_size": f"{N},{N}", "input_normalisation": DETECTOR_NORMALISATION,
            "landmark_names": list(landmark_names), "pairs": [list(p) for p in pairs], "training_image_size": N}
    if fingerprint is not None:
        meta["subject_fingerprint"] = fingerprint
    if crop_pixel_mm is not None:
        meta["crop_pixel_mm"] = crop_pixel_mm
    return _save(graph, path, meta)


def inverting_translator(path, size: int, *, direction: str = "xray_to_drr", normalisation: str = STYLE_NORMALISATION,
                         kind: str = "style_generator", halve: bool = False):
    """A style generator x -> -x for ``size`` x ``size`` inputs; ``halve``: its output is half
    the input's size (a model that does not fit)."""
    onnx = _onnx()
    helper, TensorProto = onnx.helper, onnx.TensorProto
    S = int(size)
    nodes = [helper.make_node("Neg", ["image"], ["neg"])]
    if halve:
        nodes.append(helper.make_node("AveragePool", ["neg"], ["translated"], kernel_shape=[2, 2], strides=[2, 2]))
        out = S // 2
    else:
        nodes.append(helper.make_node("Identity", ["neg"], ["translated"]))
        out = S
    graph = helper.make_graph(
        nodes, "inverting_translator",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, S, S])],
        [helper.make_tensor_value_info("translated", TensorProto.FLOAT, ["batch", 1, out, out])])
    meta = {"fluororeg_kind": kind, "direction": direction, "input_size": f"{S},{S}",
            "input_normalisation": normalisation, "output": "translated"}
    return _save(graph, path, meta)


@pytest.fixture(scope="session")
def onnx_builders():
    return SimpleNamespace(spot_detector=spot_detector, inverting_translator=inverting_translator)
