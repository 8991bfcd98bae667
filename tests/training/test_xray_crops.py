"""The style translator's X-ray training crops: recordings cropped by the one crop rule."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.inference.crops import recording_crop_boxes, view_crops
from fluororeg.training.xray_crops import xray_training_crops


@pytest.fixture(scope="module")
def recording(subject, tmp_path_factory):
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    out = tmp_path_factory.mktemp("xray") / "rec"
    return simulate_recording(subject, out, n_frames=4, views=default_dual_views(128, 128, 2.4), seed=1)


def test_training_crops_are_the_pipelines_crops(recording):
    from fluororeg.io.recording import open_recording

    rec = open_recording(recording)
    crops, boxes = xray_training_crops(recording, 64, 4.0, return_boxes=True)
    assert crops.shape == (8, 64, 64) and crops.dtype == np.uint8 and len(boxes) == 8
    fovs, pipeline_boxes = recording_crop_boxes(rec, 64, 4.0)
    assert boxes == [pipeline_boxes[0]] * 4 + [pipeline_boxes[1]] * 4
    for k in range(2):
        same = view_crops([rec.sequences[k][f] for f in range(4)], [pipeline_boxes[k]] * 4, fovs[k], 64)
        np.testing.assert_array_equal(crops[4 * k:4 * k + 4], same)
    assert crops[:, 20:44, 20:44].std() > 10  # content inside
    # subsampling, cap, sources
    assert xray_training_crops(recording, 64, 4.0, every=2).shape == (4, 64, 64)
    assert xray_training_crops(recording, 64, 4.0, max_frames=3).shape == (6, 64, 64)
    np.testing.assert_array_equal(xray_training_crops(rec, 64, 4.0), crops)
    assert xray_training_crops([recording, rec], 64, 4.0).shape == (16, 64, 64)


def test_training_crop_sources_and_errors(recording):
    with pytest.raises(TypeError, match="X-ray source"):
        xray_training_crops(42)
    with pytest.raises(ValueError, match="empty"):
        xray_training_crops([])
    with pytest.raises(ValueError, match="size"):
        xray_training_crops(recording, 4)
    with pytest.raises(ValueError, match="crop_pixel_mm"):
        xray_training_crops(recording, 64, 0.0)
    with pytest.raises(FileNotFoundError):
        xray_training_crops(recording / "missing")
    with pytest.raises(ValueError, match="not a recording folder"):
        xray_training_crops(recording / "view1")  # frames without the recording's geometry
