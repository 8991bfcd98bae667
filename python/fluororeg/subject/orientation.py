"""The subject's anatomical orientation (superior and anterior axes), measured from the CT itself.

The dataset's viewing directions (the "front half" of azimuths, superior up in the image) need
the subject's superior and anterior axes. A CT header does not reliably name them (research
CTs, TIFF stacks, prone acquisitions, rotated or relabelled headers), so they are measured from
the data, in the physical frame the header defines (the measurement turns with the header):

* **superior line: where the body is cut.** A head CT always cuts the body at its inferior end
  (the neck continues into the trunk) and often at the top; the side of the voxel grid whose two
  faces carry the most body voxels (CT above -500 HU, largest component) is the superior-inferior
  line (body: :func:`fluororeg.subject.body.body_mask`).
* **anterior and the sign of superior: the densest bone.** The teeth (enamel, the densest tissue
  of the head) lie anterior and inferior to the centre of the bone: the centroid of the densest
  0.5 % of bone voxels minus the bone centroid gives the sign of superior (the teeth are below)
  and, perpendicular to the superior line, the anterior axis.

Measured on the example skull (Cranium CT, vault to maxilla), the same with its header rotated
180 deg about the vertical and 90 deg about x, and headsq (orbits to C3, whose header puts the
face at LPS +y, i.e. "posterior"): the rule finds the true axes within 1 deg on all of them;
the landmark centroid minus the bone centroid (right for the example's anatomical landmark set,
whose face landmarks dominate) points superior-posterior on headsq's proposed landmarks, and
the principal axes' skew has the wrong sign on headsq, so neither is used.

When the measurement is not conclusive (the body touches no face of the grid, or the densest
bone lies within 10 mm of the bone centroid across the superior line: no teeth in the CT, a bone
other than a skull) the header's LPS axes are used and the orientation says so (source
``'header'``); ``subject.json`` may give the axes explicitly (source ``'user'``):
``"orientation": {"superior": [x, y, z], "anterior": [x, y, z]}`` (physical LPS directions).

Where the subject has symmetric pairs, the left axis of the pairs (mean left minus right) is
compared with the anatomical left ``superior x anterior`` (LPS: L = P x S): a negative product
means the pairs' left/right are mirrored relative to the anatomy (or the CT is mirrored); the
dataset does not use the left axis (its labels are the pairs'), the check only reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["SubjectOrientation", "measure_orientation", "user_orientation"]

DENSE_PERCENTILE = 99.5           # the densest share of bone voxels (teeth)
MIN_DENSE_OFFSET_MM = 10.0        # a smaller offset of the densest bone is not conclusive
MIN_CUT_FRACTION = 0.02           # share of a grid face covered by body for it to count as a cut
_LPS_SUPERIOR = (0.0, 0.0, 1.0)
_LPS_ANTERIOR = (0.0, -1.0, 0.0)


def _unit(v, name: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {v!r}: expected 3 numbers (a direction)") from None
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.linalg.norm(a) < 1e-9:
        raise ValueError(f"{name} = {v!r}: expected a non-zero finite 3-vector (a direction)")
    return a / np.linalg.norm(a)


@dataclass(frozen=True)
class SubjectOrientation:
    """Unit superior and anterior axes (physical LPS frame = model frame directions), where they
    came from (``'measured'``, ``'header'`` or ``'user'``) and a one-line account of how."""

    superior: tuple[float, float, float]
    anterior: tuple[float, float, float]
    source: str
    detail: str = ""
    left_from_pairs: Optional[tuple[float, float, float]] = None   # mean left - right, unit

    def __post_init__(self):
        if self.source not in ("measured", "header", "user"):
            raise ValueError(f"orientation source {self.source!r}: expected 'measured', 'header' or 'user'")
        s, a = _unit(self.superior, "superior"), _unit(self.anterior, "anterior")
        if abs(float(s @ a)) > 1e-6:
            raise ValueError(f"superior {self.superior} and anterior {self.anterior} must be orthogonal")
        object.__setattr__(self, "superior", tuple(float(x) for x in s))
        object.__setattr__(self, "anterior", tuple(float(x) for x in a))

    @property
    def left(self) -> np.ndarray:
        """The anatomical left axis implied by superior and anterior (LPS: L = P x S)."""
        return np.cross(-np.array(self.anterior), np.array(self.superior))

    def world_from_model_rotation(self) -> np.ndarray:
        """[3, 3] the rotation that stands the subject upright facing -y in a world whose z is up
        (anterior -> -y, superior -> +z): the rest pose of a simulated subject in front of
        fluoroscopes whose sources lie toward -y (:func:`fluororeg.simulation.simulate.default_dual_views`)."""
        s, a = np.array(self.superior), np.array(self.anterior)
        model = np.stack([np.cross(a, s), a, s])            # rows: model directions of world x, -y, z
        world = np.stack([np.cross([0.0, -1.0, 0.0], [0.0, 0.0, 1.0]), [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
        return world.T @ model

    @property
    def pairs_mirrored(self) -> Optional[bool]:
        """True when the pairs' left axis points to the anatomical right; None without pairs."""
        if self.left_from_pairs is None:
            return None
        return bool(np.dot(self.left, self.left_from_pairs) < 0)

    def describe(self) -> str:
        def fmt(v):
            return "[" + ", ".join(f"{x:+.2f}" for x in v) + "]"
        how = {"measured": "measured from the CT", "header": "the CT header's", "user": "given by the user"}[self.source]
        text = f"superior {fmt(self.superior)}, anterior {fmt(self.anterior)} (LPS directions), {how}: {self.detail}"
        if self.pairs_mirrored:
            text += ("; note: the pairs' left side is the anatomical right (left/right labels or the CT are "
                     "mirrored); labels stay the pairs'")
        return text


