"""Intensity refinement (fluororeg.core.refine over the C++ core) against NumPy references and on
simulated frames with known poses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fluororeg import _core
from fluororeg.core import refine
from fluororeg.pipeline import refine_stage
from fluororeg.core import render
from fluororeg._reference import refine as ref
from fluororeg.core.geometry import ConeView
from fluororeg.core.volume import Volume
from fluororeg.simulation.simulate import perturbed_poses

SIZE = 64  # px per side of the test images


@pytest.fixture(scope="module")
def small_views():
    views = []
    for ang in (-50.0, 50.0):
        a = np.deg2rad(ang)
        src = 650.0 * np.array([np.sin(a), -np.cos(a), 0.0])
        views.append(ConeView.looking_at(src, [0, 0, 0], distance_to_intensifier=1050.0, pitch=1.2 * 96 / SIZE,
                                         width=SIZE, height=SIZE))
    return tuple(views)


def pose_errors(a, b):
    e = _core.pose_errors(np.c_[np.deg2rad(a[:, :3]), a[:, 3:]], np.c_[np.deg2rad(b[:, :3]), b[:, 3:]])
    return np.rad2deg(e[:, 0]), e[:, 1]


@pytest.fixture(scope="module")
def frames(headsq_mu, small_views):
    """Four simulated frame pairs (DRRs + 1 % noise) and their true poses."""
    rng = np.random.default_rng(3)
    truth = np.c_[rng.uniform(-10, 10, (4, 3)), rng.uniform(-5, 5, (4, 3))]
    imgs = np.stack([render.render_cone(headsq_mu, v, truth) for v in small_views], axis=1)
    imgs = imgs + rng.normal(0, 0.01 * imgs.max(), imgs.shape).astype(np.float32)
    return truth, imgs.astype(np.float32)


# ------------------------------------------------------------------------- kernels vs NumPy
def test_similarities_match_reference():
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(rng.normal(size=(40, 50)), 2).astype(np.float32)
    b = (0.7 * a + 0.3 * gaussian_filter(rng.normal(size=(40, 50)), 2)).astype(np.float32)
    mask = (rng.uniform(size=(40, 50)) > 0.3).astype(np.uint8)
    for m in (None, mask):
        assert _core.gradient_correlation(a, b, m) == pytest.approx(ref.gradient_correlation(a, b, m), abs=1e-9)
        assert _core.normalized_cross_correlation(a, b, m) == pytest.approx(
            ref.normalized_cross_correlation(a, b, m), abs=1e-9)
    assert _core.gradient_correlation(a, a) == pytest.approx(1.0, abs=1e-12)
    assert _core.gradient_correlation(a, -3 * a + 2) == pytest.approx(-1.0, abs=1e-12)
    assert _core.normalized_cross_correlation(a, np.zeros_like(a)) == 0.0  # constant image
    with pytest.raises(ValueError, match="b has shape"):
        _core.gradient_correlation(a, b[:-1])


def test_pyramid_view_matches_reference(small_views):
    for level in (0, 1, 2, 3):
        got = _core.pyramid_view(small_views[0].packed(), level)
        np.testing.assert_allclose(got, ref.pyramid_view(small_views[0], level).packed(), atol=1e-9)
    odd = ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_intensifier=1050.0, pitch=0.7, width=67, height=45)
    np.testing.assert_allclose(_core.pyramid_view(odd.packed(), 2), ref.pyramid_view(odd, 2).packed(), atol=1e-9)


@pytest.mark.parametrize("similarity", ["gradient_correlation", "ncc"])
def test_evaluated_similarity_and_region_match_reference(headsq_mu, small_views, frames, similarity):
    truth, imgs = frames
    poses = perturbed_poses(truth[:2], 2.0, 2.0, np.random.default_rng(1))
    level = 1
    opts = refine.refine_options(similarity=similarity, num_levels=1, finest_level=level, roi_margin_px=2)
    usable = np.ones((2, SIZE, SIZE), bool)
    usable[:, :, :6] = False  # a blind strip on the left of both images
    sim, roi = refine.refine_similarity(headsq_mu, small_views, imgs[:2], poses, level=level, options=opts,
                                        image_masks=usable)
    # The volumes the core marched through: the attenuation at the level's pixel size and its
    # thresholded bone.
    vol, bone = refine._volumes(headsq_mu, None, refine.DEFAULT_BONE_THRESHOLD,
                                refine._pixel_at_object(small_views, poses, level))
    for k in range(2):
        lv = ref.pyramid_view(small_views[k], level)
        path = render.render_cone(bone, lv, poses, level=None)
        for f in range(2):
            expect = ref.region_of_interest(path[f], 2, ref.downsample_image(usable[k], level) == 1)
            assert (roi[f, k] == expect).mean() > 0.995  # a rounding-edge pixel may differ
            assert roi[f, k].sum() > 50
    expected = ref.evaluate_refine_similarity(vol, small_views, imgs[:2], poses, roi, level, similarity)
    np.testing.assert_allclose(sim, expected, atol=2e-5)


# ------------------------------------------------------------------------- refinement
def test_recovers_true_pose_from_5_deg_5_mm(headsq_mu, small_views, frames):
    truth, imgs = frames
    start = perturbed_poses(truth, 5.0, 5.0, np.random.default_rng(7))
    a0, t0 = pose_errors(start, truth)
    assert a0.max() > 2.0 and t0.max() > 2.0
    res = refine.refine_poses(headsq_mu, small_views, imgs, start, options=refine.refine_options(num_levels=2))
    ang, mm = pose_errors(res.poses, truth)
    assert ang.max() < 0.2, ang
    assert mm.max() < 0.2, mm
    assert list(res.status) == ["converged"] * 4 and res.converged.all()
    assert res.similarity.shape == (4, 2) and (res.similarity > 0.5).all()
    np.testing.assert_allclose(res.similarity_total, res.similarity.mean(axis=1), atol=1e-12)
    assert (res.iterations > 0).all() and (res.seconds > 0).all()
    # The frames' host work, their renders excluded: some of their one thread's time each.
    assert (res.host_seconds > 0).all() and (res.host_seconds < res.seconds).all()
    assert res.rendered_rays.dtype == np.int64 and (res.rendered_rays > res.render_calls).all()
    assert (res.render_calls > 0).all()
    # The reported pose change is the move from the start.
    rot = lambda p: Rotation.from_euler("zyx", p[:, 2::-1], degrees=True)  # noqa: E731
    np.testing.assert_allclose(res.rotation_change_deg, np.rad2deg((rot(res.poses) * rot(start).inv()).magnitude()),
                               atol=1e-6)
    np.testing.assert_allclose(res.translation_change_mm, np.linalg.norm(res.poses[:, 3:] - start[:, 3:], axis=1),
                               atol=1e-9)
    np.testing.assert_array_equal(res.start_poses, start)
    assert not res.tracked.any()


def test_one_view_mode_uses_only_that_view(headsq_mu, small_views, frames):
    truth, imgs = frames
    garbage = imgs[:1].copy()
    garbage[:, 1] = np.random.default_rng(0).permutation(garbage[0, 1].ravel()).reshape(SIZE, SIZE)
    start = perturbed_poses(truth[:1], 2.0, 1.0, np.random.default_rng(2))
    opts = refine.refine_options(num_levels=2, weight_view2=0.0)
    res = refine.refine_poses(headsq_mu, small_views, garbage, start, options=opts)
    assert res.similarity[0, 0] > 0.8 > abs(res.similarity[0, 1])
    assert res.similarity_total[0] == res.similarity[0, 0]  # view 2 does not count
    assert res.status[0] == "converged"
    # One view fixes the in-plane pose; the error it leaves lies mostly along its beam.
    ang, _ = pose_errors(res.poses, truth[:1])
    assert ang[0] < 1.0
    both = refine.refine_poses(headsq_mu, small_views, garbage, start, options=refine.refine_options(num_levels=2))
    assert both.similarity_total[0] < res.similarity_total[0]


def test_per_frame_view_weights_leave_a_view_out_of_that_frame(headsq_mu, small_views, frames):
    """view_weights [F, 2]: a frame whose view 2 is garbage refined against view 1 alone, the
    same as the options' weights do for a whole batch, while the other frames use both views."""
    truth, imgs = frames
    bad = imgs[:2].copy()
    bad[0, 1] = np.random.default_rng(0).permutation(bad[0, 1].ravel()).reshape(SIZE, SIZE)
    start = perturbed_poses(truth[:2], 2.0, 1.0, np.random.default_rng(2))
    opts = refine.refine_options(num_levels=2)
    res = refine.refine_poses(headsq_mu, small_views, bad, start, options=opts, view_weights=[[1.0, 0.0], [1.0, 1.0]])
    alone = refine.refine_poses(headsq_mu, small_views, bad[:1], start[:1],
                                options=refine.refine_options(num_levels=2, weight_view2=0.0))
    np.testing.assert_array_equal(res.poses[0], alone.poses[0])
    assert res.similarity_total[0] == res.similarity[0, 0] and abs(res.similarity[0, 1]) < 0.5  # reported, unused
    assert list(res.status) == ["converged", "converged"]
    np.testing.assert_allclose(res.similarity_total[1], res.similarity[1].mean(), atol=1e-12)
    ang, mm = pose_errors(res.poses, truth[:2])
    assert ang.max() < 1.0 and mm[1] < 0.2, (ang, mm)
    with pytest.raises(ValueError, match=r"view_weights have shape \(3, 2\), expected \(2, 2\)"):
        refine.refine_poses(headsq_mu, small_views, bad, start, options=opts, view_weights=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"view weights of frame 1 \(0, 0\)"):
        refine.refine_poses(headsq_mu, small_views, bad, start, options=opts, view_weights=[[1, 0], [0, 0]])
    with pytest.raises(ValueError, match=r"view weights of frame 0 \(-1"):
        refine.refine_poses(headsq_mu, small_views, bad, start, options=opts, view_weights=[[-1, 1], [1, 1]])
    with pytest.raises(ValueError, match="view weights of frame 0"):  # the options' weight of view 1 is 0
        refine.refine_poses(headsq_mu, small_views, bad, start, view_weights=[[1, 0], [1, 1]],
                            options=refine.refine_options(num_levels=2, weight_view1=0.0))


