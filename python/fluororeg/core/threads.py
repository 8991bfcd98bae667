"""Threads per process, one setting for every thread pool fluororeg drives: torch (training),
onnxruntime (intra-op, inference) and the C++ core (registration, rendering, refinement).

Jobs that share a machine must not each start one spinning thread per core: two torch jobs on
two cores ran style training at 0.14-0.3 steps/s, against 1.2-1.7 with one thread each. The
default is therefore the CPUs this process may run on, not the machine's: ``os.sched_getaffinity``
(a job pinned with ``taskset`` or a cgroup cpuset gets its share), or ``OMP_NUM_THREADS`` when
that is set (the usual knob, honoured by every pool here, not only OpenMP's). ``fluororeg
--threads N`` (each heavy command's option) and :func:`set_num_threads` set it explicitly.

Idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE`` unless set; see
``fluororeg/__init__.py``): spinning threads beside other jobs made 2-thread style training
ten times slower (``benchmarks/bench_threads.py``).

The thread count is not a function of the machine's load: a busy machine trains with the same
count as a quiet one, so a seeded run gives the same numbers on both.
"""

from __future__ import annotations

import operator
import os
import sys

from fluororeg import _core

__all__ = ["available_cpus", "num_threads", "set_num_threads", "thread_map"]

MAX_THREADS: int = _core.MAX_THREADS  # the C++ core's bound (fluororeg/limits.h)
_configured = 0  # set_num_threads' value; 0: the default (see the module's text)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` without one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _environment_threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        n = int(value)
    except ValueError:
        return 0
    return n if n > 0 else 0


def _check(n, what: str) -> int:
    if isinstance(n, bool):
        raise TypeError(f"{what} = {n!r}: expected an integer >= 0 (0: the default)")
    try:
        n = operator.index(n)  # ints and NumPy integers; not floats or strings
    except TypeError:
        raise TypeError(f"{what} = {n!r}: expected an integer >= 0 (0: the default)") from None
    if n < 0 or n > MAX_THREADS:
        raise ValueError(f"{what} = {n}: expected an integer in [0, {MAX_THREADS}] (0: the default)")
    return n


def num_threads(requested: int = 0) -> int:
    """The thread count to use: ``requested`` when > 0, else :func:`set_num_threads`' value,
    else ``OMP_NUM_THREADS``, else :func:`available_cpus`."""
    requested = _check(requested, "num_threads")
    return requested or _configured or _environment_threads() or available_cpus()


_resolve = num_threads  # for functions whose num_threads argument hides it


def checked_request(requested: int = 0) -> int:
    """``requested`` checked as :func:`num_threads` checks it, not resolved (0 stays 0): for
    calls that run no CPU threads of their own (a CUDA render), where resolving would only cost."""
    return _check(requested, "num_threads")


def set_num_threads(n: int) -> int:
    """Set the process-wide thread count (0: back to the default); applies it to torch at once
    when torch is loaded (training reads it when it starts). Returns the count now in force."""
    global _configured
    _configured = _check(n, "threads")
    resolved = num_threads()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(resolved)
    return resolved


def thread_map(fn, items, num_threads: int = 0) -> list:
    """``[fn(item) for item in items]``, in order, on up to ``num_threads`` Python threads (0:
    the process's count, :func:`num_threads`); the first exception is raised here. For per-frame
    NumPy, Pillow and core work, which runs without the GIL; plain Python code gains nothing."""
    items = list(items)
    n = min(_resolve(num_threads), len(items))
    if n <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="fluororeg") as pool:
        return list(pool.map(fn, items))
