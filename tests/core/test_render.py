"""Renderers and projections: C++ kernels against the NumPy references, analytic phantoms,
bead/landmark agreement, batching and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fluororeg as fr
from fluororeg.core import render as R
from fluororeg._reference import render as ref
from fluororeg.core.geometry import ConeView, ParallelCamera, pose_matrix
from fluororeg.core.volume import Volume

from conftest import MU, box_volume, supersampled

RADIUS = 36.0


@pytest.fixture(scope="module")
def sphere() -> Volume:
    return supersampled((90, 100, 100), (0.8, 0.8, 0.9), lambda X, Y, Z: X**2 + Y**2 + Z**2 <= RADIUS**2)


ELLIPSOID_AXES = np.array([36.0, 30.0, 27.0])


@pytest.fixture(scope="module")
def ellipsoid() -> Volume:
    a, b, c = ELLIPSOID_AXES
    return supersampled((90, 100, 100), (0.8, 0.8, 0.9), lambda X, Y, Z: (X / a) ** 2 + (Y / b) ** 2 + (Z / c) ** 2 <= 1)


CUBE_HALF = 20.0


@pytest.fixture(scope="module")
def cube() -> Volume:
    return box_volume((90, 100, 100), (0.8, 0.8, 0.9), CUBE_HALF)


def ellipsoid_chord(origins, directions, axes):
    """Chord length (mm) of the lines origins [..., 3] + t directions [..., 3] through the
    ellipsoid (x/a)^2 + (y/b)^2 + (z/c)^2 <= 1, all in the ellipsoid's frame."""
    d = np.broadcast_to(directions, np.shape(origins))
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    o, e = origins / axes, d / axes
    A = np.sum(e * e, axis=-1)
    B = 2 * np.sum(o * e, axis=-1)
    C = np.sum(o * o, axis=-1) - 1
    disc = B * B - 4 * A * C
    return np.where(disc > 0, np.sqrt(np.clip(disc, 0, None)) / A, 0.0)


def box_chord(origins, directions, half):
    """Chord length (mm) of lines through the axis-aligned cube [-half, half]^3."""
    d = np.broadcast_to(directions, np.shape(origins))
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - origins) / d
        t2 = (half - origins) / d
    lo = np.nanmax(np.minimum(t1, t2), axis=-1)
    hi = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.clip(hi - lo, 0, None)


def analytic_chord(phantom, origins, directions):
    if phantom == "sphere":
        return ellipsoid_chord(origins, directions, np.full(3, RADIUS))
    if phantom == "ellipsoid":
        return ellipsoid_chord(origins, directions, ELLIPSOID_AXES)
    return box_chord(origins, directions, CUBE_HALF)


def parallel_rays_in_model(pose, camera, scale):
    """Ray origins [H, W, 3] and the unit direction [3] in the model frame."""
    M = np.linalg.inv(pose_matrix(pose))
    k = camera.pixel_mm / scale
    xs, ys = np.meshgrid((np.arange(camera.width) - (camera.width - 1) / 2) * k,
                         (np.arange(camera.height) - (camera.height - 1) / 2) * k)
    pts = np.stack([xs, ys, np.zeros_like(xs)], axis=-1)
    return pts @ M[:3, :3].T + M[:3, 3], M[:3, 2]


POSES = [
    np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    np.array([35.0, 0.0, 0.0, 3.0, -2.0, 10.0]),
    np.array([0.0, -50.0, 0.0, -4.0, 1.0, 0.0]),
    np.array([0.0, 0.0, 70.0, 2.0, 5.0, -3.0]),
    np.array([20.0, -35.0, 50.0, 3.0, -4.0, 5.0]),
    np.array([80.0, 60.0, -120.0, 0.0, 0.0, 0.0]),
]