def test_refine_on_cuda_matches_cpu(headsq_mu, small_views, frames):
    """The CUDA renders (RenderConePixels on the device, the CPU's per-ray code) give the CPU's
    refinement to rounding; without a usable device 'cuda' is refused clearly."""
    truth, imgs = frames
    start = perturbed_poses(truth[:2], 3.0, 2.0, np.random.default_rng(8))
    opts = refine.refine_options(num_levels=2)
    if not _core.cuda_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            refine.refine_poses(headsq_mu, small_views, imgs[:2], start, options=opts, device="cuda")
        assert opts.device == "cpu"  # device= works on a copy of the caller's options
        pytest.skip("no CUDA device")
    cpu = refine.refine_poses(headsq_mu, small_views, imgs[:2], start, options=opts)
    gpu = refine.refine_poses(headsq_mu, small_views, imgs[:2], start, options=opts, device="cuda")
    assert list(gpu.status) == list(cpu.status)
    ang, mm = pose_errors(gpu.poses, cpu.poses)
    assert ang.max() < 0.01 and mm.max() < 0.01, (ang, mm)
    np.testing.assert_allclose(gpu.similarity, cpu.similarity, atol=1e-4)


def test_far_start_is_flagged(headsq_mu, small_views, frames):
    truth, imgs = frames
    start = perturbed_poses(truth[:2], 35.0, 30.0, np.random.default_rng(5))
    res = refine.refine_poses(headsq_mu, small_views, imgs[:2], start, options=refine.refine_options(num_levels=2))
    ang, mm = pose_errors(res.poses, truth[:2])
    assert ((ang > 1.0) | (mm > 1.0)).all()  # not recovered ...
    assert set(res.status) <= {"moved_far", "low_similarity"} and not res.converged.any()  # ... and flagged
    assert (res.similarity_total < 0.5).all()


