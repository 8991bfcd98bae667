"""Small PNG plots drawn with Pillow (no plotting library needed): line plots of logged
curves and bar charts of errors."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_curves(rows: list[dict], x: str, ys: list[str], path, *, log_y: bool = True, title: str = "",
                size: tuple[int, int] = (720, 420)) -> Path:
    """A small line plot of CSV rows as PNG (axes, ticks, legend), drawn with Pillow."""
    import math

    from PIL import Image, ImageDraw

    W, H = size
    left, right, top, bottom = 70, 20, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
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
            col = COLOURS[k % len(COLOURS)]
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


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[tuple[float, float]]], path, *,
              title: str = "", y_label: str = "", size: tuple[int, int] = (720, 420)) -> Path:
    """Grouped bars with error whiskers: ``series`` maps a series name to one (mean, sd) per
    group (NaN draws nothing). Like the paper's Fig. 10 (errors per motion, deg and mm)."""
    import math

    from PIL import Image, ImageDraw

    W, H = size
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black")
    tops = [m + (s if math.isfinite(s) else 0) for vals in series.values() for m, s in vals if math.isfinite(m)]
    y1 = max(tops) * 1.1 if tops and max(tops) > 0 else 1.0
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(5):
        yv = y1 * k / 4
        py = H - bottom - yv / y1 * (H - top - bottom)
        d.line([left - 4, py, left, py], fill="black")
        d.text((4, py - 6), f"{yv:.3g}", fill="black")
    d.text((4, top - 20), y_label, fill="black")
    n_groups, n_series = max(len(groups), 1), max(len(series), 1)
    slot = (W - left - right) / n_groups
    bar_w = slot * 0.8 / n_series
    for g, name in enumerate(groups):
        d.text((left + g * slot + 4, H - bottom + 8), str(name)[:18], fill="black")
        for k, (sname, vals) in enumerate(series.items()):
            mean, sd = vals[g]
            if not math.isfinite(mean):
                continue
            x0 = left + g * slot + slot * 0.1 + k * bar_w
            py = H - bottom - mean / y1 * (H - top - bottom)
            d.rectangle([x0, py, x0 + bar_w - 2, H - bottom], fill=COLOURS[k % len(COLOURS)])
            if math.isfinite(sd) and sd > 0:
                cx = x0 + bar_w / 2 - 1
                py2 = H - bottom - (mean + sd) / y1 * (H - top - bottom)
                d.line([cx, py, cx, py2], fill="black")
                d.line([cx - 4, py2, cx + 4, py2], fill="black")
    for k, sname in enumerate(series):
        d.text((W - right - 160, top + 6 + 14 * k), sname, fill=COLOURS[k % len(COLOURS)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
