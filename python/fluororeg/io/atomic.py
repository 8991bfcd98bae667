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
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