def test_relative_gate_flags_a_frame_far_below_its_neighbours(headsq_mu, small_views, frames):
    truth, imgs = frames
    start = perturbed_poses(truth, 1.0, 1.0, np.random.default_rng(6))
    start[3] = perturbed_poses(truth[3:], 35.0, 30.0, np.random.default_rng(5))[0]
    # The absolute gate off: only the comparison with the other frames can flag frame 3.
    opts = refine.refine_options(num_levels=2, min_similarity=-1.0, max_rotation_change_deg=180.0,
                                 max_translation_change_mm=1000.0)
    res = refine.refine_poses(headsq_mu, small_views, imgs, start, options=opts)
    assert list(res.status) == ["converged"] * 3 + ["low_similarity"], res.similarity_total
    assert list(res.converged) == [True] * 3 + [False]
    with pytest.raises(ValueError, match="relative_similarity"):
        refine.refine_poses(headsq_mu, small_views, imgs, start, options=opts, relative_similarity=1.5)


def test_near_misses_are_refined_again_with_finite_differences(headsq_mu, small_views, frames, monkeypatch):
    """Frames above the absolute floor but below the recording's typical similarity (here: the
    relative gate at 0.9999 of the median) are refined again from their start with the Jacobian
    of central differences; frames below the floor, or refined with that Jacobian already, are
    not. The core is the real one, watched."""
    truth, imgs = frames
    start = perturbed_poses(truth, 2.0, 2.0, np.random.default_rng(8))
    calls = []
    real = refine._core

    class Watched:
        def __getattr__(self, name):
            return getattr(real, name)

        def refine_frames(self, volumes, views, images, masks, poses, options, weights):
            calls.append((len(poses), options.analytic_jacobian))
            return real.refine_frames(volumes, views, images, masks, poses, options, weights)

    monkeypatch.setattr(refine, "_core", Watched())
    opts = refine.refine_options(num_levels=2)
    res = refine.refine_poses(headsq_mu, small_views, imgs, start, options=opts, relative_similarity=0.9999)
    assert len(calls) == 2 and calls[0] == (4, True) and calls[1][1] is False and 1 <= calls[1][0] < 4, calls
    assert (res.status == "low_similarity").sum() >= 1  # 0.9999 of the median still flags some
    alone = refine.refine_poses(headsq_mu, small_views, imgs, start, options=opts)  # no near miss: one call
    assert calls[2:] == [(4, True)] and list(alone.status) == ["converged"] * 4
    calls.clear()
    floor = refine.refine_options(num_levels=2, min_similarity=0.9999)  # every frame below the floor
    assert set(refine.refine_poses(headsq_mu, small_views, imgs, start, options=floor).status) == {"low_similarity"}
    assert calls == [(4, True)]
    calls.clear()
    differences = refine.refine_options(num_levels=2, analytic_jacobian=False)
    refine.refine_poses(headsq_mu, small_views, imgs, start, options=differences, relative_similarity=0.9999)
    assert calls == [(4, False)]


@pytest.fixture(scope="module")
def half_turn_symmetric(headsq_mu):
    """The head made symmetric under a half turn about its vertical axis (model z through its
    centre), which is across both small_views' rays: its depth-reversed twin is itself."""
    return Volume(0.5 * (headsq_mu.data + headsq_mu.data[:, ::-1, ::-1]), headsq_mu.spacing, headsq_mu.origin,
                  headsq_mu.direction)


def test_depth_check_flags_a_pose_its_twin_explains_as_well(half_turn_symmetric, small_views):
    from fluororeg.core.geometry import depth_reversed_poses

    vol = half_turn_symmetric
    truth = np.array([[0.0, 0.0, z, x, y, 2.0] for z, x, y in ((-8.0, 2.0, -3.0), (5.0, -4.0, 1.0), (12.0, 3.0, 4.0))])
    imgs = np.stack([render.render_cone(vol, v, truth) for v in small_views], axis=1)
    opts = refine.refine_options(num_levels=2)
    plain = refine.refine_poses(vol, small_views, imgs, truth, options=opts)
    assert plain.converged.all() and np.isnan(plain.twin_similarity).all() and not plain.twin_chosen.any()
    res = refine.refine_poses(vol, small_views, imgs, truth, options=opts, check_depth=[True, True, False])
    # The twin reached the same similarity: frames 0 and 1 are not passed, frame 2 was not checked.
    assert list(res.status) == ["ambiguous_depth", "ambiguous_depth", "converged"], res.twin_similarity
    assert list(res.converged) == [False, False, True] and not res.twin_chosen.any()
    np.testing.assert_allclose(res.twin_similarity[:2], res.similarity_total[:2], atol=0.01)
    np.testing.assert_allclose(res.poses, plain.poses)  # the reading kept, for inspection
    assert (res.render_calls[:2] > plain.render_calls[:2]).all()  # the twins' refinement is counted
    # Tracking may still place an ambiguous frame from a neighbour that passed.
    tracked = refine.refine_poses(vol, small_views, imgs, truth, options=opts, check_depth=[True, False, False],
                                  track=True)
    assert list(tracked.status) == ["converged"] * 3 and list(tracked.tracked) == [True, False, False]
    assert np.isnan(tracked.twin_similarity[0])  # the depth of a tracked frame is its neighbour's
    twins = depth_reversed_poses(truth, small_views, [0.0, 0.0, 0.0])
    assert pose_errors(twins, truth)[0].min() > 170.0  # the check's other reading is half a turn away
    with pytest.raises(ValueError, match=r"check_depth has shape \(2,\), expected \(3,\)"):
        refine.refine_poses(vol, small_views, imgs, truth, options=opts, check_depth=[True, False])


def test_depth_check_on_cuda_matches_cpu(half_turn_symmetric, small_views):
    """The depth check (its first look one level coarser, then the full refinement) on CUDA
    decides as on the CPU."""
    if not _core.cuda_available():
        pytest.skip("no CUDA device")
    vol = half_turn_symmetric
    truth = np.array([[0.0, 0.0, z, x, y, 2.0] for z, x, y in ((-8.0, 2.0, -3.0), (5.0, -4.0, 1.0))])
    imgs = np.stack([render.render_cone(vol, v, truth) for v in small_views], axis=1)
    opts = refine.refine_options(num_levels=2)
    cpu = refine.refine_poses(vol, small_views, imgs, truth, options=opts, check_depth=[True, False])
    gpu = refine.refine_poses(vol, small_views, imgs, truth, options=opts, check_depth=[True, False], device="cuda")
    assert list(gpu.status) == list(cpu.status) == ["ambiguous_depth", "converged"]
    np.testing.assert_allclose(gpu.twin_similarity, cpu.twin_similarity, atol=1e-3)


