"""Shared helpers of the benchmark scripts: argument parsing, timing, table and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def parser(description: str, device: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="short run (fewer repetitions)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    if device:
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="cuda rows too (auto: when a CUDA device is usable); cpu: CPU rows only")
    return p


def cuda_name() -> str:
    """The CUDA device's name (nvidia-smi), or '' when unknown."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def best_time(fn, repeat: int, clock=time.perf_counter) -> float:
    """Best seconds of `repeat` calls (after one warm-up call) by `clock`: wall-clock by default;
    `time.process_time` gives this process's CPU time, less sensitive to other load on the
    machine (for one-thread figures)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def best_time_and_kernel(fn, repeat: int, handle) -> tuple[float, float]:
    """:func:`best_time` of ``fn`` (wall-clock), and the best of those calls' CUDA kernel times
    (ms): ``handle.last_cuda_kernel_ms`` (a ``_core.RenderVolume``) read after each call. One
    reading of the last call scattered by 20 % between runs."""
    fn()
    best, best_kernel = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_kernel = min(best_kernel, handle.last_cuda_kernel_ms)
    return best, best_kernel


def report(title: str, rows: list[tuple[str, float, str]], results: dict, json_path: str | None) -> None:
    print(title)
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"  {name:<{width}}  {value:>12.4g}  {unit}")
    results = dict(results)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": sys.version.split()[0]}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
        print(f"wrote {json_path}")
