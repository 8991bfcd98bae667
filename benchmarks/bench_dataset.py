"""Dataset generation speed: samples per second for the paper-sized artificial dataset of the
default example subject (9,751 samples of 128 x 128: DRR, bone-mask projection, landmarks), with
and without writing the HDF5 shards, for parallel-beam DRRs (the paper's) and, rendering only, for
cone-beam DRRs (``projection='cone'``).

    python benchmarks/bench_dataset.py --quick --json out/bench_dataset.json [--device auto|cpu|cuda]

--quick generates 1,024 samples (two shards per measurement) instead of all 9,751 (cone beam:
512 samples, or 2,048 without --quick, by the dataset's default renderer, perspective
shear-warp; a quarter as many ray-marched as its peer). With a CUDA device (--device auto or
cuda) the rendering-only rates are measured on CUDA too, in the same run (keys cuda_*; 4,096
cone samples by each renderer; the dataset's default there is ray marching).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fluororeg._reference import render as ref
from fluororeg.core import render as R
from fluororeg.dataset.generate import (DatasetConfig, cone_views, generate_dataset, prepare_subject_volumes,
                                        sample_poses)
from fluororeg.subject.subject import example_subject

from _common import cuda_name, parser, report


def main() -> None:
    args = parser(__doc__.splitlines()[0], device=True).parse_args()
    use_cuda = R.resolve_device(args.device) == "cuda"
    subject = example_subject()
    subject.attenuation_model()  # load and convert once, outside the timings
    subject.mask_model()
    config = DatasetConfig(n_train=1024, n_test=0) if args.quick else DatasetConfig()
    n = config.n_train + config.n_test
    t0 = time.perf_counter()
    generate_dataset(subject, None, config, device="cpu", write=False, progress=False)
    t_render = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="fluororeg-bench-"))
    try:
        t0 = time.perf_counter()
        generate_dataset(subject, tmp / "ds", config, device="cpu", progress=False)
        t_write = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in (tmp / "ds").rglob("*.h5")) / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cone = replace(config, n_train=512 if args.quick else 2048, n_test=0, projection="cone", cone_method="shear_warp")
    t0 = time.perf_counter()
    generate_dataset(subject, None, cone, device="cpu", write=False, progress=False)
    cone_rate = cone.n_train / (time.perf_counter() - t0)
    # Its peer: the same samples ray-marched (cone_method='march', the reference renderer).
    marched = replace(cone, n_train=cone.n_train // 4, cone_method="march")
    t0 = time.perf_counter()
    generate_dataset(subject, None, marched, device="cpu", write=False, progress=False)
    march_rate = marched.n_train / (time.perf_counter() - t0)
    # The 8-bit conversion of the samples (percentile window per image, WindowToUint8 on all
    # cores) against its NumPy reference, on the cone-beam DRRs of 64 samples.
    rng = np.random.default_rng(0)
    poses, scales = sample_poses(rng, 64, cone.poses.for_subject(subject))
    drr = R.render_cone(subject.attenuation_model(), cone_views(cone.camera, scales,
                        rng.uniform(*cone.source_distance_mm, 64)), poses)
    t0 = time.perf_counter()
    R.window_to_uint8(drr)
    window_us = (time.perf_counter() - t0) / 64 * 1e6
    t0 = time.perf_counter()
    ref.window_to_uint8(drr)
    numpy_window_us = (time.perf_counter() - t0) / 64 * 1e6
    full = 9751
    results = {
        "window_us_per_sample": window_us,
        "numpy_window_us_per_sample": numpy_window_us,
        "cone_samples_per_s": cone_rate,
        "cone_samples_per_s_without_writing": cone_rate,
        "cone_method": cone.cone_method,
        "cone_march_samples_per_s": march_rate,
        "cone_speedup_vs_march": cone_rate / march_rate,
        "cone_full_dataset_seconds_estimate": full / cone_rate,
        "samples": n,
        "samples_per_s": n / t_write,
        "samples_per_s_without_writing": n / t_render,
        "full_dataset_seconds_estimate": full / (n / t_write),
        "megabytes_written": size_mb,
        "megabytes_per_1000_samples": size_mb / n * 1000,
    }
    rows = [
        ("samples per second, writing shards", n / t_write, "samples/s"),
        ("samples per second, rendering only", n / t_render, "samples/s"),
        ("9,751-sample dataset (estimate)", full / (n / t_write), "s"),
        ("disk per 1,000 samples", size_mb / n * 1000, "MB"),
        (f"cone beam: samples per second, rendering only ({cone.cone_method})", cone_rate, "samples/s"),
        ("  the same, ray marching", march_rate, "samples/s"),
        ("cone beam: 9,751-sample dataset (estimate)", full / cone_rate, "s"),
        ("8-bit pictures (percentile windows), all cores", window_us, "us/sample"),
        ("  the same, NumPy reference", numpy_window_us, "us/sample"),
    ]
    if use_cuda:
        # The dataset's default on CUDA (cone_method 'auto': ray marching), then shear-warp.
        cuda_rates = {}
        for method in ("auto", "shear_warp"):
            cuda_cone = replace(cone, n_train=4096, cone_method=method)
            generate_dataset(subject, None, replace(cuda_cone, n_train=64), device="cuda", write=False,
                             progress=False)  # warm-up
            t0 = time.perf_counter()
            generate_dataset(subject, None, cuda_cone, device="cuda", write=False, progress=False)
            cuda_rates[method] = cuda_cone.n_train / (time.perf_counter() - t0)
        cuda_cone_rate = cuda_rates["auto"]
        t0 = time.perf_counter()
        generate_dataset(subject, None, config, device="cuda", write=False, progress=False)
        cuda_rate = n / (time.perf_counter() - t0)
        # The renderers' share: DRRs and mask projections of one 512-sample shard on CUDA,
        # without the per-image NumPy work of render_samples (windowing, uint8 conversion).
        mu, bone = prepare_subject_volumes(subject, "cuda")
        rng = np.random.default_rng(0)
        poses, scales = sample_poses(rng, 512, cone.poses.for_subject(subject))
        views = cone_views(cone.camera, scales, rng.uniform(*cone.source_distance_mm, 512))
        render_rate = {}
        for method in R.CONE_METHODS:
            R.render_cone(mu, views, poses, method=method), R.project_mask_cone(bone, views, poses, method=method)
            t0 = time.perf_counter()
            R.render_cone(mu, views, poses, method=method), R.project_mask_cone(bone, views, poses, method=method)
            render_rate[method] = 512 / (time.perf_counter() - t0)
        cuda_render_rate = render_rate["march"]
        results.update({
            "cuda_device": cuda_name(),
            "cuda_cone_samples_per_s": cuda_cone_rate,
            "cuda_samples_per_s_without_writing": cuda_rate,
            "cuda_cone_speedup_vs_cpu": cuda_cone_rate / cone_rate,
            "cuda_cone_render_and_mask_only_samples_per_s": cuda_render_rate,
            "cuda_cone_shear_warp_samples_per_s": cuda_rates["shear_warp"],
            "cuda_cone_render_and_mask_only_samples_per_s_by_method": render_rate,
        })
        rows += [
            ("CUDA cone beam: samples per second, rendering only (ray marching, the default)", cuda_cone_rate,
             "samples/s"),
            ("  the same, shear-warp", cuda_rates["shear_warp"], "samples/s"),
            ("CUDA parallel beam: samples per second, rendering only", cuda_rate, "samples/s"),
            ("CUDA cone beam: DRR + mask rendering alone, shear-warp", render_rate["shear_warp"], "samples/s"),
            ("CUDA cone beam: DRR + mask rendering alone, ray marching", render_rate["march"], "samples/s"),
            ("CUDA vs CPU, cone beam", cuda_cone_rate / cone_rate, "x"),
        ]
    report(f"bench_dataset ({n} samples of {config.image_size}x{config.image_size}, subject {subject.name})", rows,
           results, args.json)


if __name__ == "__main__":
    main()
