"""The crop rule (fluororeg.inference.crops): field of view, crop boxes and crops (NumPy, Pillow,
SciPy; no torch)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fluororeg.inference.crops import (CROP_RULE, CropBox, FieldOfView, crop_box_for_view, crop_frame, detect_fov,
                                       log_attenuation_crop, recording_crop_boxes, view_crops)


def disc_frame(W=200, H=160, cx=97.3, cy=81.6, r=70.0, bg=8.0, inside=200.0):
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.full((H, W), bg, np.float32)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2] = inside
    return img


def fov_box(fov: FieldOfView, size: int) -> CropBox:
    """The square circumscribing a field of view."""
    return CropBox(fov.cx + 0.5 - fov.radius, fov.cy + 0.5 - fov.radius, 2 * fov.radius, size)


@pytest.fixture(scope="module")
def recording(subject, tmp_path_factory):
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    out = tmp_path_factory.mktemp("xray") / "rec"
    return simulate_recording(subject, out, n_frames=2, views=default_dual_views(128, 128, 2.4), seed=1)


def test_detect_fov_on_discs():
    fov = detect_fov(disc_frame())
    assert fov.cx == pytest.approx(97.3, abs=0.7) and fov.cy == pytest.approx(81.6, abs=0.7)
    assert fov.radius == pytest.approx(70.0, abs=0.7)
    # a field of view larger than the frame (clipped at top and bottom), with a dark notch at its edge
    img = disc_frame(W=220, H=150, cx=110, cy=75, r=90)
    img[60:90, 20:45] = 20.0
    fov = detect_fov(img)
    assert (fov.cx, fov.cy, fov.radius) == pytest.approx((110, 75, 90), abs=1.0)
    # no dark surround: no field of view
    assert detect_fov(np.random.default_rng(0).uniform(100, 200, (64, 64))) is None
    assert detect_fov(np.full((64, 64), 5.0)) is None


def test_real_xray_frame_field_of_view():
    folder = "/work/shared/data/autoscoper_sample/XMA_UND/xr_data_wrist_cam01"
    if not os.path.isdir(folder):
        pytest.skip("the real wrist sample is not available")
    from fluororeg.io.recording import ImageSequence

    fov = detect_fov(ImageSequence(folder)[0])
    assert 1500 < 2 * fov.radius < 1800  # the intensifier circle of the 1760 x 1760 frames


def test_crop_box_maps_points_back_exactly(recording):
    truth = np.load(recording / "truth.npz")
    from fluororeg.io.recording import open_recording

    _, boxes = recording_crop_boxes(open_recording(recording), 128, 2.0)
    xy = truth["landmarks_image_px"][0, 0]  # frame 0, view 1
    box = boxes[0]
    np.testing.assert_allclose(box.to_frame(box.to_crop(xy)), xy, atol=1e-9)
    uv = np.array([[0.0, 0.0], [127.0, 127.0], [63.5, 10.25]])
    np.testing.assert_allclose(box.to_crop(box.to_frame(uv)), uv, atol=1e-9)
    # pixel centres: the crop's corner pixel centre sits half a crop pixel inside the box
    assert box.to_frame([-0.5, -0.5]) == pytest.approx([box.left - 0.5, box.top - 0.5])
    # geometric check: a small dark dot found in the crop maps back to where it is in the frame
    for true_xy, size in (((71.3, 58.6), 64), ((120.2, 95.1), 100)):
        img = disc_frame()
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        img -= 150 * np.exp(-((xx - true_xy[0]) ** 2 + (yy - true_xy[1]) ** 2) / (2 * 3.0 ** 2))
        fov = detect_fov(img)
        box = fov_box(fov, size)
        crop = crop_frame(img, box, fov=fov, normalise=False)
        w = np.clip(200.0 - crop.astype(float), 0, None)
        w[crop >= 255] = 0
        w[w < 0.2 * w.max()] = 0
        v, u = np.mgrid[0:size, 0:size]
        found = box.to_frame([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])
        assert found == pytest.approx(true_xy, abs=0.35)


def test_crop_box_outside_the_frame_is_filled():
    img = disc_frame()
    box = CropBox(-50.0, -40.0, 100.0, 20)
    crop = crop_frame(img, box, fov=None, normalise=False)
    assert crop.shape == (20, 20) and np.all(crop[:5, :5] == 255)
    with pytest.raises(ValueError, match="side"):
        CropBox(0, 0, 0, 16)
    with pytest.raises(ValueError, match="grey image"):
        crop_frame(np.zeros((3, 16, 16)), box)
    with pytest.raises(TypeError, match="CropBox"):
        crop_frame(img, (1, 2, 3, 4))
    assert isinstance(detect_fov(img), FieldOfView)


def test_recording_crop_boxes_have_the_pixel_size_at_the_beam_crossing(recording):
    from fluororeg.core.geometry import beam_crossing
    from fluororeg.io.recording import open_recording

    rec = open_recording(recording)
    views = rec.geometry.views
    fovs, boxes = recording_crop_boxes(rec, 64, 4.0)
    centre = beam_crossing(views)
    for view, fov, box in zip(views, fovs, boxes):
        sod = abs(view.normal @ (centre - view.source))
        assert box.side == pytest.approx(64 * 4.0 / (view.pitch_u * sod / view.source_intensifier_distance))
        assert box.to_frame([31.5, 31.5]) == pytest.approx([fov.cx, fov.cy])  # centred on the field of view
        assert box == crop_box_for_view(view, (fov.cx, fov.cy), 64, 4.0, centre)
    crops = view_crops([rec.sequences[0][0]], [boxes[0]], fovs[0], 64)
    assert crops.shape == (1, 64, 64) and crops.dtype == np.uint8 and crops.std() > 10
    assert "recording_crop_boxes" in CROP_RULE and "crop_frame" in CROP_RULE


def test_crops_on_threads_equal_those_made_one_by_one():
    """view_crops crops a view's frames in the core on several threads: the crops are those of
    crop_frame (and log_attenuation_crop) one frame after the other, for every style, also
    across its batches, for frames of two sizes and for frames given as one float32 stack
    (frame_stack); the frames are not written to."""
    from fluororeg.inference import crops

    rng = np.random.default_rng(5)
    side = 61
    frames = [disc_frame(side + 7, side, cx=side / 2 + 3.1, cy=side / 2 - 2.4, r=0.45 * side)
              + rng.normal(0, 3, (side, side + 7)).astype(np.float32) for _ in range(crops.CROP_BATCH + 3)]
    before = [f.copy() for f in frames]
    fov = detect_fov(frames[0])
    boxes = [CropBox(-7.5 + 0.5 * i, 4.25 - 0.2 * i, side * (0.8 + 0.02 * i), 48) for i in range(len(frames))]
    stack = crops.frame_stack([f.astype(np.float64) for f in frames])  # one float32 array, cropped as it is
    assert stack.dtype == np.float32 and stack.shape == (len(frames), side, side + 7)
    for style in ("log", "translate"):
        threaded = view_crops(frames, boxes, fov, 48, style, num_threads=3)
        serial = view_crops(frames, boxes, fov, 48, style, num_threads=1)
        np.testing.assert_array_equal(threaded, serial)
        np.testing.assert_array_equal(view_crops(stack, boxes, fov, 48, style, num_threads=2), serial)
        for i in (2, crops.CROP_BATCH + 1):
            one = crop_frame(frames[i], boxes[i], fov=fov, normalise=style != "log", fill=255.0)
            np.testing.assert_array_equal(threaded[i], log_attenuation_crop(one) if style == "log" else one)
    for f, b in zip(frames, before):
        np.testing.assert_array_equal(f, b)
    mixed = frames[:3] + [frames[3][:50, :60]]
    assert isinstance(crops.frame_stack(mixed), list)  # frames of two sizes are not stacked
    np.testing.assert_array_equal(view_crops(mixed, boxes[:4], None, 48)[3],
                                  crop_frame(mixed[3], boxes[3], fov=None))
    with pytest.raises(ValueError, match="one box per frame"):
        view_crops(frames, boxes[:3], fov, 48)
    bad = [f.copy() for f in frames]
    bad[crops.CROP_BATCH + 1][3, 4] = np.nan
    with pytest.raises(ValueError, match=f"frames {crops.CROP_BATCH} to .*frame 1 holds a non-finite grey level"):
        view_crops(bad, boxes, fov, 48)


def test_crops_match_the_pillow_reference():
    """The core's crops (CropFrames: Pillow's bilinear box resampling reproduced) equal the
    Pillow/NumPy reference's to the bit: random frames (8-bit ones too), boxes inside, across and beyond the frame,
    up- and down-sampling, with and without a field of view, stretched or clipped grey levels;
    the log-attenuation pictures too (within one grey level where the windows' percentiles
    differ by a rounding)."""
    from fluororeg._reference import picture as ref

    rng = np.random.default_rng(11)
    for trial in range(24):
        H, W = (int(v) for v in rng.integers(24, 160, 2))
        img = rng.uniform(-20, 300, (H, W)).astype(np.float32)
        if trial % 3 == 0:
            img = np.round(img)
        elif trial % 3 == 1:  # an 8-bit frame (a video's): its percentiles counted, not sorted
            img = np.round(np.clip(img, 0, 255))
        fov = FieldOfView(W / 2 + rng.normal(0, 3), H / 2 + rng.normal(0, 3), min(H, W) * rng.uniform(0.3, 0.6)) \
            if trial % 2 else None
        size = int(rng.choice([8, 31, 64]))
        side = float(rng.uniform(0.2, 2.5) * min(H, W))
        box = CropBox(float(rng.uniform(-side, W)), float(rng.uniform(-side, H)), side, size)
        for normalise in (False, True):
            got = crop_frame(img, box, fov=fov, normalise=normalise)
            np.testing.assert_array_equal(got, ref.crop_frame(img, box, fov=fov, normalise=normalise))
        pictures, want = log_attenuation_crop(got), ref.log_attenuation_crop(got)
        assert np.abs(pictures.astype(int) - want).max() <= 1 and (pictures == want).mean() >= 0.99
    # 8-bit crops of few grey levels, constant ones, tiny ones (counted, not sorted, by the core).
    for t in range(40):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        crop = [rng.integers(0, 256, shape), rng.choice([0, 1, 2, 254, 255], shape),
                np.full(shape, int(rng.integers(0, 256))), rng.choice(np.arange(0, 256, 37), shape)][t % 4]
        for percentile in (99.5, 50.0, 100.0, 0.1):
            pictures, want = log_attenuation_crop(crop, percentile), ref.log_attenuation_crop(crop, percentile)
            assert np.abs(pictures.astype(int) - want).max() <= 1 and (pictures == want).mean() >= 0.99
    with pytest.raises(ValueError, match="crop box"):
        crop_frame(img, CropBox(1e9, 0.0, 10.0, 8))
    with pytest.raises(ValueError, match="non-finite"):
        log_attenuation_crop(np.full((8, 8), np.nan))
