"""Dask worker plugins of the local study cluster (imported only where Dask is installed)."""

from __future__ import annotations

import signal

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["IgnoreInterrupt"]


class IgnoreInterrupt(WorkerPlugin):
    """Local workers ignore SIGINT: Ctrl-C in the terminal is handled by the study (it cancels
    the tasks and closes the cluster), not by each worker dying with a traceback."""

    def setup(self, worker) -> None:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread of the worker process: leave it
            pass
