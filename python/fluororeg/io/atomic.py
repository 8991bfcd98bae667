"""Small file helpers shared by the package."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(p: Path, text: str) -> None:
    """Write text through a temporary file in the same folder, then rename: readers never see
    a half-written file. The folder must exist."""
    if not p.parent.is_dir():
        raise FileNotFoundError(f"folder of {str(p)!r} does not exist: {str(p.parent)!r}")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        chmod_default(Path(tmp))
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def temporary_path_beside(path: Path, suffix: str) -> Path:
    """A new temporary file's path next to ``path`` ending with ``suffix`` (to be renamed onto
    ``path`` once complete)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def chmod_default(p: Path) -> None:
    """Give a mkstemp file (mode 0600) the permissions a plain open() would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(p, 0o666 & ~mask)
