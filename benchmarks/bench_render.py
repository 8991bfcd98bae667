"""Renderer throughput: parallel-beam 128x128 DRRs of a head-sized CT (shear-warp, C++) against
the NumPy reference, and 512x512 cone-beam DRRs, on the CPU and (when a device is usable) CUDA;
listed-pixel cone-beam renders with and without pose gradients (the refinement's, CPU).

    python benchmarks/bench_render.py --quick --json out/bench_render.json [--device auto|cpu|cuda]

The volume is the example subject's CT (InVesalius "Cranium", 256 x 256 x 108, cached by
fluororeg.subject.example) when it can be had, otherwise a synthetic head phantom of
256 x 256 x 113 voxels; --quick uses the small headsq CT of ../shared/data when present. The
JSON says which. CPU and CUDA rows render the same volume in the same run. The fixed cost of
one call from Python (``cone_call_overhead_us``: a 2 x 2 px image) is reported too. CUDA rows give the
end-to-end time of a call (images copied back to the host unless "on device") and, apart, the
kernel time (CUDA events around the kernels, RenderVolume.last_cuda_kernel_ms, the best of the timed calls).
"""

from __future__ import annotations

import numpy as np

import fluororeg as fr
from fluororeg.core import render as R
from fluororeg._reference import render as ref
from fluororeg.core.geometry import ConeView, ParallelCamera
from fluororeg.core.volume import Volume

from _common import best_time, best_time_and_kernel, cuda_name, parser, report


def synthetic_head() -> Volume:
    """Skull shell + brain + a dense 'jaw' block, 256 x 256 x 113 voxels, ~0.9 x 0.9 x 1.5 mm."""
    nz, ny, nx = 113, 256, 256
    sp = np.array([0.9, 0.9, 1.5])
    k, j, i = np.mgrid[0:nz, 0:ny, 0:nx].astype(np.float32)
    X, Y, Z = (i - 127.5) * sp[0], (j - 127.5) * sp[1], (k - 56) * sp[2]
    r = np.sqrt((X / 80) ** 2 + (Y / 95) ** 2 + (Z / 75) ** 2)
    hu = np.full((nz, ny, nx), -1000.0, np.float32)
    hu[r < 1.0] = 1200.0
    hu[r < 0.93] = 40.0
    hu[(np.abs(X) < 40) & (Y > 40) & (Y < 90) & (Z < -40)] = 900.0
    vol = Volume(hu.astype(np.int16), sp, -(np.array([nx, ny, nz]) - 1) / 2 * sp, np.eye(3))
    return vol


def load_head(quick: bool = False) -> tuple[Volume, str]:
    if quick:
        from fluororeg.subject.example import headsq_path
        from fluororeg.io.volume_formats import load_volume

        p = headsq_path()
        if p is not None:
            v = load_volume(p)
            return v.translated(-v.center).hu_to_attenuation(), "headsq"
    try:
        from fluororeg.subject.example import cranium_volume
        v = cranium_volume()
        name = "cranium"
    except Exception as exc:  # no apt-get / offline: fall back to the phantom
        print(f"(Cranium CT unavailable: {exc}; using a synthetic head phantom)")
        v, name = synthetic_head(), "synthetic_head"
    return v.translated(-v.center).hu_to_attenuation(), name


def cone_samples(vol: Volume, view: ConeView, pose) -> int:
    """Samples on the rays clipped to the volume box at a 1-voxel step (the marching work
    before empty-space skipping), by the renderer's rule."""
    from fluororeg.core.geometry import pose_matrix

    M = vol.voxel_from_physical @ np.linalg.inv(pose_matrix(pose))
    S = M[:3, :3] @ view.source + M[:3, 3]
    xs, ys = np.meshgrid(np.arange(view.width), np.arange(view.height))
    P = view.pixel_to_world(np.stack([xs, ys], axis=-1).astype(float)).reshape(-1, 3) @ M[:3, :3].T + M[:3, 3]
    d = P - S
    hi = np.array(vol.shape_xyz, float) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        ta, tb = -S / d, (hi - S) / d
    t0 = np.clip(np.nanmax(np.minimum(ta, tb), axis=1), 0, 1)
    t1 = np.clip(np.nanmin(np.maximum(ta, tb), axis=1), 0, 1)
    return int(np.sum(np.ceil(np.clip(t1 - t0, 0, None) * np.linalg.norm(d, axis=1))))


