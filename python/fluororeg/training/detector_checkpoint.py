"""Landmark-detector checkpoints: where a run keeps them and how they are loaded.

A run folder holds ``checkpoint_last.pt`` (everything to resume) and ``checkpoint_best.pt``
(the best model by validation loss); both carry the :class:`DetectorConfig`, the landmark
names and pairs, the subject's fingerprint and the dataset's configuration.
"""

from __future__ import annotations

from pathlib import Path

from fluororeg.inference.detector import DETECTOR_KIND
from fluororeg.training.common import load_checkpoint
from fluororeg.training.detector_config import DetectorConfig
from fluororeg.training.detector_network import build_model

__all__ = ["resolve_checkpoint", "load_detector_checkpoint"]


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
