"""Loading trained style generators from checkpoints and exporting them to ONNX for
:class:`fluororeg.inference.translator.StyleTranslator`."""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path

import torch

from fluororeg.inference.crops import CROP_RULE
from fluororeg.inference.translator import DIRECTIONS, INPUT_NORMALISATION, OUTPUT_DESCRIPTION, STYLE_KIND
from fluororeg.training.common import load_checkpoint
from fluororeg.training.export import export_onnx
from fluororeg.training.translator_config import TranslatorConfig
from fluororeg.training.translator_networks import GENERATOR_KEYS, ResnetGenerator

__all__ = ["CHECKPOINT_KIND", "load_translator", "export_translator"]

CHECKPOINT_KIND = "style_translator"


def load_translator(run_dir_or_checkpoint) -> tuple[dict, TranslatorConfig, dict]:
    """``({'xray_to_drr': G, 'drr_to_xray': F}, config, checkpoint)`` from a run folder, a
    checkpoint or a snapshot file (eval mode, CPU); the averaged generators where the run keeps
    them (``ema_decay``)."""
    p = Path(run_dir_or_checkpoint)
    path = p / "checkpoint_last.pt" if p.is_dir() else p
    saved = load_checkpoint(path)
    if saved.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"'{path}' is a {saved.get('kind')!r} checkpoint, expected {CHECKPOINT_KIND!r}")
    known = {f.name for f in fields(TranslatorConfig)}
    config = TranslatorConfig(**{k: v for k, v in saved["config"].items() if k in known})
    weights = saved.get("ema") or saved["nets"]
    gens = {}
    for direction, key in zip(DIRECTIONS, GENERATOR_KEYS):
        g = ResnetGenerator(config.gen_width, config.gen_blocks)
        g.load_state_dict(weights[key])
        gens[direction] = g.eval()
    return gens, config, saved


def export_translator(run_dir_or_checkpoint, out_dir, *, opset: int = 17,
                      extra_metadata: dict | None = None) -> tuple[Path, Path]:
    """Export both generators as ``out_dir/xray_to_drr.onnx`` and ``out_dir/drr_to_xray.onnx``
    (dynamic batch; input ``image`` [n, 1, S, S], output ``translated``) with metadata:
    ``fluororeg_kind='style_generator'``, ``direction``, ``input_size``, ``input_normalisation``,
    ``output``, ``input_domain``/``output_domain``, ``xray_polarity``, ``crop_rule`` (the X-ray crops' rule), ``architecture``,
    ``training_step``, and ``extra_metadata`` (e.g. the snapshot selection's verdict). Returns
    the two paths."""
    gens, config, saved = load_translator(run_dir_or_checkpoint)
    S = config.image_size
    domains = {"xray": f"X-ray crop ({CROP_RULE})",
               "drr": "DRR style (fluororeg.dataset.generate images; attenuation bright)"}
    out = []
    for direction, gen in gens.items():
        src, dst = direction.split("_to_")
        meta = {"fluororeg_kind": STYLE_KIND, "direction": direction, "input_size": f"{S},{S}",
                "input_normalisation": INPUT_NORMALISATION, "output": OUTPUT_DESCRIPTION,
                "input_domain": domains[src], "output_domain": domains[dst],
                "xray_polarity": str(config.xray_polarity), "crop_rule": CROP_RULE,
                "architecture": {"generator": "resnet", "width": config.gen_width, "blocks": config.gen_blocks,
                                 "norm": "instance", "padding": "reflection"},
                "training_step": str(int(saved["step"])), "total_steps": str(int(saved.get("total_steps", 0))),
                **(extra_metadata or {})}
        example = torch.zeros(1, 1, S, S)
        with warnings.catch_warnings():
            # instance norm always normalises with the input's own statistics (no running
            # statistics): exporting it "with train=True" is what it does in eval mode too
            warnings.filterwarnings("ignore", message=".*instance_norm.*")
            warnings.filterwarnings("ignore", message=".*Constant folding.*")
            warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python boolean.*")
            out.append(export_onnx(gen, example, Path(out_dir) / f"{direction}.onnx", meta, input_name="image",
                                   output_names=("translated",), opset=opset))
    return out[0], out[1]
