"""Left, right and midline: the one rule that decides which landmark is on which side.

A symmetric pair is ``(left, right)``: its first landmark is on the subject's left, its second on
the right; a landmark in no pair is on the midline.  Pairs are the subject's (``subject.json``),
or, where none are given, found from the names: ``<stem>_L`` / ``<stem>_R`` (or ``<stem>_left`` /
``<stem>_right``).  Every place that needs a side (subject folders, the subject check sheet, the
dataset contact sheet, the mirror cases of the registration) goes through this module.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["SIDE_SUFFIXES", "pairs_from_names", "landmark_sides", "mirror_permutation"]

SIDE_SUFFIXES = (("_L", "_R"), ("_left", "_right"))  # (left, right) name endings


def pairs_from_names(names: Sequence[str]) -> list[tuple[str, str]]:
    """(left, right) pairs of the landmarks named ``<stem>_L`` / ``<stem>_R`` (or ``_left`` / ``_right``)."""
    names = list(names)
    pairs = []
    for name in names:
        for left, right in SIDE_SUFFIXES:
            if name.endswith(left) and name[:-len(left)] + right in names:
                pairs.append((name, name[:-len(left)] + right))
    return pairs


def _pair_indices(names: Sequence[str], pairs) -> list[tuple[int, int]]:
    names = list(names)
    if pairs is None:
        pairs = pairs_from_names(names)
    out = []
    for pair in pairs:
        idx = []
        for v in pair:
            if isinstance(v, str):
                if v not in names:
                    raise ValueError(f"pair {list(pair)!r}: unknown landmark name {v!r}")
                idx.append(names.index(v))
            else:
                if not 0 <= int(v) < len(names):
                    raise ValueError(f"pair {list(pair)!r}: landmark index {int(v)} out of range 0..{len(names) - 1}")
                idx.append(int(v))
        out.append((idx[0], idx[1]))
    return out


def landmark_sides(names: Sequence[str], pairs=None) -> tuple[str, ...]:
    """``'left'``, ``'right'`` or ``'midline'`` for each landmark.

    ``pairs``: (left, right) pairs by landmark index or name; None: :func:`pairs_from_names`.
    """
    sides = ["midline"] * len(names)
    for a, b in _pair_indices(names, pairs):
        sides[a], sides[b] = "left", "right"
    return tuple(sides)


def mirror_permutation(names: Sequence[str], pairs=None) -> np.ndarray:
    """[L] int64: the index of each landmark's symmetric partner (itself if unpaired).

    ``positions[perm]`` swaps every pair: the labelling a mirrored (left-right confused)
    detection corresponds to.  The permutation is its own inverse.
    """
    perm = np.arange(len(names), dtype=np.int64)
    for a, b in _pair_indices(names, pairs):
        perm[a], perm[b] = b, a
    return perm
