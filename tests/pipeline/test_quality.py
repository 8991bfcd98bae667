"""The pipeline's quality gate (fluororeg.pipeline.quality): input checks that make a frame
unusable, the ambiguous-mirror flag, absurd geometry refused, and the QC report."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fluororeg.core.registration as fr
from fluororeg._reference.registration import SyntheticScene, make_view
from fluororeg.core.geometry import ConeView
from fluororeg.pipeline import quality


class _Frames:
    """A recording's frames in memory: frame(f) -> (view 1, view 2) [H, W]; read(view, positions)."""

    def __init__(self, images):
        self.images = images  # [F, 2, H, W]

    def __len__(self):
        return len(self.images)

    def frame(self, f):
        return self.images[f][0], self.images[f][1]

    def read(self, view, positions, num_threads=0):
        return [self.images[f][view] for f in positions]


def _fluoro_like(rng, F=8, size=96):
    """Intensifier-like frames: bright open field inside a circle, dark surround, a bone-like
    dark ellipse that moves from frame to frame, a different view in each image, noise."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    fov = np.hypot(xx - size / 2, yy - size / 2) < 0.45 * size
    out = np.empty((F, 2, size, size))
    for f in range(F):
        for k in range(2):
            cx, cy = size / 2 + 12 * np.sin(0.5 * f + k), size / 2 + 8 * np.cos(0.4 * f - 2 * k)
            bone = ((xx - cx) / (18 + 6 * k)) ** 2 + ((yy - cy) / (11 + 4 * k)) ** 2 < 1
            img = np.where(fov, 200.0, 10.0) - 90.0 * bone * fov
            out[f, k] = img + rng.normal(0, 3.0, img.shape)
    return out


def test_input_checks_flag_blank_saturated_and_duplicated_views():
    rng = np.random.default_rng(0)
    images = _fluoro_like(rng)
    normal = quality.input_statuses(quality.image_statistics(_Frames(images)))
    assert list(normal) == [""] * 8  # normal frames: no false alarm
    bad = images.copy()
    bad[1, 1] = 0.0                                    # a blank (black) view
    bad[3, 0] = 255.0                                  # a saturated (white) view
    bad[4, 0] = 200.0 + rng.normal(0, 0.5, bad[4, 0].shape)  # near-constant: no contrast left
    bad[5, 1] = bad[5, 0]                              # the same image as both views
    bad[6, 1] = bad[6, 0] + rng.normal(0, 1.0, bad[6, 0].shape)  # nearly the same
    stats = quality.image_statistics(_Frames(bad))
    status = quality.input_statuses(stats)
    assert list(status) == ["", "blank_view", "", "blank_view", "blank_view", "same_image", "same_image", ""]
    # Which view is blank: refinement uses the other one alone.
    assert [tuple(np.flatnonzero(b) + 1) for b in quality.blank_views(stats)] == [(), (2,), (), (1,), (1,), (), (), ()]
    assert set(status) - {""} <= set(fr.INPUT_STATUSES)


def test_constant_detector_is_flagged_only_when_the_images_change():
    rng = np.random.default_rng(1)
    images = _fluoro_like(rng, F=6)
    stats = quality.image_statistics(_Frames(images))
    scene = SyntheticScene(seed=0)
    poses = scene.random_poses(6, rng, max_deg=10, max_mm=10)
    det = np.stack([scene.detect(p, 0.5, rng) for p in poses])
    assert not quality.constant_detector(det, stats).any()
    constant = det.copy()
    constant[:, 1] = det[0, 1]  # view 2's detector answers the same whatever it sees
    assert list(quality.constant_detector(constant, stats)) == [False, True]
    # The same images in every frame: equal detections are what a good detector gives.
    still = quality.image_statistics(_Frames(np.repeat(images[:1], 6, axis=0)))
    assert not quality.constant_detector(constant, still).any()
    # The statistics hold a few numbers per frame, not images: memory flat in the recording's length.
    assert sum(np.asarray(v).nbytes for v in stats.values()) <= 64 * len(images) + 64
    later = constant.copy()
    later[0, 1] = np.nan  # view 2's first detections in frame 1: the statistics must compare with it
    with pytest.raises(ValueError, match="reference_frames"):
        quality.constant_detector(later, stats)
    shifted = quality.image_statistics(_Frames(images), reference_frames=(0, 1))
    assert list(quality.constant_detector(later, shifted)) == [False, True]


def test_mirrored_label_detector_flagged_only_when_ambiguous():
    """A detector that swaps left and right in view 1. Where the pairs' two landmarks project
    apart, the mirror search resolves it with a large objective gap (not flagged; normal frames
    are not flagged either). On a subject whose pairs lie almost on the mirror plane (0.2 mm
    apart at most), the swap hardly changes the objective: a one-view mirror pick is then
    flagged 'ambiguous_mirror' instead of being chosen silently."""
    scene = SyntheticScene(seed=0)
    rng = np.random.default_rng(2)
    poses = scene.random_poses(10, rng, max_deg=20, max_mm=15)
    det = np.stack([scene.detect(p, 1.0, rng) for p in poses])
    opts = fr.RegistrationOptions(loss="cauchy", loss_scale_mm=2.0)
    normal = fr.register_frames(scene.landmarks, scene.views, det, pairs=scene.pairs, options=opts)
    assert normal.ok.all() and not quality.ambiguous_mirror(normal).any()
    mirrored = fr.register_frames(scene.landmarks, scene.views, scene.mirror(det, 0), pairs=scene.pairs, options=opts)
    assert mirrored.ok.all() and np.all(mirrored.mirror_case == 1)  # resolved: view 1 mirrored back
    assert not quality.ambiguous_mirror(mirrored).any()
    flat = SyntheticScene(seed=0)
    flat.landmarks[13:26] = flat.landmarks[:13] * [-1, 1, 1]  # exact pairs ...
    flat.landmarks[:26, 0] *= 0.003                            # ... almost on the mirror plane
    det_flat = np.stack([flat.mirror(flat.detect(p, 1.0, rng), 0) for p in poses])
    amb = fr.register_frames(flat.landmarks, flat.views, det_flat, pairs=flat.pairs, options=opts)
    flags = quality.ambiguous_mirror(amb)
    best = np.sort(amb.case_objective, axis=1)
    gap = best[:, 1] / best[:, 0] - 1
    assert np.array_equal(flags, np.isin(amb.mirror_case, (1, 2)) & (gap < 0.25))
    assert flags.sum() >= 5
    flagged = quality.apply_input_statuses(amb, np.where(flags, "ambiguous_mirror", ""))
    assert not flagged.ok[flags].any() and np.isfinite(flagged.poses[flags]).all()
    assert np.array_equal(flagged.status[~flags], amb.status[~flags])


def test_absurd_geometry_is_refused():
    iso = np.zeros(3)
    good = (make_view(iso, -50.0), make_view(iso, 50.0))
    quality.check_geometry(good)
    near = (make_view(iso, -50.0, source_to_iso=60.0, iso_to_intensifier=1040.0), good[1])
    with pytest.raises(ValueError, match="view 1: the source is 60 mm from the crossing point"):
        quality.check_geometry(near)
    v = good[1]  # view 2 turned around: it looks away from view 1's beam
    away = ConeView(2 * v.source - v.intensifier_centre, v.source, -v.u, v.v, v.pitch_u, v.pitch_v, v.width, v.height)
    with pytest.raises(ValueError, match="view 2"):
        quality.check_geometry((good[0], away))
    with pytest.raises(ValueError, match="parallel"):
        quality.check_geometry((good[0], good[0]))
    with pytest.raises(ValueError, match="pitch"):  # ConeView itself refuses a zero pitch
        ConeView(v.source, v.intensifier_centre, v.u, v.v, 0.0, 0.6, 512, 512)


def test_qc_report_and_files(tmp_path):
    scene = SyntheticScene(seed=0)
    rng = np.random.default_rng(3)
    poses = scene.random_poses(6, rng, max_deg=15, max_mm=10)
    det = np.stack([scene.detect(p, 1.0, rng) for p in poses])
    det[2, 1] += rng.normal(0, 150, det[2, 1].shape)  # one wild view
    batch = fr.register_frames(scene.landmarks, scene.views, det, pairs=scene.pairs,
                               options=fr.RegistrationOptions(loss="cauchy", loss_scale_mm=6.0, max_residual_mm=5.0))
    status = batch.status.copy()
    status[4] = "blank_view"
    report = quality.qc_report(np.arange(10, 16), batch, status, 5.0)
    assert report["frames"] == 6 and report["registered"] == 4
    assert report["counts"]["blank_view"] == 1 and sum(report["counts"].values()) == 6
    assert report["worst"][0]["frame"] == 12 and report["worst"][0]["status"] in fr.GATE_STATUSES
    assert 0 < report["median_residual_bone_mm_registered"][0] < 1.0
    text = quality.format_qc(report)
    assert "4 of 6 frames registered" in text and "frame     12" in text and len(text.splitlines()) < 25
    json_path, png = quality.write_qc(tmp_path, report)
    text = json_path.read_text()
    # The whole report, as json wrote it (NaN included); a line per field and per-frame column.
    assert json.dumps(json.loads(text), sort_keys=True) == json.dumps(report, sort_keys=True)
    assert len(text.splitlines()) == len(report) + len(report["per_frame"]) + 3
    assert png is not None and png.stat().st_size > 1000


def test_qc_names_frames_just_below_the_similarity_floor():
    """Frames the refinement flagged low_similarity within NEAR_FLOOR of its floor are listed,
    and the summary says what to check before lowering it; frames far below are not."""
    scene = SyntheticScene(seed=0)
    rng = np.random.default_rng(3)
    poses = scene.random_poses(4, rng, max_deg=15, max_mm=10)
    det = np.stack([scene.detect(p, 1.0, rng) for p in poses])
    batch = fr.register_frames(scene.landmarks, scene.views, det, pairs=scene.pairs)
    status = np.array(["low_similarity", "low_similarity", "ok", "moved_far"])
    columns = {"similarity_view1": np.array([0.56, 0.20, 0.95, 0.58]),
               "similarity_view2": np.array([0.58, 0.25, 0.93, 0.57]),
               "landmark_status": np.array(["ok"] * 4), "refine_status": np.array(list(status)),
               "refine_rotation_change_deg": np.array([0.5, 3.0, 0.1, 20.0]),
               "refine_translation_change_mm": np.array([0.2, 2.0, 0.1, 9.0])}
    report = quality.qc_report(np.arange(10, 14), batch, status, 5.0, refine_columns=columns)
    assert report["refined"]["min_similarity"] == pytest.approx(0.6)
    assert report["refined"]["just_below_floor"] == [10]  # 0.57 (not 0.23; frame 13 moved far)
    text = quality.format_qc(report)
    assert "1 frame(s) ended just below the similarity floor 0.60" in text and "--min-similarity" in text
    lower = quality.qc_report(np.arange(10, 14), batch, status, 5.0, refine_columns=columns, min_similarity=0.3)
    assert lower["refined"]["min_similarity"] == 0.3 and lower["refined"]["just_below_floor"] == [10, 11]
    assert "just below" not in quality.format_qc(
        quality.qc_report(np.arange(10, 14), batch, np.array(["ok", "ok", "ok", "moved_far"]), 5.0,
                          refine_columns=columns))


def test_residual_limit_from_the_detector_metadata():
    from fluororeg.pipeline.register import PipelineOptions

    class Model:
        def __init__(self, meta):
            self.meta = meta

    class Detector:
        def __init__(self, meta, training=None):
            self.model = Model(meta)
            self.training = training

    opts = PipelineOptions(crop_pixel_mm=2.0)
    assert opts.residual_limit_mm() == pytest.approx(5.0) == opts.registration_options().max_residual_mm
    assert opts.residual_limit_mm(Detector({"val_err_mm": "2.5"})) == pytest.approx(5.0 * 2.5 / 2.5)
    assert opts.residual_limit_mm(Detector({"val_err_mm": 1.5})) == pytest.approx(3.0)
    with pytest.warns(UserWarning, match="val_err_mm"):
        assert opts.residual_limit_mm(Detector({"val_err_mm": "n/a"})) == pytest.approx(5.0)
    assert PipelineOptions(max_residual_mm=7.0).residual_limit_mm(Detector({"val_err_mm": 1.0})) == 7.0
    # The training figures exports record (val_mean_mm at the bone), as attribute or metadata entry.
    assert opts.residual_limit_mm(Detector({}, training={"val_mean_mm": 2.0, "val_mean_px": 1.0})) == pytest.approx(4.0)
    assert opts.residual_limit_mm(Detector({"training": {"val_mean_mm": 2.2}})) == pytest.approx(4.4)
    with pytest.warns(UserWarning, match="uses at most 10.0 mm"):  # a poor detector: not a lax gate
        assert opts.residual_limit_mm(Detector({}, training={"val_mean_mm": 30.0})) == pytest.approx(10.0)
    assert PipelineOptions(quality_gate=False).registration_options().max_residual_mm is None
    with pytest.raises(ValueError, match="max_residual_mm = -1"):
        PipelineOptions(max_residual_mm=-1.0)


def test_frame_statistics_match_the_numpy_reference():
    """The core's FrameStatistics (thumbnails, 1st/99th percentiles of the input checks) against
    the NumPy reference: odd frame sizes, frames smaller than the thumbnail (empty bins), a mask,
    a stride, 8-bit frames (their grey levels counted, not sorted); NaN figures for a non-finite
    pixel; threads do not change the result."""
    from fluororeg import _core
    from fluororeg._reference.picture import frame_statistics

    rng = np.random.default_rng(5)
    for shape, side, top in [((97, 130), 64, 255), ((97, 130), 64, 4000), ((40, 51), 64, 4000), ((64, 64), 16, 4000)]:
        frames = rng.uniform(0, top, (5,) + shape).astype(np.float32)
        if top == 255:
            frames = np.round(frames)
            frames[4, 0, 0] = 255.5  # not 8-bit: sorted
        frames[2] = 17.0  # constant
        inside = rng.random(shape) < 0.7
        for mask, stride in [(None, 1), (inside, 1), (inside, 3)]:
            got = _core.frame_statistics(frames, side, None if mask is None else mask.astype(np.uint8), stride, 2)
            want = frame_statistics(frames, side, mask, stride)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
            np.testing.assert_array_equal(got[1], want[1])  # the same order statistics
            np.testing.assert_array_equal(got[2], want[2])
            assert got[1][2] == 0.0 and got[2][2] == 17.0
    one = _core.frame_statistics(frames, 16, None, 1, 1)
    many = _core.frame_statistics(frames, 16, None, 1, 3)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    frames[1, 3, 4] = np.nan
    _, spread, level = _core.frame_statistics(frames, 16, None, 1, 0)
    assert np.isnan(spread[1]) and np.isnan(level[1]) and np.isfinite(spread[[0, 2, 3, 4]]).all()
    with pytest.raises(ValueError, match="mask holds no pixel"):
        _core.frame_statistics(frames, 16, np.zeros((64, 64), np.uint8), 1, 0)
    with pytest.raises(ValueError, match="stride"):
        _core.frame_statistics(frames, 16, None, 0, 0)
    with pytest.raises(ValueError, match="thumbnail side"):
        _core.frame_statistics(frames, 0, None, 1, 0)
    with pytest.raises(ValueError, match="inside has shape"):
        _core.frame_statistics(frames, 16, np.ones((64, 63), np.uint8), 1, 0)


def test_image_statistics_refuse_frames_of_two_sizes():
    images = [np.full((2, 96, 96), 100.0)] * 3 + [np.full((2, 80, 96), 100.0)] * 30
    with pytest.raises(ValueError, match="expected one frame size per view"):
        quality.image_statistics(_Frames(images))


def test_input_statistics_gathered_in_blocks_equal_image_statistics():
    """The figures the detection pass gathers (InputStatistics, blocks of any size, the reference
    frame picked as the first with detections per view) are image_statistics' with that reference
    frame; change is NaN before it. Blocks out of order, or a result with frames missing, are
    refused."""
    from fluororeg.inference.crops import detect_fov

    rng = np.random.default_rng(11)
    images = _fluoro_like(rng, F=11)
    fovs = [detect_fov(images[0][k]) for k in range(2)]
    found = np.zeros((11, 2), bool)
    found[4:, 0] = True  # view 1: detections from frame 4 on (in the second block)
    found[[0, 7], 1] = True  # view 2: from frame 0
    want = quality.image_statistics(_Frames(images), fovs, reference_frames=(4, 0))
    gathered = quality.InputStatistics(11, fovs, num_threads=2)
    for f0, f1 in [(0, 3), (3, 8), (8, 11)]:
        rows = range(f0, f1)
        gathered.add(f0, [gathered.figures(k, [images[f][k] for f in rows]) for k in range(2)], found=found[f0:f1])
    got = gathered.result()
    np.testing.assert_array_equal(got["reference"], [4, 0])
    for key in ("spread", "level", "views_correlation"):
        np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_array_equal(got["change"][4:, 0], want["change"][4:, 0])
    assert np.isnan(got["change"][:4, 0]).all()
    np.testing.assert_array_equal(got["change"][:, 1], want["change"][:, 1])
    # A detector whose output ignores the moving images is caught with either figures.
    constant = np.where(found[..., None, None], 50.0, np.nan) * np.ones((11, 2, 3, 2))
    assert quality.constant_detector(constant, got).all() and quality.constant_detector(constant, want).all()
    late = quality.InputStatistics(11, fovs)
    with pytest.raises(ValueError, match="in order"):
        late.add(3, [late.figures(k, [images[3][k]]) for k in range(2)])
    late.add(0, [late.figures(k, [images[0][k]]) for k in range(2)])
    with pytest.raises(ValueError, match="every frame is needed"):
        late.result()