def test_bone_centre_is_the_centroid_of_the_region():
    """The depth check's turning point: the region's centroid in the model frame, from the
    threshold or from a given bone mask (which wins), at 4 mm voxels."""
    shape = (40, 48, 56)  # [z, y, x] voxels of 2 mm
    k, j, i = np.indices(shape)
    grid = Volume(np.zeros(shape, np.float32), (2.0, 2.0, 2.0), (-50.0, -40.0, -30.0))
    P = grid.voxel_to_physical(np.stack([i, j, k], axis=-1).astype(np.float64))  # [z, y, x, 3] mm
    mu = np.zeros(shape, np.float32)  # 1/mm
    mu[np.linalg.norm(P - [10.0, 5.0, -3.0], axis=-1) < 14.0] = 0.05  # a dense ball
    mu[np.linalg.norm(P - [-20.0, -10.0, 12.0], axis=-1) < 8.0] = 0.01  # soft tissue, below the threshold
    vol = Volume(mu, grid.spacing, grid.origin)
    np.testing.assert_allclose(refine.bone_centre(vol), [10.0, 5.0, -3.0], atol=1.5)
    soft = Volume((np.linalg.norm(P - [-20.0, -10.0, 12.0], axis=-1) < 8.0).astype(np.uint8), vol.spacing, vol.origin)
    np.testing.assert_allclose(refine.bone_centre(vol, bone=soft), [-20.0, -10.0, 12.0], atol=1.5)


def test_depth_check_replaces_a_reading_its_twin_explains_better(half_turn_symmetric, small_views):
    """A dense ball on one side breaks the symmetry: from the twin of the truth the refinement
    passes the gate half a turn off; the check's other reading is the truth, clearly better."""
    from fluororeg.core.geometry import depth_reversed_poses

    data = half_turn_symmetric.data.copy()
    k, j, i = np.indices(data.shape)
    P = half_turn_symmetric.voxel_to_physical(np.stack([i, j, k], axis=-1).astype(np.float64))
    data[np.linalg.norm(P - [40.0, 25.0, 10.0], axis=-1) < 12.0] += 0.03
    vol = Volume(data.astype(np.float32), half_turn_symmetric.spacing, half_turn_symmetric.origin,
                 half_turn_symmetric.direction)
    truth = np.array([[0.0, 0.0, z, x, y, 2.0] for z, x, y in ((-8.0, 2.0, -3.0), (5.0, -4.0, 1.0), (12.0, 3.0, 4.0))])
    imgs = np.stack([render.render_cone(vol, v, truth) for v in small_views], axis=1)
    twins = depth_reversed_poses(truth, small_views, refine.bone_centre(vol, None, refine.DEFAULT_BONE_THRESHOLD))
    opts = refine.refine_options(num_levels=2, min_similarity=0.3)
    plain = refine.refine_poses(vol, small_views, imgs, twins, options=opts, relative_similarity=None)
    passed_off = plain.converged & (pose_errors(plain.poses, truth)[0] > 170.0)
    assert passed_off.any(), plain.similarity_total  # the hazard: a twin that passes the gate
    res = refine.refine_poses(vol, small_views, imgs, twins, options=opts, relative_similarity=None,
                              check_depth=np.ones(3, bool))
    ang, mm = pose_errors(res.poses[passed_off], truth[passed_off])
    assert ang.max() < 0.5 and mm.max() < 0.5, (ang, mm)
    assert res.twin_chosen[passed_off].all() and res.converged[passed_off].all()
    np.testing.assert_allclose(res.twin_similarity[passed_off], plain.similarity_total[passed_off])
    assert (res.twin_similarity[passed_off] < refine.DEPTH_MARGIN * res.similarity_total[passed_off]).all()
    # The pose change is from the frame's own start, as for every frame: half a turn.
    assert (res.rotation_change_deg[passed_off] > 170.0).all()
    np.testing.assert_array_equal(res.start_poses, twins)


def test_prepared_volumes_are_made_once_per_volume_and_bone(headsq_mu, small_views, frames):
    """refine_poses and refine_similarity share the core's prepared volumes (pyramids, and on
    CUDA their device copies) per attenuation volume, bone and level count; another bone, even
    an equal one, or another threshold gets its own."""
    truth, imgs = frames
    px = refine._pixel_at_object(small_views, truth, 0)
    bone = Volume((headsq_mu.data >= refine.DEFAULT_BONE_THRESHOLD).astype(np.float32), headsq_mu.spacing,
                  headsq_mu.origin, headsq_mu.direction)
    first = refine._refine_volumes(headsq_mu, bone, None, px, 2)
    assert first.num_levels == 2
    assert refine._refine_volumes(headsq_mu, bone, None, px, 2) is first
    assert refine._refine_volumes(headsq_mu, bone, None, px, 3) is not first
    twin = Volume(bone.data.copy(), bone.spacing, bone.origin, bone.direction)
    assert refine._refine_volumes(headsq_mu, twin, None, px, 2) is not first
    by_threshold = refine._refine_volumes(headsq_mu, None, 0.03, px, 2)
    assert refine._refine_volumes(headsq_mu, None, 0.03, px, 2) is by_threshold
    assert refine._refine_volumes(headsq_mu, None, 0.02, px, 2) is not by_threshold
    # The prepared volumes give refine_poses' results, call after call.
    opts = refine.refine_options(num_levels=2)
    start = perturbed_poses(truth[:1], 3.0, 3.0, np.random.default_rng(5))
    a = refine.refine_poses(headsq_mu, small_views, imgs[:1], start, options=opts, bone=bone)
    b = refine.refine_poses(headsq_mu, small_views, imgs[:1], start, options=opts, bone=bone)
    np.testing.assert_array_equal(a.poses, b.poses)
    with pytest.raises(ValueError, match="bone_threshold"):
        refine._refine_volumes(headsq_mu, None, -1.0, px, 2)


