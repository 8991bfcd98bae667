"""Left, right and midline: the one rule that decides which landmark is on which side.

A symmetric pair is ``(left, right)``: its first landmark is on the subject's left, its second on
the right; a landmark in no pair is on the midline.  Pairs are the subject's (``subject.json``),
or, where none are given, found from the names: ``<stem>_L`` / ``<stem>_R`` (or ``<stem>_left`` /
``<stem>_right``).  Every place that needs a side (subject folders, the subject check sheet, the
dataset contact sheet, the mirror cases of the registration) goes through this module.
"""

from __future__ import annotations

import difflib
from typing import Sequence

import numpy as np

__all__ = ["SIDE_SUFFIXES", "pairs_from_names", "pair_indices", "landmark_sides", "mirror_permutation"]

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


def pair_indices(names: Sequence[str], pairs) -> tuple[tuple[int, int], ...]:
    """Symmetric pairs given by landmark index or name -> ((left, right), ...) indices; None: no
    pairs. Names are mapped here; the validity rules (indices in range, no landmark with itself
    or in two pairs) are the core's one pair check (``fluororeg::ValidatePairs``), whose errors
    name the landmarks."""
    from fluororeg import _core

    if pairs is None:
        return ()
    try:
        items = list(pairs)
    except TypeError:
        raise TypeError(f"pairs must be a sequence of (left, right) pairs, got {pairs!r}") from None
    out: list[tuple[int, int]] = []
    for pi, pr in enumerate(items):
        try:
            two = list(pr)
        except TypeError:
            raise ValueError(f"pair {pi} must be (left, right), got {pr!r}") from None
        if isinstance(pr, str) or len(two) != 2:
            raise ValueError(f"pair {pi} must be (left, right), got {pr!r}")
        idx = []
        for v in two:
            if isinstance(v, str):
                if v not in names:
                    close = difflib.get_close_matches(v, list(names), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(f"pair {pi} {two!r}: unknown landmark name {v!r}{hint}")
                idx.append(list(names).index(v))
            elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                idx.append(int(v))
            else:
                raise TypeError(f"pair {pi} {two!r}: entries must be landmark names or indices, "
                                f"got {v!r}")
        out.append((idx[0], idx[1]))
    info = np.iinfo(np.int32)
    arr = np.clip(np.array(out, dtype=np.int64).reshape(-1, 2), info.min, info.max).astype(np.int32)
    _core.validate_pairs(arr, len(names), [str(n) for n in names])
    return tuple(out)


def landmark_sides(names: Sequence[str], pairs=None) -> tuple[str, ...]:
    """``'left'``, ``'right'`` or ``'midline'`` for each landmark.

    ``pairs``: (left, right) pairs by landmark index or name; None: :func:`pairs_from_names`.
    """
    sides = ["midline"] * len(names)
    for a, b in pair_indices(names, pairs_from_names(names) if pairs is None else pairs):
        sides[a], sides[b] = "left", "right"
    return tuple(sides)


def mirror_permutation(names: Sequence[str], pairs=None) -> np.ndarray:
    """[L] int64: the index of each landmark's symmetric partner (itself if unpaired).

    ``positions[perm]`` swaps every pair: the labelling a mirrored (left-right confused)
    detection corresponds to.  The permutation is its own inverse.
    """
    perm = np.arange(len(names), dtype=np.int64)
    for a, b in pair_indices(names, pairs_from_names(names) if pairs is None else pairs):
        perm[a], perm[b] = b, a
    return perm
