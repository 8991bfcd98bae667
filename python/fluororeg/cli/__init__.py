"""The ``fluororeg`` command line (``fluororeg --help``)."""

from fluororeg.cli.app import main

__all__ = ["main"]
