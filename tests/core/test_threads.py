"""fluororeg.core.threads: one thread count per process for torch, onnxruntime and the C++ core."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fluororeg
from fluororeg.core import threads


@pytest.fixture(autouse=True)
def _reset():
    yield
    threads.set_num_threads(0)


def _in_child(code: str, **env) -> str:
    path = os.pathsep.join([str(Path(fluororeg.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    full.update(PYTHONPATH=path, **env)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_default_is_the_affinity_or_omp_num_threads():
    code = "from fluororeg.core.threads import num_threads, available_cpus; print(num_threads(), available_cpus())"
    n, cpus = map(int, _in_child(code).split())
    assert n == cpus == len(os.sched_getaffinity(0))
    assert _in_child(code, OMP_NUM_THREADS="3").split()[0] == "3"
    assert _in_child(code, OMP_NUM_THREADS="junk").split()[0] == str(cpus)  # ignored, not an error
    if len(os.sched_getaffinity(0)) > 1 and hasattr(os, "sched_setaffinity"):  # a pinned job gets its share
        pinned = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " + code
        assert _in_child(pinned).split() == ["1", "1"]


def test_explicit_count_wins_and_reaches_torch():
    torch = pytest.importorskip("torch")
    assert threads.num_threads(5) == 5
    assert threads.set_num_threads(1) == 1
    assert threads.num_threads() == 1 and torch.get_num_threads() == 1
    assert threads.set_num_threads(0) == threads.num_threads()  # back to the default


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (10 ** 6, ValueError), (1.5, TypeError), ("2", TypeError),
                                        (True, TypeError)])
def test_bad_counts_are_refused(bad, error):
    with pytest.raises(error, match="expected an integer"):
        threads.set_num_threads(bad)


def test_cli_threads_option_sets_the_process_count(monkeypatch):
    from fluororeg import cli
    from fluororeg.cli import render_command

    seen = {}
    monkeypatch.setattr(render_command, "run", lambda args: seen.setdefault("n", threads.num_threads()) and 0)
    assert cli.main(["render", "--threads", "1", "--out", "x.png"]) == 0
    assert seen["n"] == 1
    assert cli.main(["render", "--threads", "-2", "--out", "x.png"]) == 2


def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise():
    code = "import os, fluororeg; print(os.environ['OMP_WAIT_POLICY'])"
    assert _in_child(code) == "PASSIVE"
    assert _in_child(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_thread_map_keeps_order_and_raises():
    """thread_map returns fn's results in the items' order on any thread count, runs on several
    threads when asked, and raises the first error."""
    import threading
    import time

    seen = set()

    def slow_square(x):
        seen.add(threading.get_ident())
        time.sleep(0.002 * (x % 3))  # finish out of order
        return x * x

    for n in (1, 3, 8):
        assert threads.thread_map(slow_square, range(10), n) == [x * x for x in range(10)]
    assert len(seen) > 1
    assert threads.thread_map(slow_square, [], 4) == []

    def fails(x):
        if x == 5:
            raise ValueError("item 5 is bad")
        return x

    with pytest.raises(ValueError, match="item 5 is bad"):
        threads.thread_map(fails, range(8), 3)
    with pytest.raises(ValueError, match="num_threads"):
        threads.thread_map(fails, range(8), -1)
