"""Checkpoints are loaded without running pickled code (torch.load(weights_only=True))."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from fluororeg.training.common import load_checkpoint, save_checkpoint  # noqa: E402


class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_planted_pickle_payload_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"kind": "landmark_detector", "model": {}, "evil": Payload(marker)}, path)
    with pytest.raises(ValueError, match="unsafe|not a plain checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_checkpoints_round_trip(tmp_path):
    import numpy as np

    state = {"kind": "x", "model": {"w": torch.ones(2)}, "rng": np.random.default_rng(3).bit_generator.state,
             "history": [{"epoch": 1, "val": float("inf")}], "pool": [torch.zeros(1, 1, 2, 2)], "none": None,
             "torch_rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["rng"] == state["rng"] and back["history"] == state["history"]
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and torch.equal(back["torch_rng"], state["torch_rng"])


def test_training_device_choice():
    from fluororeg.training.common import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'gpu' is unknown"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")