def interior(chord, polyhedron=False, erode=3, frac=0.5):
    """The interior of a projection: chords of at least half the longest, three pixels away
    from the silhouette and two pixels away from the projected edges of a polyhedron (where
    the chord length has a kink and any voxelisation blurs it)."""
    from scipy.ndimage import binary_dilation, binary_erosion, laplace
    m = binary_erosion(chord > frac * chord.max(), iterations=erode)
    if polyhedron:
        m &= ~binary_dilation(np.abs(laplace(chord)) > 1e-3 * chord.max(), iterations=2)
    return m


@pytest.mark.parametrize("pose", POSES, ids=lambda p: "pose" + "_".join(f"{v:g}" for v in p[:3]))
@pytest.mark.parametrize("phantom", ["sphere", "ellipsoid", "cube"])
def test_parallel_matches_analytic_phantoms(pose, phantom, request):
    vol = request.getfixturevalue(phantom)
    camera = ParallelCamera(64, 64, 1.6)
    scale = 1.25
    drr = R.render_parallel(vol, pose, camera, scale, level=None)[0]
    origins, direction = parallel_rays_in_model(pose, camera, scale)
    chord = analytic_chord(phantom, origins, direction)
    analytic = MU * chord
    m = interior(chord, polyhedron=phantom == "cube")
    assert m.sum() > 100
    rel = np.abs(drr[m] / analytic[m] - 1)
    assert rel.max() < 0.005, f"max relative error {rel.max():.4f} in the interior"
    from scipy.ndimage import binary_dilation
    outside = ~binary_dilation(chord > 0, iterations=3)
    assert np.all(drr[outside] < 1e-4 * drr.max()), "signal away from the phantom"


@pytest.mark.parametrize("phantom", ["sphere", "ellipsoid", "cube"])
def test_cone_matches_analytic_phantoms(phantom, request, dual_views):
    vol = request.getfixturevalue(phantom)
    pose = np.array([15.0, -25.0, 40.0, 4.0, -3.0, 6.0])
    for view in dual_views:
        drr = R.render_cone(vol, view, pose, level=None, step_voxels=0.5)[0]
        M = np.linalg.inv(pose_matrix(pose))  # model_from_world
        xs, ys = np.meshgrid(np.arange(view.width), np.arange(view.height))
        P = view.pixel_to_world(np.stack([xs, ys], axis=-1).astype(float))  # [H, W, 3]
        origin = view.source @ M[:3, :3].T + M[:3, 3]
        directions = (P - view.source) @ M[:3, :3].T
        chord = analytic_chord(phantom, np.broadcast_to(origin, directions.shape), directions)
        analytic = MU * chord
        m = interior(chord, polyhedron=phantom == "cube", erode=5)  # pixels are smaller here
        assert m.sum() > 50
        rel = np.abs(drr[m] / analytic[m] - 1)
        assert rel.max() < 0.005, f"max relative error {rel.max():.4f} in the interior"


def test_parallel_matches_shear_warp_reference_on_real_ct(headsq_mu):
    camera = ParallelCamera(96, 80, 3.0)
    rng = np.random.default_rng(0)
    for _ in range(4):
        pose = np.concatenate([rng.uniform(-180, 180, 3), rng.uniform(-15, 15, 3)])
        scale = rng.uniform(0.8, 1.3)
        drr = R.render_parallel(headsq_mu, pose, camera, scale, level=None)[0]
        expected = ref.shear_warp_parallel(headsq_mu, pose, camera, scale)
        np.testing.assert_allclose(drr, expected, rtol=1e-4, atol=1e-4 * expected.max())
        # and the shear-warp approximation stays close to the fine line integral
        fine = ref.line_integral_parallel(headsq_mu, pose, camera, scale)
        assert np.abs(drr - fine).mean() < 0.02 * fine.mean()


def test_cone_matches_reference_on_real_ct(headsq_mu, dual_views):
    pose = np.array([10.0, 20.0, -30.0, 5.0, -5.0, 3.0])
    view = dual_views[0]
    drr = R.render_cone(headsq_mu, view, pose, level=None)[0]
    same = ref.cone_same_sampling(headsq_mu, view, pose)
    np.testing.assert_allclose(drr, same, rtol=1e-4, atol=2e-4 * same.max())
    fine = ref.line_integral_cone(headsq_mu, view, pose)
    assert np.abs(drr - fine).mean() < 0.02 * fine.mean()


