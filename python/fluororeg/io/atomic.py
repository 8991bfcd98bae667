"""Small file helpers shared by the package."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(p: Path, text: str) -> None:
    """Write text through a temporary file in the same folder, then rename: readers never see
    a half-written file. The folder must exist."""
    if not p.parent.is_dir():
        raise FileNotFoundError(f"folder of {str(p)!r} does not exist: {str(p.parent)!r}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        raise naming_destination(exc, p) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        chmod_default(Path(tmp))
        os.replace(tmp, p)
    except OSError as exc:
        raise naming_destination(exc, p) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def naming_destination(exc: OSError, path) -> OSError:
    """The same OS error (same type and errno) naming the file being written, not the temporary
    file beside it that the write went through."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def temporary_path_beside(path: Path, suffix: str) -> Path:
    """A new temporary file's path next to ``path`` ending with ``suffix`` (to be renamed onto
    ``path`` once complete)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path, suffix: str = ""):
    """A temporary path beside ``path`` (ending with ``suffix``, e.g. '.npz' for ``np.savez``)
    to write the whole file into; renamed onto ``path`` when the ``with`` block ends without
    error, deleted otherwise. Readers (and a resume after a crash or SIGKILL) see the old file
    or the complete new one, never a part."""
    path = Path(path)
    try:
        tmp = temporary_path_beside(path, suffix)
    except OSError as exc:
        raise naming_destination(exc, path) from exc
    try:
        yield tmp
        chmod_default(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename) == tmp:
            raise naming_destination(exc, path) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def chmod_default(p: Path) -> None:
    """Give a mkstemp file (mode 0600) the permissions a plain open() would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(p, 0o666 & ~mask)
