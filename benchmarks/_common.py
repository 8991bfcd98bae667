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