def bead_volume(position, shape=(40, 48, 48), spacing=(2.0, 2.0, 2.5), sigma_mm=2.0) -> Volume:
    """An empty volume with one Gaussian bead centred at a model-frame position (mm)."""
    nz, ny, nx = shape
    sp = np.asarray(spacing)
    origin = -(np.array([nx, ny, nz]) - 1) / 2 * sp
    k, j, i = np.mgrid[0:nz, 0:ny, 0:nx]
    X = origin[0] + i * sp[0] - position[0]
    Y = origin[1] + j * sp[1] - position[1]
    Z = origin[2] + k * sp[2] - position[2]
    data = np.exp(-(X**2 + Y**2 + Z**2) / (2 * sigma_mm**2)).astype(np.float32)
    return Volume(data, sp, origin, np.eye(3))


def centroid(img, around, radius=6):
    x0, y0 = int(round(around[0])), int(round(around[1]))
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    w = img[ys.clip(0, img.shape[0] - 1), xs.clip(0, img.shape[1] - 1)]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


BEAD_POSES = [
    np.array([40.0, 0, 0, 0, 0, 0]),
    np.array([0, 40.0, 0, 5, 0, 0]),
    np.array([0, 0, 40.0, 0, -6, 0]),
    np.array([25.0, -30.0, 60.0, 8, 4, -7]),
]


@pytest.mark.parametrize("pose", BEAD_POSES, ids=lambda p: "rot" + "_".join(f"{v:g}" for v in p[:3]))
def test_bead_appears_at_projected_landmark_parallel(pose):
    landmark = np.array([12.0, -9.0, 7.0])
    vol = bead_volume(landmark)
    camera = ParallelCamera(64, 64, 2.0)
    for scale in (0.8, 1.0, 1.4):
        img = R.render_parallel(vol, pose, camera, scale, level=None)[0]
        xy, inside = R.project_parallel(landmark[None], pose, camera, scale)
        assert inside[0, 0]
        c = centroid(img, xy[0, 0])
        assert np.linalg.norm(c - xy[0, 0]) < 0.5, (c, xy[0, 0])


@pytest.mark.parametrize("pose", BEAD_POSES, ids=lambda p: "rot" + "_".join(f"{v:g}" for v in p[:3]))
def test_bead_appears_at_projected_landmark_cone(pose, dual_views):
    landmark = np.array([12.0, -9.0, 7.0])
    vol = bead_volume(landmark)
    for view in dual_views:
        img = R.render_cone(vol, view, pose, level=None)[0]
        xy, inside = R.project_cone(landmark[None], view, pose)
        assert inside[0, 0]
        c = centroid(img, xy[0, 0])
        assert np.linalg.norm(c - xy[0, 0]) < 0.5, (c, xy[0, 0])


def test_projection_matches_reference(dual_views):
    rng = np.random.default_rng(1)
    pts = rng.uniform(-80, 80, (33, 3))
    poses = np.concatenate([rng.uniform(-40, 40, (5, 3)), rng.uniform(-30, 30, (5, 3))], axis=1)
    camera = ParallelCamera(128, 128, 1.5)
    scales = rng.uniform(0.7, 1.3, 5)
    xy, fov = R.project_parallel(pts, poses, camera, scales)
    for n in range(5):
        e_xy, e_in = ref.project_points_parallel(pts, poses[n], camera, scales[n])
        np.testing.assert_allclose(xy[n], e_xy, atol=1e-9)
        np.testing.assert_array_equal(fov[n], e_in)
    xy, fov = R.project_cone(pts, list(dual_views) * 2 + [dual_views[0]], poses)
    for n, view in enumerate(list(dual_views) * 2 + [dual_views[0]]):
        e_xy, e_in = ref.project_points_cone(pts, view, poses[n])
        np.testing.assert_allclose(xy[n], e_xy, atol=1e-9)
        np.testing.assert_array_equal(fov[n], e_in)
    assert 0 < fov.sum() < fov.size  # some points fall outside the 96 px field of view


