"""Image-intensifier distortion: global 2D polynomial correction from a bead-plate image.

The paper (Section 2.4) corrects each X-ray with a fifth-order polynomial fitted to an
image of an acrylic plate carrying a regular square array of steel beads (Gutierrez et al.
2008, global correction). Here:

* :func:`match_grid` assigns detected beads (:func:`~.beads.detect_beads`) integer lattice
  indices ``(i, j)``, starting from the bead nearest the image centre and growing ring by
  ring with a polynomial prediction, so missing beads, beads cut by the field of view and
  strong pincushion do not break it;
* :func:`fit_distortion_points` fits the map ``U`` from *distorted* pixel to *undistorted*
  pixel, ``U(p) = p + sum_k c_k phi_k(p)`` with all monomials ``x^a y^b``, ``a + b <= 5``
  (21 per axis) of coordinates normalised to about [-1, 1] about the image centre;
* the ideal bead positions are a square lattice; its free similarity (position, rotation,
  scale) is fixed so that the correction leaves the image centre in place and is locally
  free of rotation and scale there (the similarity part of the Jacobian of U at the centre
  is the identity). Corrected images therefore keep the pixel grid of the original;
  with the bead spacing in mm, :attr:`DistortionModel.pitch_mm` gives the pixel size at
  the plate;
* :meth:`DistortionModel.distort_points` inverts U (a fitted reverse polynomial as the
  start, then Newton steps) for resampling whole images.

Image coordinates: x = column, y = row, origin at the centre of the top-left pixel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from fluororeg.io.atomic import atomic_write_text
from fluororeg.calibration.beads import BeadDetections, detect_beads, load_image

__all__ = ["DistortionModel", "DistortionFit", "fit_distortion", "fit_distortion_points",
           "match_grid", "load_distortion", "save_distortion"]

FORMAT = "fluororeg-distortion"
VERSION = 1


def _whole(value) -> int | None:
    """``value`` as an int when it is a whole number (an int, or a float such as 1760.0 as JSON may
    hold it; not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():  # inf and nan are not
        return int(value)
    return None


def _check_order(order, where: str = "DistortionModel.order") -> int:
    """``order`` as an int after checking 1 <= order <= MAX_POLYNOMIAL_ORDER (before anything
    of size order^2 is built)."""
    from fluororeg.io.limits import MAX_POLYNOMIAL_ORDER

    whole = _whole(order)
    if whole is None or not 1 <= whole <= MAX_POLYNOMIAL_ORDER:
        raise ValueError(f"{where} = {order!r}: expected a whole number from 1 to {MAX_POLYNOMIAL_ORDER} "
                         f"(fluororeg.io.limits.MAX_POLYNOMIAL_ORDER; the paper uses 5)")
    return whole


def _exponents(order: int) -> list[tuple[int, int]]:
    return [(a, d - a) for d in range(order + 1) for a in range(d, -1, -1)]


def _terms(order: int) -> tuple[np.ndarray, np.ndarray]:
    """The exponents of x and of y of each monomial [T], in the order of :func:`_exponents`."""
    e = np.array(_exponents(order))
    return e[:, 0], e[:, 1]


def _power_table(v: np.ndarray, order: int) -> np.ndarray:
    """[order + 1, ...]: v ** 0, v ** 1, ..., v ** order (each power as ``v ** k`` computes it)."""
    return np.stack([v ** k for k in range(order + 1)])


def _last(table: np.ndarray) -> np.ndarray:
    """[T, ...] -> [..., T], contiguous (as np.stack(..., axis=-1) lays it out)."""
    return np.ascontiguousarray(np.moveaxis(table, 0, -1))


def _design(xn: np.ndarray, yn: np.ndarray, order: int) -> np.ndarray:
    """The monomials xn^a yn^b of every point [..., T], in the order of :func:`_exponents`."""
    a, b = _terms(order)
    return _last(_power_table(xn, order)[a] * _power_table(yn, order)[b])


def _design_derivatives(xn, yn, order):
    """d/dxn and d/dyn of :func:`_design`, [..., T] each."""
    a, b = _terms(order)
    px, py = _power_table(xn, order), _power_table(yn, order)
    fa, fb = (e.reshape((-1,) + (1,) * np.ndim(xn)) for e in (a, b))  # broadcast over the points
    with np.errstate(invalid="ignore"):
        dx = np.where(fa > 0, fa * px[np.maximum(a - 1, 0)] * py[b], 0.0)
        dy = np.where(fb > 0, fb * px[a] * py[np.maximum(b - 1, 0)], 0.0)
    return _last(dx), _last(dy)


def _as_points(xy, name="points") -> np.ndarray:
    try:
        p = np.asarray(xy, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric [..., 2] pixel coordinates") from exc
    if p.ndim < 1 or p.shape[-1] != 2:
        raise ValueError(f"{name} has shape {p.shape}, expected (..., 2)")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} holds non-finite coordinates")
    return p


@dataclass(frozen=True)
class DistortionModel:
    """Polynomial distortion correction of one fluoroscope (pixels in, pixels out).

    ``coef`` [n_terms, 2]: displacement coefficients of U (distorted -> undistorted) in
    pixels; ``inverse_coef`` the same for the approximate reverse map. ``centre`` and
    ``scale`` normalise coordinates: ``(p - centre) / scale``. ``pitch_mm`` is the pixel
    size at the plate (when the bead spacing was given), ``rms_px``/``max_px`` the fit
    residuals and ``n_beads`` the number of beads used.
    """

    order: int
    width: int
    height: int
    centre: np.ndarray
    scale: float
    coef: np.ndarray
    inverse_coef: np.ndarray
    rms_px: float = float("nan")
    max_px: float = float("nan")
    n_beads: int = 0
    pitch_mm: float | None = None
    spacing_mm: float | None = None

    def __post_init__(self):
        from fluororeg.io.limits import check_frame_shape

        object.__setattr__(self, "order", _check_order(self.order))
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"DistortionModel.{name} = {v!r}: expected a whole number of pixels")
        check_frame_shape(self.width, self.height, "DistortionModel (width x height)")
        nt = len(_exponents(self.order))
        for name in ("coef", "inverse_coef"):
            c = np.asarray(getattr(self, name), dtype=np.float64)
            if c.shape != (nt, 2) or not np.all(np.isfinite(c)):
                raise ValueError(f"DistortionModel.{name} has shape {c.shape}, expected ({nt}, 2) finite values "
                                 f"for order {self.order}")
            object.__setattr__(self, name, c)
        centre = np.asarray(self.centre, dtype=np.float64)
        if centre.shape != (2,) or not np.all(np.isfinite(centre)):
            raise ValueError(f"DistortionModel.centre = {np.asarray(self.centre).tolist()}: expected 2 finite pixel "
                             "coordinates")
        object.__setattr__(self, "centre", centre)
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
                or not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"DistortionModel.scale = {scale!r}: expected a positive number of pixels (the "
                             "coordinates' normalisation, about half the image's diagonal)")

    # -- maps --------------------------------------------------------------------------------
    def _norm(self, p):
        return (p[..., 0] - self.centre[0]) / self.scale, (p[..., 1] - self.centre[1]) / self.scale

    def undistort_points(self, xy) -> np.ndarray:
        """Distorted pixel coordinates [..., 2] -> corrected (undistorted) ones (the core's
        ``UndistortPoints``; NumPy reference: ``fluororeg._reference.distortion``)."""
        from fluororeg import _core

        p = _as_points(xy)
        out = _core.undistort_points(self.order, self.centre, float(self.scale), self.coef,
                                     np.ascontiguousarray(p.reshape(-1, 2)))
        return out.reshape(p.shape)

    def jacobian(self, xy) -> np.ndarray:
        """d undistort / d p [..., 2, 2] at distorted points."""
        p = _as_points(xy)
        xn, yn = self._norm(p)
        dx, dy = _design_derivatives(xn, yn, self.order)
        J = np.empty(p.shape[:-1] + (2, 2))
        J[..., :, 0] = dx @ self.coef / self.scale
        J[..., :, 1] = dy @ self.coef / self.scale
        J[..., 0, 0] += 1
        J[..., 1, 1] += 1
        return J

    def distort_points(self, xy, *, iterations: int = 4) -> np.ndarray:
        """Corrected pixel coordinates [..., 2] -> where they lie in the distorted image
        (inverse of :meth:`undistort_points`: reverse polynomial, then Newton steps; the core's
        ``DistortPoints``, NumPy reference: ``fluororeg._reference.distortion``)."""
        from fluororeg import _core

        q = _as_points(xy)
        out = _core.distort_points(self.order, self.centre, float(self.scale), self.coef, self.inverse_coef,
                                   np.ascontiguousarray(q.reshape(-1, 2)), iterations)
        return out.reshape(q.shape)

    def undistort_image(self, image, *, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """Resample a distorted image onto the corrected pixel grid (same size; pixels
        mapping outside the source get ``fill``). ``order``: spline order (0, 1 or 3)."""
        img = load_image(image)
        if img.shape != (self.height, self.width):
            raise ValueError(f"image has shape {img.shape}, but the model was fitted on "
                             f"{self.height} x {self.width} images")
        if order not in (0, 1, 3):
            raise ValueError(f"order = {order!r}: expected 0, 1 or 3")
        sx, sy = self.source_map()
        return ndimage.map_coordinates(img, [sy, sx], order=order, mode="constant", cval=fill)

    def source_map(self, step: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """For every corrected pixel, where it lies in the distorted image: ``(x, y)`` maps
        [H, W]. The exact inverse is evaluated on a grid every ``step`` pixels and
        interpolated with cubic splines (the map is smooth; error far below 0.001 px)."""
        gx = np.unique(np.r_[np.arange(0, self.width, step), self.width - 1]).astype(np.float64)
        gy = np.unique(np.r_[np.arange(0, self.height, step), self.height - 1]).astype(np.float64)
        G = np.stack(np.meshgrid(gx, gy), axis=-1)
        src = self.distort_points(G)
        # Fractional indices of every pixel in the coarse grid.
        fx = np.interp(np.arange(self.width), gx, np.arange(len(gx)))
        fy = np.interp(np.arange(self.height), gy, np.arange(len(gy)))
        FY, FX = np.meshgrid(fy, fx, indexing="ij")
        out = []
        for c in (0, 1):
            out.append(ndimage.map_coordinates(src[..., c] - G[..., c], [FY, FX], order=3,
                                               mode="nearest"))
        yy, xx = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        return xx + out[0], yy + out[1]

    # -- I/O ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "units": {"coordinates": "px", "pitch": "mm"},
                "model": "global polynomial, distorted px -> undistorted px: "
                         "p + sum_k coef[k] * xn^a * yn^b, (xn, yn) = (p - centre) / scale",
                "order": self.order, "width": self.width, "height": self.height,
                "centre": self.centre.tolist(), "scale": self.scale,
                "exponents": [list(e) for e in _exponents(self.order)],
                "coef": self.coef.tolist(), "inverse_coef": self.inverse_coef.tolist(),
                "rms_px": None if np.isnan(self.rms_px) else self.rms_px,
                "max_px": None if np.isnan(self.max_px) else self.max_px, "n_beads": self.n_beads,
                "pitch_mm": self.pitch_mm, "spacing_mm": self.spacing_mm}

    @classmethod
    def from_dict(cls, d: dict, where: str = "distortion") -> "DistortionModel":
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a JSON object, got {type(d).__name__}")
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{where}.format = {d.get('format')!r}: expected {FORMAT!r}")
        if d.get("version", VERSION) != VERSION:
            raise ValueError(f"{where}.version = {d.get('version')!r}: only version {VERSION} is supported")
        def whole(key, default=None):  # never truncated (24.5 is not 24)
            v = d[key] if default is None else d.get(key, default)
            n = _whole(v)
            if n is None:
                raise ValueError(f"{where}.{key} = {v!r}: expected a whole number")
            return n

        try:
            order = _check_order(d["order"], f"{where}.order")
            exps = d.get("exponents")
            if exps is not None and [tuple(e) for e in exps] != _exponents(order):
                raise ValueError(f"{where}.exponents do not match order {order}")
            return cls(order=order, width=whole("width"), height=whole("height"),
                       centre=np.asarray(d["centre"], dtype=float), scale=float(d["scale"]),
                       coef=np.asarray(d["coef"], dtype=float),
                       inverse_coef=np.asarray(d["inverse_coef"], dtype=float),
                       rms_px=float("nan") if d.get("rms_px") is None else float(d["rms_px"]),
                       max_px=float("nan") if d.get("max_px") is None else float(d["max_px"]),
                       n_beads=whole("n_beads", 0),
                       pitch_mm=None if d.get("pitch_mm") is None else float(d["pitch_mm"]),
                       spacing_mm=None if d.get("spacing_mm") is None else float(d["spacing_mm"]))
        except KeyError as exc:
            raise ValueError(f"{where} lacks the field {exc.args[0]!r}") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{where} is malformed: {exc}") from exc

    def save(self, path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path) -> "DistortionModel":
        from fluororeg.io.limits import check_regular_file, read_text

        path = Path(path)
        check_regular_file(path, "distortion file", missing_error=ValueError)
        try:
            d = json.loads(read_text(path, "distortion file"))
        except (OSError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"distortion file '{path}' is not valid JSON: {exc}") from exc
        return cls.from_dict(d, where=f"'{path}'")


def save_distortion(model: DistortionModel, path) -> None:
    model.save(path)


def load_distortion(path) -> DistortionModel:
    return DistortionModel.load(path)


# ---- grid matching -------------------------------------------------------------------------
def _lattice_basis(xy: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, float]:
    tree = cKDTree(xy)
    k = min(len(xy), 40)
    _, near = tree.query(xy[start], k=k)
    vecs = []
    for i in np.atleast_1d(near):
        d, j = tree.query(xy[i], k=min(5, len(xy)))
        for jj in np.atleast_1d(j)[1:]:
            vecs.append(xy[jj] - xy[i])
    vecs = np.array(vecs)
    lengths = np.linalg.norm(vecs, axis=1)
    spacing = float(np.median(lengths))
    good = np.abs(lengths - spacing) < 0.3 * spacing
    ang = np.arctan2(vecs[good, 1], vecs[good, 0])
    theta = np.angle(np.mean(np.exp(4j * ang))) / 4  # dominant direction modulo 90 deg
    a = spacing * np.array([np.cos(theta), np.sin(theta)])
    b = spacing * np.array([-np.sin(theta), np.cos(theta)])
    return a, b, spacing


def _fit_index_poly(ij, xy, order):
    s = max(float(np.abs(ij).max()), 1.0)
    A = _design(ij[:, 0] / s, ij[:, 1] / s, order)
    coef, *_ = np.linalg.lstsq(A, xy, rcond=None)
    return lambda q: _design(q[:, 0] / s, q[:, 1] / s, order) @ coef


def match_grid(xy, *, centre=None, tolerance: float = 0.3) -> tuple[np.ndarray, np.ndarray, float]:
    """Integer lattice indices of detected bead centres ``xy`` [n, 2]: returns
    ``(ij [n, 2] int (i along image x, j along image y), matched [n] bool, spacing px)``;
    rows of unmatched beads hold 0 and must be ignored.

    Index (0, 0) is the bead nearest ``centre`` (default: the centroid of the beads).
    A bead joins when it lies within ``tolerance`` x spacing of the position predicted from
    the beads matched so far (a polynomial in the indices, order up to 3)."""
    xy = _as_points(xy, "bead centres").reshape(-1, 2)
    n = len(xy)
    if n < 9:
        raise ValueError(f"only {n} beads found: a grid needs at least 9 (3 x 3)")
    c = xy.mean(axis=0) if centre is None else _as_points(centre, "centre").reshape(2)
    start = int(np.argmin(np.linalg.norm(xy - c, axis=1)))
    a, b, spacing = _lattice_basis(xy, start)
    Binv = np.linalg.inv(np.stack([a, b], axis=1))
    rel = (xy - xy[start]) @ Binv.T
    ij = np.full((n, 2), 0, dtype=np.int64)
    matched = np.zeros(n, dtype=bool)
    near = np.linalg.norm(xy - xy[start], axis=1) < 1.6 * spacing
    rr = np.round(rel)
    ok = near & (np.linalg.norm(rel - rr, axis=1) < tolerance)
    ij[ok] = rr[ok].astype(np.int64)
    matched[ok] = True
    tree = cKDTree(xy)
    for _ in range(4 * int(np.sqrt(n)) + 20):
        m = int(matched.sum())
        order = 1 if m < 12 else (2 if m < 30 else 3)
        pred = _fit_index_poly(ij[matched].astype(float), xy[matched], order)
        taken = {tuple(t) for t in ij[matched]}
        cand = set()
        for t in taken:
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    q = (t[0] + di, t[1] + dj)
                    if q not in taken:
                        cand.add(q)
        if not cand:
            break
        cand = np.array(sorted(cand), dtype=np.int64)
        pos = pred(cand.astype(float))
        d, k = tree.query(pos)
        added = 0
        best: dict[int, tuple[float, tuple[int, int]]] = {}
        for q, dist, kk in zip(cand, d, k):
            if dist < tolerance * spacing and not matched[kk]:
                if kk not in best or dist < best[kk][0]:
                    best[kk] = (dist, (int(q[0]), int(q[1])))
        for kk, (_, q) in best.items():
            ij[kk] = q
            matched[kk] = True
            added += 1
        if added == 0:
            break
    # Reject outliers of a final fit.
    if matched.sum() >= 16:
        pred = _fit_index_poly(ij[matched].astype(float), xy[matched], 3)
        err = np.linalg.norm(pred(ij[matched].astype(float)) - xy[matched], axis=1)
        idx = np.nonzero(matched)[0]
        matched[idx[err > tolerance * spacing]] = False
    return ij, matched, spacing


# ---- fitting -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistortionFit:
    """A fitted model with what went into it: bead centres ``xy`` [n, 2] (distorted),
    lattice indices ``ij``, the ideal positions ``targets`` [n, 2] (corrected pixels) and
    per-bead residuals [n, 2] px of the fit."""

    model: DistortionModel
    xy: np.ndarray
    ij: np.ndarray
    targets: np.ndarray
    residuals: np.ndarray
    detections: BeadDetections | None = None
    spacing_px: float = float("nan")
    report: dict = field(default_factory=dict)


def fit_distortion_points(xy, ij, width: int, height: int, *, order: int = 5,
                          spacing_mm: float | None = None) -> DistortionFit:
    """Fit the correction from matched bead centres ``xy`` [n, 2] px (distorted image) and
    their integer lattice indices ``ij`` [n, 2]."""
    if spacing_mm is not None and not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm = {spacing_mm!r}: expected the plate's positive bead spacing in mm")
    xy = _as_points(xy, "bead centres").reshape(-1, 2)
    ij = np.asarray(ij, dtype=np.float64).reshape(-1, 2)
    if len(ij) != len(xy):
        raise ValueError(f"got {len(xy)} bead centres but {len(ij)} lattice indices")
    if order < 1 or order > 7:
        raise ValueError(f"order = {order!r}: expected 1..7")
    nt = len(_exponents(order))
    if len(xy) < 2 * nt:
        raise ValueError(f"only {len(xy)} matched beads: a polynomial of order {order} needs at "
                         f"least {2 * nt} ({nt} terms per axis, twice over-determined)")
    if np.linalg.matrix_rank(np.c_[ij, np.ones(len(ij))]) < 3:
        raise ValueError("the matched beads lie on one line: a distortion fit needs a 2D grid")
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    scale = max(width, height) / 2
    xn, yn = (xy[:, 0] - centre[0]) / scale, (xy[:, 1] - centre[1]) / scale
    A = _design(xn, yn, order)

    # Pass 1: map to lattice coordinates; then fix the lattice similarity at the centre.
    coef_l, *_ = np.linalg.lstsq(A, ij, rcond=None)
    d0 = _design(np.zeros(1), np.zeros(1), order)
    dx, dy = _design_derivatives(np.zeros(1), np.zeros(1), order)
    u0 = (d0 @ coef_l)[0]
    J = np.stack([(dx @ coef_l)[0], (dy @ coef_l)[0]], axis=1) / scale  # lattice per px
    p, q = (J[0, 0] + J[1, 1]) / 2, (J[1, 0] - J[0, 1]) / 2
    if J[0, 0] * J[1, 1] - J[0, 1] * J[1, 0] <= 0:
        raise ValueError("the bead lattice is mirrored relative to the image axes")
    Sim = np.array([[p, -q], [q, p]])
    targets = centre + (ij - u0) @ np.linalg.inv(Sim).T
    coef, *_ = np.linalg.lstsq(A, targets - xy, rcond=None)
    resid = xy + A @ coef - targets
    # Reverse polynomial, fitted on a dense grid of the covered area.
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 40), np.linspace(lo[1], hi[1], 40))
    g = np.stack([gx.ravel(), gy.ravel()], axis=1)
    gu = g + _design((g[:, 0] - centre[0]) / scale, (g[:, 1] - centre[1]) / scale, order) @ coef
    Au = _design((gu[:, 0] - centre[0]) / scale, (gu[:, 1] - centre[1]) / scale, order)
    inv, *_ = np.linalg.lstsq(Au, g - gu, rcond=None)
    spacing_px = 1.0 / float(np.hypot(p, q))
    pitch = None if spacing_mm is None else float(spacing_mm) / spacing_px
    err = np.linalg.norm(resid, axis=1)
    model = DistortionModel(order=order, width=int(width), height=int(height), centre=centre,
                            scale=float(scale), coef=coef, inverse_coef=inv,
                            rms_px=float(np.sqrt(np.mean(err ** 2))), max_px=float(err.max()),
                            n_beads=len(xy), pitch_mm=pitch,
                            spacing_mm=None if spacing_mm is None else float(spacing_mm))
    report = {"n_beads": len(xy), "rms_px": model.rms_px, "max_px": model.max_px,
              "spacing_px": spacing_px, "pitch_mm": pitch, "order": order}
    return DistortionFit(model, xy, ij.astype(np.int64), targets, resid, None, spacing_px, report)


