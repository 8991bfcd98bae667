"""PNG plots drawn with matplotlib (Agg backend, no display needed): line plots of logged
curves and bar charts of errors. One quantity per axis: every series gets its own panel
(stacked, sharing the x axis), so degrees and millimetres, or losses of different scales,
never share a y axis; matplotlib's tick locators keep the ticks readable."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

__all__ = ["plot_curves", "bar_chart"]

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_curves(rows: list[dict], x: str, ys: list[str], path, *, log_y: bool = True, title: str = "",
                size: tuple[int, int] = (720, 420)) -> Path:
    """Line plots of CSV rows (dicts) as one PNG: column ``x`` against each column of ``ys``,
    one panel per column (values that are not finite numbers, or not positive with
    ``log_y``, are left out). ``size`` is the figure size in pixels (for one panel; the
    height grows with the number of panels)."""
    plt = _pyplot()
    n = max(len(ys), 1)
    w, h = size
    fig, axes = plt.subplots(n, 1, sharex=True, squeeze=False, figsize=(w / 100, max(h / 100, 1.6 * n + 1.0)))
    any_data = False
    for k, (name, ax) in enumerate(zip(ys, axes[:, 0])):
        xs, vs = [], []
        for r in rows:
            try:
                xv, yv = float(r[x]), float(r[name])
            except (KeyError, ValueError, TypeError):
                continue
            if math.isfinite(xv) and math.isfinite(yv) and (yv > 0 or not log_y):
                xs.append(xv)
                vs.append(yv)
        colour = COLOURS[k % len(COLOURS)]
        if len(xs) > 1:
            ax.plot(xs, vs, color=colour, linewidth=1.5)
        elif xs:
            ax.plot(xs, vs, "o", color=colour)
        else:
            ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center")
        any_data |= bool(xs)
        if log_y and xs:
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.grid(True, which="major", alpha=0.3)
    axes[-1, 0].set_xlabel(x)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[tuple[float, float]]], path, *,
              title: str = "", y_label: str = "", size: tuple[int, int] = (720, 420)) -> Path:
    """Bars with error whiskers: ``series`` maps a series name (a quantity, e.g. "angle (deg)")
    to one (mean, sd) per group (NaN draws nothing), one panel per series, the groups along x
    (like the paper's Fig. 10, errors per motion). ``y_label`` (the unit) is added to panel
    labels that do not name their unit in parentheses already."""
    plt = _pyplot()
    names = list(series)
    n = max(len(names), 1)
    w, h = size
    fig, axes = plt.subplots(n, 1, sharex=True, squeeze=False, figsize=(w / 100, max(h / 100, 1.8 * n + 1.0)))
    pos = list(range(len(groups)))
    for k, (name, ax) in enumerate(zip(names, axes[:, 0])):
        vals = list(series[name])
        if len(vals) != len(groups):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(groups)} groups")
        means = [m if math.isfinite(m) else 0.0 for m, _ in vals]
        sds = [s if (math.isfinite(s) and math.isfinite(m)) else 0.0 for m, s in vals]
        shown = [math.isfinite(m) for m, _ in vals]
        ax.bar([p for p, s in zip(pos, shown) if s], [m for m, s in zip(means, shown) if s],
               yerr=[d for d, s in zip(sds, shown) if s], color=COLOURS[k % len(COLOURS)], capsize=4, width=0.6)
        ax.set_ylabel(name if (not y_label or "(" in name) else f"{name} ({y_label})")
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
    ax = axes[-1, 0]
    ax.set_xticks(pos)
    ax.set_xticklabels([str(g)[:24] for g in groups], rotation=20 if len(groups) > 4 else 0, ha="right"
                       if len(groups) > 4 else "center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
