"""plastimatch-rendered DRRs and recordings (fluororeg.simulation): geometry checked with beads
against project_cone, line integrals against render_cone, the recording format, the rotated
CT header. Skipped when plastimatch is not installed."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.core import render as R
from fluororeg.core.geometry import ConeView, pose_from_matrix, pose_matrix
from fluororeg.simulation.plastimatch_drr import (PlastimatchError, plastimatch_available, render_cone_plastimatch,
                                                  simulate_independent_recording, independent_dual_views)
from fluororeg.simulation.subjects import axis_rotation, rotated_header_subject
from fluororeg.core.volume import Volume

from phantoms import MU, supersampled

pytestmark = pytest.mark.skipif(not plastimatch_available(), reason="plastimatch is not installed")

BEADS = np.array([[20.0, 0.0, 0.0], [0.0, 25.0, 5.0], [0.0, 0.0, -25.0], [-15.0, 10.0, 20.0]])  # mm, model


def bead_volume(direction=np.eye(3)) -> Volume:
    """Four supersampled spheres (radius 4 mm) on an anisotropic 40^3 grid centred on the origin;
    ``direction`` changes the header (index axes), not where the beads are."""
    n, sp, r = 40, np.array([2.0, 1.8, 2.2]), 4.0
    D = np.asarray(direction, float)
    origin = -D @ ((n - 1) / 2 * sp)
    k, j, i = np.mgrid[0:n, 0:n, 0:n].astype(float)
    data = np.zeros((n, n, n), np.float32)
    sub = np.linspace(-0.4, 0.4, 5)
    for b in BEADS:
        ijk = np.linalg.solve(D * sp, b - origin)
        near = (np.abs(i - ijk[0]) * sp[0] < r + 3) & (np.abs(j - ijk[1]) * sp[1] < r + 3) & (np.abs(k - ijk[2]) * sp[2] < r + 3)
        idx = np.stack([i[near], j[near], k[near]], axis=1)
        frac = np.zeros(len(idx))
        for o in np.stack(np.meshgrid(sub, sub, sub), -1).reshape(-1, 3):
            P = origin + ((idx + o) * sp) @ D.T
            frac += np.linalg.norm(P - b, axis=1) < r
        data[near] += np.float32(0.05) * (frac / len(sub) ** 3).astype(np.float32)
    return Volume(data, sp, origin, D)


def blob_centroids(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroids (x, y) of the connected blobs, sorted by x."""
    from scipy import ndimage

    lab, n = ndimage.label(img > 0.02 * img.max())
    out = []
    for b in range(1, n + 1):
        yy, xx = np.nonzero(lab == b)
        w = img[yy, xx]
        out.append(((xx * w).sum() / w.sum(), (yy * w).sum() / w.sum()))
    return np.array(sorted(out))


@pytest.fixture(scope="module")
def oblique_view() -> ConeView:
    """A view off the axes, intensifier centre off the principal ray, non-square pixels and image."""
    base = ConeView.looking_at([100.0, -600.0, 50.0], [10.0, 0.0, 5.0], distance_to_intensifier=1000.0, pitch=1.5,
                               width=90, height=70)
    return ConeView(base.source, base.intensifier_centre + 7 * base.u - 4 * base.v, base.u, base.v, 1.5, 1.7, 90, 70)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([1.0, -1.0, 1.0]),
                                       np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]),
                                       axis_rotation("z", 30.0) @ axis_rotation("x", -20.0)],
                         ids=["identity", "flipped_y", "permuted", "oblique_resampled"])
def test_bead_centroids_match_project_cone(oblique_view, direction):
    vol = bead_volume(direction)
    pose = np.array([10.0, -20.0, 30.0, 5.0, -8.0, 3.0])
    img = render_cone_plastimatch(vol, oblique_view, pose)
    assert img.shape == (70, 90) and img.dtype == np.float32
    found = blob_centroids(img)
    xy, _ = R.project_cone(BEADS, oblique_view, pose)
    expected = np.array(sorted(map(tuple, xy[0])))
    assert found.shape == expected.shape
    np.testing.assert_allclose(found, expected, atol=0.1)


