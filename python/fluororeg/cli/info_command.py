"""``fluororeg info``: the version, the compiled backends, and where each part of the work runs
with the default ``auto`` devices on this machine (so a lab sees before a long run whether its
GPU will be used)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    i = subparsers.add_parser("info", help="version, backends, and where each part runs on this machine")
    i.set_defaults(handler=run, resumes=False)


def where_it_runs() -> dict[str, str]:
    """What 'auto' picks here, per part of the work, as text, asked of the code that decides it:
    the C++ core's renders (dataset generation and the refinement of register:
    :func:`~fluororeg.core.render.resolve_device`), the networks' inference (onnxruntime's
    providers, as :class:`~fluororeg.inference.onnx_model.OnnxModel` picks them) and training
    (:func:`fluororeg.training.common.resolve_device`), and the threads per process
    (:mod:`fluororeg.core.threads`)."""
    from fluororeg.core import render, threads

    out = {}
    reason = render.cuda_unusable_reason()
    out["renders (dataset, refinement)"] = "CUDA" if render.resolve_device("auto") == "cuda" else f"CPU ({reason})"
    try:
        from fluororeg.inference.onnx_model import _providers

        gpu = _providers("auto")[0] == "CUDAExecutionProvider"
        out["networks, inference (onnxruntime)"] = "CUDA" if gpu else \
            "CPU (onnxruntime has no CUDA provider: pip install '.[gpu]' for onnxruntime-gpu)"
    except ImportError:
        out["networks, inference (onnxruntime)"] = "unavailable (onnxruntime is not installed)"
    try:
        from fluororeg.training.common import resolve_device

        gpu = resolve_device("auto").type == "cuda"
        out["networks, training (torch)"] = "CUDA" if gpu else "CPU (torch sees no CUDA GPU)"
    except ImportError:
        out["networks, training (torch)"] = "unavailable (torch is not installed: pip install '.[train]')"
    source = ("OMP_NUM_THREADS" if threads._environment_threads()
              else f"{threads.available_cpus()} CPUs this process may use")
    out["threads per process"] = f"{threads.num_threads()} ({source}; --threads N on each heavy command to choose)"
    return out


def run(args: argparse.Namespace) -> int:
    import fluororeg

    print(f"fluororeg {fluororeg.__version__}")
    print(f"CUDA backend built: {fluororeg.cuda_built()}; CUDA device usable: {fluororeg.has_cuda()}")
    print("with the default devices ('auto'), on this machine:")
    for part, where in where_it_runs().items():
        print(f"  {part}: {where}")
    return 0
