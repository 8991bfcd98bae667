"""Pose geometry of fluororeg.core.geometry: the depth-reversed twin of a pose."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fluororeg.core.geometry import ConeView, depth_reversed_poses, pose_matrix, rotation_matrix


def views_at(*angles_deg):
    out = []
    for ang in angles_deg:
        a = np.deg2rad(ang)
        out.append(ConeView.looking_at(650.0 * np.array([np.sin(a), -np.cos(a), 0.1]), [0, 0, 0],
                                       distance_to_intensifier=1050.0, pitch=1.0, width=64, height=64))
    return out


def test_depth_reversed_twin_turns_the_bone_half_a_turn_across_both_rays():
    views = views_at(-55.0, 55.0)
    rng = np.random.default_rng(0)
    poses = np.c_[rng.uniform(-30, 30, (5, 3)), rng.uniform(-20, 20, (5, 3))]
    centre = np.array([3.0, -8.0, 12.0])  # the bone's centre, model frame (mm)
    twins = depth_reversed_poses(poses, views, centre)
    for pose, twin in zip(poses, twins):
        M, T = pose_matrix(pose), pose_matrix(twin)
        c = M[:3, :3] @ centre + M[:3, 3]
        np.testing.assert_allclose(T[:3, :3] @ centre + T[:3, 3], c, atol=1e-9)  # the centre stays put
        turn = Rotation.from_matrix(T[:3, :3] @ M[:3, :3].T).as_rotvec()
        assert np.linalg.norm(turn) == pytest.approx(np.pi, abs=1e-6)  # half a turn ...
        rays = [c - v.source for v in views]
        for ray in rays:  # ... about an axis across both rays to the centre
            assert abs(turn @ ray) < 1e-6 * np.linalg.norm(turn) * np.linalg.norm(ray)
        ray_dirs = [r / np.linalg.norm(r) for r in rays]
        for d in ray_dirs:  # which reverses the rays' directions through the bone
            np.testing.assert_allclose(Rotation.from_rotvec(turn).apply(d), -d, atol=1e-9)
    # The twin's twin is the pose again (rotations compared as matrices: Euler angles wrap).
    again = depth_reversed_poses(twins, views, centre)
    np.testing.assert_allclose(rotation_matrix(again[:, :3]), rotation_matrix(poses[:, :3]), atol=1e-9)
    np.testing.assert_allclose(again[:, 3:], poses[:, 3:], atol=1e-9)


def test_depth_reversed_twin_of_nothing_is_nothing():
    views = views_at(-55.0, 55.0)
    poses = np.array([[np.nan] * 6, [1, 2, 3, 4, 5, 6.0]])
    twins = depth_reversed_poses(poses, views, np.zeros(3))
    assert np.isnan(twins[0]).all() and np.isfinite(twins[1]).all()
    same = views_at(20.0, 20.0)  # one direction twice: no axis across both rays
    assert np.isnan(depth_reversed_poses(poses, same, np.zeros(3))).all()
    with pytest.raises(ValueError, match=r"poses have shape \(6,\)"):
        depth_reversed_poses(poses[1], views, np.zeros(3))
    with pytest.raises(ValueError, match="got 1 views"):
        depth_reversed_poses(poses, views[:1], np.zeros(3))
    with pytest.raises(ValueError, match="centre_model holds a non-finite value"):
        depth_reversed_poses(poses, views, [0, np.inf, 0])