def test_points_behind_source_are_nan_and_outside(dual_views):
    view = dual_views[0]
    behind = view.source + 100 * (view.source - view.detector_centre) / np.linalg.norm(view.source - view.detector_centre)
    xy, fov = R.project_cone(behind[None], view, np.zeros(6))
    assert np.all(np.isnan(xy)) and not fov.any()


def test_batch_equals_single_calls(headsq_mu, dual_views):
    rng = np.random.default_rng(2)
    poses = np.concatenate([rng.uniform(-30, 30, (5, 3)), rng.uniform(-10, 10, (5, 3))], axis=1)
    camera = ParallelCamera(64, 64, 3.0)
    batch = R.render_parallel(headsq_mu, poses, camera, 1.1)
    for n in range(5):
        np.testing.assert_array_equal(batch[n], R.render_parallel(headsq_mu, poses[n], camera, 1.1)[0])
    one_thread = R.render_parallel(headsq_mu, poses, camera, 1.1, num_threads=1)
    np.testing.assert_array_equal(batch, one_thread)
    views = [dual_views[n % 2] for n in range(5)]
    cone = R.render_cone(headsq_mu, views, poses)
    for n in range(5):
        np.testing.assert_array_equal(cone[n], R.render_cone(headsq_mu, views[n], poses[n])[0])


def test_automatic_level_matches_pixel_size(headsq_mu):
    camera = ParallelCamera(64, 64, 7.0)  # coarse pixels: the renderer downsamples
    coarse = headsq_mu.for_pixel_size(7.0)
    assert coarse.data.size < headsq_mu.data.size
    pose = np.array([10.0, 20.0, 30.0, 0, 0, 0])
    auto = R.render_parallel(headsq_mu, pose, camera)[0]
    np.testing.assert_array_equal(auto, R.render_parallel(coarse, pose, camera, level=None)[0])
    full = R.render_parallel(headsq_mu, pose, camera, level=None)[0]
    # The anti-aliased coarse volume gives nearly the same line integrals in total.
    assert abs(auto.sum() / full.sum() - 1) < 1e-3


def test_mask_projection_is_the_silhouette(sphere):
    mask = Volume((sphere.data > 0.5 * MU).astype(np.uint8), sphere.spacing, sphere.origin, sphere.direction)
    camera = ParallelCamera(64, 64, 1.6)
    pose = np.array([10.0, 20.0, 30.0, 2.0, -3.0, 0.0])
    sil = R.project_mask_parallel(mask, pose, camera)[0]
    origins, direction = parallel_rays_in_model(pose, camera, 1.0)
    chord = analytic_chord("sphere", origins, direction)
    # Agreement everywhere except a one-pixel rim.
    from scipy.ndimage import binary_dilation, binary_erosion
    inner, outer = binary_erosion(chord > 0, iterations=1), binary_dilation(chord > 0, iterations=1)
    assert sil[inner].all() and not sil[~outer].any()


def test_to_uint8_window_and_auto():
    drr = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(R.to_uint8(drr, window=(0, 2)), [[0, 128], [255, 255]])
    np.testing.assert_array_equal(R.to_uint8(drr, window=(0, 2), invert=True), [[255, 128], [0, 0]])
    auto = R.to_uint8(np.stack([drr, 2 * drr]), percentile=100)
    np.testing.assert_array_equal(auto[0], auto[1])  # per-image windows
    assert auto[0, 0, 0] == 0 and auto[0, 1, 1] == 255
    with pytest.raises(ValueError, match="window"):
        R.to_uint8(drr, window=(2, 1))
    with pytest.raises(ValueError, match="non-finite"):
        R.to_uint8(np.full((2, 2), np.nan))