def test_tracking_starts_a_failed_frame_from_the_previous_one(headsq_mu, small_views, frames):
    truth, imgs = frames
    # Consecutive frames close together: frame 1 is frame 0 moved by 1 deg / 1 mm.
    poses = np.stack([truth[0], perturbed_poses(truth[:1], 1.0, 1.0, np.random.default_rng(9))[0]])
    img = np.stack([render.render_cone(headsq_mu, v, poses) for v in small_views], axis=1)
    start = np.stack([perturbed_poses(poses[:1], 3.0, 3.0, np.random.default_rng(4))[0], np.full(6, np.nan)])
    opts = refine.refine_options(num_levels=2)
    plain = refine.refine_poses(headsq_mu, small_views, img, start, options=opts)
    assert list(plain.status) == ["converged", "invalid_start"] and not plain.tracked.any()
    assert np.isnan(plain.rotation_change_deg[1])
    res = refine.refine_poses(headsq_mu, small_views, img, start, options=opts, track=True)
    assert list(res.status) == ["converged", "converged"] and list(res.tracked) == [False, True]
    np.testing.assert_allclose(res.start_poses[1], res.poses[0])
    # The render work is summed over a frame's tries: none for the frame without a start, then
    # its retry's; the first frame's is that of its one try.
    assert plain.render_calls[1] == 0 and plain.rendered_rays[1] == 0
    assert res.render_calls[1] > 0 and res.rendered_rays[1] > res.render_calls[1]
    assert res.render_calls[0] == plain.render_calls[0] and res.rendered_rays[0] == plain.rendered_rays[0]
    ang, mm = pose_errors(res.poses, poses)
    assert ang.max() < 0.2 and mm.max() < 0.2


def test_tracking_retries_in_waves_give_the_frame_after_frame_results(headsq_mu, small_views, monkeypatch):
    """Runs of frames without a start are tracked wave by wave (frames 1 and 5, then 2, then 3
    from frame 2's new pose); one core call per wave (as on CUDA) gives what one call per frame
    gives, the render work summed per frame."""
    rng = np.random.default_rng(21)
    base = np.array([2.0, -3.0, 4.0, 1.0, -2.0, 3.0])
    poses = base + np.outer(np.arange(6), [0.4, 0.3, -0.2, 0.5, -0.4, 0.3])  # 0.5 deg / 0.7 mm apart
    img = np.stack([render.render_cone(headsq_mu, v, poses) for v in small_views], axis=1)
    start = perturbed_poses(poses, 2.0, 2.0, rng)
    start[[1, 2, 3, 5]] = np.nan
    opts = refine.refine_options(num_levels=2)
    results = {}
    for together in (False, True):
        monkeypatch.setattr(refine, "_retries_together", lambda options, t=together: t)
        results[together] = refine.refine_poses(headsq_mu, small_views, img, start, options=opts, track=True)
    one, waves = results[False], results[True]
    assert list(waves.status) == ["converged"] * 6
    assert list(waves.tracked) == [False, True, True, True, False, True]
    for field in ("poses", "start_poses", "similarity_total", "iterations", "render_calls", "rendered_rays"):
        np.testing.assert_array_equal(getattr(waves, field), getattr(one, field), err_msg=field)
    np.testing.assert_array_equal(waves.start_poses[3], waves.poses[2])  # tracked along the run
    ang, mm = pose_errors(waves.poses, poses)
    assert ang.max() < 0.2 and mm.max() < 0.2


def test_intensity_images_are_inverted(headsq_mu, small_views, frames):
    truth, imgs = frames
    intensity = 1000.0 * np.exp(-np.clip(imgs[:1], 0, None))  # bone dark, like an intensifier
    start = perturbed_poses(truth[:1], 3.0, 3.0, np.random.default_rng(11))
    res = refine.refine_poses(headsq_mu, small_views, intensity, start, image_kind="intensity",
                              options=refine.refine_options(num_levels=2))
    ang, mm = pose_errors(res.poses, truth[:1])
    assert res.converged[0] and ang[0] < 0.2 and mm[0] < 0.2


