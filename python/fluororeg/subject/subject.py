"""The subject: a CT bone model with landmarks, symmetric pairs, model origin and bone mask.

A :class:`Subject` bundles everything the DRR dataset, the detector and the registration
need to know about one anatomy:

* ``ct``: the CT in Hounsfield units, in its physical LPS frame as read
  (:class:`fluororeg.core.volume.Volume`);
* ``landmarks``: named landmarks in the same physical frame
  (:class:`fluororeg.subject.landmarks.Landmarks`);
* ``pairs``: the symmetric (left, right) landmark pairs, as landmark indices; left and
  right cannot be told apart on a radiograph, so the registration also tries the solution
  with every pair swapped (see :meth:`Subject.mirror_permutation`);
* ``origin``: the physical position of the **model frame** origin (by default the centroid
  of the landmarks).  Model coordinates are physical coordinates minus ``origin``; a pose
  maps model to world: ``X_world = R X_model + tau`` (DESIGN.md);
* ``mask``: a uint8 bone mask on the CT grid (for segmented DRRs).

Subject folder: ``subject.json``
--------------------------------
::

    {
      "name": "cranium",                      # optional, default: the folder's name
      "ct": "ct.nii.gz",                      # required: path relative to the folder, any
                                              #   format load_volume reads (NIfTI, NRRD,
                                              #   MetaImage, npz, a DICOM folder)
      "landmarks": "landmarks.mrk.json",      # required: .mrk.json, .fcsv or .csv
      "pairs": [["orbitale_L", "orbitale_R"], ...],   # optional: (left, right) by NAME
      "origin": "centroid",                   # optional: "centroid" (default) or [x, y, z]
                                              #   (mm, physical LPS frame)
      "mask": {"threshold_hu": 300, "largest_component": true},   # optional (this default)
           # or {"file": "mask.nii.gz"}       # a mask volume on exactly the CT's grid
      "orientation": {"superior": [0, 0, 1], "anterior": [0, -1, 0]},  # optional: the anatomical
           # axes (LPS directions) the dataset uses; default: measured from the CT
           # (fluororeg.subject.orientation)
      "description": "free text"              # optional, ignored
    }

Unknown keys are an error (typo protection).  Loading checks that the CT exists and reads,
every pair names two different known landmarks and no landmark is in two pairs, every
landmark lies inside the CT, there are at least 4 landmarks, and the mask is non-empty and
on the CT grid; each error names the offending value.

Subjects without landmarks: :func:`fluororeg.subject.proposal.propose_landmarks`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.subject.landmarks import Landmarks, load_landmarks, save_landmarks
from fluororeg.subject.sides import mirror_permutation, pair_indices
from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import load_volume, save_volume

__all__ = ["Subject", "load_subject", "save_subject", "make_subject", "example_subject",
           "SUBJECT_FILE", "DEFAULT_MASK_THRESHOLD_HU"]

PathLike = Union[str, "os.PathLike[str]"]

SUBJECT_FILE = "subject.json"
DEFAULT_MASK_THRESHOLD_HU = 300.0
MIN_LANDMARKS = 4
_SUBJECT_KEYS = ("name", "ct", "landmarks", "pairs", "origin", "mask", "orientation", "description")
_GRID_TOL_MM = 1e-3       # geometry tolerance when comparing a mask grid with the CT grid
_EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "cranium"


def _readonly(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def _same_grid(a: Volume, b: Volume) -> bool:
    return (a.data.shape == b.data.shape
            and np.allclose(a.spacing, b.spacing, rtol=0, atol=_GRID_TOL_MM)
            and np.allclose(a.origin, b.origin, rtol=0, atol=_GRID_TOL_MM)
            and np.allclose(a.direction, b.direction, rtol=0, atol=1e-5))


def _grid_text(v: Volume) -> str:
    return (f"shape_zyx {v.data.shape}, spacing {np.round(v.spacing, 6).tolist()}, origin "
            f"{np.round(v.origin, 6).tolist()}, direction {np.round(v.direction, 6).tolist()}")


# The least RMS distance (mm) of a subject's landmarks from their best-fitting line.
MIN_LANDMARK_SPREAD_MM = 1.0


@dataclass(frozen=True, eq=False)
class Subject:
    """A CT bone model with landmarks (see the module docstring).

    Construct it with :func:`make_subject` (which computes the mask and origin) or
    :func:`load_subject`; the constructor itself validates everything.  ``mask_rule`` records
    how the mask was made (``{"threshold_hu": t, "largest_component": b}``) or is None for a
    mask given as a volume; :func:`save_subject` writes a mask file only in that case.
    """

    name: str
    ct: Volume
    landmarks: Landmarks
    pairs: Tuple[Tuple[int, int], ...]
    origin: np.ndarray
    mask: Volume
    mask_rule: Optional[Mapping[str, Any]] = field(default=None)
    orientation_override: Optional[Mapping[str, Any]] = field(default=None)  # {"superior", "anterior"}

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"subject name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.ct, Volume):
            raise TypeError(f"ct must be a Volume, got {type(self.ct).__name__}")
        if not isinstance(self.landmarks, Landmarks):
            raise TypeError(f"landmarks must be a Landmarks, got {type(self.landmarks).__name__}")
        lms = self.landmarks
        if len(lms) < MIN_LANDMARKS:
            raise ValueError(f"a subject needs at least {MIN_LANDMARKS} landmarks, got {len(lms)}: "
                             f"{list(lms.names)}")
        object.__setattr__(self, "pairs", pair_indices(lms.names, self.pairs))
        try:
            origin = np.array(self.origin, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise TypeError(f"origin must be 3 numbers (mm), got {self.origin!r}") from None
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise ValueError(f"origin must be 3 finite numbers (mm), got {self.origin!r}")
        object.__setattr__(self, "origin", _readonly(origin))
        # landmarks inside the CT (voxel-centre box widened by half a voxel)
        ijk = self.ct.physical_to_voxel(lms.positions)
        hi = np.array(self.ct.shape_xyz, dtype=np.float64) - 0.5
        tol = 1e-6
        outside = np.nonzero(np.any((ijk < -0.5 - tol) | (ijk > hi + tol), axis=1))[0]
        if outside.size:
            b = int(outside[0])
            lo_mm, hi_mm = self.ct.bounds
            raise ValueError(
                f"landmark {lms.names[b]!r} at {np.round(lms.positions[b], 3).tolist()} mm lies "
                f"outside the CT (voxel-centre bounds {np.round(lo_mm, 3).tolist()} .. "
                f"{np.round(hi_mm, 3).tolist()} mm)"
                + (f"; {outside.size - 1} more landmark(s) are outside too" if outside.size > 1 else ""))
        # a pose needs landmarks off one line: three at one point or on a line fix no rotation about it
        centred = lms.positions - lms.positions.mean(axis=0)
        spread = np.linalg.svd(centred, compute_uv=False)  # [3] mm * sqrt(n)
        off_line_mm = float(np.sqrt((spread[1:] ** 2).sum() / len(lms)))
        if not off_line_mm >= MIN_LANDMARK_SPREAD_MM:
            raise ValueError(f"the {len(lms)} landmarks lie within {off_line_mm:.3g} mm of one line (or one point): "
                             f"a pose needs landmarks spread over the bone (at least {MIN_LANDMARK_SPREAD_MM:g} mm off "
                             "any line, RMS); check the landmark file's coordinates")
        # mask
        if not isinstance(self.mask, Volume):
            raise TypeError(f"mask must be a Volume, got {type(self.mask).__name__}")
        if not _same_grid(self.mask, self.ct):
            raise ValueError(f"the mask grid ({_grid_text(self.mask)}) differs from the CT grid "
                             f"({_grid_text(self.ct)})")
        m = self.mask
        if m.data.dtype != np.uint8 or m.data.max(initial=0) > 1:
            m = Volume((np.asarray(m.data) != 0).astype(np.uint8), m.spacing, m.origin, m.direction)
        if not m.data.any():
            raise ValueError("the bone mask is empty (no non-zero voxel)")
        if m.spacing is not self.ct.spacing:  # store the mask on exactly the CT grid
            m = Volume(m.data, self.ct.spacing, self.ct.origin, self.ct.direction)
        object.__setattr__(self, "mask", m)
        if self.mask_rule is not None:
            rule = dict(self.mask_rule)
            object.__setattr__(self, "mask_rule", rule)
        object.__setattr__(self, "_att_cache", {})
        object.__setattr__(self, "_body", None)
        object.__setattr__(self, "_orientation", None)
        if self.orientation_override is not None:
            from fluororeg.subject.orientation import user_orientation

            object.__setattr__(self, "orientation_override", dict(self.orientation_override))
            object.__setattr__(self, "_orientation", user_orientation(self.orientation_override,
                                                                      self.landmarks.positions, self.pairs))
        object.__setattr__(self, "_mask_model", None)
        object.__setattr__(self, "_fingerprint", None)

    def __repr__(self) -> str:
        return (f"Subject(name={self.name!r}, ct={self.ct!r}, landmarks={len(self.landmarks)}, "
                f"pairs={len(self.pairs)}, origin={np.round(self.origin, 3).tolist()})")

    # ------------------------------------------------------------------ landmarks
    @property
    def landmark_names(self) -> Tuple[str, ...]:
        return self.landmarks.names

    @property
    def landmarks_model(self) -> np.ndarray:
        """[L, 3] landmark positions in the model frame (mm): physical - origin."""
        return self.landmarks.positions - self.origin

    @property
    def pair_names(self) -> Tuple[Tuple[str, str], ...]:
        n = self.landmarks.names
        return tuple((n[a], n[b]) for a, b in self.pairs)

    def mirror_permutation(self) -> np.ndarray:
        """[L] int: the index of each landmark's symmetric partner (itself if unpaired).

        ``positions[perm]`` swaps every pair: the labelling a mirrored (left-right
        confused) detection corresponds to.  The permutation is its own inverse.
        """
        return mirror_permutation(self.landmarks.names, self.pairs)

    # ------------------------------------------------------------------ model-frame volumes
    def attenuation_model(self, mu_water_per_mm: float = 0.02) -> Volume:
        """float32 attenuation (1/mm) of the subject's body, translated so the model origin is
        at 0 (cached). Everything outside :meth:`body_mask` (the CT table, a head holder: objects
        not connected to the body) is set to air, since a fluoroscope never sees them with the
        subject."""
        key = float(mu_water_per_mm)
        cache: Dict[float, Volume] = self._att_cache  # type: ignore[attr-defined]
        if key not in cache:
            mu = self.ct.hu_to_attenuation(mu_water_per_mm)
            data = np.where(self.body_mask(), mu.data, np.float32(0.0))
            cache[key] = Volume(data, mu.spacing, mu.origin, mu.direction).translated(-self.origin)
        return cache[key]

    def body_mask(self) -> np.ndarray:
        """bool [k, j, i] on the CT grid: the body without table, head holder and detached objects
        (:func:`fluororeg.subject.body.body_mask`; computed once)."""
        if self._body is None:  # type: ignore[attr-defined]
            from fluororeg.subject.body import body_mask

            object.__setattr__(self, "_body", _readonly(body_mask(self.ct.data)))
        return self._body  # type: ignore[attr-defined]

    @property
    def orientation(self):
        """The anatomical superior and anterior axes the dataset uses
        (:class:`fluororeg.subject.orientation.SubjectOrientation`): subject.json's
        ``"orientation"`` if given, else measured from the CT (computed once)."""
        if self._orientation is None:  # type: ignore[attr-defined]
            from fluororeg.subject.orientation import measure_orientation

            object.__setattr__(self, "_orientation", measure_orientation(
                self.ct, self.mask, self.landmarks.positions, self.pairs, body=self.body_mask()))
        return self._orientation  # type: ignore[attr-defined]

    def mask_model(self) -> Volume:
        """The uint8 bone mask translated like :meth:`attenuation_model` (cached)."""
        if self._mask_model is None:  # type: ignore[attr-defined]
            object.__setattr__(self, "_mask_model", self.mask.translated(-self.origin))
        return self._mask_model  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of the CT (data and geometry), landmarks, pairs, origin, mask and a
        given orientation (subject.json's ``"orientation"``; a measured one follows from the CT).

        Stable across runs and machines (little-endian bytes); the name is not included.
        Datasets and trained models record it to detect a changed subject.
        """
        if self._fingerprint is None:  # type: ignore[attr-defined]
            h = hashlib.sha256()
            h.update(b"fluororeg-subject-v1\0")

            def arr(tag: str, a: np.ndarray) -> None:
                a = np.asarray(a)
                a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
                h.update(f"{tag}:{a.dtype.str}:{a.shape}\0".encode())
                h.update(a.tobytes())

            for tag, v in (("ct", self.ct), ("mask", self.mask)):
                arr(tag + ".data", v.data)
                arr(tag + ".spacing", v.spacing)
                arr(tag + ".origin", v.origin)
                arr(tag + ".direction", v.direction)
            h.update(("names:" + json.dumps(list(self.landmarks.names))).encode("utf-8") + b"\0")
            arr("positions", self.landmarks.positions)
            arr("pairs", np.array(self.pairs, dtype=np.int64).reshape(-1, 2))
            arr("origin", self.origin)
            if self.orientation_override is not None:  # only when given: older fingerprints stay valid
                o = self.orientation
                arr("orientation", np.array([o.superior, o.anterior], dtype=np.float64))
            object.__setattr__(self, "_fingerprint", h.hexdigest())
        return self._fingerprint  # type: ignore[attr-defined]