def test_bad_input_gives_clear_errors(headsq_mu, dual_views):
    camera = ParallelCamera(32, 32, 4.0)
    with pytest.raises(TypeError, match="float32"):
        R.render_parallel(Volume(np.zeros((4, 4, 4), np.int16), [1, 1, 1], [0, 0, 0]), np.zeros(6), camera)
    with pytest.raises(ValueError, match="non-finite"):
        R.render_parallel(headsq_mu, [0, 0, np.nan, 0, 0, 0], camera)
    with pytest.raises(ValueError, match=r"\(6,\) or \(n, 6\)|expected \(\.\.\., 6\)"):
        R.render_parallel(headsq_mu, np.zeros((2, 5)), camera)
    with pytest.raises(ValueError, match="scale"):
        R.render_parallel(headsq_mu, np.zeros(6), camera, scales=-1.0)
    with pytest.raises(ValueError, match="width"):
        ParallelCamera(0, 32, 1.0)
    with pytest.raises(ValueError, match="pixel_mm"):
        ParallelCamera(32, 32, -1.0)
    with pytest.raises(ValueError, match="too small"):
        R.render_parallel(Volume(np.zeros((1, 4, 4), np.float32), [1, 1, 1], [0, 0, 0]), np.zeros(6), camera, level=None)
    with pytest.raises(ValueError, match="detector plane"):
        ConeView([0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], 1.0, 1.0, 8, 8)
    with pytest.raises(ValueError, match="orthonormal"):
        ConeView([0, 0, -100], [0, 0, 0], [1, 0, 0], [1, 1, 0], 1.0, 1.0, 8, 8)
    with pytest.raises(ValueError, match="width"):
        ConeView([0, 0, -100], [0, 0, 0], [1, 0, 0], [0, 1, 0], 1.0, 1.0, 0, 8)
    with pytest.raises(ValueError, match="one view per pose"):
        R.render_cone(headsq_mu, list(dual_views), np.zeros((3, 6)))
    with pytest.raises(ValueError, match="device 'gpu'"):
        R.render_parallel(headsq_mu, np.zeros(6), camera, device="gpu")
    with pytest.raises(ValueError, match="step_voxels"):
        R.render_cone(headsq_mu, dual_views[0], np.zeros(6), step_voxels=0.0)
    with pytest.raises(ValueError, match="points"):
        R.project_cone(np.zeros((3, 2)), dual_views[0], np.zeros(6))
    # The C++ core validates too (the private module is reachable by advanced users).
    with pytest.raises(ValueError, match="source lies on the detector plane"):
        packed = dual_views[0].packed().copy()
        packed[3:6] = packed[0:3]
        fr._core.project_cone(packed[None], np.zeros((1, 6)), np.zeros((1, 3)))


def test_cuda_request_without_cuda_is_a_clear_error(headsq_mu):
    if fr.has_cuda():
        pytest.skip("a CUDA device is present: covered by test_cuda_matches_cpu")
    with pytest.raises(RuntimeError, match="cuda"):
        R.render_parallel(headsq_mu, np.zeros(6), ParallelCamera(16, 16, 4.0), device="cuda")


@pytest.mark.skipif(not fr.has_cuda(), reason="no CUDA device")
def test_cuda_matches_cpu(headsq_mu, dual_views):
    rng = np.random.default_rng(3)
    poses = np.concatenate([rng.uniform(-60, 60, (8, 3)), rng.uniform(-10, 10, (8, 3))], axis=1)
    camera = ParallelCamera(128, 128, 2.0)
    cpu = R.render_parallel(headsq_mu, poses, camera, 1.1)
    gpu = R.render_parallel(headsq_mu, poses, camera, 1.1, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.max())
    cpu = R.render_cone(headsq_mu, dual_views[0], poses)
    gpu = R.render_cone(headsq_mu, dual_views[0], poses, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.max())
    pts = rng.uniform(-50, 50, (33, 3))
    for a, b in zip(R.project_cone(pts, dual_views[1], poses), R.project_cone(pts, dual_views[1], poses, device="cuda")):
        np.testing.assert_allclose(a, b, atol=1e-9)
