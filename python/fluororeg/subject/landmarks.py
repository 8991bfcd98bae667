"""Landmark (fiducial) files: 3D Slicer markups JSON, Slicer ``.fcsv`` and plain CSV.

A :class:`Landmarks` holds named 3-D points in millimetres in the **LPS** physical frame
(the frame of :class:`fluororeg.core.volume.Volume`).  Files may store RAS coordinates; they are
converted on reading (x and y change sign) and on writing when asked to.

Formats (chosen by extension)
-----------------------------
``.mrk.json`` / ``.json``
    3D Slicer markups JSON (``markups-schema-v1.0.x``): ``{"@schema": ..., "markups":
    [{"type": "Fiducial", "coordinateSystem": "LPS" | "RAS", "controlPoints": [{"id",
    "label", "position": [x, y, z], ...}]}]}``.  Every control point of every
    ``Fiducial`` markup in the file is read, in order; other markup types (lines, curves,
    ...) are ignored.  A point without a position (``positionStatus`` "undefined" or
    "missing") is an error, because a landmark set must be complete.
``.fcsv``
    Slicer's fiducial CSV: ``#`` header lines (``# Markups fiducial file version = 4.11``,
    ``# CoordinateSystem = LPS`` (or ``RAS``, or the numeric codes of old versions:
    0 = RAS, 1 = LPS), ``# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,
    associatedNodeID``) and one row per point.  Without a ``CoordinateSystem`` line the
    file is RAS (Slicer < 4.11).  Without a ``columns`` line the standard column order
    above is assumed.
``.csv``
    A plain table with a header row containing ``name,x,y,z`` (LPS mm; other columns are
    ignored).  The coordinate system is LPS unless a ``# coordinate_system = RAS`` comment
    line precedes the header or a ``coordinate_system`` column says so per row.

:func:`save_landmarks` writes all three; the ``.mrk.json`` and ``.fcsv`` files open in
3D Slicer.  Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from fluororeg.io.atomic import atomic_write_text

__all__ = ["Landmarks", "load_landmarks", "save_landmarks", "LANDMARK_EXTENSIONS"]

PathLike = Union[str, "os.PathLike[str]"]

#: Extensions understood by :func:`load_landmarks` / :func:`save_landmarks`.
LANDMARK_EXTENSIONS = (".mrk.json", ".json", ".fcsv", ".csv")

_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
           "Resources/Schema/markups-schema-v1.0.3.json#")
_FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label",
                 "desc", "associatedNodeID")
_FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS


def _readonly(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def _coordinate_system(value: Any, where: str) -> str:
    """'LPS' or 'RAS' from a file's value (string, or the numeric codes of old .fcsv)."""
    s = str(value).strip().upper()
    if s in ("LPS", "1"):
        return "LPS"
    if s in ("RAS", "0"):
        return "RAS"
    raise ValueError(f"{where}: unknown coordinate system {value!r}; expected 'LPS' or 'RAS' "
                     f"(or 1 / 0 in old .fcsv files)")


