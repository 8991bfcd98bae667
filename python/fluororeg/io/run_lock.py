"""One writer at a time per output folder.

A command that writes a run folder (``register``, ``dataset``, ``train-detector``,
``train-translator``, ``select-translator``, ``study run``, ``demo``) holds an exclusive
``fcntl.flock`` on ``<folder>/.fluororeg.lock`` while it works; the file says who holds it
(JSON: pid, host, command line, start time in UTC). A second writer fails at once with
:class:`FolderInUseError`, a one-line message naming the holder. The kernel releases a flock
when its process dies (a crash, SIGKILL), so a lock file left by a dead process is taken over
without a word; the file itself stays (deleting it would race with a process about to lock
it), emptied when its holder finishes.

Nested stages of one run in the same thread (a demo that registers into its own folder, a
library function called by a command that already holds the lock) re-enter the lock: a counter
per (folder, thread). Another thread of the same process is refused like another process (the
flock belongs to one open file description). The lock's file descriptor is not inherited by
subprocesses (close-on-exec); a child forked without exec (``multiprocessing``'s 'fork')
shares it and keeps the folder locked until it exits.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shlex
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_FILE_NAME", "FolderInUseError", "run_folder_lock", "locks_folder", "lock_holder"]

LOCK_FILE_NAME = ".fluororeg.lock"

_held: dict[tuple[str, int], list] = {}   # (real folder path, thread id) -> [fd, depth]
_held_guard = threading.Lock()


class FolderInUseError(RuntimeError):
    """Another process (or thread) is writing the output folder."""


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    if name == "__main__.py":  # python -m fluororeg
        name = "python -m fluororeg"
    return " ".join([name] + [shlex.quote(a) for a in argv[1:]])


def lock_holder(folder) -> dict | None:
    """What ``folder``'s lock file says about its holder (pid, host, command, since, what), or
    None when the file is absent or empty (nobody holds it, or its holder is just starting)."""
    path = Path(folder) / LOCK_FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError, PermissionError):
        return None
    try:
        info = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _busy_message(folder: Path, info: dict | None) -> str:
    if info is None:
        who = "another process (it has not written its details yet)"
    else:
        where = f" on host {info.get('host')}" if info.get("host") != socket.gethostname() else ""
        who = (f"pid {info.get('pid')}{where} ({info.get('command', '?')!s}), "
               f"since {info.get('since', '?')}")
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            who = f"another thread of this process (pid {info.get('pid')}), since {info.get('since', '?')}"
    return (f"output folder '{folder}' is in use by {who}: wait for it to finish, or write to another "
            f"folder (lock: {folder / LOCK_FILE_NAME})")


@contextmanager
def run_folder_lock(folder, what: str = ""):
    """Hold ``folder``'s writer lock for the ``with`` block (the folder is created if needed).
    ``what``: the stage, recorded in the lock file (e.g. 'register'). Raises
    :class:`FolderInUseError` at once when another process or thread holds it; re-entrant
    within one thread."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (os.path.realpath(folder), threading.get_ident())
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        fcntl = None
    fd = None
    if fcntl is not None:
        fd = os.open(folder / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(_busy_message(folder, lock_holder(folder))) from None
        except OSError as exc:  # a file system without flock (some network mounts): go on unlocked
            os.close(fd)
            fd = None
            warnings.warn(f"cannot lock output folder '{folder}' ({exc}): nothing stops a second writer",
                          stacklevel=3)
    if fd is None:
        yield
        return
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(), "what": what,
                "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        data = (json.dumps(info) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        with _held_guard:
            _held[key] = [fd, 1]
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        try:
            os.ftruncate(fd, 0)  # still ours: nobody reads a finished holder's details
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def locks_folder(parameter: str, what: str):
    """Decorator: the function holds the writer lock (:func:`run_folder_lock`) of the folder its
    argument ``parameter`` names while it runs (no lock when that argument is None), so library
    callers are protected as the commands are."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = bound.arguments[parameter]
            if folder is None:
                return fn(*args, **kwargs)
            with run_folder_lock(folder, what):
                return fn(*args, **kwargs)
        return locked
    return wrap
