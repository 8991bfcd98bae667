"""ONNX export with the metadata that inference needs.

Every exported model carries string metadata (``onnx`` ``metadata_props``):
``fluororeg_kind`` (``landmark_detector`` or ``style_generator``), ``fluororeg_version``,
``input_size`` (e.g. ``128,128``), ``input_normalisation`` (how pixel values map to the
network's input), and kind-specific keys (``landmark_names`` as JSON, ``subject_fingerprint``,
``output`` description, ``direction`` for generators). :class:`fluororeg.inference.onnx_model.OnnxModel`
reads them back and checks them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fluororeg.training.common import require_torch


def export_onnx(model, example_input, path, metadata: dict[str, Any], *, input_name: str = "image",
                output_names: tuple[str, ...] = ("output",), opset: int = 17) -> Path:
    """Export ``model`` (eval mode, CPU) with a dynamic batch axis and attach ``metadata``
    (values are stored as strings; non-strings as JSON)."""
    torch = require_torch()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dynamic = {input_name: {0: "batch"}}
    dynamic.update({name: {0: "batch"} for name in output_names})
    tmp = path.with_suffix(".tmp.onnx")
    import warnings

    # The TorchScript exporter on purpose (dynamo=False: no onnxscript dependency, the graphs
    # onnxruntime has run since the start); torch's note that it is the legacy one is not the user's.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        torch.onnx.export(model, (example_input.cpu(),), str(tmp), input_names=[input_name],
                          output_names=list(output_names), dynamic_axes=dynamic, opset_version=opset,
                          dynamo=False)
    proto = onnx.load(str(tmp))
    from fluororeg import __version__

    meta = {"fluororeg_version": __version__, **metadata}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)  # atomic: a crash never leaves a half-written model that a later run trusts
    return path
