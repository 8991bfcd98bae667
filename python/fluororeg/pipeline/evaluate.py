"""Evaluation of registered poses against a reference (manual registration or simulation
ground truth): the paper's Eq. 3 per frame, eps_theta = ||theta_M - theta||_inf (deg, angle
differences wrapped to [-180, 180)) and eps_tau = ||tau_M - tau||_inf (mm), plus the mean
landmark distance (mm) when landmarks are given; mean +- SD and median per recording; CSV,
JSON and plots (error per frame; a grouped bar chart over recordings like the paper's
Fig. 10)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.viz.plots import bar_chart, plot_curves
from fluororeg.core.registration import mean_landmark_distance, pose_errors

__all__ = ["Evaluation", "evaluate_poses", "write_evaluation", "recordings_bar_chart"]


@dataclass
class Evaluation:
    frames: np.ndarray           # [F] frame indices
    angle_err_deg: np.ndarray    # [F] eps_theta, NaN where the frame has no estimate or no reference
    position_err_mm: np.ndarray  # [F] eps_tau
    landmark_err_mm: np.ndarray  # [F] mean landmark distance (NaN without landmarks)
    has_reference: np.ndarray | None = None  # [F] bool; None: every frame has one

    def __post_init__(self):
        if self.has_reference is None:
            self.has_reference = np.ones(len(self.frames), dtype=bool)

    @property
    def registered(self) -> np.ndarray:
        """[F] bool: frames with a reference and an estimate (those with errors)."""
        return np.isfinite(self.angle_err_deg)

    def summary(self) -> dict:
        """Mean, SD, median and max of each error over the registered frames. ``frames``
        counts the frames with a reference (those evaluated), ``registered`` those of them
        with an estimate."""
        out = {"frames": int(self.has_reference.sum()), "registered": int(self.registered.sum()),
               "frames_without_reference": int((~self.has_reference).sum())}
        for name, v in (("angle_err_deg", self.angle_err_deg), ("position_err_mm", self.position_err_mm),
                        ("landmark_err_mm", self.landmark_err_mm)):
            v = v[np.isfinite(v)]
            stats = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, float(np.median(v)),
                     float(v.max())) if len(v) else (float("nan"),) * 4
            out.update({f"{name}_{k}": s for k, s in zip(("mean", "sd", "median", "max"), stats)})
        return out


def evaluate_poses(estimated, reference, *, landmarks=None, frames=None) -> Evaluation:
    """Errors of estimated poses [F, 6] (NaN rows = not registered) against reference poses
    [F, 6] (deg, mm; NaN rows: no reference for that frame, not evaluated) of the same frames;
    ``landmarks`` [N, 3] mm (model frame) adds the mean landmark distance."""
    est = np.asarray(estimated, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    est, ref = (a[None] if a.ndim == 1 else a for a in (est, ref))
    if est.shape != ref.shape or ref.ndim != 2 or ref.shape[1] != 6:
        raise ValueError(f"estimated poses have shape {est.shape} but the reference {ref.shape}: expected the same "
                         "frames, [F, 6] each")
    has_ref = np.all(np.isfinite(ref), axis=1)
    if np.any(np.isinf(ref)) or np.any(np.isnan(ref[~has_ref]).sum(axis=1) < 6):
        raise ValueError("the reference holds infinite values or partly missing poses: expected six finite numbers "
                         "per frame, or NaN in all six where a frame has no reference")
    ok = np.all(np.isfinite(est), axis=1) & has_ref
    F = len(ref)
    ang = np.full(F, np.nan)
    pos = np.full(F, np.nan)
    lmk = np.full(F, np.nan)
    if ok.any():
        a, p = pose_errors(est[ok], ref[ok])
        ang[ok], pos[ok] = a, p
        if landmarks is not None:
            lmk[ok] = mean_landmark_distance(landmarks, est[ok], ref[ok])
    fr = np.arange(F) if frames is None else np.asarray(frames)
    return Evaluation(fr, ang, pos, lmk, has_ref)


def write_evaluation(ev: Evaluation, folder, name: str = "evaluation") -> dict[str, Path]:
    """``<name>.csv`` (per frame), ``<name>_summary.json`` and ``<name>_errors.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["frame,angle_err_deg,position_err_mm,landmark_err_mm"]
    for f, a, p, l in zip(ev.frames, ev.angle_err_deg, ev.position_err_mm, ev.landmark_err_mm):
        lines.append(",".join([str(int(f))] + ["" if not np.isfinite(v) else f"{v:.6g}" for v in (a, p, l)]))
    csv_path = folder / f"{name}.csv"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    json_path = folder / f"{name}_summary.json"
    atomic_write_text(json_path, json.dumps(ev.summary(), indent=2) + "\n")
    rows = [{"frame": f, "angle error (deg)": a, "position error (mm)": p}
            for f, a, p in zip(ev.frames, ev.angle_err_deg, ev.position_err_mm)]
    png = plot_curves(rows, "frame", ["angle error (deg)", "position error (mm)"], folder / f"{name}_errors.png",
                      log_y=False, title="Eq. 3 errors per frame")
    return {"csv": csv_path, "summary": json_path, "plot": png}


def recordings_bar_chart(summaries: dict[str, dict], path) -> Path:
    """Mean +- SD of eps_theta (deg) and eps_tau (mm) per recording (the paper's Fig. 10)."""
    names = list(summaries)
    series = {
        "angle (deg)": [(summaries[n]["angle_err_deg_mean"], summaries[n]["angle_err_deg_sd"]) for n in names],
        "position (mm)": [(summaries[n]["position_err_mm_mean"], summaries[n]["position_err_mm_sd"]) for n in names],
    }
    return bar_chart(names, series, path, title="Registration errors (Eq. 3), mean +- SD", y_label="deg / mm")
