"""Training machinery shared by every network: torch import with a clear error, atomic
checkpoints and resume, CSV logs with loss plots, and a graceful stop on Ctrl-C.

A training run owns a folder::

    run/
      checkpoint_last.pt   everything needed to resume (model, optimiser, epoch, step, rng)
      checkpoint_best.pt   the best model so far by the validation metric
      log.csv              one row per logged step or epoch (columns fixed by the first row)
      losses.png           the plot of the log's loss columns, redrawn with the log
"""

from __future__ import annotations

import csv
import os
import pickle
import signal
from pathlib import Path
from typing import Any

from fluororeg.viz.plots import plot_curves


def require_torch():
    """Import torch or raise a clear error naming the extra to install."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError("training needs torch: pip install 'fluororeg[train]' (torch==2.13.0)") from exc
    return torch


def resolve_device(device: str = "auto"):
    """The torch device for training: 'cpu', 'cuda' (an error naming the problem when torch has
    no CUDA) or 'auto' (CUDA when torch sees a GPU, else the CPU)."""
    torch = require_torch()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r} is unknown: expected 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA GPU (a CPU-only torch build, or no driver); "
                           "use device='cpu' or 'auto'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def save_checkpoint(path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a checkpoint on disk is always complete."""
    torch = require_torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """A checkpoint (or snapshot) loaded safely: ``torch.load(weights_only=True)`` restores only
    tensors and plain data (dicts, lists, numbers, strings), never runs pickled code; a file
    holding anything else is refused with ValueError."""
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"'{path}' is not a plain checkpoint (tensors and plain data only): refusing to load "
                         f"unsafe content ({str(exc).splitlines()[0]})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated, damaged or not torch's format
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"checkpoint '{path}' is damaged or not a PyTorch checkpoint ({first})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint '{path}' holds a {type(state).__name__}, expected a dict of weights and settings")
    return state


def load_resume_checkpoint(path) -> dict:
    """The run folder's last checkpoint to resume from (:func:`load_checkpoint`); a damaged one
    is refused with the way out: start the run over."""
    try:
        return load_checkpoint(path)
    except ValueError as exc:
        raise ValueError(f"{exc}: the run cannot resume from it; pass --restart (resume=False) to start the run "
                         "over, or choose another run folder") from exc


class TrainLog:
    """Append-only CSV log with a loss plot (PNG) next to it."""

    def __init__(self, folder, name: str = "log.csv", plot: str | None = "losses.png"):
        self.path = Path(folder) / name
        self.plot_path = Path(folder) / plot if plot else None
        self.columns: list[str] | None = None
        if self.path.exists():
            with self.path.open() as f:
                header = f.readline().strip()
            self.columns = header.split(",") if header else None

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"log columns {sorted(unknown)} are not in the log's header {self.columns}")
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            return list(csv.DictReader(f))

    def plot(self, x: str, ys: list[str], *, log_y: bool = True, title: str = "") -> Path | None:
        """Plot columns ``ys`` against ``x`` (PIL only, no matplotlib needed)."""
        if self.plot_path is None:
            return None
        return plot_curves(self.rows(), x, ys, self.plot_path, log_y=log_y, title=title)


class GracefulStop:
    """Context manager: the first Ctrl-C sets ``stop_requested`` (the loop finishes its step,
    saves a checkpoint and returns); a second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.stop_requested = False
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handler(self, signum, frame):
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to abort); run again to resume", flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