@dataclass(frozen=True)
class Landmarks:
    """Named landmarks: ``names`` (unique, non-empty) and ``positions`` [L, 3] (mm, LPS).

    ``positions`` is stored as a read-only float64 array.  ``L`` may be 0 only for an
    explicitly empty set; files with no points are rejected by :func:`load_landmarks`.
    """

    names: Tuple[str, ...]
    positions: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.names, str):
            raise TypeError(f"names must be a sequence of strings, got the string {self.names!r}")
        try:
            names = tuple(self.names)
        except TypeError:
            raise TypeError(f"names must be a sequence of strings, got {self.names!r}") from None
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"landmark names must be strings, got {n!r} ({type(n).__name__})")
            if not n.strip():
                raise ValueError(f"landmark names must be non-empty, got {n!r} in {list(names)}")
            if n != n.strip():
                raise ValueError(f"landmark name {n!r} has leading or trailing white space")
        seen: Dict[str, int] = {}
        for idx, n in enumerate(names):
            if n in seen:
                raise ValueError(f"duplicate landmark name {n!r} (entries {seen[n]} and {idx})")
            seen[n] = idx
        try:
            pos = np.array(self.positions, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"positions must be an [L, 3] array of numbers, got {self.positions!r}") from exc
        if pos.size == 0 and len(names) == 0:
            pos = pos.reshape(0, 3)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"positions must have shape [L, 3], got {pos.shape}")
        if pos.shape[0] != len(names):
            raise ValueError(f"{len(names)} landmark names but {pos.shape[0]} positions")
        bad = np.nonzero(~np.all(np.isfinite(pos), axis=1))[0]
        if bad.size:
            b = int(bad[0])
            raise ValueError(f"landmark {names[b]!r} has a non-finite position {pos[b].tolist()}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "positions", _readonly(pos))

    # ------------------------------------------------------------------ helpers
    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Landmarks):
            return NotImplemented
        return self.names == other.names and np.array_equal(self.positions, other.positions)

    __hash__ = None  # type: ignore[assignment]

    def index(self, name: str) -> int:
        """Index of the landmark called ``name`` (KeyError naming it and the known names)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown landmark {name!r}; known: {list(self.names)}") from None

    def position(self, name: str) -> np.ndarray:
        """(3,) position of the landmark called ``name``."""
        return self.positions[self.index(name)]

    def as_dict(self) -> Dict[str, np.ndarray]:
        return {n: self.positions[i] for i, n in enumerate(self.names)}

    def translated(self, offset_mm: Any) -> "Landmarks":
        """The same landmarks shifted by ``offset_mm`` (3,)."""
        off = np.asarray(offset_mm, dtype=np.float64).reshape(-1)
        if off.shape != (3,) or not np.all(np.isfinite(off)):
            raise ValueError(f"offset_mm must be 3 finite numbers, got {offset_mm!r}")
        return Landmarks(self.names, self.positions + off)

    def subset(self, names: Iterable[str]) -> "Landmarks":
        """The landmarks called ``names``, in that order."""
        names = tuple(names)
        return Landmarks(names, self.positions[[self.index(n) for n in names]].reshape(-1, 3))


# ====================================================================== reading
def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".mrk.json") or name.endswith(".json"):
        return "json"
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".csv"):
        return "csv"
    return ""


def load_landmarks(path: PathLike) -> Landmarks:
    """Read landmarks from ``.mrk.json`` / ``.json``, ``.fcsv`` or ``.csv`` (see module docs).

    Positions are returned in LPS millimetres whatever the file's coordinate system.
    """
    p = Path(path)
    kind = _kind(p)
    if kind == "":
        raise ValueError(f"unknown landmark file format for {str(p)!r}: expected one of "
                         f"{', '.join(LANDMARK_EXTENSIONS)}")
    from fluororeg.io.limits import check_regular_file, read_text

    if not p.exists():
        raise FileNotFoundError(f"landmark file not found: {str(p)!r}")
    check_regular_file(p, "landmark file")  # not a device, FIFO or folder
    text = read_text(p, "landmark file", encoding="utf-8-sig")
    if kind == "json":
        names, pos = _parse_mrk_json(text, str(p))
    elif kind == "fcsv":
        names, pos = _parse_fcsv(text, str(p))
    else:
        names, pos = _parse_csv(text, str(p))
    if not names:
        raise ValueError(f"{str(p)!r} contains no landmarks")
    try:
        return Landmarks(tuple(names), np.array(pos, dtype=np.float64).reshape(-1, 3))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{str(p)!r}: {exc}") from exc


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: non-finite coordinate {value!r}")
    return x


def _parse_mrk_json(text: str, src: str) -> Tuple[List[str], List[List[float]]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{src}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or "markups" not in doc:
        raise ValueError(f"{src}: not a 3D Slicer markups file (no top-level 'markups' list)")
    schema = doc.get("@schema")
    if schema is not None and "markups-schema" not in str(schema):
        raise ValueError(f"{src}: unexpected '@schema' {schema!r} (expected a Slicer markups schema)")
    markups = doc["markups"]
    if not isinstance(markups, list):
        raise ValueError(f"{src}: 'markups' must be a list, got {type(markups).__name__}")
    names: List[str] = []
    pos: List[List[float]] = []
    n_fid = 0
    for mi, mk in enumerate(markups):
        if not isinstance(mk, dict):
            raise ValueError(f"{src}: markups[{mi}] must be an object, got {mk!r}")
        mtype = mk.get("type")
        if mtype is None:
            raise ValueError(f"{src}: markups[{mi}] has no 'type'")
        if str(mtype) not in ("Fiducial", "PointList"):
            continue
        n_fid += 1
        cs = _coordinate_system(mk.get("coordinateSystem", "LPS"), f"{src}: markups[{mi}]")
        units = mk.get("coordinateUnits", "mm")
        if isinstance(units, str) and units.strip().lower() not in ("mm", ""):
            raise ValueError(f"{src}: markups[{mi}] has coordinateUnits {units!r}; only 'mm' is supported")
        cps = mk.get("controlPoints", [])
        if not isinstance(cps, list):
            raise ValueError(f"{src}: markups[{mi}].controlPoints must be a list")
        for ci, cp in enumerate(cps):
            where = f"{src}: markups[{mi}].controlPoints[{ci}]"
            if not isinstance(cp, dict):
                raise ValueError(f"{where} must be an object, got {cp!r}")
            label = cp.get("label")
            if label is None or not isinstance(label, str):
                raise ValueError(f"{where} has no string 'label' (got {label!r})")
            status = str(cp.get("positionStatus", "defined"))
            if "position" not in cp or status in ("undefined", "missing"):
                raise ValueError(f"{where} ({label!r}) has no position (positionStatus "
                                 f"{status!r}); every landmark must be placed")
            xyz = cp["position"]
            if not isinstance(xyz, (list, tuple)) or len(xyz) != 3:
                raise ValueError(f"{where} ({label!r}): position must be [x, y, z], got {xyz!r}")
            v = [_number(c, f"{where} ({label!r})") for c in xyz]
            if cs == "RAS":
                v = [-v[0], -v[1], v[2]]
            names.append(label)
            pos.append(v)
    if n_fid == 0:
        types = [m.get("type") for m in markups if isinstance(m, dict)]
        raise ValueError(f"{src}: no 'Fiducial' markups in the file (types found: {types})")
    return names, pos


def _split_header(line: str) -> Tuple[str, str]:
    body = line.lstrip("#").strip()
    if "=" not in body:
        return body.lower(), ""
    key, value = body.split("=", 1)
    return key.strip().lower(), value.strip()


def _parse_fcsv(text: str, src: str) -> Tuple[List[str], List[List[float]]]:
    cs: Optional[str] = None
    columns: Optional[List[str]] = None
    names: List[str] = []
    pos: List[List[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            key, value = _split_header(line)
            if key == "coordinatesystem":
                cs = _coordinate_system(value, f"{src} line {lineno}")
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
                for req in ("x", "y", "z", "label"):
                    if req not in columns:
                        raise ValueError(f"{src} line {lineno}: 'columns' lacks {req!r}: {value!r}")
            continue
        cols = columns if columns is not None else list(_FCSV_COLUMNS)
        row = next(csv.reader([line]))
        where = f"{src} line {lineno}"
        need = max(cols.index(c) for c in ("x", "y", "z", "label")) + 1
        if len(row) < need:
            raise ValueError(f"{where}: expected at least {need} columns ({','.join(cols[:need])}), "
                             f"got {len(row)}: {line!r}")
        label = row[cols.index("label")].strip()
        xyz = [_number(row[cols.index(c)], f"{where} ({label!r}, column {c})") for c in ("x", "y", "z")]
        names.append(label)
        pos.append(xyz)
    if cs is None:
        cs = "RAS"  # files from Slicer < 4.11 have no CoordinateSystem line and are RAS
    if cs == "RAS":
        pos = [[-p[0], -p[1], p[2]] for p in pos]
    _check_names(names, src)
    return names, pos


def _check_names(names: Sequence[str], src: str) -> None:
    seen: Dict[str, int] = {}
    for i, n in enumerate(names):
        if not n:
            raise ValueError(f"{src}: landmark {i} has an empty name")
        if n in seen:
            raise ValueError(f"{src}: duplicate landmark name {n!r} (entries {seen[n]} and {i})")
        seen[n] = i


def _parse_csv(text: str, src: str) -> Tuple[List[str], List[List[float]]]:
    file_cs = "LPS"
    header: Optional[List[str]] = None
    names: List[str] = []
    pos: List[List[float]] = []
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            key, value = _split_header(line)
            if key.replace(" ", "_") in ("coordinate_system", "coordinatesystem"):
                if header is not None:
                    raise ValueError(f"{src} line {lineno}: the coordinate_system comment must "
                                     f"precede the header row")
                file_cs = _coordinate_system(value, f"{src} line {lineno}")
            continue
        row = [c.strip() for c in next(csv.reader([line]))]
        if header is None:
            header = [c.lower() for c in row]
            missing = [c for c in ("name", "x", "y", "z") if c not in header]
            if missing:
                raise ValueError(f"{src} line {lineno}: header {row} lacks column(s) {missing}; "
                                 f"expected 'name,x,y,z'")
            if len(set(header)) != len(header):
                raise ValueError(f"{src} line {lineno}: repeated column names in header {row}")
            continue
        where = f"{src} line {lineno}"
        if len(row) != len(header):
            raise ValueError(f"{where}: {len(row)} values for {len(header)} columns: {line!r}")
        rec = dict(zip(header, row))
        name = rec["name"]
        xyz = [_number(rec[c], f"{where} ({name!r}, column {c})") for c in ("x", "y", "z")]
        cs = file_cs
        if "coordinate_system" in rec and rec["coordinate_system"] != "":
            cs = _coordinate_system(rec["coordinate_system"], where)
        if cs == "RAS":
            xyz = [-xyz[0], -xyz[1], xyz[2]]
        names.append(name)
        pos.append(xyz)
    if header is None:
        raise ValueError(f"{src}: no header row; expected 'name,x,y,z'")
    _check_names(names, src)
    return names, pos


# ====================================================================== writing
def _fmt(x: float) -> str:
    return repr(float(x))  # shortest round-trip representation


def save_landmarks(path: PathLike, landmarks: Landmarks, coordinate_system: str = "LPS") -> None:
    """Write landmarks as ``.mrk.json`` / ``.json``, ``.fcsv`` or ``.csv`` (by extension).

    ``coordinate_system`` ("LPS" or "RAS") is the frame of the coordinates in the file; the
    file says which, so :func:`load_landmarks` returns the same LPS positions either way.
    Coordinates are written with full float64 precision.
    """
    if not isinstance(landmarks, Landmarks):
        raise TypeError(f"save_landmarks expects a Landmarks, got {type(landmarks).__name__}")
    if not isinstance(coordinate_system, str) or coordinate_system.strip().upper() not in ("LPS", "RAS"):
        raise ValueError(f"unknown coordinate_system {coordinate_system!r}; expected 'LPS' or 'RAS'")
    cs = coordinate_system.strip().upper()
    p = Path(path)
    kind = _kind(p)
    if kind == "":
        raise ValueError(f"unknown landmark file format for {str(p)!r}: expected one of "
                         f"{', '.join(LANDMARK_EXTENSIONS)}")
    pos = np.asarray(landmarks.positions, dtype=np.float64)
    if cs == "RAS":
        pos = pos * _FLIP
    pos = pos + 0.0  # no negative zeros
    if kind == "json":
        text = _format_mrk_json(landmarks.names, pos, cs)
    elif kind == "fcsv":
        text = _format_fcsv(landmarks.names, pos, cs)
    else:
        text = _format_csv(landmarks.names, pos, cs)
    atomic_write_text(p, text)


def _format_mrk_json(names: Sequence[str], pos: np.ndarray, cs: str) -> str:
    cps = []
    for i, (n, v) in enumerate(zip(names, pos)):
        cps.append({
            "id": str(i + 1),
            "label": n,
            "description": "",
            "associatedNodeID": "",
            "position": [float(c) for c in v],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        })
    doc = {
        "@schema": _SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "coordinateSystem": cs,
            "coordinateUnits": "mm",
            "locked": False,
            "fixedNumberOfControlPoints": False,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(cps),
            "controlPoints": cps,
            "measurements": [],
        }],
    }
    return json.dumps(doc, indent=4) + "\n"


def _csv_line(values: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _format_fcsv(names: Sequence[str], pos: np.ndarray, cs: str) -> str:
    out = ["# Markups fiducial file version = 4.11\n",
           f"# CoordinateSystem = {cs}\n",
           f"# columns = {','.join(_FCSV_COLUMNS)}\n"]
    for i, (n, v) in enumerate(zip(names, pos)):
        out.append(_csv_line([f"vtkMRMLMarkupsFiducialNode_{i}", _fmt(v[0]), _fmt(v[1]), _fmt(v[2]),
                              "0", "0", "0", "1", "1", "1", "0", n, "", ""]))
    return "".join(out)


def _format_csv(names: Sequence[str], pos: np.ndarray, cs: str) -> str:
    out = [] if cs == "LPS" else [f"# coordinate_system = {cs}\n"]
    out.append("name,x,y,z\n")
    for n, v in zip(names, pos):
        out.append(_csv_line([n, _fmt(v[0]), _fmt(v[1]), _fmt(v[2])]))
    return "".join(out)