# ====================================================================== construction
def _mask_from_ct(ct: Volume, threshold_hu: float, largest_component: bool) -> Volume:
    try:
        return ct.mask(threshold_hu, largest_component=largest_component)
    except ValueError as exc:
        raise ValueError(f"the bone mask (threshold_hu={threshold_hu!r}) is empty: {exc}") from exc


def make_subject(name: str, ct: Volume, landmarks: Landmarks, pairs: Sequence[Sequence[Any]] = (),
                 *, origin: Any = "centroid", mask: Optional[Volume] = None,
                 threshold_hu: float = DEFAULT_MASK_THRESHOLD_HU,
                 largest_component: bool = True, orientation: Optional[Mapping[str, Any]] = None) -> Subject:
    """Build a :class:`Subject`: pairs by landmark name or index; ``origin`` "centroid" or
    (3,) mm; ``mask`` a volume on the CT grid, or None to threshold the CT at
    ``threshold_hu`` (keeping the largest component if ``largest_component``); ``orientation``
    ``{"superior": [x, y, z], "anterior": [x, y, z]}`` overrides the measured anatomical axes."""
    if not isinstance(landmarks, Landmarks):
        raise TypeError(f"landmarks must be a Landmarks, got {type(landmarks).__name__}")
    if isinstance(origin, str):
        if origin != "centroid":
            raise ValueError(f"origin must be 'centroid' or [x, y, z] (mm), got {origin!r}")
        if len(landmarks) == 0:
            raise ValueError("origin 'centroid' needs landmarks, got none")
        origin_arr = landmarks.positions.mean(axis=0)
    else:
        origin_arr = origin
    rule: Optional[Dict[str, Any]] = None
    if mask is None:
        t = float(threshold_hu)
        if not math.isfinite(t):
            raise ValueError(f"threshold_hu must be finite, got {threshold_hu!r}")
        mask = _mask_from_ct(ct, t, bool(largest_component))
        rule = {"threshold_hu": t, "largest_component": bool(largest_component)}
    return Subject(name, ct, landmarks, pairs, origin_arr, mask, rule, orientation)  # type: ignore[arg-type]