def cuda_rows(vol: Volume, poses, scales, camera, view, pose, repeat: int) -> tuple[dict, list]:
    """CUDA timings on a volume prepared once on the device (upload outside the timings)."""
    prepared = R.prepare_volume(vol, device="cuda")
    n = len(poses)
    par_vol = R.render_volume_for(vol, camera.pixel_mm / scales.max(), "auto")
    rng = np.random.default_rng(1)
    n_big = 4096
    big = np.concatenate([rng.uniform(-30, 30, (n_big, 3)), rng.uniform(-20, 20, (n_big, 3))], axis=1)
    big_scales = rng.uniform(0.9, 1.2, n_big)

    def handle(level_vol):  # the core's volume of a level, whose last_cuda_kernel_ms the calls set
        return prepared.handle(level_vol)

    t_host, k_host = best_time_and_kernel(lambda: R.render_parallel(prepared, poses, camera, scales), repeat,
                                          handle(par_vol))
    t_dev, k_dev = best_time_and_kernel(
        lambda: R.render_parallel(prepared, big, camera, big_scales, on_device=True), repeat,
        handle(R.render_volume_for(vol, camera.pixel_mm / big_scales.max(), "auto")))
    # Cone 512 x 512: a batch of 16 poses, per DRR; and one 200 x 200 DRR per call.
    n_cone = 16
    cone_poses = pose + np.concatenate([rng.uniform(-5, 5, (n_cone, 3)), rng.uniform(-3, 3, (n_cone, 3))], axis=1)
    cone_vol = R.render_volume_for(vol, R._cone_pixel_at_object(fr.core.geometry.stack_views(view, n_cone), cone_poses), "auto")
    t_cone, k_cone = best_time_and_kernel(lambda: R.render_cone(prepared, view, cone_poses), repeat, handle(cone_vol))
    t_cone_dev = best_time(lambda: R.render_cone(prepared, view, cone_poses, on_device=True), repeat)
    t_cone_exact, k_cone_exact = best_time_and_kernel(
        lambda: R.render_cone(prepared, view, cone_poses, on_device=True, cuda_texture=False), max(1, repeat // 2),
        handle(cone_vol))
    view200 = ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_intensifier=1050, pitch=0.6 * 512 / 200,
                                  width=200, height=200)
    vol200 = R.render_volume_for(vol, R._cone_pixel_at_object(fr.core.geometry.stack_views(view200, 1), pose[None]), "auto")
    t_200, k_200 = best_time_and_kernel(lambda: R.render_cone(prepared, view200, pose), repeat * 5, handle(vol200))
    t_200_dev = best_time(lambda: R.render_cone(prepared, view200, pose, on_device=True), repeat * 5)
    t_cone_sw, k_cone_sw = best_time_and_kernel(
        lambda: R.render_cone(prepared, view, cone_poses, on_device=True, method="shear_warp"), repeat,
        handle(cone_vol))
    results = {
        "cuda_device": cuda_name(),
        "cuda_parallel_128_drr_per_s": n_big / t_dev,
        "cuda_parallel_128_kernel_drr_per_s": n_big / (k_dev * 1e-3),
        "cuda_parallel_128_batch": n_big,
        "cuda_parallel_128_drr_per_s_batch64_to_host": n / t_host,
        "cuda_parallel_128_kernel_drr_per_s_batch64": n / (k_host * 1e-3),
        "cuda_cone_512_ms": t_cone_dev * 1e3 / n_cone,
        "cuda_cone_512_ms_to_host": t_cone * 1e3 / n_cone,
        "cuda_cone_512_kernel_ms": k_cone / n_cone,
        "cuda_cone_512_exact_trilinear_ms": t_cone_exact * 1e3 / n_cone,
        "cuda_cone_512_exact_trilinear_kernel_ms": k_cone_exact / n_cone,
        "cuda_cone_512_batch": n_cone,
        "cuda_cone_512_shear_warp_ms": t_cone_sw * 1e3 / n_cone,
        "cuda_cone_512_shear_warp_kernel_ms": k_cone_sw / n_cone,
        "cuda_cone_200_single_us": t_200 * 1e6,
        "cuda_cone_200_single_kernel_us": k_200 * 1e3,
        "cuda_cone_200_single_on_device_us": t_200_dev * 1e6,
        "cuda_volume_device_bytes": prepared.handle(par_vol).device_bytes,
    }
    rows = [
        (f"CUDA parallel 128x128, batch {n_big}, on device", n_big / t_dev, "DRR/s"),
        (f"CUDA parallel 128x128, batch {n_big}, kernels only", n_big / (k_dev * 1e-3), "DRR/s"),
        ("CUDA parallel 128x128, batch 64, to host", n / t_host, "DRR/s"),
        ("CUDA parallel 128x128, batch 64, kernels only", n / (k_host * 1e-3), "DRR/s"),
        (f"CUDA cone 512x512 per DRR, batch {n_cone}, on device", t_cone_dev * 1e3 / n_cone, "ms"),
        (f"CUDA cone 512x512 per DRR, batch {n_cone}, to host", t_cone * 1e3 / n_cone, "ms"),
        (f"CUDA cone 512x512 per DRR, batch {n_cone}, kernels only", k_cone / n_cone, "ms"),
        ("CUDA cone 512x512 per DRR, exact trilinear (no texture)", t_cone_exact * 1e3 / n_cone, "ms"),
        ("CUDA cone 512x512 per DRR, shear-warp, on device", t_cone_sw * 1e3 / n_cone, "ms"),
        ("CUDA cone 512x512 per DRR, shear-warp, kernels only", k_cone_sw / n_cone, "ms"),
        ("CUDA cone 200x200 single DRR, to host", t_200 * 1e6, "us"),
        ("CUDA cone 200x200 single DRR, kernels only", k_200 * 1e3, "us"),
        ("CUDA cone 200x200 single DRR, kept on the device", t_200_dev * 1e6, "us"),
    ]
    return results, rows


