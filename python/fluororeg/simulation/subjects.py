"""Test subjects for the independent recordings.

* :func:`rotated_header_subject`: the same anatomy with another CT header: the volume's
  direction matrix and origin, the landmarks and the subject origin all rotated by the same
  rotation about a physical axis. Voxel data are unchanged, so the body is the same, but its
  model frame (and thus "pose zero") is turned: a check that nothing assumes a standard
  orientation of the CT.
* :func:`headsq_subject`: a second real head, the shared ``headsq`` CT with landmarks from
  :func:`fluororeg.subject.subject.propose_landmarks` (33 landmarks, 13 symmetric pairs).
* :func:`independent_subjects`: the three subjects the independent benchmark uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluororeg.subject.landmarks import Landmarks
from fluororeg.subject.subject import Subject, make_subject
from fluororeg.core.volume import Volume

__all__ = ["axis_rotation", "rotated_header_subject", "headsq_subject", "extreme_points_subject",
           "independent_subjects"]


def axis_rotation(axis: str, angle_deg: float) -> np.ndarray:
    """3x3 rotation by ``angle_deg`` about the physical (LPS) axis ``'x'``, ``'y'`` or ``'z'``."""
    if axis not in ("x", "y", "z"):
        raise ValueError(f"axis {axis!r} is unknown: expected 'x', 'y' or 'z'")
    a = np.deg2rad(float(angle_deg))
    c, s = np.cos(a), np.sin(a)
    i = "xyz".index(axis)
    j, k = (i + 1) % 3, (i + 2) % 3
    R = np.eye(3)
    R[j, j], R[j, k], R[k, j], R[k, k] = c, -s, s, c
    if abs(c) < 1e-12 or abs(s) < 1e-12:  # exact signed permutations for multiples of 90 deg
        R = np.round(R)
    return R


def rotated_header_subject(subject: Subject, angle_deg: float = 180.0, axis: str = "z",
                           name: str | None = None) -> Subject:
    """``subject`` with its CT header rotated by ``angle_deg`` about the physical ``axis``
    through the physical origin (default: 180 deg about the vertical S axis): direction and
    origin of CT and mask, landmark positions and the subject origin are all rotated, the voxel
    data are kept. The rotated subject's model frame is the original's turned by that rotation:
    at world pose ``M @ diag(R^T, 1)`` it looks exactly like the original at pose ``M``."""
    if not isinstance(subject, Subject):
        raise TypeError(f"subject must be a fluororeg Subject, got {type(subject).__name__}")
    R = axis_rotation(axis, angle_deg)

    def turn(v: Volume) -> Volume:
        return Volume(v.data, v.spacing, R @ v.origin, R @ v.direction)

    lms = Landmarks(subject.landmarks.names, subject.landmarks.positions @ R.T)
    label = name or f"{subject.name}_header_rot{axis}{angle_deg:g}"
    return make_subject(label, turn(subject.ct), lms, subject.pairs, origin=R @ subject.origin,
                        mask=turn(subject.mask))


def headsq_subject(path=None, n_landmarks: int = 33, n_pairs: int = 13) -> Subject:
    """The shared headsq CT (``../shared/data/headsq/headsq_hu.nii.gz`` unless ``path``) with
    ``n_landmarks`` proposed landmarks in ``n_pairs`` symmetric pairs (deterministic)."""
    from fluororeg.subject.example import headsq_path
    from fluororeg.subject.proposal import propose_landmarks
    from fluororeg.io.volume_formats import load_volume

    p = Path(path) if path is not None else headsq_path()
    if p is None or not Path(p).is_file():
        raise FileNotFoundError(f"the headsq CT was not found (looked for {str(p) if p else 'shared/data/headsq/headsq_hu.nii.gz'})")
    ct = load_volume(p)
    landmarks, pairs = propose_landmarks(ct, n_landmarks, n_pairs, seed=0)
    return make_subject("headsq", ct, landmarks, pairs)


def extreme_points_subject(ct, name: str = "headsq", threshold_hu: float = 300.0) -> Subject:
    """A small real subject for tests and benchmarks: ``ct`` (HU) with six landmarks at its
    extreme bone voxels along +-x (the left/right pair), +-y and +-z."""
    bone = ct.mask(threshold_hu).data.astype(bool)
    k, j, i = np.nonzero(bone)
    P = ct.voxel_to_physical(np.stack([i, j, k], axis=1).astype(float))
    picks = {"left": P[np.argmax(P[:, 0])], "right": P[np.argmin(P[:, 0])], "front": P[np.argmin(P[:, 1])],
             "back": P[np.argmax(P[:, 1])], "top": P[np.argmax(P[:, 2])], "bottom": P[np.argmin(P[:, 2])]}
    return make_subject(name, ct, Landmarks(tuple(picks), np.array(list(picks.values()))), pairs=[("left", "right")])


def independent_subjects() -> dict[str, Subject]:
    """``{'example': ..., 'example_rotated_header': ..., 'headsq': ...}`` (headsq only when the
    shared data are present)."""
    from fluororeg.subject.example import headsq_path
    from fluororeg.subject.subject import example_subject

    ex = example_subject()
    out = {"example": ex, "example_rotated_header": rotated_header_subject(ex)}
    if headsq_path() is not None:
        out["headsq"] = headsq_subject()
    return out
