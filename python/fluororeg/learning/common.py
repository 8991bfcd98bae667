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
import signal
from pathlib import Path
from typing import Any


def require_torch():
    """Import torch or raise a clear error naming the extra to install."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError("training needs torch: pip install 'fluororeg[train]' (torch==2.13.0)") from exc
    return torch


def save_checkpoint(path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a checkpoint on disk is always complete."""
    torch = require_torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


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


def plot_curves(rows: list[dict], x: str, ys: list[str], path, *, log_y: bool = True, title: str = "",
                size: tuple[int, int] = (720, 420)) -> Path:
    """A small line plot of CSV rows as PNG (axes, ticks, legend), drawn with Pillow."""
    import math

    from PIL import Image, ImageDraw

    W, H = size
    left, right, top, bottom = 70, 20, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    series = []
    for y in ys:
        pts = []
        for r in rows:
            try:
                xv, yv = float(r[x]), float(r[y])
            except (KeyError, ValueError, TypeError):
                continue
            if math.isfinite(xv) and math.isfinite(yv) and (yv > 0 or not log_y):
                pts.append((xv, math.log10(yv) if log_y else yv))
        series.append(pts)
    allp = [p for s in series for p in s]
    d.text((left, 8), title, fill="black")
    if not allp:
        d.text((W // 2 - 40, H // 2), "no data yet", fill="black")
    else:
        x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
        y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

        def to_px(px, py):
            return (left + (px - x0) / (x1 - x0) * (W - left - right),
                    H - bottom - (py - y0) / (y1 - y0) * (H - top - bottom))

        d.rectangle([left, top, W - right, H - bottom], outline="black")
        for k in range(5):
            yv = y0 + (y1 - y0) * k / 4
            _, py = to_px(x0, yv)
            d.line([left - 4, py, left, py], fill="black")
            d.text((4, py - 6), f"1e{yv:.2f}" if log_y else f"{yv:.3g}", fill="black")
            xv = x0 + (x1 - x0) * k / 4
            px, _ = to_px(xv, y0)
            d.line([px, H - bottom, px, H - bottom + 4], fill="black")
            d.text((px - 12, H - bottom + 6), f"{xv:.3g}", fill="black")
        d.text((W // 2 - 20, H - 14), x, fill="black")
        for k, (name, pts) in enumerate(zip(ys, series)):
            col = colours[k % len(colours)]
            if len(pts) > 1:
                d.line([to_px(*p) for p in pts], fill=col, width=2)
            elif pts:
                px, py = to_px(*pts[0])
                d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=col)
            d.text((W - right - 150, top + 6 + 14 * k), name, fill=col)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


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