def main() -> None:
    p = parser(__doc__.splitlines()[0], device=True)
    p.add_argument("--head", action="store_true", help="the head-sized CT even with --quick")
    args = p.parse_args()
    vol, name = load_head(args.quick and not args.head)
    use_cuda = R.resolve_device(args.device) == "cuda"
    rng = np.random.default_rng(0)
    n = 64
    poses = np.concatenate([rng.uniform(-30, 30, (n, 3)), rng.uniform(-20, 20, (n, 3))], axis=1)
    scales = rng.uniform(0.9, 1.2, n)
    camera = ParallelCamera(128, 128, 2.0)
    repeat = 3 if args.quick else 10

    prepared = R.prepare_volume(vol)  # what repeated calls (datasets, registration) use
    t_batch = best_time(lambda: R.render_parallel(prepared, poses, camera, scales), repeat)
    drr_per_s = n / t_batch
    t_unprepared = best_time(lambda: R.render_parallel(vol, poses, camera, scales), max(1, repeat // 2))
    t_single = best_time(lambda: R.render_parallel(prepared, poses[0], camera, scales[0]), repeat * 5)
    t_one_thread = best_time(lambda: R.render_parallel(prepared, poses, camera, scales, num_threads=1), max(1, repeat // 2))
    level_vol = vol.for_pixel_size(camera.pixel_mm / scales.max())

    n_ref = 2 if args.quick else 4
    t_ref = best_time(lambda: [ref.line_integral_parallel(level_vol, poses[i], camera, scales[i]) for i in range(n_ref)], 1)
    ref_per_s = n_ref / t_ref

    # Cone beam: a fluoroscope ~1 m source-to-intensifier, 512 x 512 px of 0.6 mm.
    view = ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_intensifier=1050, pitch=0.6, width=512, height=512)
    pose = np.array([10.0, -5.0, 20.0, 2.0, 3.0, -4.0])
    t_cone = best_time(lambda: R.render_cone(prepared, view, pose), repeat)
    cone_vol = R.render_volume_for(vol, R._cone_pixel_at_object(fr.core.geometry.stack_views(view, 1), pose[None]), "auto")
    t_cone_ref_rows = best_time(lambda: ref.line_integral_cone(cone_vol, view, pose, rows=slice(200, 216)), 1)
    cone_ref_ms = t_cone_ref_rows * 512 / 16 * 1e3
    samples_per_s = cone_samples(cone_vol, view, pose) / t_cone
    # The same image by perspective shear-warp (render_cone(method='shear_warp')), and its mean
    # difference to the ray marcher's.
    t_cone_sw = best_time(lambda: R.render_cone(prepared, view, pose, method="shear_warp"), repeat)
    marched = R.render_cone(prepared, view, pose)
    sw_diff = float(np.abs(R.render_cone(prepared, view, pose, method="shear_warp") - marched).mean() / marched.mean())
    # Listed pixels (the intensity refinement's renders): every pixel of the 512 x 512 view at
    # 1/4 resolution (128 x 128, the refinement's finest level for such frames), plain and with
    # the pose gradients of its analytic Jacobian, on the level the refinement would use.
    from fluororeg import _core

    view_128 = ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_intensifier=1050, pitch=2.4, width=128,
                                   height=128)
    pixels_vol = R.render_volume_for(vol, R._cone_pixel_at_object(fr.core.geometry.stack_views(view_128, 1),
                                                                    pose[None]), "auto")
    pixels_handle = R.prepare_volume(pixels_vol).handle(pixels_vol)
    all_pixels = np.arange(128 * 128, dtype=np.int32)
    pose_rad = np.concatenate([np.deg2rad(pose[:3]), pose[3:]])[None]
    t_pixels, t_pixels_grad = (best_time(lambda g=g: _core.render_cone_pixels(
        pixels_handle, view_128.packed()[None], all_pixels, pose_rad, pose_gradient=g), repeat) for g in (False, True))
    # The fixed cost of one renderer call from Python (validation, level choice, dispatch): a
    # 2 x 2 px cone-beam image on one thread, prepared volume.
    tiny = ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_intensifier=1050, pitch=50.0, width=2, height=2)
    t_tiny = best_time(lambda: [R.render_cone(prepared, tiny, pose, num_threads=1) for _ in range(200)], repeat) / 200

    results = {
        "volume": name,
        "volume_shape_zyx": list(vol.data.shape),
        "parallel_level_shape_zyx": list(level_vol.data.shape),
        "parallel_128_drr_per_s": drr_per_s,
        "parallel_128_drr_per_s_1thread": n / t_one_thread,
        "parallel_128_drr_per_s_unprepared": n / t_unprepared,
        "parallel_128_single_call_ms": t_single * 1e3,
        "numpy_parallel_128_drr_per_s": ref_per_s,
        "parallel_speedup_vs_numpy": drr_per_s / ref_per_s,
        "cone_512_ms": t_cone * 1e3,
        "cone_level_shape_zyx": list(cone_vol.data.shape),
        "cone_512_samples_per_s": samples_per_s,
        "numpy_cone_512_ms": cone_ref_ms,
        "cone_speedup_vs_numpy": cone_ref_ms / (t_cone * 1e3),
        "cone_call_overhead_us": t_tiny * 1e6,
        "cone_512_shear_warp_ms": t_cone_sw * 1e3,
        "cone_shear_warp_speedup_vs_march": t_cone / t_cone_sw,
        "cone_shear_warp_mean_rel_diff_vs_march": sw_diff,
        "cone_pixels_128_ms": t_pixels * 1e3,
        "cone_pixels_128_pose_gradient_ms": t_pixels_grad * 1e3,
        "pose_gradient_cost_ratio": t_pixels_grad / t_pixels,
        "cuda_available": fr.has_cuda(),
    }
    rows = [
        ("parallel 128x128, batch of 64 (all cores)", drr_per_s, "DRR/s"),
        ("parallel 128x128, batch of 64 (1 thread)", n / t_one_thread, "DRR/s"),
        ("parallel 128x128, batch of 64, volume not prepared", n / t_unprepared, "DRR/s"),
        ("parallel 128x128, single call", t_single * 1e3, "ms"),
        ("NumPy reference (ray marching)", ref_per_s, "DRR/s"),
        ("speed-up vs NumPy", drr_per_s / ref_per_s, "x"),
        ("cone 512x512", t_cone * 1e3, "ms"),
        ("cone samples on clipped rays per second", samples_per_s, "samples/s"),
        ("NumPy reference cone 512x512 (extrapolated)", cone_ref_ms, "ms"),
        ("speed-up vs NumPy (cone)", cone_ref_ms / (t_cone * 1e3), "x"),
        ("one call from Python, 2 x 2 px cone image, 1 thread", t_tiny * 1e6, "us"),
        ("cone 512x512, perspective shear-warp", t_cone_sw * 1e3, "ms"),
        ("  speed-up vs ray marching", t_cone / t_cone_sw, "x"),
        ("  mean difference to ray marching", sw_diff * 100, "%"),
        ("cone listed pixels, 128 x 128", t_pixels * 1e3, "ms"),
        ("  with pose gradients (the refinement's Jacobian)", t_pixels_grad * 1e3, "ms"),
        ("  cost of the gradients: ratio to the plain render", t_pixels_grad / t_pixels, "x"),
    ]
    if use_cuda:
        cuda_results, cuda_table = cuda_rows(vol, poses, scales, camera, view, pose, repeat)
        results.update(cuda_results)
        results["cuda_parallel_speedup_vs_cpu"] = cuda_results["cuda_parallel_128_drr_per_s"] / drr_per_s
        results["cuda_cone_512_speedup_vs_cpu"] = t_cone * 1e3 / cuda_results["cuda_cone_512_ms"]
        rows += cuda_table + [
            ("CUDA vs CPU, parallel (batched, on device)", results["cuda_parallel_speedup_vs_cpu"], "x"),
            ("CUDA vs CPU, cone 512x512 (batched, on device)", results["cuda_cone_512_speedup_vs_cpu"], "x"),
            ("CUDA vs NumPy, cone 512x512", cone_ref_ms / cuda_results["cuda_cone_512_ms"], "x"),
        ]
    report(f"bench_render ({name}, volume {vol.data.shape}, parallel level {level_vol.data.shape})", rows, results, args.json)


if __name__ == "__main__":
    main()
