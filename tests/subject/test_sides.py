"""Left, right and midline: one rule (fluororeg.subject.sides) for subjects, sheets and mirror cases."""

import numpy as np
import pytest

from fluororeg.subject.sides import landmark_sides, mirror_permutation, pair_indices, pairs_from_names


def test_pairs_sides_and_mirror_permutation_agree():
    names = ["nasion", "orbitale_L", "orbitale_R", "porion_left", "porion_right", "ear_L"]
    assert pairs_from_names(names) == [("orbitale_L", "orbitale_R"), ("porion_left", "porion_right")]
    assert landmark_sides(names) == ("midline", "left", "right", "left", "right", "midline")  # ear_L: no partner
    # Pairs given (by index or name) decide, whatever the names say.
    assert landmark_sides(names, [(5, 0)]) == ("right", "midline", "midline", "midline", "midline", "left")
    assert landmark_sides(names, []) == ("midline",) * 6
    perm = mirror_permutation(names, [("orbitale_L", "orbitale_R"), (3, 4)])
    np.testing.assert_array_equal(perm, [0, 2, 1, 4, 3, 5])
    np.testing.assert_array_equal(perm[perm], np.arange(6))
    assert pair_indices(names, None) == ()


def test_bad_pairs_are_named():
    names = ["orbitale_L", "orbitale_R", "b"]
    with pytest.raises(ValueError, match=r"unknown landmark name 'orbitle_L' \(did you mean 'orbitale_L'\?\)"):
        pair_indices(names, [("orbitle_L", "orbitale_R")])
    with pytest.raises(ValueError, match="index 7 out of range"):
        landmark_sides(names, [(0, 7)])
    with pytest.raises(ValueError, match="'orbitale_L' is in two pairs"):
        mirror_permutation(names, [(0, 1), (0, 2)])


def test_mirror_permutation_from_index_or_name_pairs(subject):
    names = ["nose", "ear_l", "ear_r", "eye_l", "eye_r"]
    perm = mirror_permutation(names, [(1, 2), ("eye_l", "eye_r")])
    assert perm.tolist() == [0, 2, 1, 4, 3] and perm.dtype == np.int64
    assert np.array_equal(perm[perm], np.arange(5))  # its own inverse
    assert np.array_equal(mirror_permutation(subject.landmark_names, subject.pairs), subject.mirror_permutation())
