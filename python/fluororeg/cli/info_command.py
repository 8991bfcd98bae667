"""``fluororeg info``: the version and the compiled backends."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    i = subparsers.add_parser("info", help="version and backends")
    i.set_defaults(handler=run, resumes=False)


def run(args: argparse.Namespace) -> int:
    import fluororeg

    print(f"fluororeg {fluororeg.__version__}")
    print(f"CUDA backend built: {fluororeg.cuda_built()}; CUDA device usable: {fluororeg.has_cuda()}")
    return 0