def _suggest(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_volume(path: Path, given, missing_what: str, read_what: str, src: str) -> Volume:
    """load_volume with errors that name subject.json, the value given there and the path."""
    if not path.exists():
        raise FileNotFoundError(f"{src}: {missing_what} {given!r} not found: {str(path)!r}")
    try:
        return load_volume(path)
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as exc:
        raise ValueError(f"{src}: cannot read {read_what} {str(path)!r}: {exc}") from exc


def load_subject(folder: PathLike, *, ct: Optional[Volume] = None) -> Subject:
    """Read a subject folder (``folder/subject.json``, documented in the module docstring).

    ``folder`` may also be the path of the json file itself.  ``ct`` overrides the file's
    ``"ct"`` entry (used by :func:`example_subject`, whose CT is fetched, not stored).
    """
    from fluororeg.io.limits import check_regular_file, read_text

    p = Path(folder)
    spec_path = p if (p.exists() and not p.is_dir()) else p / SUBJECT_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"subject file not found: {str(spec_path)!r}")
    check_regular_file(spec_path, "subject file")  # not a device, FIFO or folder
    root = spec_path.parent
    try:
        spec = json.loads(read_text(spec_path, "subject file", encoding="utf-8-sig"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{str(spec_path)!r} is not valid JSON: {exc}") from exc
    src = str(spec_path)
    if not isinstance(spec, dict):
        raise ValueError(f"{src}: expected a JSON object, got {type(spec).__name__}")
    unknown = [k for k in spec if k not in _SUBJECT_KEYS]
    if unknown:
        k = unknown[0]
        raise ValueError(f"{src}: unknown key {k!r}{_suggest(k, _SUBJECT_KEYS)}; allowed keys: "
                         f"{list(_SUBJECT_KEYS)}")

    name = spec.get("name", root.resolve().name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{src}: 'name' must be a non-empty string, got {name!r}")

    def rel_path(key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{src}: {key!r} must be a path relative to the subject folder, "
                             f"got {value!r}")
        q = Path(value)
        return q if q.is_absolute() else root / q

    # CT
    if ct is None:
        if "ct" not in spec:
            raise ValueError(f"{src}: missing required key 'ct' (the CT file or DICOM folder)")
        ct = _read_volume(rel_path("ct", spec["ct"]), spec["ct"], "CT", "the CT", src)
    elif not isinstance(ct, Volume):
        raise TypeError(f"ct must be a Volume, got {type(ct).__name__}")

    # landmarks
    if "landmarks" not in spec:
        raise ValueError(f"{src}: missing required key 'landmarks' (a .mrk.json, .fcsv or .csv file)")
    lm_path = rel_path("landmarks", spec["landmarks"])
    if not lm_path.exists():
        raise FileNotFoundError(f"{src}: landmark file {spec['landmarks']!r} not found: {str(lm_path)!r}")
    landmarks = load_landmarks(lm_path)

    # pairs (by name)
    pairs = spec.get("pairs", [])
    if not isinstance(pairs, list):
        raise ValueError(f"{src}: 'pairs' must be a list of [left, right] landmark names, got {pairs!r}")
    for pi, pr in enumerate(pairs):
        if not (isinstance(pr, list) and len(pr) == 2 and all(isinstance(x, str) for x in pr)):
            raise ValueError(f"{src}: pairs[{pi}] must be [left_name, right_name], got {pr!r}")

    # origin
    origin: Any = spec.get("origin", "centroid")
    if isinstance(origin, str):
        if origin != "centroid":
            raise ValueError(f"{src}: 'origin' must be \"centroid\" or [x, y, z] (mm), got {origin!r}")
    elif not (isinstance(origin, list) and len(origin) == 3
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                      for x in origin)):
        raise ValueError(f"{src}: 'origin' must be \"centroid\" or [x, y, z] (mm), got {origin!r}")

    # mask
    mspec = spec.get("mask", {"threshold_hu": DEFAULT_MASK_THRESHOLD_HU, "largest_component": True})
    if not isinstance(mspec, dict):
        raise ValueError(f"{src}: 'mask' must be {{\"file\": ...}} or {{\"threshold_hu\": ..., "
                         f"\"largest_component\": ...}}, got {mspec!r}")
    mask_keys = ("file", "threshold_hu", "largest_component")
    for k in mspec:
        if k not in mask_keys:
            raise ValueError(f"{src}: unknown key {k!r} in 'mask'{_suggest(k, mask_keys)}; "
                             f"allowed: {list(mask_keys)}")
    mask: Optional[Volume] = None
    threshold = DEFAULT_MASK_THRESHOLD_HU
    largest = True
    if "file" in mspec:
        if len(mspec) > 1:
            raise ValueError(f"{src}: 'mask' has both 'file' and threshold settings: {mspec!r}")
        m_path = rel_path("mask.file", mspec["file"])
        mask = _read_volume(m_path, mspec["file"], "mask file", "the mask", src)
        if not _same_grid(mask, ct):
            raise ValueError(f"{src}: the mask {str(m_path)!r} is on a different grid "
                             f"({_grid_text(mask)}) than the CT ({_grid_text(ct)})")
        if not np.any(mask.data):
            raise ValueError(f"{src}: the mask {str(m_path)!r} is empty (all zero)")
    else:
        t = mspec.get("threshold_hu", DEFAULT_MASK_THRESHOLD_HU)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"{src}: mask 'threshold_hu' must be a finite number (HU), got {t!r}")
        threshold = float(t)
        lc = mspec.get("largest_component", True)
        if not isinstance(lc, bool):
            raise ValueError(f"{src}: mask 'largest_component' must be true or false, got {lc!r}")
        largest = lc

    try:
        return make_subject(name, ct, landmarks, [tuple(pr) for pr in pairs], origin=origin,
                            mask=mask, threshold_hu=threshold, largest_component=largest,
                            orientation=spec.get("orientation"))
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from exc


def save_subject(subject: Subject, folder: PathLike, ct_filename: str = "ct.nii.gz") -> Path:
    """Write a subject folder: the CT (``ct_filename``), ``landmarks.mrk.json``, ``mask.nii.gz``
    (only for a mask that was not made by thresholding) and ``subject.json`` (written last).

    Returns the path of ``subject.json``.  NIfTI keeps geometry as float32, so the
    fingerprint of the re-loaded subject can differ in the last digits of the geometry; use
    ``ct_filename="ct.nrrd"`` (or ``.mha``/``.npz``) for a bit-exact round trip.
    """
    if not isinstance(subject, Subject):
        raise TypeError(f"save_subject expects a Subject, got {type(subject).__name__}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    save_volume(subject.ct, root / ct_filename)
    save_landmarks(root / "landmarks.mrk.json", subject.landmarks)
    spec: Dict[str, Any] = {
        "name": subject.name,
        "ct": ct_filename,
        "landmarks": "landmarks.mrk.json",
        "pairs": [list(p) for p in subject.pair_names],
    }
    centroid = subject.landmarks.positions.mean(axis=0)
    if np.array_equal(subject.origin, centroid):
        spec["origin"] = "centroid"
    else:
        spec["origin"] = [float(x) for x in subject.origin]
    if subject.mask_rule is not None:
        spec["mask"] = {"threshold_hu": float(subject.mask_rule["threshold_hu"]),
                        "largest_component": bool(subject.mask_rule["largest_component"])}
    else:
        kind = ".nii.gz"
        low = ct_filename.lower()
        for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".npz"):
            if low.endswith(ext):
                kind = ext
        mask_name = "mask" + kind
        save_volume(subject.mask, root / mask_name)
        spec["mask"] = {"file": mask_name}
    if subject.orientation_override is not None:
        spec["orientation"] = {k: [float(x) for x in subject.orientation_override[k]] for k in ("superior", "anterior")}
    out = root / SUBJECT_FILE
    atomic_write_text(out, json.dumps(spec, indent=2) + "\n")
    return out


def example_subject(cache_dir: Optional[PathLike] = None) -> Subject:
    """The default example subject: the InVesalius "Cranium" CT
    (:func:`fluororeg.subject.example.cranium_volume`, fetched and cached on first use) with the
    committed landmarks and pairs in ``fluororeg/data/cranium``."""
    spec = _EXAMPLE_DIR / SUBJECT_FILE
    if not spec.is_file() or not (_EXAMPLE_DIR / "landmarks.mrk.json").is_file():
        raise FileNotFoundError(f"the example subject's files are missing: expected "
                                f"{str(spec)!r} and {str(_EXAMPLE_DIR / 'landmarks.mrk.json')!r}")
    from fluororeg.subject.example import cranium_volume

    return load_subject(_EXAMPLE_DIR, ct=cranium_volume(cache_dir))
