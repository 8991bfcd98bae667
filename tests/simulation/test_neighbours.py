"""fluororeg.simulation.neighbours: a bone's principal axis, a neighbour laid beside it, and the
soft-tissue cylinder's line integrals against rays sampled point by point."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.core.geometry import ConeView, pose_matrix
from fluororeg.core.volume import Volume
from fluororeg.simulation.neighbours import pose_beside, principal_axis, soft_tissue_cylinder
from fluororeg.simulation.subjects import axis_rotation


def rod(length_vox: int, direction=np.eye(3), origin=(0.0, 0.0, 0.0), spacing=(0.5, 0.5, 1.0)) -> Volume:
    """A mask volume holding a rod of 3 x 3 voxels along the volume's j axis."""
    data = np.zeros((9, length_vox + 4, 9), np.uint8)  # (k, j, i)
    data[3:6, 2:2 + length_vox, 3:6] = 1
    return Volume(data, np.array(spacing), np.array(origin), np.asarray(direction, float))


def test_principal_axis_of_a_rod_in_a_turned_header():
    R = axis_rotation("z", 30.0) @ axis_rotation("x", 20.0)
    mask = rod(40, direction=R, origin=(10.0, -5.0, 3.0))
    centre, axis = principal_axis(mask)
    # the rod runs along the volume's j axis: physical direction R[:, 1]
    assert abs(abs(axis @ R[:, 1]) - 1.0) < 1e-9
    ijk_centre = np.array([4.0, 2 + 39 / 2, 4.0])
    np.testing.assert_allclose(centre, mask.voxel_to_physical(ijk_centre), atol=1e-9)


def test_pose_beside_lays_the_neighbour_along_the_bone_at_the_distance_asked():
    bone, neighbour = rod(40), rod(30, direction=axis_rotation("x", 90.0), origin=(4.0, 0.0, 0.0))
    pose = np.array([10.0, -20.0, 35.0, 5.0, 6.0, -7.0])
    Mb = pose_matrix(pose)
    cb, ab = principal_axis(bone)
    cn, an = principal_axis(neighbour)
    offsets = []
    for direction in (0.0, 90.0, 200.0):
        Mn = pose_matrix(pose_beside(pose, bone, neighbour, 12.0, direction))
        assert abs(abs((Mn[:3, :3] @ an) @ (Mb[:3, :3] @ ab)) - 1.0) < 1e-9  # parallel axes
        offset = (Mn[:3, :3] @ cn + Mn[:3, 3]) - (Mb[:3, :3] @ cb + Mb[:3, 3])
        assert abs(np.linalg.norm(offset) - 12.0) < 1e-9
        assert abs(offset @ (Mb[:3, :3] @ ab)) < 1e-9  # across the axis
        offsets.append(offset)
    assert abs(offsets[0] @ offsets[1]) < 1e-9  # 0 and 90 deg: perpendicular
    assert np.degrees(np.arccos(offsets[0] @ offsets[2] / 144.0)) == pytest.approx(160.0)
    with pytest.raises(ValueError, match="distance_mm"):
        pose_beside(pose, bone, neighbour, -1.0, 0.0)
    with pytest.raises(ValueError, match="voxels above 0"):
        pose_beside(pose, Volume(np.zeros((2, 2, 2), np.uint8), np.ones(3), np.zeros(3)), neighbour, 1.0, 0.0)


def test_soft_tissue_cylinder_matches_rays_sampled_point_by_point():
    view = ConeView(source=np.array([0.0, 0.0, -800.0]), intensifier_centre=np.array([0.0, 0.0, 200.0]),
                    u=np.array([1.0, 0.0, 0.0]), v=np.array([0.0, 1.0, 0.0]), pitch_u=2.0, pitch_v=2.0,
                    width=48, height=40)
    centre, axis, radius, mu = np.array([3.0, -4.0, 0.0]), np.array([0.3, 1.0, 0.2]), 20.0, 0.02
    img = soft_tissue_cylinder(view, centre, axis, radius, mu)
    assert img.shape == (40, 48) and img.dtype == np.float32
    unit = axis / np.linalg.norm(axis)
    t = np.linspace(0.0, 1.0, 200001)  # source to pixel, 5 um steps
    for x, y in [(24, 20), (28, 17), (10, 30), (40, 5), (2, 2), (30, 21)]:
        end = view.pixel_to_world(np.array([x, y], float))
        points = view.source + t[:, None] * (end - view.source)
        rel = points - centre
        inside = np.linalg.norm(rel - (rel @ unit)[:, None] * unit, axis=1) < radius
        expected = mu * inside.mean() * np.linalg.norm(end - view.source)
        assert img[y, x] == pytest.approx(expected, abs=2e-4), (x, y)
    assert img.max() > 0.8 and img.min() == 0.0  # a chord of about 2 r mu = 0.8 through the middle; rays outside
    with pytest.raises(ValueError, match="axis"):
        soft_tissue_cylinder(view, centre, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="radius_mm"):
        soft_tissue_cylinder(view, centre, axis, radius_mm=0.0)
