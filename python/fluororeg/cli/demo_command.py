"""``fluororeg demo``: the end-to-end demo on the example subject (reruns reuse what is there)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from fluororeg.cli import common


def add_parser(subparsers) -> None:
    de = subparsers.add_parser("demo", help="the end-to-end demo on the example subject (minutes on a CPU)")
    de.add_argument("--out", default="out/demo")
    de.add_argument("--quick", action="store_true", help="tiny settings (seconds; meaningless accuracy)")
    common.add_allow_undertrained_option(de)
    common.add_threads_option(de)
    de.set_defaults(handler=run, resumes=True)


def run(args: argparse.Namespace) -> int:
    from fluororeg.demo import DemoSettings, run_demo

    settings = DemoSettings.quick_settings() if args.quick else DemoSettings()
    if args.allow_undertrained:
        settings = replace(settings, allow_undertrained=True)
    run_demo(args.out, settings)  # holds the folder's writer lock
    return 0