def test_intensity_to_line_integrals_matches_reference():
    """The core's FramesToLineIntegrals against the SciPy/NumPy reference: undistortion by a
    smooth source map reaching beyond the frame (edge values), masks (also empty: all pixels),
    no map, threads; bad input is named."""
    rng = np.random.default_rng(21)
    H, W = 37, 52
    frames = (rng.random((5, H, W)) * 900 + 50).astype(np.float32)
    frames[2, 10:20, 5:30] = 0.0  # darker than 1e-4 of the open field: floored
    frames[4] = 7.0  # constant: all zero
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / (W / 2) ** 2
    source = (xx + 4.0 * r2 * (xx - W / 2) / W - 1.3, yy + 3.0 * r2 * (yy - H / 2) / H + 0.7)  # beyond the edges
    assert source[0].min() < 0 and source[0].max() > W - 1
    mask = r2 < 0.6
    for smap in (None, source):
        for m in (None, mask, np.zeros((H, W), bool)):
            got = refine.intensity_to_line_integrals(frames, m, source_map=smap, num_threads=2)
            want = ref.frames_to_line_integrals(frames, m, smap)
            assert got.dtype == np.float32 and got.shape == frames.shape
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    assert not refine.intensity_to_line_integrals(frames[4]).any()
    # Coordinates far beyond the frame sample its edges (no overflow).
    far = (np.full((H, W), -1e300), np.full((H, W), 1e300))
    np.testing.assert_allclose(refine.intensity_to_line_integrals(frames[:2], source_map=far),
                               ref.frames_to_line_integrals(frames[:2], None, (np.full((H, W), -5.0),
                                                                               np.full((H, W), H + 5.0))),
                               rtol=2e-6, atol=2e-6)
    # Threads do not change the result; [H, W] and [F, 2, H, W] keep their shapes.
    a = refine.intensity_to_line_integrals(frames, mask, source_map=source, num_threads=1)
    np.testing.assert_array_equal(a, refine.intensity_to_line_integrals(frames, mask, source_map=source,
                                                                        num_threads=3))
    assert refine.intensity_to_line_integrals(frames[0]).shape == (H, W)
    pairs = refine.intensity_to_line_integrals(frames[:4].reshape(2, 2, H, W), mask)  # [F, 2, H, W]
    np.testing.assert_array_equal(pairs.reshape(4, H, W), refine.intensity_to_line_integrals(frames[:4], mask))
    bad = frames.copy()
    bad[3, 5, 6] = np.nan
    with pytest.raises(ValueError, match="frame 3 holds a non-finite grey level at pixel 266"):
        refine.intensity_to_line_integrals(bad)
    bad_map = (source[0].copy(), source[1])
    bad_map[0][1, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite x coordinate at pixel 54"):
        refine.intensity_to_line_integrals(frames, source_map=bad_map)
    with pytest.raises(ValueError, match="mask has shape"):
        refine.intensity_to_line_integrals(frames, mask[:3])
    with pytest.raises(ValueError, match="source_map holds maps of shape"):
        refine.intensity_to_line_integrals(frames, source_map=(source[0][:3], source[1][:3]))


def test_frames_are_checked_without_copies(small_views):
    """Float32 frames reach the core as they are (a recording's chunk is hundreds of MB); any
    non-finite value is still an error, and huge finite values (whose sum overflows) are not."""
    imgs = np.random.default_rng(3).random((3, 2, SIZE, SIZE), dtype=np.float32)
    assert np.shares_memory(refine._images(imgs, small_views, "line_integrals"), imgs)
    assert refine._images(imgs.astype(np.float64), small_views, "line_integrals").dtype == np.float32
    huge = imgs.copy()
    huge[:, :, 0, :2] = 3e38
    np.testing.assert_array_equal(refine._images(huge, small_views, "line_integrals"), huge)
    for bad in (np.nan, np.inf, -np.inf):
        imgs[2, 1, 5, 7] = bad
        with pytest.raises(ValueError, match="non-finite"):
            refine._images(imgs, small_views, "line_integrals")


# ------------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors(headsq_mu, small_views, frames):
    truth, imgs = frames
    with pytest.raises(ValueError, match=r"images have shape .* expected \(F, 2, 64, 64\)"):
        refine.refine_poses(headsq_mu, small_views, imgs[:, :, :32], truth)
    with pytest.raises(ValueError, match="init_poses have shape"):
        refine.refine_poses(headsq_mu, small_views, imgs, truth[:2])
    with pytest.raises(ValueError, match="expected two ConeViews"):
        refine.refine_poses(headsq_mu, small_views[:1], imgs, truth)
    with pytest.raises(ValueError, match="refine option 'levels' is unknown"):
        refine.refine_options(levels=2)
    with pytest.raises(ValueError, match="num_levels = 0"):
        refine.refine_options(num_levels=0)
    with pytest.raises(ValueError, match="view weights"):
        refine.refine_options(weight_view1=0.0, weight_view2=0.0)
    with pytest.raises(ValueError, match="similarity 'mi' is unknown"):
        refine.refine_options(similarity="mi")
    with pytest.raises(ValueError, match="cuda_frames_in_flight = 0: expected 1 to 4096"):
        refine.refine_options(cuda_frames_in_flight=0)
    with pytest.raises(ValueError, match="cuda_render_threads = 0: expected 1 to 256"):
        refine.refine_options(cuda_render_threads=0)
    with pytest.raises(ValueError, match="too small for pyramid level"):
        refine.refine_poses(headsq_mu, small_views, imgs, truth, options=refine.refine_options(num_levels=4))
    with pytest.raises(TypeError, match="float32 attenuation"):
        refine.refine_poses(headsq_mu._replace(data=headsq_mu.data.astype(np.float64)), small_views, imgs, truth)
    with pytest.raises(ValueError, match="infinite"):
        refine.refine_poses(headsq_mu, small_views, imgs, np.where(np.eye(4, 6) > 0, np.inf, truth))
    with pytest.raises(ValueError, match="image_masks have shape"):
        refine.refine_poses(headsq_mu, small_views, imgs, truth, image_masks=np.ones((SIZE, SIZE)))
    with pytest.raises(ValueError, match="image_kind 'raw' is unknown"):
        refine.refine_poses(headsq_mu, small_views, imgs, truth, image_kind="raw")
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match=f"pixel_mm = {bad!r}: expected a positive pixel size in mm"):
            refine.refine_poses(headsq_mu, small_views, imgs, truth, pixel_mm=bad)


def test_finest_level_follows_the_bones_pixel_size(small_views, frames):
    """auto_finest_level: the coarsest level whose pixel at the subject is at most pixel_mm
    (half the size: one level finer), never below the images' min_size."""
    truth, _ = frames
    at_object = [refine._pixel_at_object(small_views, truth, level) for level in range(3)]  # mm, doubling
    level = refine.auto_finest_level(small_views, truth, pixel_mm=1.01 * at_object[1], min_size=16)
    assert level == 1
    assert refine.auto_finest_level(small_views, truth, pixel_mm=1.01 * at_object[2], min_size=16) == 2
    assert refine.auto_finest_level(small_views, truth, pixel_mm=0.5 * at_object[0], min_size=16) == 0
    assert refine.auto_finest_level(small_views, truth, pixel_mm=1.01 * at_object[2], min_size=SIZE) == 0


# ------------------------------------------------------------------------- independent renderer
def test_recovers_pose_on_frames_from_an_independent_renderer(headsq_mu, small_views):
    """Frames rendered by plastimatch (exact Siddon DRR), refined with fluororeg's renderer."""
    pm = pytest.importorskip("fluororeg.simulation.plastimatch_drr")
    if not pm.plastimatch_available():
        pytest.skip("plastimatch is not installed")
    rng = np.random.default_rng(21)
    truth = np.c_[rng.uniform(-10, 10, (3, 3)), rng.uniform(-5, 5, (3, 3))]
    imgs = np.stack([np.stack([pm.render_cone_plastimatch(headsq_mu, v, p) for v in small_views]) for p in truth])
    start = perturbed_poses(truth, 5.0, 5.0, rng)
    res = refine.refine_poses(headsq_mu, small_views, imgs.astype(np.float32), start,
                              options=refine.refine_options(num_levels=2))
    ang, mm = pose_errors(res.poses, truth)
    assert res.converged.all()
    assert np.median(ang) < 0.25 and np.median(mm) < 0.25, (ang, mm)
    # 128 px of 3.2 mm and the 3.2 mm headsq voxels: coarse, hence the looser bound.
    assert ang.max() < 1.0 and mm.max() < 0.5, (ang, mm)