def test_line_integrals_match_render_cone_on_smooth_phantom(oblique_view):
    ellipsoid = supersampled((36, 40, 44), (2.0, 2.0, 2.0), lambda x, y, z: (x / 38) ** 2 + (y / 30) ** 2 + (z / 28) ** 2 <= 1)
    pose = np.array([5.0, 10.0, -15.0, 2.0, 0.0, -3.0])
    pm = render_cone_plastimatch(ellipsoid, oblique_view, pose)
    ref = R.render_cone(ellipsoid, oblique_view, pose, level=None)[0]
    inner = ref > 0.3 * ref.max()
    assert inner.sum() > 200
    # Siddon (voxels as constant blocks) and trilinear marching differ pixel by pixel near the
    # staircase surface; on average they agree to well under a percent
    rel = pm[inner] / ref[inner] - 1
    assert abs(np.median(rel)) < 0.01 and np.mean(np.abs(rel)) < 0.015 and np.percentile(np.abs(rel), 95) < 0.03
    assert np.abs(rel).max() < 0.1
    assert abs(pm.sum() / ref.sum() - 1) < 0.01
    assert ref.max() > 60 * MU  # a thick body: the comparison is not of near-zero values


def test_line_integrals_match_render_cone_on_headsq(headsq_mu, dual_views):
    pose = np.array([0.0, 10.0, 90.0, 0.0, 0.0, 0.0])
    for view in dual_views:
        pm = render_cone_plastimatch(headsq_mu, view, pose)
        ref = R.render_cone(headsq_mu, view, pose, level=None)[0]
        body = ref > 1.0
        assert body.sum() > 500
        assert abs(np.median(pm[body] / ref[body]) - 1) < 0.02
        assert np.mean(np.abs(pm[body] - ref[body])) < 0.03 * ref[body].mean()


def test_bad_input_is_refused(oblique_view):
    vol = bead_volume()
    with pytest.raises(TypeError, match="ConeView"):
        render_cone_plastimatch(vol, "view", np.zeros(6))
    with pytest.raises(ValueError, match="one pose"):
        render_cone_plastimatch(vol, oblique_view, np.zeros((2, 6)))
    with pytest.raises(TypeError, match="float attenuation"):
        render_cone_plastimatch(Volume(np.zeros((4, 4, 4), np.int16), (1, 1, 1), (0, 0, 0)), oblique_view, np.zeros(6))


def test_plastimatch_failure_names_the_command(monkeypatch, oblique_view):
    import fluororeg.simulation.plastimatch_drr as P

    monkeypatch.setattr(P, "_executable", lambda: "/bin/false")
    with pytest.raises(PlastimatchError, match="/bin/false drr"):
        render_cone_plastimatch(bead_volume(), oblique_view, np.zeros(6))


def test_tiny_independent_recording_opens(subject, tmp_path):
    from fluororeg.io.recording import open_recording

    views = independent_dual_views(128, 128, pitch=3.2)
    out = simulate_independent_recording(subject, tmp_path / "rec", scenario="walking", n_frames=2, views=views, seed=5)
    rec = open_recording(out)
    assert len(rec) == 2
    frame = np.asarray(rec.sequences[1][1])
    assert frame.shape == (128, 128) and frame.std() > 5
    truth = np.load(out / "truth.npz")
    assert truth["poses"].shape == (2, 6) and truth["in_fov"].shape == (2, 2, len(subject.landmark_names))
    assert truth["in_fov"].any()


def test_rotated_header_renders_the_same_anatomy(subject, dual_views):
    rotated = rotated_header_subject(subject)
    assert not np.allclose(rotated.ct.direction, subject.ct.direction)
    R180 = axis_rotation("z", 180.0)
    np.testing.assert_allclose(rotated.landmarks_model, subject.landmarks_model @ R180.T, atol=1e-9)
    pose = np.array([8.0, -5.0, 20.0, 3.0, -4.0, 6.0])
    M = pose_matrix(pose)
    M[:3, :3] = M[:3, :3] @ R180.T       # the same world placement of the anatomy
    pose_rotated = pose_from_matrix(M)
    for view in dual_views:
        a = render_cone_plastimatch(subject.attenuation_model(), view, pose)
        b = render_cone_plastimatch(rotated.attenuation_model(), view, pose_rotated)
        assert a.max() > 1.0
        np.testing.assert_allclose(b, a, atol=1e-3 * a.max())
