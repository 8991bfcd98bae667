"""Landmark-detector checkpoints: where a run keeps them and how they are loaded.

A run folder holds ``checkpoint_last.pt`` (everything to resume) and ``checkpoint_best.pt``
(the best model by validation loss); both carry the :class:`DetectorConfig`, the landmark
names and pairs, the subject's fingerprint and the dataset's configuration.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from fluororeg.inference.detector import DETECTOR_KIND
from fluororeg.training.common import load_checkpoint
from fluororeg.training.detector_config import DetectorConfig
from fluororeg.training.detector_network import build_model

__all__ = ["resolve_checkpoint", "load_detector_checkpoint", "dataset_fingerprint", "training_figures"]


def dataset_fingerprint(subject_fingerprint: str, dataset_config: dict) -> str:
    """16 hex digits identifying a dataset: its subject and its configuration."""
    text = json.dumps({"subject": subject_fingerprint, "config": dataset_config}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_checkpoint(run_or_checkpoint, which: str = "best") -> Path:
    p = Path(run_or_checkpoint)
    if p.is_dir():
        p = p / f"checkpoint_{which}.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint '{p}' does not exist")
    return p


def load_detector_checkpoint(run_or_checkpoint, which: str = "best"):
    """``(model (eval, CPU), config, checkpoint dict)`` from a run folder or checkpoint file."""
    state = load_checkpoint(resolve_checkpoint(run_or_checkpoint, which))
    if state.get("kind") != DETECTOR_KIND:
        raise ValueError(f"'{run_or_checkpoint}' is not a landmark-detector checkpoint (kind {state.get('kind')!r})")
    config = DetectorConfig.from_json(state["config"])
    model = build_model(config, len(state["landmark_names"]))
    model.load_state_dict(state["model"])
    return model.eval(), config, state


def training_figures(run_or_checkpoint, which: str = "best") -> dict:
    """The quality figures of a run's ``which`` checkpoint, JSON-able, as exports record them:
    its validation error (``val_mean_px``, ``val_mean_px_mirror``, ``val_mean_mm`` at the bone:
    pixels times the dataset's ``pixel_mm``), the epoch it comes from, the run's epochs and steps
    (from its last checkpoint when there is one), the planned epochs, ``cut_short`` (a wall-clock
    cap ended the run early), and the dataset's fingerprint."""
    path = resolve_checkpoint(run_or_checkpoint, which)
    state = load_checkpoint(path)
    last_path = path.with_name("checkpoint_last.pt")
    last = load_checkpoint(last_path) if last_path.is_file() and last_path != path else state
    config = state.get("config", {})
    best_epoch = int(state.get("best_epoch", state.get("epoch", 0)))
    row = next((h for h in state.get("history", []) if h.get("epoch") == best_epoch), {})
    pixel_mm = float(state.get("dataset_config", {}).get("pixel_mm", math.nan))

    def number(v):
        v = float(v) if v is not None else math.nan
        return round(v, 4) if math.isfinite(v) else None

    px = number(row.get("val_mean_px"))
    return {
        "val_mean_px": px,
        "val_mean_px_mirror": number(row.get("val_mean_px_mirror")),
        "val_mean_mm": number(px * pixel_mm) if px is not None else None,
        "val_loss": number(state.get("best_val_loss")),
        "model_epoch": best_epoch,
        "epochs": int(last.get("epoch", 0)),
        "epochs_planned": int(config.get("epochs", 0)),
        "steps": int(last.get("step", 0)),
        "train_minutes": number(float(last.get("train_seconds", 0.0)) / 60),
        "time_limit_minutes": number(config.get("time_limit_minutes", 0.0)),
        "cut_short": bool(last.get("cut_short", False)),
        "dataset_fingerprint": dataset_fingerprint(state.get("subject_fingerprint", ""), state.get("dataset_config", {})),
        "seed": int(config.get("seed", 0)),
    }
