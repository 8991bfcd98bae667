"""The fuzz harness: every input runs in a forked child under a memory limit and a time limit,
and its outcome is classified against one contract (see README.md in this folder).

Outcomes
--------
``valid``   the call returned and the target's ``check`` (if any) accepted the result.
``clean``   the call raised a *clean error*:
            - ValueError, TypeError or OSError (any subclass: json.JSONDecodeError,
              UnicodeDecodeError, FileNotFoundError, ManifestError, ...) with a non-empty message; or
            - a LookupError (KeyError, IndexError, ...) raised by fluororeg's own code (the
              innermost traceback frame is in the fluororeg package) with a message of more than
              one word.
``failure`` anything else: another exception type (AssertionError, RuntimeError, MemoryError,
            OverflowError, ZeroDivisionError, EOFError, struct.error, zlib.error, AttributeError,
            RecursionError, ...), a LookupError from deep inside a library, an empty message,
            a result the target's ``check`` rejects, a crash (the child died of a signal), a hang
            (past the time limit) or more memory than the limit (MemoryError / killed).

The parent never runs native code itself (OpenMP pools do not survive fork); seeds are written
by a subprocess (``seeds.py``).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import resource
import select
import signal
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

#: Examples per fuzz test (FLUORO_FUZZ_EXAMPLES raises it for a longer local run).
EXAMPLES = int(os.environ.get("FLUORO_FUZZ_EXAMPLES", "15"))

# Derandomized (a fixed seed per test), no example database, no shrinking (each input is run in
# a child process; the failing inputs are recorded by the harness instead), no deadline (the
# harness's own time limit catches hangs). FLUORO_FUZZ_RANDOM=1: inputs other than the fixed
# seeds' (a longer run that explores; pytest's --hypothesis-seed=N repeats one).
settings.register_profile("fluororeg-fuzz", derandomize=os.environ.get("FLUORO_FUZZ_RANDOM") != "1",
                          database=None, deadline=None,
                          max_examples=EXAMPLES, phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
FUZZ = settings.get_profile("fluororeg-fuzz")


def fuzz_settings(scale: float = 1.0):
    """The suite's settings with ``scale`` x the examples."""
    return settings(FUZZ, max_examples=max(1, int(EXAMPLES * scale)))

MEMORY_LIMIT_BYTES = int(os.environ.get("FLUORO_FUZZ_MEMORY_MB", "2048")) * 2**20
TIME_LIMIT_S = float(os.environ.get("FLUORO_FUZZ_TIMEOUT_S", "20"))
CLEAN_TYPES = (ValueError, TypeError, OSError)

# Outcome counts per target, and the failures seen (for the session summary).
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
FAILURES: dict[str, list[dict]] = collections.defaultdict(list)


def _vm_size_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _fluororeg_frame(tb) -> bool:
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and f"{os.sep}fluororeg{os.sep}" in last.tb_frame.f_code.co_filename


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """('clean' | 'failure', why) for an exception raised by a target (see the module docstring)."""
    msg = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, MemoryError):
        return "failure", f"MemoryError (allocation beyond {MEMORY_LIMIT_BYTES >> 20} MiB)"
    if isinstance(exc, CLEAN_TYPES):
        return ("clean", name) if msg else ("failure", f"{name} without a message")
    if isinstance(exc, LookupError):
        if _fluororeg_frame(exc.__traceback__) and len(msg.split()) > 1:
            return "clean", name
        return "failure", f"{name} {msg[:80]!r} from inside a library or without a sentence"
    return "failure", f"{name}: {msg[:200]}"


def _child(fn, args, kwargs, check, wfd: int, outcome_of=None) -> None:
    # The child: limits, call, classify, report through the pipe, exit without cleanup.
    try:
        limit = _vm_size_bytes() + MEMORY_LIMIT_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        import warnings

        warnings.simplefilter("ignore")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            result = fn(*args, **kwargs)
            why = check(result) if check is not None else None
            report = ((outcome_of(result) if outcome_of else "valid", "") if not why
                      else ("failure", f"invalid result: {why}"))
        except BaseException as exc:  # noqa: BLE001 - classifying every exception is the point
            outcome, why = classify_exception(exc)
            tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
            report = (outcome, why if outcome == "failure" else f"{why}: {str(exc)[:200]}", tail)
        data = pickle.dumps(report)
        os.write(wfd, data)
    finally:
        os._exit(0)


def run_guarded(fn, *args, check=None, timeout_s: float = TIME_LIMIT_S, outcome_of=None,
                **kwargs) -> tuple[str, str]:
    """Run fn(*args, **kwargs) in a forked child; (outcome, detail). ``check(result)``: None or
    why the result is invalid; ``outcome_of(result)``: 'valid' or 'clean' for a returned result
    (the CLI's error exit is a clean error, returned as such)."""
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(fn, args, kwargs, check, w, outcome_of)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout_s
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            b = os.read(r, 1 << 20)
            if not b:
                break
            chunks.append(b)
    os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return "failure", f"hang: no result within {timeout_s:g} s"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return "failure", f"crash: killed by signal {signal.Signals(sig).name}"
    try:
        rep = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001
        return "failure", f"crash: child exited with status {os.WEXITSTATUS(status)} and no report"
    detail = rep[1] if len(rep) < 3 or rep[0] != "failure" else f"{rep[1]}\n{rep[2]}"
    return rep[0], detail


def fuzz_call(target: str, fn, *args, describe: str = "", check=None, timeout_s: float = TIME_LIMIT_S,
              outcome_of=None, **kwargs) -> str:
    """Run one input against a target, count its outcome and remember failures; the outcome."""
    outcome, detail = run_guarded(fn, *args, check=check, timeout_s=timeout_s, outcome_of=outcome_of, **kwargs)
    COUNTS[target][outcome] += 1
    if outcome == "failure":
        FAILURES[target].append({"input": describe, "detail": detail})
    return outcome


def assert_no_failures(target: str) -> None:
    fails = FAILURES.get(target, [])
    if fails:
        kinds = collections.Counter(f["detail"].splitlines()[0][:120] for f in fails)
        lines = [f"{n} x {k}" for k, n in kinds.most_common()]
        first = fails[0]
        raise AssertionError(f"{target}: {len(fails)} of {sum(COUNTS[target].values())} inputs failed the "
                             f"contract:\n  " + "\n  ".join(lines) + f"\nfirst input: {first['input']}\n"
                             f"{first['detail']}")


def summary() -> dict:
    total = collections.Counter()
    for c in COUNTS.values():
        total.update(c)
    return {"total": {k: total.get(k, 0) for k in ("valid", "clean", "failure")},
            "inputs": sum(total.values()),
            "targets": {t: dict(c) for t, c in sorted(COUNTS.items())},
            "failures": {t: [{"input": f["input"], "detail": f["detail"].splitlines()[0]} for f in fs[:5]]
                         for t, fs in sorted(FAILURES.items())}}


def write_summary(path) -> None:
    Path(path).write_text(json.dumps(summary(), indent=2))
