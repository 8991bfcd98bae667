"""The subject's anatomical orientation measured from the CT (not the header) and the body mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fluororeg.core.volume import Volume
from fluororeg.simulation.subjects import axis_rotation, rotated_header_subject
from fluororeg.subject.body import body_mask
from fluororeg.subject.example import default_cache_dir
from fluororeg.subject.landmarks import Landmarks
from fluororeg.subject.orientation import SubjectOrientation
from fluororeg.subject.subject import example_subject, load_subject, make_subject, save_subject


def _angle_deg(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


@pytest.fixture(scope="module")
def example():
    if not (default_cache_dir() / "cranium_hu.npz").is_file():
        pytest.skip("the Cranium CT is not cached (run fluororeg.subject.example.cranium_volume() once)")
    return example_subject()


def test_example_orientation_is_measured_and_turns_with_the_header(example):
    """Cranium: LPS header, superior +z, anterior -y (the face at low rows). Rotated headers
    (180 deg about the vertical, 90 deg about x) must give the rotated true axes."""
    cases = [(example, np.eye(3))] + [(rotated_header_subject(example, a, ax), axis_rotation(ax, a))
                                      for a, ax in ((180.0, "z"), (90.0, "x"))]
    for s, R in cases:
        o = s.orientation
        assert o.source == "measured", o.describe()
        assert _angle_deg(o.superior, R @ [0, 0, 1.0]) < 20.0, (s.name, o.describe())
        assert _angle_deg(o.anterior, R @ [0, -1.0, 0]) < 20.0, (s.name, o.describe())
        assert o.pairs_mirrored is False  # the example's _L landmarks are on the anatomical left
    np.testing.assert_allclose(cases[1][0].orientation.anterior, np.array(example.orientation.anterior) * [-1, -1, 1],
                               atol=1e-9)  # exactly equivariant


def test_headsq_orientation_is_its_anatomy_not_its_header(subject):
    """headsq's identity header puts the face at LPS +y ("posterior"): the measured anterior is +y.
    Its six-extreme-points subject names +x 'left', which is the anatomical right of a face at +y
    with superior +z: the orientation says the pairs are mirrored (labels stay the pairs')."""
    o = subject.orientation
    assert o.source == "measured"
    assert _angle_deg(o.superior, [0, 0, 1.0]) < 20.0 and _angle_deg(o.anterior, [0, 1.0, 0]) < 20.0
    assert o.pairs_mirrored is True and "mirrored" in o.describe()
    turned = rotated_header_subject(subject).orientation
    assert _angle_deg(turned.anterior, [0, -1.0, 0]) < 20.0 and _angle_deg(turned.superior, [0, 0, 1.0]) < 20.0
    R = o.world_from_model_rotation()      # stands the subject upright facing -y
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(R) - 1) < 1e-12
    np.testing.assert_allclose(R @ np.array(o.anterior), [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(R @ np.array(o.superior), [0, 0, 1], atol=1e-12)


def _phantom_head(shape=(40, 48, 48), with_teeth=True):
    """A water ellipsoid 'head' cut by the top (k) face, a bone shell, dense 'teeth' at low j and k."""
    k, j, i = np.indices(shape, dtype=float)
    c = np.array(shape, float) / 2
    r = ((k - c[0] - 6) / 22) ** 2 + ((j - c[1]) / 18) ** 2 + ((i - c[2]) / 16) ** 2
    hu = np.full(shape, -1000, np.int16)
    hu[r < 1] = 40
    shell = (r < 0.9) & (r > 0.7)
    hu[shell] = 1200
    if with_teeth:
        hu[shell & (k < 16) & (j < c[1] - 8)] = 2500
    return hu


def _phantom_subject(hu, **kw):
    ct = Volume(hu, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    lms = Landmarks(("a_L", "a_R", "b", "c"), ct.voxel_to_physical(np.array(
        [[34.0, 24, 20], [14, 24, 20], [24, 10, 20], [24, 24, 35]])))
    return make_subject("phantom", ct, lms, [("a_L", "a_R")], **kw)


def test_orientation_fallback_and_user_override(tmp_path):
    # Teeth at low j (= low LPS y with this identity header), the body cut by the k=0 face.
    s = _phantom_subject(_phantom_head())
    o = s.orientation
    assert o.source == "measured" and _angle_deg(o.anterior, [0, -1.0, 0]) < 5 and _angle_deg(o.superior, [0, 0, 1.0]) < 5
    # No teeth: not conclusive -> the header's axes, and the check says so.
    bare = _phantom_subject(_phantom_head(with_teeth=False)).orientation
    assert bare.source == "header" and "header" in bare.describe() and "no teeth" in bare.detail
    assert bare.superior == (0.0, 0.0, 1.0) and bare.anterior == (0.0, -1.0, 0.0)
    # The user's axes win, survive a save/load round trip and are checked.
    given = {"superior": [0, 0, 1], "anterior": [1, 0, 0]}
    u = _phantom_subject(_phantom_head(), orientation=given)
    assert u.orientation.source == "user" and u.orientation.anterior == (1.0, 0.0, 0.0)
    path = save_subject(u, tmp_path / "s", ct_filename="ct.nrrd")
    assert json.loads(path.read_text())["orientation"] == {"superior": [0.0, 0.0, 1.0], "anterior": [1.0, 0.0, 0.0]}
    assert load_subject(tmp_path / "s").orientation.anterior == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="perpendicular"):
        _phantom_subject(_phantom_head(), orientation={"superior": [0, 0, 1], "anterior": [0, 1, 1]})
    with pytest.raises(ValueError, match="orientation"):
        _phantom_subject(_phantom_head(), orientation={"up": [0, 0, 1]})
    with pytest.raises(ValueError, match="source"):
        SubjectOrientation((0, 0, 1), (0, 1, 0), "guess")


def test_body_mask_removes_a_headrest_and_keeps_the_body():
    hu = _phantom_head()
    head = hu > -500
    rest = np.zeros_like(head)
    rest[12:30, 44:47, 8:40] = True          # a slab behind the head (high j), detached
    holder = np.zeros_like(head)
    holder[30:36, 0:5, 12:36] = True         # a holder at the front, touching the scalp over one voxel column
    hu2 = hu.copy()
    hu2[rest | holder] = 300
    top = np.argwhere(head[:, :, 24].any(axis=0))[:, 0].min()     # the scalp's lowest j in the mid-plane
    hu2[33, 5:top + 1, 24] = 100              # the thin contact
    body = body_mask(hu2)
    assert not (body & rest).any()
    assert (body & holder).sum() <= 0.05 * holder.sum()
    assert (body & head).sum() == head.sum()              # the whole head is kept
    assert (body & ~head).sum() <= 3                      # at most the contact stub is added
    # enclosed cavities are filled, so the inside renders as it is
    hollow = hu.copy()
    hollow[18:22, 22:26, 22:26] = -1000
    assert body_mask(hollow)[20, 24, 24]
    with pytest.raises(ValueError, match="no body"):
        body_mask(np.full((4, 4, 4), -1000))
    with pytest.raises(ValueError, match="3-D"):
        body_mask(np.zeros((4, 4)))


def test_subject_init_override_and_check_show_the_orientation(subject, tmp_path, capsys):
    from fluororeg.cli import main
    from fluororeg.io.volume_formats import save_volume
    from fluororeg.subject.landmarks import save_landmarks

    save_volume(subject.ct, tmp_path / "ct.nrrd")
    save_landmarks(tmp_path / "lm.mrk.json", subject.landmarks)
    base = ["subject", "init", "--ct", str(tmp_path / "ct.nrrd"), "--landmarks", str(tmp_path / "lm.mrk.json"),
            "--pairs", "left:right"]
    assert main(base + ["--out", str(tmp_path / "measured")]) == 0
    assert main(base + ["--superior", "0", "0", "1", "--anterior", "0", "-1", "0", "--out", str(tmp_path / "user")]) == 0
    capsys.readouterr()
    assert main(["subject", "check", str(tmp_path / "measured")]) == 0
    out = capsys.readouterr().out
    assert "orientation the dataset uses: superior [+0.00, +0.00, +1.00], anterior [+0.04, +1.00" in out
    assert "measured from the CT" in out and "pairs' left side is the anatomical right" in out
    assert "body mask (what DRRs show)" in out
    assert main(["subject", "check", str(tmp_path / "user")]) == 0
    out = capsys.readouterr().out
    assert "anterior [+0.00, -1.00, +0.00] (LPS directions), given by the user" in out
    assert main(base + ["--superior", "0", "0", "1", "--out", str(tmp_path / "half")]) == 2
    assert "--superior and --anterior go together" in capsys.readouterr().err


def test_a_given_orientation_changes_the_fingerprint():
    hu = _phantom_head()
    a = _phantom_subject(hu)
    b = _phantom_subject(hu, orientation={"superior": [0, 0, 1], "anterior": [1, 0, 0]})
    c = _phantom_subject(hu, orientation={"superior": [0, 0, 1], "anterior": [0, -1, 0]})
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert _phantom_subject(hu).fingerprint == a.fingerprint


def test_simulated_recordings_stand_the_subject_by_its_anatomy(subject):
    """motion_sequence's rest rotation comes from the measured orientation, so a subject whose
    CT header is rotated stands in the same place as the original: the same world landmarks in
    every frame (its recordings show the same scene), facing the sources whatever its header."""
    from fluororeg.core.geometry import pose_matrix
    from fluororeg.simulation.simulate import motion_sequence

    def world_landmarks(s):
        M = pose_matrix(motion_sequence("walking", 4, seed=3, rest_rotation=s.orientation.world_from_model_rotation()))
        return np.einsum("fij,lj->fli", M[:, :3, :3], s.landmarks_model) + M[:, None, :3, 3]

    turned = rotated_header_subject(subject, 180.0, "z")
    np.testing.assert_allclose(world_landmarks(turned), world_landmarks(subject), atol=1e-9)
    # the face (anterior) toward the sources at -y in the rest pose
    R = subject.orientation.world_from_model_rotation()
    assert (R @ np.array(subject.orientation.anterior))[1] < -0.99
    with pytest.raises(ValueError, match="rotation matrix"):
        motion_sequence("walking", 2, rest_rotation=np.diag([1.0, 1.0, -1.0]))
