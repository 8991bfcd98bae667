"""Inference and training speed of the networks on this machine: milliseconds per 128 x 128
image through onnxruntime (single images and batches of 16) for the landmark detector (paper
ResNet and the fast heatmap preset) and the style generator (paper and fast presets), and
training samples per second for each network.

    python benchmarks/bench_inference.py --quick --json out/bench/inference.json

The networks are untrained (speed does not depend on the weights).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from fluororeg.training.common import require_torch
from fluororeg.training.detector_config import DetectorConfig, preset
from fluororeg.training.detector_network import build_model, count_parameters
from fluororeg.training.export import export_onnx
from fluororeg.inference.onnx_model import OnnxModel
from fluororeg.training.translator_config import TranslatorConfig
from fluororeg.training.translator_networks import build_networks
from fluororeg.training.translator_train import train_translator

from _common import best_time, parser, report

N_LANDMARKS = 33


def onnx_ms(model, size: int, outputs, repeat: int) -> tuple[float, float]:
    torch = require_torch()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, torch.zeros(1, 1, size, size), Path(tmp) / "m.onnx", {"fluororeg_kind": "bench",
                           "input_size": f"{size},{size}"}, output_names=outputs)
        m = OnnxModel(path, device="cpu")
        one = np.random.default_rng(0).uniform(-1, 1, (1, 1, size, size)).astype(np.float32)
        batch = np.repeat(one, 16, axis=0)
        single = best_time(lambda: m.run(one), repeat) * 1e3
        batched = best_time(lambda: m.run(batch), max(1, repeat // 4)) * 1e3 / 16
    return single, batched


def detector_train_rate(config: DetectorConfig, seconds: float) -> float:
    torch = require_torch()
    model = build_model(config, N_LANDMARKS).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(config.batch_size, 1, config.input_size, config.input_size)
    y = torch.rand(config.batch_size, N_LANDMARKS, 2) * 2 - 1
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        pred, _ = model(x)
        loss = ((pred - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += config.batch_size
    return n / (time.perf_counter() - t0)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    torch = require_torch()
    repeat = 5 if args.quick else 20
    seconds = 10.0 if args.quick else 30.0
    results, rows = {}, []
    detectors = {"paper": preset("paper"), "fast": preset("fast")}
    for name, cfg in detectors.items():
        model = build_model(cfg, N_LANDMARKS).eval()
        single, batched = onnx_ms(model, cfg.input_size, ("landmarks", "confidence"), repeat)
        rate = detector_train_rate(cfg, seconds)
        results[f"detector_{name}"] = {"parameters": count_parameters(model), "input_size": cfg.input_size,
                                       "ms_single": single, "ms_per_image_batch16": batched,
                                       "train_samples_per_s": rate}
        rows += [(f"detector {name} ({cfg.arch}, {cfg.input_size} px): ms/image single", single, "ms"),
                 (f"detector {name}: ms/image in batches of 16", batched, "ms"),
                 (f"detector {name}: training", rate, "samples/s")]
    for name in ("paper", "fast"):
        cfg = TranslatorConfig.preset(name)
        gen = build_networks(cfg)["G_xd"].eval()
        single, batched = onnx_ms(gen, cfg.image_size, ("translated",), repeat)
        rng = np.random.default_rng(0)
        imgs = rng.integers(0, 256, (16, cfg.image_size, cfg.image_size), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            steps = 6 if args.quick else 20
            summary = train_translator(imgs, imgs, Path(tmp) / "run", TranslatorConfig.preset(name, steps=steps, log_every=steps,
                                  checkpoint_every=10 * steps), progress=False, max_steps=steps)
        results[f"generator_{name}"] = {"parameters": int(sum(p.numel() for p in gen.parameters())),
                                        "ms_single": single, "ms_per_image_batch16": batched,
                                        "train_samples_per_s": summary["samples_per_s"]}
        rows += [(f"generator {name}: ms/image single", single, "ms"),
                 (f"generator {name}: ms/image in batches of 16", batched, "ms"),
                 (f"generator {name}: training (batch 1)", summary["samples_per_s"], "samples/s")]
    # The figures the issue asks for: the production pair (fast detector + fast generator).
    results["detector_ms_per_image"] = results["detector_fast"]["ms_single"]
    results["generator_ms_per_image"] = results["generator_fast"]["ms_single"]
    results["detector_plus_generator_ms"] = results["detector_ms_per_image"] + results["generator_ms_per_image"]
    results["paper_detector_plus_generator_ms"] = results["detector_paper"]["ms_single"] + results["generator_paper"]["ms_single"]
    results["torch_threads"] = torch.get_num_threads()
    rows += [("fast detector + fast generator, per image", results["detector_plus_generator_ms"], "ms"),
             ("paper detector + paper generator, per image", results["paper_detector_plus_generator_ms"], "ms")]
    report("bench_inference (onnxruntime, CPU)", rows, results, args.json)


if __name__ == "__main__":
    main()
