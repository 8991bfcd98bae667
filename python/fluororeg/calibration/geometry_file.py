"""The dual-fluoroscope geometry file (JSON, millimetres).

Example (``fluororeg-geometry`` version 1)::

    {
      "format": "fluororeg-geometry",
      "version": 1,
      "units": "mm",
      "views": [
        {"name": "view1",
         "source": [x, y, z], "intensifier_centre": [x, y, z],
         "u": [ux, uy, uz], "v": [vx, vy, vz],
         "pitch_u": 0.3, "pitch_v": 0.3, "width": 1024, "height": 1024,
         "distortion": null},
        {"name": "view2", ...}
      ],
      "system_centre": [x, y, z]
    }

* ``source``: the X-ray point source S; ``intensifier_centre``: the point D of the intensifier
  plane seen at pixel ((W - 1) / 2, (H - 1) / 2); ``u``, ``v``: orthonormal unit vectors of
  image +x (columns) and +y (rows); pitches in mm per pixel; size in pixels (see
  :class:`~fluororeg.core.geometry.ConeView`). All in one world frame (the paper puts its origin
  at the centre of the view 1 intensifier, its F1; any frame works).
* ``distortion``: null or a :class:`~.distortion.DistortionModel` object (its ``to_dict``)
  that maps the view's raw pixels to the corrected pixels the view's geometry describes.
* ``system_centre``: written for information (mean of both sources and both intensifier
  centres, the registration's initial translation); it is recomputed on load.

Loading validates every field and names the offending one in the error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.core.geometry import ConeView, system_centre as _system_centre
from fluororeg.calibration.distortion import DistortionModel

__all__ = ["DualGeometry", "load_geometry", "save_geometry", "geometry_from_dict", "geometry_to_dict",
           "geometry_from_mayacam", "geometry_from_bead_images", "with_distortion"]

FORMAT = "fluororeg-geometry"
VERSION = 1
# The source-to-intensifier distances a geometry may have (mm): X-ray sets have 1,000-1,500 mm;
# a smaller or far larger one is another unit or a broken calibration.
MIN_SOURCE_DISTANCE_MM, MAX_SOURCE_DISTANCE_MM = 100.0, 10_000.0


@dataclass(frozen=True)
class DualGeometry:
    """Views (normally two) with names and optional distortion models."""

    views: tuple
    names: tuple = ()
    distortion: tuple = ()

    def __post_init__(self):
        views = tuple(self.views)
        if len(views) < 1:
            raise ValueError("a geometry needs at least one view")
        for i, v in enumerate(views):
            if not isinstance(v, ConeView):
                raise TypeError(f"views[{i}] is a {type(v).__name__}, expected ConeView")
        names = tuple(self.names) or tuple(f"view{i + 1}" for i in range(len(views)))
        dist = tuple(self.distortion) or (None,) * len(views)
        if len(names) != len(views) or len(dist) != len(views):
            raise ValueError(f"got {len(views)} views, {len(names)} names and {len(dist)} distortion entries")
        for i, d in enumerate(dist):
            if d is not None and not isinstance(d, DistortionModel):
                raise TypeError(f"distortion[{i}] is a {type(d).__name__}, expected DistortionModel or None")
            if d is not None and (d.width, d.height) != (views[i].width, views[i].height):
                raise ValueError(f"distortion[{i}] was fitted on {d.width} x {d.height} images but view "
                                 f"{names[i]!r} is {views[i].width} x {views[i].height}")
        for name, v in zip(names, views):
            d = v.source_intensifier_distance
            if not MIN_SOURCE_DISTANCE_MM <= d <= MAX_SOURCE_DISTANCE_MM:
                raise ValueError(f"view {name!r}: the source lies {d:.6g} mm from the intensifier plane, expected "
                                 f"{MIN_SOURCE_DISTANCE_MM:g} to {MAX_SOURCE_DISTANCE_MM:,.0f} mm (a fluoroscope's is "
                                 "about 1,000-1,500 mm; are the geometry's lengths in mm?)")
        for i in range(len(views)):
            for j in range(i + 1, len(views)):
                if abs(float(views[i].normal @ views[j].normal)) > math.cos(math.radians(1.0)):
                    raise ValueError(f"views {names[i]!r} and {names[j]!r} look along the same line (less than 1 deg "
                                     "apart): the two fluoroscopes must view the bone from different directions "
                                     "(was the same calibration given twice?)")
        object.__setattr__(self, "views", views)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "distortion", dist)

    @property
    def system_centre(self) -> np.ndarray:
        """Mean of all sources and intensifier centres (the registration's initial translation)."""
        return _system_centre(self.views)


def geometry_to_dict(geometry: DualGeometry) -> dict:
    views = []
    for name, v, d in zip(geometry.names, geometry.views, geometry.distortion):
        views.append({"name": name, "source": v.source.tolist(), "intensifier_centre": v.intensifier_centre.tolist(),
                      "u": v.u.tolist(), "v": v.v.tolist(), "pitch_u": v.pitch_u, "pitch_v": v.pitch_v,
                      "width": v.width, "height": v.height,
                      "distortion": None if d is None else d.to_dict()})
    return {"format": FORMAT, "version": VERSION, "units": "mm", "views": views,
            "system_centre": geometry.system_centre.tolist()}


def _vec(d, key, where):
    if key not in d:
        raise ValueError(f"{where}.{key} is missing")
    try:
        a = np.asarray(d[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.{key} = {d[key]!r}: expected 3 numbers") from exc
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{where}.{key} = {d[key]!r}: expected 3 finite numbers")
    return a


def _num(d, key, where, integer=False):
    if key not in d:
        raise ValueError(f"{where}.{key} is missing")
    val = d[key]
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise ValueError(f"{where}.{key} = {val!r}: expected a number")
    if integer:
        if not np.isfinite(val) or int(val) != val or val <= 0:
            raise ValueError(f"{where}.{key} = {val!r}: expected a positive whole number of pixels")
        return int(val)
    if not np.isfinite(val) or val <= 0:
        raise ValueError(f"{where}.{key} = {val!r}: expected a finite positive value in mm")
    return float(val)


def geometry_from_dict(d, where: str = "geometry") -> DualGeometry:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(d).__name__}")
    if d.get("format") != FORMAT:
        raise ValueError(f"{where}.format = {d.get('format')!r}: expected {FORMAT!r}")
    if d.get("version") != VERSION:
        raise ValueError(f"{where}.version = {d.get('version')!r}: only version {VERSION} is supported")
    if d.get("units") != "mm":
        raise ValueError(f"{where}.units = {d.get('units')!r}: expected 'mm'")
    views_in = d.get("views")
    if not isinstance(views_in, list) or not views_in:
        raise ValueError(f"{where}.views = {views_in!r}: expected a non-empty list of views")
    views, names, dist = [], [], []
    for i, vd in enumerate(views_in):
        w = f"{where}.views[{i}]"
        if not isinstance(vd, dict):
            raise ValueError(f"{w} must be an object, got {type(vd).__name__}")
        if "intensifier_centre" not in vd and "detector_centre" in vd:  # files of earlier versions
            vd = {**vd, "intensifier_centre": vd["detector_centre"]}
        vals = {k: _vec(vd, k, w) for k in ("source", "intensifier_centre", "u", "v")}
        for k in ("u", "v"):
            n = np.linalg.norm(vals[k])
            if abs(n - 1) > 1e-6:
                raise ValueError(f"{w}.{k} = {vd[k]!r} has length {n:.6g}: expected a unit vector")
        if abs(vals["u"] @ vals["v"]) > 1e-6:
            raise ValueError(f"{w}.u and {w}.v are not orthogonal (u . v = {vals['u'] @ vals['v']:.3g})")
        from fluororeg.io.limits import check_frame_shape

        check_frame_shape(_num(vd, "width", w, True), _num(vd, "height", w, True), f"{w}.width x height")
        try:
            view = ConeView(vals["source"], vals["intensifier_centre"], vals["u"], vals["v"],
                            _num(vd, "pitch_u", w), _num(vd, "pitch_v", w),
                            _num(vd, "width", w, True), _num(vd, "height", w, True))
        except ValueError as exc:
            raise ValueError(f"{w}: {exc}") from exc
        views.append(view)
        name = vd.get("name", f"view{i + 1}")
        if not isinstance(name, str):
            raise ValueError(f"{w}.name = {name!r}: expected a string")
        names.append(name)
        dd = vd.get("distortion")
        dist.append(None if dd is None else DistortionModel.from_dict(dd, where=f"{w}.distortion"))
    return DualGeometry(tuple(views), tuple(names), tuple(dist))


def save_geometry(path, geometry: DualGeometry) -> None:
    """Write the geometry file (JSON)."""
    if not isinstance(geometry, DualGeometry):
        raise TypeError(f"geometry is a {type(geometry).__name__}, expected DualGeometry")
    atomic_write_text(Path(path), json.dumps(geometry_to_dict(geometry), indent=2))


def load_geometry(path) -> DualGeometry:
    """Read and validate a geometry file; errors name the file and the field."""
    from fluororeg.io.limits import check_regular_file, read_text

    path = Path(path)
    check_regular_file(path, "geometry file", missing_error=ValueError)
    try:
        d = json.loads(read_text(path, "geometry file"))
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"geometry file '{path}' is not valid JSON: {exc}") from exc
    return geometry_from_dict(d, where=f"'{path.name}'")


def _distortion_list(distortion, n: int) -> tuple:
    """None, or one entry per view: None, a DistortionModel or a distortion model file."""
    from fluororeg.calibration.distortion import load_distortion

    if distortion is None:
        return (None,) * n
    items = list(distortion)
    if len(items) != n:
        raise ValueError(f"distortion has {len(items)} entries but there are {n} views: give one per view "
                         "(None for a view without)")
    out = []
    for k, d in enumerate(items):
        if d is None or isinstance(d, DistortionModel):
            out.append(d)
        elif isinstance(d, (str, Path)):
            out.append(load_distortion(d))
        else:
            raise TypeError(f"distortion[{k}] is a {type(d).__name__}: expected None, a DistortionModel or a file")
    return tuple(out)


def with_distortion(geometry: DualGeometry, distortion) -> DualGeometry:
    """The same views with distortion models attached (one per view: None, a DistortionModel
    or a distortion model file, see :mod:`.distortion`)."""
    return DualGeometry(geometry.views, geometry.names, _distortion_list(distortion, len(geometry.views)))


def geometry_from_mayacam(paths, pitch_u: float | None = None, names=None, *, distortion=None) -> DualGeometry:
    """A geometry from one MayaCam file (2.0 or 1.0) per view (e.g. Autoscoper's cam01/cam02),
    with the pixel pitch ``pitch_u`` mm that the files lack (required: a clear error when
    missing, never a default) and optionally each view's distortion model (``distortion``:
    one entry per view, None, a DistortionModel or a model file; it maps the view's raw
    pixels to the corrected ones the MayaCam describes)."""
    from fluororeg.calibration.formats import mayacam_view

    paths = list(paths)
    views = tuple(mayacam_view(p, pitch_u) for p in paths)
    return DualGeometry(views, tuple(names) if names is not None else (), _distortion_list(distortion, len(views)))


def geometry_from_bead_images(images, points_world, view_guesses, *, names=None, distortion=None,
                              radius_px: float = 4.0, polarity: str = "dark", fov="auto") -> DualGeometry:
    """A geometry from one image per view of the same calibration object (bead positions
    ``points_world`` [m, 3] mm in the world frame the geometry will use): each view is
    estimated by :func:`~.resection.calibrate_view` from its bead detections, undistorted
    with that view's model (``distortion``, as in :func:`geometry_from_mayacam`), starting
    from a rough ``view_guesses[k]`` (pitch taken from it). The models are attached."""
    from fluororeg.calibration.resection import calibrate_view

    images, guesses = list(images), list(view_guesses)
    if len(images) != len(guesses):
        raise ValueError(f"{len(images)} images but {len(guesses)} view guesses: one of each per view")
    dist = _distortion_list(distortion, len(images))
    views = []
    for k, (img, guess, d) in enumerate(zip(images, guesses, dist)):
        try:
            views.append(calibrate_view(img, points_world, guess, radius_px=radius_px, polarity=polarity, fov=fov,
                                        distortion=d).view)
        except ValueError as exc:
            raise ValueError(f"view {k + 1}: {exc}") from exc
    return DualGeometry(tuple(views), tuple(names) if names is not None else (), dist)
