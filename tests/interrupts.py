"""Ctrl-C at a chosen point of training, for the interruption tests (imported as ``interrupts``)."""

from __future__ import annotations

import sys

from fluororeg.training import common


def ctrl_c_at_check(module_file: str, n_checks: int):
    """A :class:`~fluororeg.training.common.GracefulStop` replacement that reports a Ctrl-C from
    its ``n_checks``-th check made by code in ``module_file`` on (other callers see none)."""

    class StopAt(common.GracefulStop):
        checks = 0

        @property
        def stop_requested(self):
            if sys._getframe(1).f_code.co_filename.endswith(module_file):
                StopAt.checks += 1
                return StopAt.checks >= n_checks
            return False

        @stop_requested.setter
        def stop_requested(self, value):
            pass

    return StopAt
