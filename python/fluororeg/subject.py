"""The subject: a CT bone model with landmarks, symmetric pairs, model origin and bone mask.

A :class:`Subject` bundles everything the DRR dataset, the detector and the registration
need to know about one anatomy:

* ``ct``: the CT in Hounsfield units, in its physical LPS frame as read
  (:class:`fluororeg.volume.Volume`);
* ``landmarks``: named landmarks in the same physical frame
  (:class:`fluororeg.landmarks.Landmarks`);
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
      "description": "free text"              # optional, ignored
    }

Unknown keys are an error (typo protection).  Loading checks that the CT exists and reads,
every pair names two different known landmarks and no landmark is in two pairs, every
landmark lies inside the CT, there are at least 4 landmarks, and the mask is non-empty and
on the CT grid; each error names the offending value.

Automatic landmarks
-------------------
:func:`propose_landmarks` proposes a well-spread, left-right symmetric landmark set on the
bone surface for subjects that come without landmarks: it estimates the mid-sagittal
symmetry plane of the bone surface (mirror ICP), picks mirror-image pairs on both sides
and unpaired points on the plane by farthest-point sampling.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._io import atomic_write_text
from .landmarks import Landmarks, load_landmarks, save_landmarks
from .volume import Volume, load_volume, save_volume

__all__ = ["Subject", "load_subject", "save_subject", "make_subject", "example_subject",
           "propose_landmarks", "symmetry_plane", "SUBJECT_FILE", "DEFAULT_MASK_THRESHOLD_HU"]

PathLike = Union[str, "os.PathLike[str]"]

SUBJECT_FILE = "subject.json"
DEFAULT_MASK_THRESHOLD_HU = 300.0
MIN_LANDMARKS = 4
_SUBJECT_KEYS = ("name", "ct", "landmarks", "pairs", "origin", "mask", "description")
_GRID_TOL_MM = 1e-3       # geometry tolerance when comparing a mask grid with the CT grid
_EXAMPLE_DIR = Path(__file__).resolve().parent / "data" / "cranium"


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
        object.__setattr__(self, "pairs", _normalise_pairs(self.pairs, lms.names))
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
        perm = np.arange(len(self.landmarks), dtype=np.int64)
        for a, b in self.pairs:
            perm[a], perm[b] = b, a
        return perm

    # ------------------------------------------------------------------ model-frame volumes
    def attenuation_model(self, mu_water_per_mm: float = 0.02) -> Volume:
        """float32 attenuation (1/mm) of the subject's body, translated so the model origin is
        at 0 (cached). Objects not connected to the body (the CT table, a head holder: voxels
        outside the largest connected component above -500 HU) are set to air, since a
        fluoroscope never sees them with the subject."""
        key = float(mu_water_per_mm)
        cache: Dict[float, Volume] = self._att_cache  # type: ignore[attr-defined]
        if key not in cache:
            mu = self.ct.hu_to_attenuation(mu_water_per_mm)
            body = self.ct.mask(-500.0, largest_component=True).data.astype(bool)
            data = np.where(body, mu.data, np.float32(0.0))
            cache[key] = Volume(data, mu.spacing, mu.origin, mu.direction).translated(-self.origin)
        return cache[key]

    def mask_model(self) -> Volume:
        """The uint8 bone mask translated like :meth:`attenuation_model` (cached)."""
        if self._mask_model is None:  # type: ignore[attr-defined]
            object.__setattr__(self, "_mask_model", self.mask.translated(-self.origin))
        return self._mask_model  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of the CT (data and geometry), landmarks, pairs, origin and mask.

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
            object.__setattr__(self, "_fingerprint", h.hexdigest())
        return self._fingerprint  # type: ignore[attr-defined]


def _normalise_pairs(pairs: Any, names: Sequence[str]) -> Tuple[Tuple[int, int], ...]:
    """Pairs given by index or by name -> tuple of (int, int). Names are mapped here; the
    validity rules (indices in range, no landmark with itself or in two pairs) are the core's
    one pair check (``fluororeg::ValidatePairs``)."""
    from . import _core

    if pairs is None:
        return ()
    try:
        items = list(pairs)
    except TypeError:
        raise TypeError(f"pairs must be a sequence of (left, right) pairs, got {pairs!r}") from None
    out: List[Tuple[int, int]] = []
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


# ====================================================================== construction
def _mask_from_ct(ct: Volume, threshold_hu: float, largest_component: bool) -> Volume:
    try:
        return ct.mask(threshold_hu, largest_component=largest_component)
    except ValueError as exc:
        raise ValueError(f"the bone mask (threshold_hu={threshold_hu!r}) is empty: {exc}") from exc


def make_subject(name: str, ct: Volume, landmarks: Landmarks, pairs: Sequence[Sequence[Any]] = (),
                 *, origin: Any = "centroid", mask: Optional[Volume] = None,
                 threshold_hu: float = DEFAULT_MASK_THRESHOLD_HU,
                 largest_component: bool = True) -> Subject:
    """Build a :class:`Subject`: pairs by landmark name or index; ``origin`` "centroid" or
    (3,) mm; ``mask`` a volume on the CT grid, or None to threshold the CT at
    ``threshold_hu`` (keeping the largest component if ``largest_component``)."""
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
    return Subject(name, ct, landmarks, pairs, origin_arr, mask, rule)  # type: ignore[arg-type]


def _suggest(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_volume(path: Path, given, missing_what: str, read_what: str, src: str) -> Volume:
    """load_volume with errors that name subject.json, the value given there and the path."""
    if not path.exists():
        raise FileNotFoundError(f"{src}: {missing_what} {given!r} not found: {str(path)!r}")
    try:
        return load_volume(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{src}: cannot read {read_what} {str(path)!r}: {exc}") from exc


def load_subject(folder: PathLike, *, ct: Optional[Volume] = None) -> Subject:
    """Read a subject folder (``folder/subject.json``, documented in the module docstring).

    ``folder`` may also be the path of the json file itself.  ``ct`` overrides the file's
    ``"ct"`` entry (used by :func:`example_subject`, whose CT is fetched, not stored).
    """
    p = Path(folder)
    spec_path = p if p.is_file() else p / SUBJECT_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"subject file not found: {str(spec_path)!r}")
    root = spec_path.parent
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    if not lm_path.is_file():
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
                            mask=mask, threshold_hu=threshold, largest_component=largest)
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
    out = root / SUBJECT_FILE
    atomic_write_text(out, json.dumps(spec, indent=2) + "\n")
    return out


def example_subject(cache_dir: Optional[PathLike] = None) -> Subject:
    """The default example subject: the InVesalius "Cranium" CT
    (:func:`fluororeg.example_data.cranium_volume`, fetched and cached on first use) with the
    committed landmarks and pairs in ``fluororeg/data/cranium``."""
    spec = _EXAMPLE_DIR / SUBJECT_FILE
    if not spec.is_file() or not (_EXAMPLE_DIR / "landmarks.mrk.json").is_file():
        raise FileNotFoundError(f"the example subject's files are missing: expected "
                                f"{str(spec)!r} and {str(_EXAMPLE_DIR / 'landmarks.mrk.json')!r}")
    from .example_data import cranium_volume

    return load_subject(_EXAMPLE_DIR, ct=cranium_volume(cache_dir))


# ====================================================================== automatic landmarks
def _is_mask(vol: Volume) -> bool:
    d = vol.data
    if d.dtype == np.bool_:
        return True
    if not np.issubdtype(d.dtype, np.integer):
        return False
    return int(d.min()) >= 0 and int(d.max()) <= 1


def _reflect(x: np.ndarray, n: np.ndarray, d: float) -> np.ndarray:
    return x - 2.0 * (x @ n - d)[:, None] * n[None, :]


def _rot(axis: np.ndarray, ang: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * k @ k


def symmetry_plane(surface: np.ndarray, volume: Volume, initial_normal: Any = (1.0, 0.0, 0.0), *,
                   seed: int = 0, max_points: int = 8000, max_tilt_deg: float = 20.0
                   ) -> Tuple[np.ndarray, float, float]:
    """Mirror-symmetry plane ``n . x = d`` (mm, physical) of a binary surface on ``volume``'s grid.

    Minimises the mean truncated squared distance between the surface voxels and their
    mirror images (a Euclidean distance map of the surface, trilinearly interpolated):
    a coarse search over normals within ``max_tilt_deg`` of ``initial_normal`` and plane
    offsets, then Nelder-Mead from the best starts.  Returns ``(n, d, rms_mm)``: ``n`` a
    unit vector oriented like ``initial_normal`` and the root mean square (truncated) mirror
    distance of the surface points.
    """
    from scipy import ndimage, optimize

    surf = np.asarray(surface, dtype=bool)
    n0 = np.asarray(initial_normal, dtype=np.float64).reshape(-1)
    if n0.shape != (3,) or not np.all(np.isfinite(n0)) or np.linalg.norm(n0) == 0:
        raise ValueError(f"initial_normal must be a non-zero finite 3-vector, got {initial_normal!r}")
    n0 = n0 / np.linalg.norm(n0)
    kji = np.argwhere(surf)
    if len(kji) == 0:
        raise ValueError("the surface is empty")
    pts = volume.voxel_to_physical(kji[:, ::-1].astype(np.float64))
    rng = np.random.default_rng(seed)
    if len(pts) > max_points:
        pts = pts[rng.choice(len(pts), max_points, replace=False)]
    # distance (mm) to the nearest surface voxel centre, sampled on the voxel grid (k, j, i)
    dmap = ndimage.distance_transform_edt(~surf, sampling=volume.spacing[::-1]).astype(np.float64)
    cap = 2.0 * float(np.linalg.norm(volume.spacing))
    vfp = volume.voxel_from_physical
    a1 = np.cross(n0, [0.0, 0.0, 1.0] if abs(n0[2]) < 0.9 else [1.0, 0.0, 0.0])
    a1 /= np.linalg.norm(a1)
    a2 = np.cross(n0, a1)
    proj0 = pts @ n0
    scale = max(float(np.std(pts - pts.mean(axis=0))), 1e-6)  # mm per unit of the parameters

    def plane(x: np.ndarray) -> Tuple[np.ndarray, float]:
        n = n0 + x[0] * a1 + x[1] * a2
        nn = float(np.linalg.norm(n))
        return n / nn, x[2] * scale / nn

    def cost(x: np.ndarray) -> float:
        n, d = plane(x)
        refl = pts - 2.0 * (pts @ n - d)[:, None] * n[None, :]
        ijk = refl @ vfp[:3, :3].T + vfp[:3, 3]
        dist = ndimage.map_coordinates(dmap, ijk[:, ::-1].T, order=1, mode="nearest")
        # points mirrored outside the grid count as far away
        lo = np.all(ijk >= -0.5, axis=1) & np.all(ijk <= np.array(volume.shape_xyz) - 0.5, axis=1)
        dist = np.where(lo, dist, cap)
        return float(np.mean(np.minimum(dist, cap) ** 2))

    t = math.tan(math.radians(max_tilt_deg))
    grid = np.linspace(-t, t, 9)
    d_med = float(np.median(proj0))
    offs = d_med / scale + np.linspace(-0.15, 0.15, 7)
    starts = []
    for ga in grid:
        for gb in grid:
            for go in offs:
                x = np.array([ga, gb, go])
                starts.append((cost(x), x))
    starts.sort(key=lambda c: c[0])
    best = None
    for _, x in starts[:4]:
        res = optimize.minimize(cost, x, method="Nelder-Mead",
                                options={"xatol": 1e-5, "fatol": 1e-9, "maxiter": 2000,
                                         "initial_simplex": x + np.vstack([np.zeros(3), 0.05 * np.eye(3)])})
        if best is None or res.fun < best.fun:
            best = res
    n, d = plane(best.x)
    return n, float(d), math.sqrt(float(best.fun))


def _surface_points(mask: np.ndarray, vol: Volume) -> Tuple[np.ndarray, np.ndarray]:
    """Physical positions [N, 3] of the outer surface voxels of ``mask`` and the surface
    as a boolean array (holes are filled first, so inner cavity walls do not count)."""
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(mask)
    inner = ndimage.binary_erosion(filled, structure=ndimage.generate_binary_structure(3, 1),
                                   border_value=0)
    surf = filled & ~inner
    kji = np.argwhere(surf)
    pts = vol.voxel_to_physical(kji[:, ::-1].astype(np.float64))
    return pts, surf


def propose_landmarks(mask_or_ct: Volume, n_landmarks: int = 33, n_pairs: int = 13, *,
                      threshold_hu: float = DEFAULT_MASK_THRESHOLD_HU, seed: int = 0,
                      initial_normal: Any = (1.0, 0.0, 0.0)
                      ) -> Tuple[Landmarks, Tuple[Tuple[int, int], ...]]:
    """Propose a spread, left-right symmetric landmark set on the bone surface.

    ``mask_or_ct`` is a binary mask (bool, or integers 0/1) or a CT in HU (thresholded at
    ``threshold_hu``, largest 26-connected component).  Steps: the outer surface voxels of
    the (hole-filled) mask; its mirror-symmetry plane by mirror ICP starting from
    ``initial_normal`` (LPS x, left-right for a head CT); ``n_pairs`` pairs by farthest-point
    sampling (the plane counting as already covered) over surface voxels off the plane (by at least two voxels and a tenth of the
    surface's half-width) whose mirror image lands
    on the surface (within 0.75 voxel diagonals), each paired with the surface voxel
    nearest its mirror image; then ``n_landmarks - 2 n_pairs`` unpaired points by
    farthest-point sampling over surface voxels on the plane (within half a voxel).

    Every point is the centre of a surface voxel.  Names: ``auto_01_L``/``auto_01_R`` (L on
    the side of +``initial_normal``, i.e. the patient's left for LPS x), ``auto_mid_01``.
    Returns ``(landmarks, pairs)`` with pairs as (left, right) indices: (0, 1), (2, 3), ...
    """
    from scipy.spatial import cKDTree

    if not isinstance(mask_or_ct, Volume):
        raise TypeError(f"propose_landmarks expects a Volume, got {type(mask_or_ct).__name__}")
    for nm, v in (("n_landmarks", n_landmarks), ("n_pairs", n_pairs), ("seed", seed)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{nm} must be an integer, got {v!r}")
    n_landmarks, n_pairs = int(n_landmarks), int(n_pairs)
    if n_pairs < 0 or n_landmarks < 1 or 2 * n_pairs > n_landmarks:
        raise ValueError(f"need n_landmarks >= 1 and 0 <= 2 * n_pairs <= n_landmarks, got "
                         f"n_landmarks={n_landmarks}, n_pairs={n_pairs}")
    n_mid = n_landmarks - 2 * n_pairs
    vol = mask_or_ct
    if _is_mask(vol):
        bone = np.asarray(vol.data) != 0
        if not bone.any():
            raise ValueError("the mask given to propose_landmarks is empty")
    else:
        bone = vol.mask(threshold_hu, largest_component=True).data.astype(bool)
    pts, surf = _surface_points(bone, vol)
    if len(pts) < 4 * n_landmarks:
        raise ValueError(f"the bone surface has only {len(pts)} voxels, too few for "
                         f"{n_landmarks} landmarks")
    n, d, cost = symmetry_plane(surf, vol, initial_normal, seed=int(seed))
    voxel = float(np.max(vol.spacing))
    diag = float(np.linalg.norm(vol.spacing))
    tree = cKDTree(pts)
    s = pts @ n - d

    # ---- pair candidates: off the plane, mirror image on the surface
    margin = max(2.0 * voxel, 0.1 * float(np.max(np.abs(s))))
    cand = np.nonzero(s > margin)[0]
    dist, partner = tree.query(_reflect(pts[cand], n, d))
    ok = (dist <= 0.75 * diag) & (s[partner] < -voxel)
    cand, partner = cand[ok], partner[ok]
    if len(cand) < n_pairs:
        raise ValueError(f"only {len(cand)} surface points have a mirror image on the bone "
                         f"(symmetry plane normal {np.round(n, 3).tolist()}, mean mirror distance "
                         f"{cost:.2f} mm); cannot place {n_pairs} pairs")
    chosen: List[np.ndarray] = []
    names: List[str] = []
    pairs: List[Tuple[int, int]] = []
    if n_pairs:
        pl, pr = pts[cand], pts[partner]
        # the plane counts as covered (by the unpaired points): start from the distance to it
        mind = s[cand].copy()
        for q in range(n_pairs):
            c = int(np.argmax(mind))
            if not mind[c] > 0:
                raise ValueError(f"ran out of distinct mirror pairs after {q} of {n_pairs}")
            a, b = pl[c], pr[c]
            pairs.append((len(chosen), len(chosen) + 1))
            chosen += [a, b]
            names += [f"auto_{q + 1:02d}_L", f"auto_{q + 1:02d}_R"]
            for p in (a, b):
                mind = np.minimum(mind, np.minimum(np.linalg.norm(pl - p, axis=1),
                                                   np.linalg.norm(pr - p, axis=1)))

    # ---- unpaired points on the plane
    if n_mid:
        width = 0.5 * voxel
        mid = np.nonzero(np.abs(s) <= width)[0]
        while len(mid) < 4 * n_mid and width < 4 * voxel:
            width *= 1.5
            mid = np.nonzero(np.abs(s) <= width)[0]
        if len(mid) < n_mid:
            raise ValueError(f"only {len(mid)} surface points lie on the symmetry plane; cannot "
                             f"place {n_mid} unpaired landmarks")
        pm = pts[mid]
        # prefer points closest to the plane: the distance to the plane is a small penalty
        pen = np.abs(s[mid])
        if chosen:
            sel = np.array(chosen)
            mind = np.min(np.linalg.norm(pm[:, None, :] - sel[None, :, :], axis=2), axis=1)
        else:
            mind = np.full(len(mid), np.inf)
            mind[int(np.argmax(np.linalg.norm(pm - pts.mean(axis=0), axis=1)))] = 1e300
        for q in range(n_mid):
            c = int(np.argmax(mind - pen))
            if not mind[c] > 0:
                raise ValueError(f"ran out of distinct points on the symmetry plane after {q} of {n_mid}")
            chosen.append(pm[c])
            names.append(f"auto_mid_{q + 1:02d}")
            mind = np.minimum(mind, np.linalg.norm(pm - pm[c], axis=1))
    return Landmarks(tuple(names), np.array(chosen).reshape(-1, 3)), tuple(pairs)
