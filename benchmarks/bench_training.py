"""Landmark-detector training on the CPU: test error against training time for the fast preset,
the paper's configuration and direct regression vs heatmaps; log10 MSE on train and test.

    python benchmarks/bench_training.py --json out/bench_training.json
    python benchmarks/bench_training.py --quick --json out/bench_training_quick.json

Trains on the default example subject's paper-sized dataset (``--dataset``, default
out/dataset_cranium; generated if missing, about 30 s). Each run evaluates the test split after
every epoch (not counted as training time) to draw its curve, then evaluates its best
checkpoint on the train and test splits. Runs, in this order and each within its time budget:

* ``fast``: the fast preset (its 60 epochs; ``--fast-minutes`` adds a wall-clock cap);
* ``fast_other_arch``: the same settings with the other architecture (regression vs heatmap
  on the same held-out test set; ``--compare-minutes``, default 20, 0 skips it);
* ``paper``: the paper's configuration (ResNet ~11 M parameters at 128 x 128, Adam 1e-3),
  stopped after ``--paper-minutes`` of training (default 20; 0 skips it).

JSON keys: ``fast_preset_minutes`` (training minutes until the test mean error first reached
2 px, or the whole run if it never did), ``fast_preset_mean_px`` (test mean error of the
preset's final best checkpoint; strict: left and right labels as given),
``fast_preset_mean_px_mirror`` (up to a left/right swap per image, as the registration's mirror
solves resolve it), ``fast_preset_minutes_to_2px_mirror``, and per run: its
configuration, ``curve`` (minutes, test mean px, mirror-tolerant px, log10 MSE), ``train`` and
``test`` metrics, ``samples_per_s``. ``--quick``: 1 minute per run on 2,000 training samples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import parser, report


def _run(name, dataset, out, config, eval_train_samples):
    import numpy as np
    import torch

    from fluororeg.training.detector_eval import evaluate_detector
    from fluororeg.training.detector_train import train_detector

    curve = []

    def on_epoch(row, model):
        m = evaluate_detector((model, config), dataset, "test")
        curve.append({"minutes": row["train_seconds"] / 60, "epoch": row["epoch"], "test_mean_px": m["mean_px"],
                      "test_mean_px_mirror": m["mean_px_mirror"], "test_log10_mse": m["log10_mse"],
                      "val_loss": row["val_loss"]})
        print(f"  [{name}] {row['train_seconds'] / 60:6.2f} min  epoch {row['epoch']:3d}  test {m['mean_px']:6.2f} px"
              f"  (mirror-tolerant {m['mean_px_mirror']:5.2f} px)  log10 MSE {m['log10_mse']:6.2f}", flush=True)

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    res = train_detector(dataset, out / name, config, resume=False, progress=False, on_epoch_end=on_epoch)
    wall = time.perf_counter() - t0
    test = evaluate_detector(res.run_dir, dataset, "test")
    train = evaluate_detector(res.run_dir, dataset, "train", max_samples=eval_train_samples)
    print(f"  [{name}] best checkpoint: log10 MSE train {train['log10_mse']:.2f} / test {test['log10_mse']:.2f} "
          f"(mirror-tolerant {train['log10_mse_mirror']:.2f} / {test['log10_mse_mirror']:.2f}); test "
          f"{test['mean_px']:.2f} px (mirror-tolerant {test['mean_px_mirror']:.2f} px)", flush=True)
    sps = [h["samples_per_s"] for h in res.history]
    return {
        "config": config.to_json(), "epochs": res.epochs_done, "best_epoch": res.best_epoch,
        "train_minutes": res.train_seconds / 60, "wall_minutes": wall / 60, "curve": curve,
        "test": test, "train": train, "samples_per_s": float(np.median(sps)) if sps else float("nan"),
        "run_dir": str(res.run_dir),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dataset", default="out/dataset_cranium", help="dataset folder (generated if missing)")
    p.add_argument("--out", default="out/bench_training", help="folder of the training runs")
    p.add_argument("--fast-minutes", type=float, default=None,
                   help="wall-clock cap of the fast preset (default: none, its epochs)")
    p.add_argument("--compare-minutes", type=float, default=20.0,
                   help="time budget of the other architecture with the fast settings (0 skips)")
    p.add_argument("--paper-minutes", type=float, default=20.0, help="time budget of the paper configuration (0 skips)")
    p.add_argument("--runs", default="fast,fast_other_arch,paper", help="comma-separated runs to do")
    args = p.parse_args()

    from dataclasses import replace

    from fluororeg.training.detector_config import preset

    dataset, out = Path(args.dataset), Path(args.out)
    if not (dataset / "dataset.json").exists():
        from fluororeg.dataset.generate import DatasetConfig, generate_dataset
        from fluororeg.subject.subject import example_subject

        print(f"generating the example subject's dataset into {dataset}")
        generate_dataset(example_subject(), dataset, DatasetConfig(), progress=True)
    quick = dict(max_train_samples=2000) if args.quick else {}
    limit = (lambda m: 1.0) if args.quick else (lambda m: m)
    fast = preset("fast", **quick)
    if args.fast_minutes is not None or args.quick:
        fast = replace(fast, time_limit_minutes=limit(args.fast_minutes or 0.0))
    other_arch = "resnet" if fast.arch == "heatmap" else "heatmap"
    compare_minutes = args.compare_minutes
    other = replace(fast, arch=other_arch, time_limit_minutes=limit(compare_minutes))
    paper = preset("paper", time_limit_minutes=limit(args.paper_minutes), **quick)
    eval_train = 2000 if args.quick else 0
    wanted = set(args.runs.split(","))
    results = {"dataset": str(dataset), "quick": bool(args.quick), "runs": {}}
    for name, cfg, minutes in (("fast", fast, None), ("fast_other_arch", other, compare_minutes),
                               ("paper", paper, args.paper_minutes)):
        if name not in wanted or (minutes is not None and minutes <= 0):
            continue
        print(f"training '{name}' ({cfg.arch}, input {cfg.input_size}, width {cfg.width}) for up to "
              f"{cfg.time_limit_minutes:g} min / {cfg.epochs} epochs", flush=True)
        results["runs"][name] = _run(name, dataset, out, cfg, eval_train)
        if args.json:  # partial results survive an interrupted benchmark
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))

    rows = []
    f = results["runs"].get("fast")
    if f:
        hit = [c["minutes"] for c in f["curve"] if c["test_mean_px"] <= 2.0]
        results["fast_preset_minutes"] = hit[0] if hit else f["train_minutes"]
        results["fast_preset_reached_2px"] = bool(hit)
        results["fast_preset_mean_px"] = f["test"]["mean_px"]
        results["fast_preset_mean_px_mirror"] = f["test"]["mean_px_mirror"]
        hit_m = [c["minutes"] for c in f["curve"] if c["test_mean_px_mirror"] <= 2.0]
        results["fast_preset_minutes_to_2px_mirror"] = hit_m[0] if hit_m else None
        rows += [("fast preset: training minutes", results["fast_preset_minutes"], "min"),
                 ("fast preset: test mean error", f["test"]["mean_px"], "px"),
                 ("fast preset: test mean error (mirror-tolerant)", f["test"]["mean_px_mirror"], "px")]
    for name, r in results["runs"].items():
        rows += [(f"{name} ({r['config']['arch']}): log10 MSE train", r["train"]["log10_mse"], ""),
                 (f"{name} ({r['config']['arch']}): log10 MSE test", r["test"]["log10_mse"], ""),
                 (f"{name} ({r['config']['arch']}): log10 MSE train, mirror-tolerant",
                  r["train"].get("log10_mse_mirror", float("nan")), ""),
                 (f"{name} ({r['config']['arch']}): log10 MSE test, mirror-tolerant",
                  r["test"].get("log10_mse_mirror", float("nan")), ""),
                 (f"{name} ({r['config']['arch']}): test mean error", r["test"]["mean_px"], "px"),
                 (f"{name} ({r['config']['arch']}): test mean error, mirror-tolerant", r["test"]["mean_px_mirror"], "px"),
                 (f"{name} ({r['config']['arch']}): training speed", r["samples_per_s"], "samples/s"),
                 (f"{name} ({r['config']['arch']}): training time", r["train_minutes"], "min")]
    results["samples_per_s"] = {f"{k}:{r['config']['arch']}": r["samples_per_s"] for k, r in results["runs"].items()}
    report("landmark-detector training (CPU)", rows or [("nothing run", 0.0, "")], results, args.json)


if __name__ == "__main__":
    main()