# ------------------------------------------------------------------------- pipeline hook
def test_pipeline_hook_refines_a_simulated_recording(subject, tmp_path):
    """refine_recording_poses (the one call register_recording makes with --refine) on an
    intensifier-style recording: undistortion, Beer-Lambert inversion, field-of-view masks,
    tracking of a frame without a landmark pose, and the CSV columns."""
    from fluororeg.core.geometry import pose_matrix
    from fluororeg.io.poses import read_poses_csv, write_poses_csv
    from fluororeg.io.recording import open_recording
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    views = default_dual_views(width=128, height=128, pitch=3.2)
    simulate_recording(subject, tmp_path / "rec", scenario="static", n_frames=3, views=views, seed=2)
    rec = open_recording(tmp_path / "rec")
    truth = np.load(tmp_path / "rec" / "truth.npz")["poses"]
    start = perturbed_poses(truth, 4.0, 3.0, np.random.default_rng(8))
    start[2] = np.nan  # landmark registration failed on the last frame
    status = np.array(["ok", "ok", "failed"])
    poses, new_status, cols = refine_stage.refine_recording_poses(rec, subject, start, status, chunk=2)
    assert list(cols) == list(refine_stage.REFINE_COLUMNS)
    assert list(new_status) == ["ok", "ok", "tracked"] and list(cols["refine_tracked"]) == [False, False, True]
    assert list(cols["landmark_status"]) == ["ok", "ok", "failed"]
    ang, mm = pose_errors(poses, truth)
    assert list(cols["refine_status"]) == ["converged"] * 3, (cols, ang, mm)
    # 128 px of 3.2 mm and the 3.2 mm headsq voxels: coarse, hence the looser bound.
    assert ang.max() < 1.0 and mm.max() < 0.5, (ang, mm)
    F = 3
    path = write_poses_csv(tmp_path / "poses.csv", np.arange(F), new_status, poses, pose_matrix(poses), np.zeros(F),
                           np.zeros((F, 2)), np.zeros((F, 2)), np.zeros(F, int), np.zeros(F, int), extra_columns=cols)
    back = read_poses_csv(path)
    np.testing.assert_allclose(back["poses"], poses)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[-len(refine_stage.REFINE_COLUMNS):] == list(refine_stage.REFINE_COLUMNS)
    # Booleans as 1 / 0, NaN as an empty field, strings as they are.
    last = dict(zip(header, lines[-1].split(",")))
    assert last["refine_tracked"] == "1" and last["landmark_status"] == "failed"
    assert float(last["similarity_view1"]) == cols["similarity_view1"][-1]
    with pytest.raises(ValueError, match="column 'refine_status' holds 2 values for 3 frames"):
        write_poses_csv(tmp_path / "p2.csv", np.arange(F), new_status, poses, pose_matrix(poses), np.zeros(F),
                        np.zeros((F, 2)), np.zeros((F, 2)), np.zeros(F, int), np.zeros(F, int),
                        extra_columns={"refine_status": cols["refine_status"][:2]})


def test_pipeline_option_and_command_line_flag():
    import dataclasses

    from fluororeg.cli import build_parser
    from fluororeg.pipeline.register import PipelineOptions

    assert PipelineOptions().refine is True and PipelineOptions(refine=False).refine is False
    assert "refine" in dataclasses.asdict(PipelineOptions())  # written to options.json
    p = build_parser()
    base = ["register", "rec", "--detector", "d.onnx", "--out", "o"]
    assert p.parse_args(base).refine is True
    assert p.parse_args(base + ["--no-refine"]).refine is False
    assert p.parse_args(base + ["--refine", "--no-refine"]).refine is False
    assert PipelineOptions().refine_device == "auto" and p.parse_args(base).refine_device == "auto"
    assert p.parse_args(base + ["--refine-device", "cuda"]).refine_device == "cuda"
    # The refinement's floor: RefineOptions' unless given; checked where it is given.
    assert PipelineOptions().min_similarity is None and p.parse_args(base).min_similarity is None
    assert p.parse_args(base + ["--min-similarity", "0.5"]).min_similarity == 0.5
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match=f"min_similarity = {bad!r}: expected a similarity between 0 and 1"):
            PipelineOptions(min_similarity=bad)


def test_pipeline_hook_the_similarity_is_the_final_gate(subject, tmp_path):
    """With refinement the image similarity decides: a landmark pose the landmark gate held
    back but whose refinement passes is registered ('refined'); a registered landmark pose far
    off whose refinement fails loses its pose and says why; a frame the input checks flagged is
    not refined at all."""
    from fluororeg.io.recording import open_recording
    from fluororeg.pipeline.quality import REGISTERED_STATUSES
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    views = default_dual_views(width=128, height=128, pitch=3.2)
    simulate_recording(subject, tmp_path / "rec", scenario="static", n_frames=4, views=views, seed=3)
    rec = open_recording(tmp_path / "rec")
    truth = np.load(tmp_path / "rec" / "truth.npz")["poses"]
    start = perturbed_poses(truth, 3.0, 2.0, np.random.default_rng(9))
    start[1, :3] += [60.0, -40.0, 30.0]  # a wrong pose the landmark gate let through
    status = np.array(["large_residual", "ok", "blank_view", "one_view"])
    poses, new_status, cols = refine_stage.refine_recording_poses(rec, subject, start, status, track=False)
    # Frame 3's landmark pose rested on one view; refined against both, it is 'ok'.
    assert new_status[0] == "refined" and new_status[3] == "ok", (new_status, cols)
    assert cols["landmark_status"][3] == "one_view"
    assert new_status[1] in refine_stage.REFINE_FAILURE_STATUSES and not np.isfinite(poses[1]).any(), (new_status, cols)
    assert new_status[2] == "blank_view" and cols["refine_status"][2] == "not_refined" and np.isnan(poses[2]).all()
    assert list(np.isin(new_status, REGISTERED_STATUSES)) == [True, False, False, True]
    ang, mm = pose_errors(poses[[0, 3]], truth[[0, 3]])
    assert ang.max() < 1.0 and mm.max() < 0.5, (ang, mm)


