"""The dataset's viewing directions and labels follow the subject's anatomy, not its CT header."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fluororeg.dataset.generate import DatasetConfig, DatasetReader, generate_dataset
from fluororeg.simulation.subjects import rotated_header_subject
from fluororeg.subject.example import default_cache_dir


def _render(subject, root, config):
    generate_dataset(subject, root, config, progress=False)
    reader = DatasetReader(root, "train")
    return reader, [reader[i] for i in range(len(reader))]


def _same_dataset(a, b, tmp_path, config):
    ra, sa = _render(a, tmp_path / "a", config)
    rb, sb = _render(b, tmp_path / "b", config)
    assert ra.meta["orientation"]["source"] == rb.meta["orientation"]["source"] == "measured"
    for x, y in zip(sa, sb):
        np.testing.assert_allclose(x["landmarks_px"], y["landmarks_px"], atol=1e-3)   # labels per sample
        np.testing.assert_array_equal(x["visible"], y["visible"])
        diff = np.abs(x["image"].astype(int) - y["image"].astype(int))
        assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 3                     # resampling only
        assert np.mean(x["mask"] != y["mask"]) < 0.01
    return sa


@pytest.mark.parametrize("projection", ["parallel", "cone"])
def test_rotated_header_gives_the_same_dataset_headsq(subject, tmp_path, projection):
    config = DatasetConfig(n_train=6, n_test=0, image_size=48, pixel_mm=5.0, shard_size=6, seed=11,
                           segmented_share=0.5, projection=projection)
    samples = _same_dataset(subject, rotated_header_subject(subject), tmp_path, config)
    # Seen from the front half of the anatomy: headsq's face is at LPS +y (its header says posterior).
    from fluororeg.core.geometry import rotation_matrix

    beam = rotation_matrix(np.stack([s["pose"][:3] for s in samples]))[:, 2, :]     # camera +z in model frame
    assert np.all(beam @ np.array(subject.orientation.anterior) <= 1e-9)            # rays run front to back
    assert np.all(beam @ np.array([0.0, 1.0, 0.0]) <= 0.05)                         # true anatomy: face at +y


def test_rotated_header_gives_the_same_dataset_example(tmp_path):
    if not (default_cache_dir() / "cranium_hu.npz").is_file():
        pytest.skip("the Cranium CT is not cached (run fluororeg.subject.example.cranium_volume() once)")
    from fluororeg.subject.subject import example_subject

    ex = example_subject()
    config = DatasetConfig(n_train=4, n_test=0, image_size=48, pixel_mm=5.0, shard_size=4, seed=5,
                           segmented_share=0.0)
    _same_dataset(ex, rotated_header_subject(ex), tmp_path, config)
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    np.testing.assert_allclose(meta["config"]["poses"]["anterior_axis"], ex.orientation.anterior)


def test_header_axes_would_differ(subject, tmp_path):
    """The check above can fail: with the header's LPS axes given explicitly (the old default),
    the rotated-header subject is seen from its back and its labels differ."""
    from fluororeg.dataset.generate import PoseRanges

    config = DatasetConfig(n_train=4, n_test=0, image_size=48, pixel_mm=5.0, shard_size=4, seed=11,
                           poses=PoseRanges(superior_axis=(0, 0, 1), anterior_axis=(0, -1, 0)))
    _, a = _render(subject, tmp_path / "a", config)
    _, b = _render(rotated_header_subject(subject), tmp_path / "b", config)
    assert max(np.abs(x["landmarks_px"] - y["landmarks_px"]).max() for x, y in zip(a, b)) > 5.0
