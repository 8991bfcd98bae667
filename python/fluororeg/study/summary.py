"""The study's summary: ``OUT/summary.csv`` (one row per recording), ``OUT/summary.md``
(totals, the table, the subjects' model stages, the failures) and ``OUT/summary.png`` (median
reprojection residual per recording and, where a reference exists, the median landmark
error; drawn with matplotlib when it is installed, else with fluororeg's own Pillow charts).
Failed tasks are also written to ``OUT/failures.csv`` with their tracebacks in
``OUT/failures.log``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from fluororeg.core.registration import INPUT_STATUSES
from fluororeg.io.atomic import atomic_write_text
from fluororeg.pipeline.refine_stage import REFINE_FAILURE_STATUSES

__all__ = ["write_study_summary", "SUMMARY_COLUMNS"]

# Frames the quality gate, the input checks or the refinement's gate kept from being registered.
FLAGGED_STATUSES = ("large_residual", "few_inliers") + INPUT_STATUSES + REFINE_FAILURE_STATUSES

SUMMARY_COLUMNS = ("recording", "subject", "result", "frames", "registered", "ok", "one_view", "refined", "tracked",
                   "views_disagree",
                   "too_few_landmarks", "failed", "flagged", "residual_mm_median", "residual_px_median",
                   "angle_err_deg_median", "position_err_mm_median", "landmark_err_mm_median", "register_seconds",
                   "resumed", "out", "error")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _rows(run) -> list[dict]:
    rows = []
    for r in run.study.recordings:
        o = run.outcomes[f"register/{r.name}"]
        row = {"recording": r.name, "subject": r.subject, "result": o.status}
        if o.status == "done":
            s = o.result
            ev = s.get("evaluation") or {}
            row.update(frames=s["frames"], registered=s["registered"], residual_mm_median=s["residual_mm_median"],
                       residual_px_median=s["residual_px_median"], register_seconds=s["register_seconds"],
                       angle_err_deg_median=ev.get("angle_err_deg_median"),
                       position_err_mm_median=ev.get("position_err_mm_median"),
                       landmark_err_mm_median=ev.get("landmark_err_mm_median"),
                       resumed=bool(s.get("skipped")), out=s["out"],
                       residual_mm_mean=s.get("residual_mm_mean"), residual_mm_sd=s.get("residual_mm_sd"),
                       landmark_err_mm_mean=ev.get("landmark_err_mm_mean"),
                       landmark_err_mm_sd=ev.get("landmark_err_mm_sd"), has_reference=bool(ev))
            for k, n in s["status"].items():
                row[k] = n
            # not registered by the quality gate, the input checks (fluororeg.pipeline.quality) or the
            # refinement's gate (pipeline.refine_stage)
            row["flagged"] = sum(n for k, n in s["status"].items() if k in FLAGGED_STATUSES)
        else:
            row["error"] = o.error
        rows.append(row)
    return rows


def _plot(rows: list[dict], path: Path) -> tuple[Path | None, str]:
    done = [r for r in rows if r["result"] == "done"]
    if not done:
        return None, "no recording was registered: no plot"
    names = [r["recording"] for r in done]

    def pair(r, mean, sd):
        m, s = r.get(mean), r.get(sd)
        return (float("nan") if m is None else m, 0.0 if s is None else s)

    series = {"residual (mm)": [pair(r, "residual_mm_mean", "residual_mm_sd") for r in done]}
    if any(r.get("landmark_err_mm_mean") is not None for r in done):
        series["landmark error (mm)"] = [pair(r, "landmark_err_mm_mean", "landmark_err_mm_sd") for r in done]
    title = "Per recording: mean +- SD over registered frames"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        from fluororeg.viz.plots import bar_chart

        bar_chart(names, series, path, title=title, y_label="mm")
        return path, "drawn with Pillow (matplotlib is not installed)"
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.5))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
               label=label, capsize=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("mm")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, "drawn with matplotlib"


def write_study_summary(run) -> dict:
    """Write the summary files of a finished :class:`~fluororeg.study.run.StudyRun`; returns
    their paths (``csv``, ``md``, ``plot`` (or None), ``failures``)."""
    out = Path(run.out)
    rows = _rows(run)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in SUMMARY_COLUMNS])
    csv_path = out / "summary.csv"
    atomic_write_text(csv_path, buf.getvalue())
    plot_path, plot_note = _plot(rows, out / "summary.png")

    done = [r for r in rows if r["result"] == "done"]
    frames = sum(r["frames"] for r in done)
    registered = sum(r["registered"] for r in done)
    lines = [f"# Study {run.study.name}", "",
             f"Manifest: `{run.study.path}`. {len(done)} of {len(rows)} recordings registered; "
             f"{registered} of {frames} frame pairs registered. This run: {run.frame_pairs_processed} frame pairs "
             f"processed in {run.seconds:.1f} s ({run.frame_pairs_per_s:.2f} frame pairs/s) on {run.workers} worker(s).", "",
             "| recording | subject | result | registered | ok | one view | refined | tracked | views disagree | "
             "too few landmarks | failed | flagged by a gate | median landmark-fit residual (mm / px) | "
             "median errors (deg / mm / landmark mm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["result"] != "done":
            lines.append(f"| {r['recording']} | {r['subject']} | **{r['result']}** | | | | | | | | | | | |")
            continue
        errs = " / ".join(_fmt(r.get(k)) or "-" for k in ("angle_err_deg_median", "position_err_mm_median",
                                                             "landmark_err_mm_median"))
        if r.get("angle_err_deg_median") is None:  # nothing to compare: say which of the two
            errs = "none registered" if r.get("has_reference") else "no reference"
        lines.append(f"| {r['recording']} | {r['subject']} | done{' (resumed)' if r.get('resumed') else ''} | "
                     f"{r['registered']}/{r['frames']} | {r.get('ok', 0)} | {r.get('one_view', 0)} | "
                     f"{r.get('refined', 0)} | {r.get('tracked', 0)} | "
                     f"{r.get('views_disagree', 0)} | {r.get('too_few_landmarks', 0)} | {r.get('failed', 0)} | "
                     f"{r.get('flagged', 0)} | "
                     f"{_fmt(r['residual_mm_median']) or '-'} / {_fmt(r['residual_px_median']) or '-'} | "
                     f"{errs} |")
    lines += ["", "## Subjects' models", ""]
    for s in run.study.subjects:
        o = run.outcomes[f"models/{s.name}"]
        if o.status == "done":
            stages = "; ".join(f"{k}: {v}" for k, v in o.result.get("stages", {}).items())
            lines.append(f"- {s.name}: {stages}. Detector `{o.result.get('detector')}`"
                         + (f", translator `{o.result['translator']}`" if o.result.get("translator") else ""))
        else:
            lines.append(f"- {s.name}: **{o.status}**: {o.error}")
    failures = run.failures
    fail_csv = out / "failures.csv"
    if failures:
        lines += ["", "## Failures", "", "| task | status | error |", "|---|---|---|"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["task", "status", "error"])
        for o in failures:
            lines.append(f"| {o.key} | {o.status} | {(o.error or '').replace('|', '/')} |")
            w.writerow([o.key, o.status, o.error])
        atomic_write_text(fail_csv, buf.getvalue())
        atomic_write_text(out / "failures.log", "\n\n".join(f"== {o.key}\n{o.traceback or o.error}"
                                                            for o in failures) + "\n")
    else:
        fail_csv.unlink(missing_ok=True)
        (out / "failures.log").unlink(missing_ok=True)
    lines += ["", f"Plot: `summary.png` ({plot_note})." if plot_path else f"Plot: none ({plot_note}).",
              "Per recording: `recordings/<name>/poses.csv`, `poses.tra`, `options.json`, `study_result.json`"
              " (and `evaluation*` where a reference exists)."]
    md_path = out / "summary.md"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return {"csv": csv_path, "md": md_path, "plot": plot_path, "plot_note": plot_note,
            "failures": fail_csv if failures else None}
