"""Calibration files other tools use: Autoscoper/XMALab MayaCam 2.0 and XMALab/DLTdv
11-parameter DLT coefficients.

Conventions found (and checked against the real wrist calibration of the Autoscoper sample
data, see tests/test_calibration.py):

**MayaCam 2.0** (text, written by XMALab, read by Autoscoper)::

    image size
    W,H
    <blank>
    camera matrix
    fx,0,cx
    0,fy,cy
    0,0,1
    <blank>
    rotation
    r00,r01,r02       (3 lines)
    <blank>
    translation
    t0                (3 lines, mm)

* It is an OpenCV pinhole: ``x ~ K (R X + t)``, camera looking along +z of its frame,
  image y downward, ``(cx, cy)`` in pixels from the *centre* of the top-left pixel (0-based).
  This is exactly the project's image convention, so no shift or flip is needed. Evidence:
  Autoscoper's reader converts to its OpenGL frame with ``cy' = (H - 1) - cy`` (a flip
  about the pixel-centre grid, so the file's origin is the centre of the top-left pixel and
  its y axis points down) and a 180-degree turn about the camera y axis (OpenGL cameras look
  along -z); XMALab computes it with OpenCV. In the wrist files the two principal rays cross
  (2.9 mm apart) about 1070 mm in front of both sources, near the image centres, and the
  optical axes are 110.0 degrees apart, as the data README says.
* The size line is ``width,height``: XMALab's MATLAB ``saveMayaCam`` writes
  ``imagesize(1), imagesize(2)`` = width, height and Autoscoper uses the first value as the
  width. (SlicerAutoscoperM's documentation says "height,width"; all sample files are
  square, so this could not be checked on data.)
* A MayaCam has no pixel pitch. Converting to a :class:`~fluororeg.core.geometry.ConeView` needs
  one (``pitch_u``, mm/px); only ``f * pitch`` (the source-intensifier distance) is fixed.

**MayaCam 1.0** (read only; written back as 2.0) - five CSV lines of three numbers, as
Autoscoper's ``Camera::loadMayaCam1`` reads them::

    Cx,Cy,Cz          camera (source) position in the world (the file's length unit)
    rx,ry,rz          degrees; camera-to-world rotation R = Rz(rz) Ry(ry) Rx(rx)
    a,b,c             image-plane position (derived, ignored)
    u0,v0,z           principal point, MATLAB style: 1-based, v0 counted from the BOTTOM row;
                      z = -focal length in pixels
    s,W,H             scale (ignored), image width and height (0: 1024)

The camera is an OpenGL one (looking along its -z, y up), so the OpenCV pinhole is
``R_cv = diag(1, -1, -1) R^T``, ``t = -R_cv C``, ``fx = fy = |z|``, ``cx = u0 - 1``,
``cy = H - v0`` (Autoscoper puts the OpenGL principal point at ``(u0 - 1, v0 - 1)``, the one
of a 2.0 file at ``(cx, H - 1 - cy)``).

**DLT** (11 coefficients ``L1..L11``)::

    u = (L1 X + L2 Y + L3 Z + L4) / (L9 X + L10 Y + L11 Z + 1)
    v = (L5 X + L6 Y + L7 Z + L8) / (L9 X + L10 Y + L11 Z + 1)

* The file is a CSV with 11 rows and one column per camera (DLTdv/XMALab layout); a single
  column of 11 lines is one camera.
* ``convention='matlab'`` (default): the pixel coordinates of DLTdv and of XMALab's
  coefficients exported for it are MATLAB's: 1-based and measured from the *bottom-left*,
  y up: ``u = x + 1``, ``v = H - y`` with our (x, y). XMALab's own conversion script
  (``convertPtoXMA``) documents exactly this offset and flip between its OpenCV
  coordinates and MATLAB's. ``convention='image'`` uses our coordinates directly.
* A DLT fixes the scale by ``P[2, 3] = 1``, impossible when the world origin lies in the
  camera's focal plane (``t_z = 0``); that raises ValueError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluororeg.core.geometry import ConeView
from fluororeg.calibration.pinhole import PinholeCamera, decompose_projection, pinhole_from_view, view_from_pinhole

__all__ = ["read_mayacam", "read_mayacam1", "write_mayacam", "mayacam_view", "read_dlt", "write_dlt",
           "dlt_from_pinhole", "pinhole_from_dlt", "project_dlt", "pinhole_from_view",
           "view_from_pinhole", "PinholeCamera"]

# The pixel pitch a lab may give for a MayaCam camera (mm per pixel): intensifiers and flat panels
# have 0.1-0.5 mm, a 300 mm field in 128 px about 2.4 mm.
MIN_PITCH_MM, MAX_PITCH_MM = 0.001, 10.0

_SECTIONS = ("image size", "camera matrix", "rotation", "translation")


def _read_text(path, what) -> list[str]:
    from fluororeg.io.limits import check_regular_file, read_text

    path = Path(path)
    check_regular_file(path, f"{what} file", missing_error=ValueError)
    try:
        text = read_text(path, f"{what} file", encoding="utf-8-sig")  # utf-8-sig: a leading BOM is dropped
    except OSError as exc:
        raise ValueError(f"{what} file '{path}' could not be read: {exc}") from exc
    return [ln.strip() for ln in text.splitlines()]


def _numbers(line: str, count: int, path, lineno: int, section: str) -> list[float]:
    parts = [p for p in line.replace(";", ",").split(",") if p.strip() != ""]
    try:
        vals = [float(p) for p in parts]
    except ValueError as exc:
        raise ValueError(f"MayaCam file '{path}' line {lineno} ({section}): cannot parse {line!r} as numbers") from exc
    if len(vals) != count or not all(np.isfinite(vals)):
        raise ValueError(f"MayaCam file '{path}' line {lineno} ({section}): expected {count} finite "
                         f"comma-separated numbers, got {line!r}")
    return vals


def read_mayacam(path) -> PinholeCamera:
    """A MayaCam 2.0 file as a :class:`PinholeCamera` (conventions in the module notes)."""
    lines = _read_text(path, "MayaCam")
    if not any(lines):
        raise ValueError(f"MayaCam file '{path}' is empty: expected a MayaCam 2.0 file (starting with 'image size') "
                         "or a MayaCam 1.0 file (five lines of three numbers)")
    first = next(ln for ln in lines if ln)
    if first.lower() != "image size" and "," in first:
        return read_mayacam1(path)
    index = {}
    for i, ln in enumerate(lines):
        if ln.lower() in _SECTIONS and ln.lower() not in index:
            index[ln.lower()] = i
    if first.lower() != "image size":
        raise ValueError(f"MayaCam file '{path}' starts with {first[:40]!r}: expected 'image size' (MayaCam 2.0) "
                         "or three comma-separated numbers (MayaCam 1.0)")
    for sec in _SECTIONS:
        if sec not in index:
            raise ValueError(f"MayaCam file '{path}' lacks the section '{sec}'")

    def rows(sec, n, count):
        start = index[sec] + 1
        body = [(j + 1, lines[j]) for j in range(start, len(lines)) if lines[j] != ""][:n]
        if len(body) < n:
            raise ValueError(f"MayaCam file '{path}' section '{sec}' has {len(body)} lines, expected {n}")
        return [_numbers(ln, count, path, no, sec) for no, ln in body]

    (w, h), = rows("image size", 1, 2)
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise ValueError(f"MayaCam file '{path}': image size {w} x {h} is not positive whole pixels")
    from fluororeg.io.limits import check_frame_shape

    check_frame_shape(w, h, f"MayaCam file '{path}' (image size)")
    K = np.array(rows("camera matrix", 3, 3))
    if np.abs(K[2] - [0.0, 0.0, 1.0]).max() > 1e-9:
        raise ValueError(f"MayaCam file '{path}' (camera matrix): its last row is {','.join(f'{v:g}' for v in K[2])}, "
                         "expected 0,0,1: a MayaCam 2.0 camera matrix is the intrinsic matrix, whose focal lengths "
                         "and principal point tools read as written")
    R = np.array(rows("rotation", 3, 3))
    t = np.array(rows("translation", 3, 1))[:, 0]
    try:
        return PinholeCamera(K, R, t, int(w), int(h))
    except ValueError as exc:
        raise ValueError(f"MayaCam file '{path}': {exc}") from exc


def read_mayacam1(path) -> PinholeCamera:
    """A MayaCam 1.0 file (five lines of three numbers; see the module notes) as a
    :class:`PinholeCamera` in the same world frame and length unit."""
    lines = [ln for ln in _read_text(path, "MayaCam 1.0") if ln != ""]
    if len(lines) < 5:
        raise ValueError(f"MayaCam 1.0 file '{path}' has {len(lines)} lines, expected 5 lines of 3 numbers")
    names = ("camera position", "rotation (deg)", "image plane", "u0, v0, z", "scale, width, height")
    vals = [_numbers(lines[i], 3, path, i + 1, names[i]) for i in range(5)]
    C = np.array(vals[0])
    rx, ry, rz = np.deg2rad(vals[1])
    u0, v0, z = vals[3]
    w, h = int(vals[4][1]) or 1024, int(vals[4][2]) or 1024
    from fluororeg.io.limits import check_frame_shape

    check_frame_shape(w, h, f"MayaCam 1.0 file '{path}' (width, height)")
    if z == 0:
        raise ValueError(f"MayaCam 1.0 file '{path}' line 4: focal length z = 0")

    def rot(axis, a):
        c, s_ = np.cos(a), np.sin(a)
        m = np.eye(3)
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s_, s_, c
        return m

    world_from_gl = rot(2, rz) @ rot(1, ry) @ rot(0, rx)
    R = np.diag([1.0, -1.0, -1.0]) @ world_from_gl.T
    f = abs(float(z))
    K = np.array([[f, 0.0, u0 - 1.0], [0.0, f, h - v0], [0.0, 0.0, 1.0]])
    try:
        return PinholeCamera(K, R, -R @ C, w, h)
    except ValueError as exc:
        raise ValueError(f"MayaCam 1.0 file '{path}': {exc}") from exc


def _fmt(x: float) -> str:
    return repr(float(x))


def write_mayacam(path, camera) -> None:
    """Write a :class:`PinholeCamera` (or a ConeView, converted exactly) as MayaCam 2.0."""
    if isinstance(camera, ConeView):
        camera = pinhole_from_view(camera)
    if not isinstance(camera, PinholeCamera):
        raise TypeError(f"camera is a {type(camera).__name__}, expected PinholeCamera or ConeView")
    K, R, t = camera.K, camera.R, camera.t
    out = ["image size", f"{camera.width},{camera.height}", "", "camera matrix"]
    out += [",".join(_fmt(v) for v in row) for row in K]
    out += ["", "rotation"] + [",".join(_fmt(v) for v in row) for row in R]
    out += ["", "translation"] + [_fmt(v) for v in t]
    Path(path).write_text("\n".join(out) + "\n")


def mayacam_view(path, pitch_u: float) -> ConeView:
    """A MayaCam (2.0 or 1.0) file as a ConeView with pixel pitch ``pitch_u`` mm (``pitch_v``
    follows from ``fx / fy``); projects every point to the same pixel as the file's pinhole.
    MayaCam files record no pixel pitch, so it must be given (no default)."""
    if pitch_u is None or isinstance(pitch_u, bool) or not isinstance(pitch_u, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(pitch_u) and MIN_PITCH_MM <= pitch_u <= MAX_PITCH_MM):
        raise ValueError(f"pixel pitch {pitch_u!r}: a MayaCam file records no pixel pitch; give the detector's "
                         f"pitch in mm per pixel, {MIN_PITCH_MM:g} to {MAX_PITCH_MM:g} (e.g. the intensifier's field "
                         f"of view in mm / image width in pixels, or a bead-plate calibration's pitch_mm)")
    return view_from_pinhole(read_mayacam(path), float(pitch_u))


# ---- DLT -------------------------------------------------------------------------------------
def _flip(height: int, convention: str) -> np.ndarray:
    if convention == "image":
        return np.eye(3)
    if convention == "matlab":
        return np.array([[1.0, 0.0, 1.0], [0.0, -1.0, float(height)], [0.0, 0.0, 1.0]])
    raise ValueError(f"convention = {convention!r}: expected 'matlab' or 'image'")


def dlt_from_pinhole(camera, *, convention: str = "matlab") -> np.ndarray:
    """The 11 DLT coefficients (1D array) of a PinholeCamera or ConeView."""
    if isinstance(camera, ConeView):
        camera = pinhole_from_view(camera)
    if not isinstance(camera, PinholeCamera):
        raise TypeError(f"camera is a {type(camera).__name__}, expected PinholeCamera or ConeView")
    P = _flip(camera.height, convention) @ camera.P
    if abs(P[2, 3]) < 1e-9 * np.abs(P[2, :3]).max() * max(1.0, np.abs(camera.centre).max()):
        raise ValueError("the world origin lies in the camera's focal plane (t_z = 0): the DLT "
                         "normalisation L12 = 1 is impossible; move the world origin")
    return (P / P[2, 3]).ravel()[:11]


def pinhole_from_dlt(L, width: int, height: int, *, convention: str = "matlab") -> PinholeCamera:
    """A PinholeCamera from 11 DLT coefficients (decomposed by RQ)."""
    L = np.asarray(L, dtype=np.float64).ravel()
    if L.shape != (11,) or not np.all(np.isfinite(L)):
        raise ValueError(f"DLT coefficients have shape {L.shape}, expected 11 finite values")
    P = np.linalg.solve(_flip(height, convention), np.append(L, 1.0).reshape(3, 4))
    return decompose_projection(P, width, height)


def project_dlt(L, points, *, convention: str = "matlab", height: int | None = None) -> np.ndarray:
    """Project world points [..., 3] with DLT coefficients; returns pixels [..., 2] in *our*
    convention (``height`` is needed for ``convention='matlab'``)."""
    L = np.asarray(L, dtype=np.float64).ravel()
    if L.shape != (11,):
        raise ValueError(f"DLT coefficients have shape {L.shape}, expected (11,)")
    if convention == "matlab" and height is None:
        raise ValueError("height is needed to convert MATLAB DLT coordinates")
    X = np.asarray(points, dtype=np.float64)
    den = X @ L[8:11] + 1.0
    uv = np.stack([(X @ L[0:3] + L[3]) / den, (X @ L[4:7] + L[7]) / den], axis=-1)
    if convention == "matlab":
        return np.stack([uv[..., 0] - 1.0, height - uv[..., 1]], axis=-1)
    _flip(0, convention)
    return uv


def read_dlt(path) -> np.ndarray:
    """DLT coefficients [n_cameras, 11] from a CSV of 11 rows x n_cameras columns."""
    lines = [ln for ln in _read_text(path, "DLT") if ln and not ln.startswith("#")]
    try:
        rows = [[float(v) for v in ln.replace(";", ",").replace("\t", ",").split(",") if v.strip()]
                for ln in lines]
    except ValueError as exc:
        raise ValueError(f"DLT file '{path}' holds a value that is not a number: {exc}") from exc
    if len(rows) != 11:
        raise ValueError(f"DLT file '{path}' has {len(rows)} rows of coefficients, expected 11")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"DLT file '{path}' has rows of different lengths {sorted(widths)}")
    L = np.array(rows).T
    if not np.all(np.isfinite(L)):
        raise ValueError(f"DLT file '{path}' holds non-finite coefficients")
    return L


def write_dlt(path, coefficients) -> None:
    """Write DLT coefficients [n_cameras, 11] (or one camera's 11) as 11 CSV rows."""
    L = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
    if L.shape[1] != 11 or not np.all(np.isfinite(L)):
        raise ValueError(f"DLT coefficients have shape {L.shape}, expected (n_cameras, 11) finite values")
    Path(path).write_text("\n".join(",".join(_fmt(v) for v in row) for row in L.T) + "\n")