def _left_from_pairs(positions: np.ndarray, pairs: Sequence[Sequence[int]]) -> Optional[tuple]:
    if not pairs:
        return None
    d = np.mean([positions[a] - positions[b] for a, b in pairs], axis=0)
    n = float(np.linalg.norm(d))
    return tuple(float(x) for x in d / n) if n > 1e-9 else None


def user_orientation(spec: Any, positions: np.ndarray, pairs) -> SubjectOrientation:
    """The orientation given in subject.json: ``{"superior": [x, y, z], "anterior": [x, y, z]}``."""
    if not isinstance(spec, dict) or set(spec) != {"superior", "anterior"}:
        raise ValueError(f"'orientation' must be {{\"superior\": [x, y, z], \"anterior\": [x, y, z]}}, got {spec!r}")
    s, a = _unit(spec["superior"], "orientation superior"), _unit(spec["anterior"], "orientation anterior")
    angle = math.degrees(math.acos(min(1.0, abs(float(s @ a)))))
    if abs(angle - 90.0) > 5.0:
        raise ValueError(f"orientation superior {spec['superior']} and anterior {spec['anterior']} are {angle:.1f} deg "
                         "apart: expected perpendicular directions (within 5 deg)")
    a = a - (a @ s) * s
    return SubjectOrientation(tuple(s), tuple(a / np.linalg.norm(a)), "user", "given in subject.json",
                              _left_from_pairs(positions, pairs))


def measure_orientation(ct, bone_mask, positions: np.ndarray, pairs=(), body=None) -> SubjectOrientation:
    """Measure the superior and anterior axes of a head CT (see the module docstring).

    ``ct``: Volume in HU; ``bone_mask``: Volume (non-zero = bone) on its grid; ``positions``
    [L, 3] mm and ``pairs`` ((left, right) indices) only for the pairs' left-axis check;
    ``body``: bool [k, j, i] body mask (default: :func:`fluororeg.subject.body.body_mask`)."""
    left = _left_from_pairs(np.asarray(positions, float), pairs)
    bone = np.asarray(bone_mask.data) != 0
    if body is None:
        from fluororeg.subject.body import body_mask

        body = body_mask(ct.data)

    def header(why: str) -> SubjectOrientation:
        return SubjectOrientation(_LPS_SUPERIOR, _LPS_ANTERIOR, "header",
                                  f"{why}; the CT header's LPS axes are used (set \"orientation\" in subject.json "
                                  "if they are wrong)", left)

    # superior line: the grid axis (k, j, i) whose two faces carry the most body
    cover = []
    for ax in range(3):
        lo, hi = np.take(body, 0, axis=ax), np.take(body, -1, axis=ax)
        cover.append(float(lo.mean()) + float(hi.mean()))
    ax = int(np.argmax(cover))
    if cover[ax] < MIN_CUT_FRACTION:
        return header("the body touches no face of the CT grid (no cut shows the superior-inferior line)")
    # grid axis (k, j, i) -> physical direction: column (2 - ax) of direction (x, y, z columns = i, j, k)
    line = np.asarray(ct.direction, float)[:, 2 - ax]
    line = line / np.linalg.norm(line)
    k, j, i = np.nonzero(bone)
    pts = ct.voxel_to_physical(np.stack([i, j, k], axis=1).astype(np.float64))   # [M, 3] mm
    hu = np.asarray(ct.data)[k, j, i].astype(np.float64)
    dense = hu >= np.percentile(hu, DENSE_PERCENTILE)
    offset = pts[dense].mean(axis=0) - pts.mean(axis=0)                          # mm
    along = float(offset @ line)
    across = offset - along * line
    if abs(along) < MIN_DENSE_OFFSET_MM or np.linalg.norm(across) < MIN_DENSE_OFFSET_MM:
        return header(f"the densest bone lies {abs(along):.0f} mm along and {np.linalg.norm(across):.0f} mm across the "
                      f"cut line from the bone centre (less than {MIN_DENSE_OFFSET_MM:g} mm: no teeth to tell the front)")
    superior = -np.sign(along) * line
    anterior = across / np.linalg.norm(across)
    grid = "kji"[ax]
    detail = (f"body cut at the grid's {grid} faces ({100 * cover[ax]:.0f} % of a face) gives the superior line; the "
              f"densest {100 - DENSE_PERCENTILE:g} % of bone (teeth) lies {abs(along):.0f} mm inferior and "
              f"{np.linalg.norm(across):.0f} mm anterior of the bone centre")
    return SubjectOrientation(tuple(superior), tuple(anterior), "measured", detail, left)