def test_pipeline_hook_checks_the_depth_of_held_back_landmark_poses(subject, tmp_path):
    """The depth-reversed twin of a head passes the gate on small frames (a study with a detector
    trained for one epoch registered all 4 frames of such a recording at 166-171 deg from the
    truth, 'refined' at similarity 0.64). The stage checks the landmark poses the landmark gate
    held back: from their twins it registers the truth; registered landmark poses are not
    checked."""
    from fluororeg.core.geometry import depth_reversed_poses
    from fluororeg.io.recording import open_recording
    from fluororeg.pipeline.quality import format_qc, qc_report
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    views = default_dual_views(width=128, height=128, pitch=3.2)
    simulate_recording(subject, tmp_path / "rec", scenario="static", n_frames=4, views=views, seed=0)
    rec = open_recording(tmp_path / "rec")
    truth = np.load(tmp_path / "rec" / "truth.npz")["poses"]
    centre = refine.bone_centre(subject.attenuation_model(), subject.mask_model(), None)
    twins = depth_reversed_poses(truth, rec.geometry.views, centre)
    # Registered by the landmark path (not checked): the twins pass the refinement's gate.
    poses, status, cols = refine_stage.refine_recording_poses(rec, subject, twins, np.array(["ok"] * 4))
    assert list(status) == ["ok"] * 4 and (pose_errors(poses, truth)[0] > 160.0).all(), (status, cols)
    assert np.isnan(cols["refine_twin_similarity"]).all()
    # Held back by the landmark gate: checked, and the truth wins.
    held = np.array(["large_residual", "few_inliers", "large_residual", "few_inliers"])
    poses, status, cols = refine_stage.refine_recording_poses(rec, subject, twins, held)
    assert list(status) == ["refined"] * 4 and cols["refine_twin_chosen"].all(), (status, cols)
    ang, mm = pose_errors(poses, truth)
    assert ang.max() < 1.0 and mm.max() < 0.5, (ang, mm)
    assert (cols["refine_rotation_change_deg"] > 160.0).all()
    sim = np.c_[cols["similarity_view1"], cols["similarity_view2"]].mean(axis=1)
    assert (cols["refine_twin_similarity"] < refine.DEPTH_MARGIN * sim).all()
    qc = qc_report(np.arange(4), None, status, None, refine_columns=cols)
    assert qc["refined"]["twin_chosen"] == [0, 1, 2, 3]
    assert "4 frame(s) registered at the depth-reversed twin" in format_qc(qc)
    undecided = qc_report(np.arange(4), None, np.array(["ambiguous_depth", "refined", "refined", "refined"]), None,
                          refine_columns=cols)
    assert "1 frame(s) ambiguous_depth: the refined pose and its depth-reversed twin" in format_qc(undecided)
    # From the truth: kept; the twins fell clearly short at the check's first look (one level
    # coarser) and went no further.
    poses, status, cols = refine_stage.refine_recording_poses(rec, subject, truth, held)
    assert list(status) == ["refined"] * 4 and not cols["refine_twin_chosen"].any()
    assert pose_errors(poses, truth)[0].max() < 1.0
    assert np.isnan(cols["refine_twin_similarity"]).all()


def test_pipeline_hook_refines_a_frame_with_one_failed_view_against_the_other(subject, tmp_path):
    """A frame one of whose views failed the input checks (failed_views) is tracked from its
    neighbour's refined pose against its usable view alone and registered as 'one_view';
    without tracking it has nothing to start from and keeps its input status."""
    from fluororeg.io.recording import open_recording
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    views = default_dual_views(width=128, height=128, pitch=3.2)
    simulate_recording(subject, tmp_path / "rec", scenario="static", n_frames=3, views=views, seed=3)
    rec = open_recording(tmp_path / "rec")
    truth = np.load(tmp_path / "rec" / "truth.npz")["poses"]
    start = perturbed_poses(truth, 3.0, 2.0, np.random.default_rng(9))
    start[1] = np.nan  # the input checks flagged it: no landmark pose
    status = np.array(["ok", "blank_view", "ok"])
    failed = np.array([[False, False], [False, True], [False, False]])
    poses, new_status, cols = refine_stage.refine_recording_poses(rec, subject, start, status, failed_views=failed)
    assert list(new_status) == ["ok", "one_view", "ok"], (new_status, cols)
    assert cols["landmark_status"][1] == "blank_view" and cols["refine_tracked"][1]
    assert np.isfinite(cols["similarity_view2"][1])  # reported, though not in the frame's objective
    ang, mm = pose_errors(poses, truth)
    # One view fixes the in-plane pose; its depth is the least certain part.
    assert ang.max() < 1.0 and mm[[0, 2]].max() < 0.5 and mm[1] < 3.0, (ang, mm)
    # No tracking: nothing to start from.
    _, alone, _ = refine_stage.refine_recording_poses(rec, subject, start, status, failed_views=failed, track=False)
    assert alone[1] == "blank_view"
    with pytest.raises(ValueError, match=r"failed_views has shape \(2, 2\), expected \(3, 2\)"):
        refine_stage.refine_recording_poses(rec, subject, start, status, failed_views=failed[:2])
    with pytest.raises(ValueError, match="min_similarity was given with options"):
        refine_stage.refine_recording_poses(rec, subject, start, status, options=refine.refine_options(),
                                            min_similarity=0.5)
    with pytest.raises(ValueError, match="min_similarity = 1.5: expected a similarity between 0 and 1"):
        refine_stage.refine_recording_poses(rec, subject, start, status, min_similarity=1.5)
