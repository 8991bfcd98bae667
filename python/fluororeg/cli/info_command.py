"""``fluororeg info``: the version, the compiled backends, and where each part of the work runs
with the default ``auto`` devices on this machine (so a lab sees before a long run whether its
GPU will be used)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    i = subparsers.add_parser("info", help="version, backends, and where each part runs on this machine")
    i.set_defaults(handler=run, resumes=False)


def where_it_runs() -> dict[str, str]:
    """What 'auto' picks here, per part of the work, as text: the C++ core's renders (dataset
    generation and the refinement of register), the networks' inference (onnxruntime) and
    training (torch), and the threads per process (:mod:`fluororeg.core.threads`)."""
    import os

    from fluororeg import _core
    from fluororeg.core.threads import available_cpus, num_threads

    out = {}
    if _core.cuda_available():
        out["renders (dataset, refinement)"] = "CUDA"
    else:
        why = "no CUDA device is usable" if _core.cuda_built() else "built without CUDA"
        out["renders (dataset, refinement)"] = f"CPU ({why})"
    try:
        import onnxruntime as ort

        gpu = "CUDAExecutionProvider" in ort.get_available_providers()
        out["networks, inference (onnxruntime)"] = "CUDA" if gpu else \
            "CPU (onnxruntime has no CUDA provider: pip install '.[gpu]' for onnxruntime-gpu)"
    except ImportError:
        out["networks, inference (onnxruntime)"] = "unavailable (onnxruntime is not installed)"
    try:
        import torch

        out["networks, training (torch)"] = "CUDA" if torch.cuda.is_available() else "CPU (torch sees no CUDA GPU)"
    except ImportError:
        out["networks, training (torch)"] = "unavailable (torch is not installed: pip install '.[train]')"
    source = "OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS") else f"{available_cpus()} CPUs this process may use"
    out["threads per process"] = f"{num_threads()} ({source}; --threads N on each heavy command to choose)"
    return out


def run(args: argparse.Namespace) -> int:
    import fluororeg

    print(f"fluororeg {fluororeg.__version__}")
    print(f"CUDA backend built: {fluororeg.cuda_built()}; CUDA device usable: {fluororeg.has_cuda()}")
    print("with the default devices ('auto'), on this machine:")
    for part, where in where_it_runs().items():
        print(f"  {part}: {where}")
    return 0
