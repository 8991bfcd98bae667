"""Benchmark of the registration engine: 33 landmarks, 2 views, 1 px noise, four-case mirror
strategy, the paper's initialisation.

Reports microseconds per frame on one thread (``us_per_frame_1thread``: the cases screened and
solved by the core's small LM, Ceres where the LM stops short of convergence), the same without
screening of the mirror cases (four Ceres solves per frame, ``screen_iterations=0``) as the
in-run peer, frames per second for a batch on all cores, the SciPy reference
(scipy.optimize.least_squares) per frame, and the speed-ups; also the triangulated starts
(``triangulated_poses``, the pipeline's init) of the 10,000 frames against their NumPy reference.

    python benchmarks/bench_register.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import time

import numpy as np

import fluororeg as fr
from fluororeg._reference.registration import (SyntheticScene, register_frame_reference,
                                               triangulated_poses_reference)
from fluororeg.core.registration import triangulated_poses

from _common import best_time, parser, report


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)

    n_single = 500 if args.quick else 2000
    n_batch = 10_000
    n_scipy = 5 if args.quick else 20
    repeats = 5  # best of: a 25 ms measurement (--quick) is easily disturbed by other load

    # 512 x 512 px of 0.8 mm (a 16-inch intensifier) and poses within +-15 deg / +-15 mm keep
    # nearly all 33 landmarks in both fields of view.
    scene = SyntheticScene(seed=0, pitch=0.8)
    rng = np.random.default_rng(0)
    poses = scene.random_poses(n_batch, rng, max_deg=15.0, max_mm=15.0)
    det = np.stack([scene.detect(p, 1.0, rng) for p in poses])
    kw = dict(pairs=scene.pairs)
    one_thread = fr.RegistrationOptions(num_threads=1)

    def screened():
        fr.register_frames(scene.landmarks, scene.views, det[:n_single], options=one_thread, **kw)

    def unscreened():
        fr.register_frames(scene.landmarks, scene.views, det[:n_single],
                           options=one_thread.replace(screen_iterations=0), **kw)

    def robust():  # the pipeline's cost: Cauchy loss, one residual block per landmark and view
        fr.register_frames(scene.landmarks, scene.views, det[:n_single], options=one_thread.replace(loss="cauchy"),
                           **kw)

    us_1 = best_time(screened, repeats) / n_single * 1e6
    us_cauchy = best_time(robust, repeats) / n_single * 1e6
    us_4 = best_time(unscreened, repeats) / n_single * 1e6
    cpu_1 = best_time(screened, repeats, clock=time.process_time) / n_single * 1e6
    cpu_4 = best_time(unscreened, repeats, clock=time.process_time) / n_single * 1e6
    res = None

    def batch():
        nonlocal res
        res = fr.register_frames(scene.landmarks, scene.views, det, options=fr.RegistrationOptions(), **kw)

    tb = best_time(batch, repeats)
    fps = n_batch / tb
    et, ep = fr.pose_errors(res.poses, poses)

    mirror = np.arange(scene.n)
    for a, b in scene.pairs:
        mirror[a], mirror[b] = b, a
    t_tri = best_time(lambda: triangulated_poses(scene.landmarks, scene.views, det, mirror), repeats)
    n_tri_ref = 1000 if args.quick else n_batch
    t_tri_ref = best_time(lambda: triangulated_poses_reference(scene.landmarks, scene.views, det[:n_tri_ref], mirror),
                          1)
    us_tri, us_tri_ref = t_tri / n_batch * 1e6, t_tri_ref / n_tri_ref * 1e6

    t = time.perf_counter()
    for i in range(n_scipy):
        register_frame_reference(scene.landmarks, scene.views, det[i], **kw)
    us_scipy = (time.perf_counter() - t) / n_scipy * 1e6

    out = {
        "landmarks": scene.n,
        "views": 2,
        "noise_px": 1.0,
        "mirror_cases": 4,
        "mean_n_vis": float(res.n_vis.mean()),
        "us_per_frame_1thread": us_1,
        "us_per_frame_1thread_no_screening": us_4,
        "us_per_frame_1thread_cauchy": us_cauchy,
        "screening_speedup_1thread": us_4 / us_1,
        "cpu_us_per_frame_1thread": cpu_1,
        "cpu_us_per_frame_1thread_no_screening": cpu_4,
        "batch_frames": n_batch,
        "batch_threads": os.cpu_count(),
        "batch_frames_per_s": fps,
        "scipy_us_per_frame": us_scipy,
        "speedup_vs_scipy_1thread": us_scipy / us_1,
        "triangulation_us_per_frame": us_tri,
        "numpy_triangulation_us_per_frame": us_tri_ref,
        "mean_iterations": float(res.iterations.mean()),
        "median_eps_theta_deg": float(np.median(et)),
        "median_eps_tau_mm": float(np.median(ep)),
        "mirror_case_correct_fraction": float((res.mirror_case == 0).mean()),
        "quick": bool(args.quick),
    }
    rows = [
        ("C++ (screening LM, Ceres where it stops short), 1 thread", us_1, "us/frame"),
        ("C++ / Ceres, 1 thread, no screening (4 Ceres solves)", us_4, "us/frame"),
        ("screened, 1 thread, Cauchy loss (the pipeline's; a block per landmark)", us_cauchy, "us/frame"),
        ("speed-up of screening (1 thread)", us_4 / us_1, "x"),
        ("screened, 1 thread, CPU time", cpu_1, "us/frame"),
        ("no screening (4 Ceres solves), 1 thread, CPU time", cpu_4, "us/frame"),
        (f"screened, batch of {n_batch}, all cores", fps, "frames/s"),
        ("SciPy least_squares reference", us_scipy, "us/frame"),
        ("speed-up vs SciPy (1 thread)", us_scipy / us_1, "x"),
        (f"triangulated starts, 4 labellings, batch of {n_batch}, all cores", us_tri, "us/frame"),
        ("the same, NumPy reference", us_tri_ref, "us/frame"),
        ("median angle error (1 px noise)", out["median_eps_theta_deg"], "deg"),
        ("median position error (1 px noise)", out["median_eps_tau_mm"], "mm"),
    ]
    report(f"bench_register: {scene.n} landmarks (mean n_vis {out['mean_n_vis']:.1f}), 2 views, 1 px noise, "
           "4 mirror cases", rows, out, args.json)
    return out


if __name__ == "__main__":
    main()
