"""Dask worker plugins of the local study cluster (imported only where Dask is installed)."""

from __future__ import annotations

import signal
import warnings

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["IgnoreInterrupt", "PlainWarnings"]


class IgnoreInterrupt(WorkerPlugin):
    """Local workers ignore SIGINT: Ctrl-C in the terminal is handled by the study (it cancels
    the tasks and closes the cluster), not by each worker dying with a traceback."""

    def setup(self, worker) -> None:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread of the worker process: leave it
            pass


class PlainWarnings(WorkerPlugin):
    """fluororeg's warnings in a local worker read as the command's own do (one line naming
    ``fluororeg study run``), not as Python's file, line and source line."""

    def __init__(self, command: str = "study run"):
        self.command = command

    def setup(self, worker) -> None:
        from fluororeg.cli.common import warnings_in_plain_words

        warnings.formatwarning = warnings_in_plain_words(self.command)
