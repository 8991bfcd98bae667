"""Calibration timings: distortion fit on a 1024 x 1024 plate image, whole-image correction,
and dual-view geometry estimation from calibration-object images.

    PYTHONPATH=python python benchmarks/bench_calibration.py [--quick] [--json PATH]
"""

from __future__ import annotations

import numpy as np

from fluororeg.calibration import calibrate_view, detect_beads, fit_distortion
from fluororeg.calibration.synthetic import bead_image, plate_image
from fluororeg.core.geometry import ConeView, rotation_matrix
from fluororeg.core.render import project_cone

from _common import best_time, parser, report


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    repeat = 1 if args.quick else 3
    img, truth = plate_image(1024, spacing_px=40, radius_px=5, seed=1)
    t_detect = best_time(lambda: detect_beads(img, radius_px=5), repeat)
    fit = fit_distortion(img, radius_px=5, spacing_mm=2.0)
    t_fit = best_time(lambda: fit_distortion(img, radius_px=5, spacing_mm=2.0), repeat)
    t_undist = best_time(lambda: fit.model.undistort_image(img, order=1), repeat)
    pts = np.random.default_rng(0).uniform(100, 900, (10000, 2))
    t_points = best_time(lambda: fit.model.undistort_points(pts), repeat)

    cube = (np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                      if (i != 0) + (j != 0) + (k != 0) != 2], float) * 50) @ rotation_matrix([15, 20, 15]).T
    views = [ConeView.looking_at([-900, 0, 0], [0, 0, 0], distance_to_intensifier=1400, pitch=0.3, width=1024, height=1024),
             ConeView.looking_at([500, -800, 60], [0, 0, 0], distance_to_intensifier=1300, pitch=0.3, width=1024, height=1024)]
    imgs = [bead_image(1024, 1024, project_cone(cube, v, np.zeros(6))[0][0], radius_px=6, seed=k)
            for k, v in enumerate(views)]
    guesses = [ConeView(v.source + [8, -5, 6], v.intensifier_centre + [0, 5, -10], v.u, v.v, 0.3, 0.3, 1024, 1024)
               for v in views]

    def geometry():
        return [calibrate_view(im, cube, g, radius_px=6, fov=None) for im, g in zip(imgs, guesses)]

    cals = geometry()
    t_geo = best_time(geometry, repeat)
    rows = [("bead detection, 1024^2 plate", t_detect, "s"),
            ("distortion fit (detect+match+fit), 1024^2", t_fit, "s"),
            ("  fit residual RMS", fit.model.rms_px, "px"),
            ("  beads matched", float(fit.report["n_matched"]), ""),
            ("undistort image 1024^2 (bilinear)", t_undist, "s"),
            ("undistort 10k points", t_points, "s"),
            ("dual-view geometry (2 images, 15-bead cube)", t_geo, "s"),
            ("  reprojection RMS view 1", cals[0].estimate.rms_px, "px"),
            ("  reprojection RMS view 2", cals[1].estimate.rms_px, "px")]
    results = {"benchmark": "calibration", "quick": bool(args.quick),
               "rows": [{"name": n, "value": v, "unit": u} for n, v, u in rows]}
    report("fluororeg calibration benchmark", rows, results, args.json)


if __name__ == "__main__":
    main()
