"""A register output folder never mixes runs: other settings, changed frames and damaged
detection chunks all end with the outputs of a clean run; a second writer is refused."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from fluororeg.dataset.generate import DatasetConfig, generate_dataset
from fluororeg.inference.detector import LandmarkDetector
from fluororeg.io.recording import open_recording
from fluororeg.io.run_lock import FolderInUseError
from fluororeg.pipeline import register as pipeline
from fluororeg.pipeline.register import PipelineOptions, register_recording
from fluororeg.simulation.simulate import default_dual_views, simulate_recording
from fluororeg.training.detector_config import DetectorConfig
from fluororeg.training.detector_export import export_detector
from fluororeg.training.detector_train import train_detector

from outputs import reproducible_text

HOLDER = """
import sys
from fluororeg.io.run_lock import run_folder_lock
with run_folder_lock(sys.argv[1], "holder"):
    print("held", flush=True)
    sys.stdin.read()
"""
OUTPUTS = ("poses.csv", "poses.tra", "options.json", "qc.json")
# No quality gate: the one-epoch detector's poses are far off, but they are written (and compared);
# the second settings also refine them (their refinement fails its gate: the columns say why).
FIRST = PipelineOptions(style="invert", chunk=2, min_visible=4, loss="huber", min_confidence=0.05, quality_gate=False,
                        refine=False)
SECOND = PipelineOptions(style="none", chunk=2, min_visible=4, quality_gate=False)


@pytest.fixture(scope="module")
def setup(subject, tmp_path_factory):
    root = tmp_path_factory.mktemp("runfolder")
    ds = generate_dataset(subject, root / "ds", DatasetConfig(n_train=32, n_test=4, image_size=64, pixel_mm=4.0,
                                                              shard_size=32), progress=False)
    rec = simulate_recording(subject, root / "rec", n_frames=6, views=default_dual_views(160, 160, pitch=1.9), seed=3)
    train_detector(ds, root / "det", DetectorConfig(arch="heatmap", width=8, input_size=64, epochs=1, batch_size=16,
                                                    num_threads=1), progress=False)
    detector = LandmarkDetector(export_detector(root / "det", root / "detector.onnx"), subject=subject)
    return {"root": root, "recording": rec, "detector": detector}


def hold_lock(folder):
    """A subprocess holding ``folder``'s writer lock until its stdin closes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fluororeg

    path = str(Path(fluororeg.__file__).parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": path})
    assert proc.stdout.readline().strip() == "held"
    return proc


def run(setup, subject, out, options, recording=None):
    rec = open_recording(recording or setup["recording"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation error allows")  # the one-epoch detector
        return register_recording(rec, subject, setup["detector"], None, options, out_dir=out, progress=False)


def assert_same_outputs(a, b):
    for name in OUTPUTS:
        assert reproducible_text(a / name) == reproducible_text(b / name), name


def chunk_times(out):
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "detections").glob("chunk_*.npz"))}


def test_other_settings_into_one_folder_equal_a_clean_run(setup, subject, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    run(setup, subject, clean, SECOND)
    out = tmp_path / "out"
    run(setup, subject, out, FIRST)
    # A run with the second settings is interrupted after its first chunk: nothing of the first
    # run's results stays beside its partial detections.
    calls = []
    real_detect = pipeline._detect

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # two views of the first chunk done
            raise KeyboardInterrupt
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_detect", interrupted)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="other settings"):
        run(setup, subject, out, SECOND.__class__(**{**SECOND.__dict__, "recentre": False}))
    assert not any((out / name).exists() for name in OUTPUTS)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="other settings"):
        again = run(setup, subject, out, SECOND)
    assert_same_outputs(out, clean)
    np.testing.assert_array_equal(again.detections, run(setup, subject, tmp_path / "clean2", SECOND).detections)


def test_changed_frames_redo_only_their_chunks(setup, subject, tmp_path):
    rec = tmp_path / "rec"
    shutil.copytree(setup["recording"], rec)
    out = tmp_path / "out"
    original = run(setup, subject, out, SECOND, rec)
    before = chunk_times(out)
    assert list(before) == ["chunk_000000_000001.npz", "chunk_000002_000003.npz", "chunk_000004_000005.npz"]
    for view in ("view1", "view2"):  # frames 1 and 4 swap places in the recording's files
        a, b = rec / view / "frame_00001.png", rec / view / "frame_00004.png"
        a.rename(rec / view / "swap.png")
        b.rename(a)
        (rec / view / "swap.png").rename(b)
    with pytest.warns(UserWarning, match="made from other frames") as record:
        swapped = run(setup, subject, out, SECOND, rec)
    for i in (1, 4):  # what the detector made of the moved frames: not the old rows
        assert not np.array_equal(swapped.detections[i], original.detections[i], equal_nan=True)
    assert sum("no longer match" in str(w.message) for w in record) == 1  # said once, not per chunk
    after = chunk_times(out)
    assert after["chunk_000002_000003.npz"] == before["chunk_000002_000003.npz"]  # its frames are the same
    assert all(after[n] != before[n] for n in ("chunk_000000_000001.npz", "chunk_000004_000005.npz"))
    clean = tmp_path / "clean"
    run(setup, subject, clean, SECOND, rec)
    assert_same_outputs(out, clean)