def fit_distortion(image, *, radius_px: float = 4.0, polarity: str = "dark", fov="auto",
                   order: int = 5, spacing_mm: float | None = None,
                   min_beads: int | None = None) -> DistortionFit:
    """Detect, match and fit: the distortion correction from one bead-plate image (array or
    path). ``spacing_mm``: the plate's bead spacing (gives the pixel pitch at the plate).
    Raises ValueError when too few beads are found or matched."""
    img = load_image(image)
    det = detect_beads(img, radius_px=radius_px, polarity=polarity, fov=fov)
    nt = len(_exponents(order))
    need = 2 * nt if min_beads is None else max(int(min_beads), 2 * nt)
    if len(det) < need:
        raise ValueError(f"only {len(det)} beads found in the plate image: at least {need} are needed "
                         f"(check radius_px = {radius_px} and polarity = {polarity!r})")
    H, W = img.shape
    centre = None
    if det.fov_mask is not None:
        yy, xx = np.nonzero(det.fov_mask)
        centre = np.array([xx.mean(), yy.mean()])
    ij, matched, spacing = match_grid(det.xy, centre=centre)
    if matched.sum() < need:
        raise ValueError(f"only {int(matched.sum())} of {len(det)} beads matched the grid: at least {need} "
                         "are needed")
    fit = fit_distortion_points(det.xy[matched], ij[matched], W, H, order=order, spacing_mm=spacing_mm)
    report = dict(fit.report, n_detected=len(det), n_matched=int(matched.sum()))
    return DistortionFit(fit.model, fit.xy, fit.ij, fit.targets, fit.residuals, det, fit.spacing_px, report)
