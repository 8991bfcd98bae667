"""Calibration (the paper's Section 2.4): image-intensifier distortion from a bead plate,
dual-fluoroscope geometry from calibration objects, and the calibration files labs use.

* :mod:`.beads` - bead detection (sub-pixel, uneven brightness, circular field of view);
* :mod:`.distortion` - 5th-order global polynomial correction (Gutierrez et al. 2008);
* :mod:`.resection` - views from known beads: DLT, RQ, Ceres refinement, 4-bead source;
* :mod:`.pinhole` - ``K [R | t]`` <-> :class:`~fluororeg.core.geometry.ConeView`;
* :mod:`.formats` - Autoscoper/XMALab MayaCam 2.0 and 11-parameter DLT files;
* :mod:`.geometry_file` - the project's JSON geometry file;
* :mod:`.synthetic` - synthetic plate and bead images with known truth.
"""

from fluororeg.calibration.beads import BeadDetections, detect_beads, field_of_view_mask, load_image
from fluororeg.calibration.distortion import (DistortionFit, DistortionModel, fit_distortion, fit_distortion_points,
                         load_distortion, match_grid, save_distortion)
from fluororeg.calibration.formats import (dlt_from_pinhole, mayacam_view, pinhole_from_dlt, project_dlt, read_dlt,
                      read_mayacam, write_dlt, write_mayacam)
from fluororeg.calibration.geometry_file import DualGeometry, geometry_from_mayacam, load_geometry, save_geometry
from fluororeg.calibration.pinhole import PinholeCamera, decompose_projection, pinhole_from_view, view_from_pinhole
from fluororeg.calibration.resection import (ViewCalibration, ViewEstimate, calibrate_view, check_layout, dlt_resection,
                        estimate_source, estimate_view, match_beads, refine_view,
                        reprojection_residuals)

__all__ = [
    "BeadDetections", "DistortionFit", "DistortionModel", "DualGeometry", "PinholeCamera",
    "ViewCalibration", "ViewEstimate", "calibrate_view", "check_layout", "decompose_projection",
    "detect_beads", "dlt_from_pinhole", "dlt_resection", "estimate_source", "estimate_view",
    "field_of_view_mask", "fit_distortion", "geometry_from_mayacam", "fit_distortion_points", "load_distortion",
    "load_geometry", "load_image", "match_beads", "match_grid", "mayacam_view",
    "pinhole_from_dlt", "pinhole_from_view", "project_dlt", "read_dlt", "read_mayacam",
    "refine_view", "reprojection_residuals", "save_distortion", "save_geometry",
    "view_from_pinhole", "write_dlt", "write_mayacam",
]