def test_damaged_chunks_are_redone_with_a_warning_each(setup, subject, tmp_path):
    out = tmp_path / "out"
    first = run(setup, subject, out, SECOND)
    assert np.isfinite(first.batch.poses).all(axis=1).sum() >= 3
    reference = {name: reproducible_text(out / name) for name in OUTPUTS}
    chunks = sorted((out / "detections").glob("chunk_*.npz"))
    data = chunks[0].read_bytes()
    chunks[0].write_bytes(data[:len(data) // 2])          # truncated (a copy cut short)
    chunks[1].write_bytes(b"\x00garbage" * 50)            # not a zip at all
    np.savez(chunks[2], detections=np.zeros(3))           # a zip with the wrong keys
    with pytest.warns(UserWarning) as record:
        again = run(setup, subject, out, SECOND)
    damaged = [str(w.message) for w in record if "is damaged" in str(w.message)]
    assert len(damaged) == 3 and all(any(c.name in m for m in damaged) for c in chunks)
    np.testing.assert_array_equal(again.detections, first.detections)
    assert {name: reproducible_text(out / name) for name in OUTPUTS} == reference
    with warnings.catch_warnings():  # the chunks are whole again: a rerun reuses them silently
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*validation error allows")
        times = chunk_times(out)
        run(setup, subject, out, SECOND)
        assert chunk_times(out) == times


def test_a_second_writer_is_refused_and_changes_nothing(setup, subject, tmp_path):
    out = tmp_path / "out"
    run(setup, subject, out, SECOND)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    holder = hold_lock(out)
    try:
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            run(setup, subject, out, FIRST)
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before


def test_detection_workers_change_nothing(setup, subject, tmp_path):
    """Chunks worked on by several threads at once give the files and detections of one thread
    (no worker), the input checks included; a read that fails mid-recording stops the run with
    its error, leaves the chunks before it whole and no worker running."""
    import threading

    opts = SECOND.__class__(**{**SECOND.__dict__, "quality_gate": True, "refine": False})
    one = run(setup, subject, tmp_path / "one", opts.__class__(**{**opts.__dict__, "num_threads": 1}))
    three = run(setup, subject, tmp_path / "three", opts.__class__(**{**opts.__dict__, "num_threads": 3}))
    for name in OUTPUTS:  # options.json names the thread count
        if name != "options.json":
            assert reproducible_text(tmp_path / "one" / name) == reproducible_text(tmp_path / "three" / name), name
    np.testing.assert_array_equal(one.detections, three.detections)
    np.testing.assert_array_equal(one.status, three.status)
    for name in chunk_times(tmp_path / "one"):
        with np.load(tmp_path / "one" / "detections" / name) as a, \
                np.load(tmp_path / "three" / "detections" / name) as b:
            assert all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in pipeline.CHUNK_KEYS)

    class FailingRead:  # the recording, whose frames 4 and 5 cannot be read
        def __init__(self, rec):
            self.rec = rec

        def __getattr__(self, name):
            return getattr(self.rec, name)

        def __len__(self):
            return len(self.rec)

        def read(self, view, positions, num_threads=0):
            if max(positions) >= 4:
                raise ValueError("cannot read frame 4")
            return self.rec.read(view, positions, num_threads)

    before = threading.active_count()
    out = tmp_path / "failing"
    with pytest.raises(ValueError, match="cannot read frame 4"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation error allows")
        register_recording(FailingRead(open_recording(setup["recording"])), subject, setup["detector"], None,
                           opts.__class__(**{**opts.__dict__, "num_threads": 3}), out_dir=out, progress=False)
    assert threading.active_count() == before
    assert list(chunk_times(out)) == ["chunk_000000_000001.npz", "chunk_000002_000003.npz"]
    again = run(setup, subject, out, opts.__class__(**{**opts.__dict__, "num_threads": 3}))
    np.testing.assert_array_equal(again.detections, one.detections)


def test_frame_hashes_are_sha256_of_shape_dtype_and_bytes():
    import hashlib

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = a.astype(">f4")  # the same values stored the other way round: other bytes, another hash
    got = pipeline.frame_hashes([[a, b], [b[::-1], a.T]], num_threads=2)

    def want(x):
        x = np.ascontiguousarray(x)
        return hashlib.sha256(f"{x.shape}|{x.dtype.str}|".encode() + x.tobytes()).hexdigest()[:32]

    assert got.shape == (2, 2)
    assert got.tolist() == [[want(a), want(b[::-1])], [want(b), want(a.T)]]
    assert len({*got.ravel()}) == 4
    assert pipeline.frame_hashes([[], []]).shape == (0, 2)


def test_detection_refuses_input_statistics_of_other_frames(setup, subject):
    from fluororeg.pipeline.quality import InputStatistics

    rec = open_recording(setup["recording"])
    with pytest.raises(ValueError, match="input statistics of 3 frames for 6 frames to detect"):
        pipeline.detect_recording(rec, setup["detector"], None, SECOND, subject=subject, progress=False,
                                  statistics=InputStatistics(3))


def test_min_visible_above_the_detectors_landmarks_is_refused_before_any_work(setup, subject, tmp_path):
    rec = open_recording(setup["recording"])
    with pytest.raises(ValueError, match="min_visible = 1000: the detector finds 6 landmarks"):
        register_recording(rec, subject, setup["detector"], None, PipelineOptions(style="log", min_visible=1000),
                           out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "poses.csv").exists()
