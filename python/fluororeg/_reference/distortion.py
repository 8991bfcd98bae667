"""NumPy references of the core's distortion point maps (fluororeg/distortion.h):
``UndistortPoints`` and ``DistortPoints``, as :class:`~fluororeg.calibration.distortion.DistortionModel`
computed them before they moved to the core (the monomials and their derivatives are the
fitting's own, ``_design`` and ``_design_derivatives``)."""

from __future__ import annotations

import numpy as np


def undistort_points(model, xy) -> np.ndarray:
    """``UndistortPoints``: U(p) = p + design(p) @ coef of points [..., 2] px."""
    from fluororeg.calibration.distortion import _design

    p = np.asarray(xy, dtype=np.float64)
    xn, yn = (p[..., 0] - model.centre[0]) / model.scale, (p[..., 1] - model.centre[1]) / model.scale
    return p + _design(xn, yn, model.order) @ model.coef


def distort_points(model, xy, iterations: int = 4) -> np.ndarray:
    """``DistortPoints``: the reverse polynomial's estimate, then Newton steps on U(p) - xy with
    :meth:`DistortionModel.jacobian <fluororeg.calibration.distortion.DistortionModel.jacobian>`."""
    from fluororeg.calibration.distortion import _design

    q = np.asarray(xy, dtype=np.float64)
    xn, yn = (q[..., 0] - model.centre[0]) / model.scale, (q[..., 1] - model.centre[1]) / model.scale
    p = q + _design(xn, yn, model.order) @ model.inverse_coef
    for _ in range(iterations):
        r = undistort_points(model, p) - q
        J = model.jacobian(p)
        det = J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]
        dx = (J[..., 1, 1] * r[..., 0] - J[..., 0, 1] * r[..., 1]) / det
        dy = (-J[..., 1, 0] * r[..., 0] + J[..., 0, 0] * r[..., 1]) / det
        p = p - np.stack([dx, dy], axis=-1)
    return p
