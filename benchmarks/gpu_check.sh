#!/usr/bin/env bash
# The checks that need a GPU, as one short script for the lent GPU machine (see
# ../shared/gpu/README.md): build with CUDA, the CUDA tests (every CUDA render path against the
# CPU backend, dataset generation and detector training on CUDA), the C++ render tests,
# compute-sanitizer memcheck on a small CUDA test (when the machine has it), the render and
# dataset benchmarks with CUDA rows, the registration benchmark (CPU rows on that machine's
# cores) and the refinement benchmark (CPU rows and, refine_ms_per_frame_cuda, the renders on
# CUDA). Run from the project
# root after copying ../shared/gpu to .gpu:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Writes to $OUT: check.log (everything, nvidia-smi's card name too), pytest_cuda.log,
# native.log (C++ render and refinement tests, then compute-sanitizer memcheck),
# bench_render.json, bench_dataset.json, bench_refine.json, bench_long.json
# (register end to end with the trained detector, 2,000 streamed frame pairs, refinement on CUDA:
# the target's run), bench_long_spot.json (10,000 frame pairs with the spot detector: memory and
# the gate; its refinement stops early, so its speed is not the target's), and when asked for,
# bench_render_base.json, ncu.txt and long_profile.txt (the device tool brings back at most 8
# files: with those, some logs stay behind; check.log holds their tails).
# Optional environment: FLUORO_CACHE (default: the checkout's .frcache when there), a folder
# with cranium_hu.npz (the example CT; else the benchmarks use a phantom and the dataset
# benchmark is skipped), bench_long_spot_detector.onnx
# (see its step) and bench_long_detector.onnx (a detector trained for the example subject: copy
# out/demo/models/detector.onnx there, 11 MB; without it the target's run is skipped);
# benchmarks/prepare_gpu_cache.sh makes all three in .frcache on the CPU machine first. The carry
# limit (64 MiB with the checkout) then leaves no room for .gpu's pydicom wheel, which no step
# here needs: `rm .gpu/wheels/pydicom-*` after copying the kit. FR_BASE, a folder holding
# another checkout of the project (e.g. `git archive <rev> | tar -x -C .base`, carried with the checkout), whose render
# benchmark runs on the same card in the same run for a before/after comparison
# (bench_render_base.json); FR_NCU=1: Nsight Compute's summary of the single 200 x 200 cone-beam
# DRR's kernel (ncu.txt), when the machine has ncu; FR_PROFILE_LONG=1: bench_long of 1,000 frame
# pairs under cProfile, its 60 costliest calls (long_profile.txt); FR_REFINE_FD=1: bench_refine again
# with the finite-difference Jacobian (its JSON stays on the machine; its figures go to check.log,
# as bench_register's do). Benchmarks run with --quick on
# the head-sized CT (bench_long: 2,000 frame pairs with the trained detector, 10,000 with the
# spot detector), steps in order of value with their own time limits (128 s in all on an H200
# machine with 2,000 spot-detector frame pairs in bench_long, build included; 160 s with FR_BASE
# and FR_PROFILE_LONG; the 10,000 are estimated to add 30-60 s, the trained detector's run
# 20-60 s: not measured on a GPU yet).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
# The cache: FLUORO_CACHE, else the checkout's carried .frcache, else the user's cache.
if [ -z "${FLUORO_CACHE:-}" ]; then
  if [ -d .frcache ]; then FLUORO_CACHE=$PWD/.frcache; else FLUORO_CACHE=$HOME/.cache/fluororeg; fi
fi
export FLUORO_CACHE
# JSON files that stay on the machine (the device tool brings back at most 8 files): their
# figures are in check.log, the targets' summary at the end reads them too.
EXTRA=/tmp/gpu-check-extra
mkdir -p "$EXTRA"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/check.log") 2>&1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step build
FR_LOGS=/tmp/fr-logs bash .gpu/build.sh || { tail -n 40 /tmp/fr-logs/* 2>/dev/null; exit 1; }
# shellcheck disable=SC1091
source /tmp/fr-env.sh
nvidia-smi -L

step "pytest -k cuda"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/core/test_render.py tests/core/test_refine.py \
  tests/dataset/test_dataset.py tests/training/test_gpu_training.py tests/training/test_checkpoint_safety.py -k "cuda or prepared or device" -rs \
  > "$OUT/pytest_cuda.log" 2>&1 || status=1
tail -n 15 "$OUT/pytest_cuda.log"

step "bench_render --quick --head"
timeout 100 python3 benchmarks/bench_render.py --quick --head --device cuda --json "$OUT/bench_render.json" || status=1

if [ -n "${FR_BASE:-}" ]; then
  step "bench_render --quick --head on the base checkout $FR_BASE (same card, same run)"
  # Its own build folder, environment and wheel folder: this checkout's stay as they are.
  if (cd "$FR_BASE" && FR_BUILD_DIR=/tmp/fr-base-build FR_ENV=/tmp/fr-base-env.sh FR_SITE=/tmp/fr-base-site \
        FR_LOGS=/tmp/fr-base-logs bash "$OLDPWD/.gpu/build.sh" > /tmp/fr-base-build.log 2>&1); then
    (cd "$FR_BASE" && source /tmp/fr-base-env.sh && timeout 100 python3 benchmarks/bench_render.py --quick --head \
       --device cuda --json "$OUT/bench_render_base.json") || status=1
  else
    tail -n 5 /tmp/fr-base-build.log; status=1
  fi
fi

if [ "${FR_NCU:-0}" = 1 ]; then
  step "ncu: the single 200 x 200 cone-beam DRR's kernel"
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1 || true)
  if [ -n "$NCU" ]; then
    timeout 60 "$NCU" --target-processes all -k regex:ConeKernel -s 3 -c 1 --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
      python3 - > "$OUT/ncu.txt" 2>&1 <<'PY' || echo "ncu failed: $(tail -n 3 "$OUT/ncu.txt")"
import numpy as np
import fluororeg as fr
from fluororeg.core import render as R
from fluororeg.core.geometry import ConeView
from fluororeg.subject.example import cranium_volume
vol = cranium_volume().hu_to_attenuation()
prepared = R.prepare_volume(vol, device="cuda")
view = ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_intensifier=1050, pitch=0.6 * 512 / 200,
                           width=200, height=200)
for _ in range(5):
    R.render_cone(prepared, view, np.zeros(6), on_device=True)
PY
    grep -E "Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Memory Throughput|Compute \(SM\)|L1/TEX Hit|Warp Cycles Per Issued|Block Size|Grid Size|Stall" "$OUT/ncu.txt" | head -n 30
  else
    echo "ncu not found on this machine"
  fi
fi

step "bench_refine --quick (CPU and CUDA rows)"
timeout 120 python3 benchmarks/bench_refine.py --quick --no-ncc --device cuda --json "$OUT/bench_refine.json" || status=1
if [ "${FR_REFINE_FD:-0}" = 1 ]; then
  step "bench_refine --quick --finite-differences (the Jacobian of 12 renders, same card)"
  timeout 150 python3 benchmarks/bench_refine.py --quick --no-ncc --device cuda --finite-differences \
    --json "$EXTRA/bench_refine_fd.json" || status=1
fi

step "bench_long --trained-detector --refine-device cuda (register end to end, 2,000 frame pairs: the target's run)"
# A detector trained for the example subject: its landmark poses lie near the truth, so the
# refinement runs its whole course (and the detector's network costs what a lab's does).
if [ -f "$FLUORO_CACHE/bench_long_detector.onnx" ] && [ -f "$FLUORO_CACHE/cranium_hu.npz" ]; then
  timeout 180 python3 benchmarks/bench_long.py --frames 2000 --refine-device cuda \
    --trained-detector "$FLUORO_CACHE/bench_long_detector.onnx" --json "$OUT/bench_long.json" || status=1
else
  echo "no $FLUORO_CACHE/bench_long_detector.onnx (or no cranium_hu.npz): the target's run is skipped"
fi

step "bench_long --refine-device cuda, spot detector (10,000 frame pairs: memory and the gate)"
# Its spot detector is made with the onnx package, which the lent machine lacks: carry it in
# $FLUORO_CACHE (bench_long.py --detector writes it there on a machine with onnx). 10,000 frame
# pairs, a recording's length. Its poses are far off: nearly every frame's refinement stops
# after its first level, so its frames/s says nothing of the target.
timeout 240 python3 benchmarks/bench_long.py --refine-device cuda \
  --detector "$FLUORO_CACHE/bench_long_spot_detector.onnx" --json "$OUT/bench_long_spot.json" || status=1

if [ "${FR_PROFILE_LONG:-0}" = 1 ] && [ ! -f "$FLUORO_CACHE/bench_long_detector.onnx" ]; then
  echo "FR_PROFILE_LONG=1: no $FLUORO_CACHE/bench_long_detector.onnx, the profile is skipped"
elif [ "${FR_PROFILE_LONG:-0}" = 1 ]; then
  step "bench_long --frames 1000 under cProfile (where register's time goes on this machine)"
  timeout 120 python3 -m cProfile -o /tmp/long.prof benchmarks/bench_long.py --quick --frames 1000 --refine-device cuda \
    --trained-detector "$FLUORO_CACHE/bench_long_detector.onnx" > /dev/null 2>&1 &&
    python3 -c "import pstats; pstats.Stats('/tmp/long.prof').sort_stats('cumulative').print_stats(60)" \
      > "$OUT/long_profile.txt" 2>&1 || echo "bench_long under cProfile failed"
fi

step "bench_dataset --quick"
if [ -f "$FLUORO_CACHE/cranium_hu.npz" ]; then
  timeout 100 python3 benchmarks/bench_dataset.py --quick --device cuda --json "$OUT/bench_dataset.json" || status=1
else
  echo "no cached Cranium CT: dataset benchmark skipped"
fi

step "C++ render tests"
timeout 40 ctest --test-dir /tmp/fr-build -R "Render|Refine" --output-on-failure > "$OUT/native.log" 2>&1 || status=1
tail -n 8 "$OUT/native.log"

step "compute-sanitizer memcheck"
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 || true)
if [ -n "$SAN" ]; then
  echo "=== compute-sanitizer memcheck" >> "$OUT/native.log"
  timeout 60 "$SAN" --tool memcheck --leak-check full --error-exitcode 9 \
    /tmp/fr-build/fluororeg_tests --gtest_filter='RenderVolume.CudaMatchesCpu:RenderConePixels.CudaMatchesCpu:RefineTest.CudaRendersGiveTheCpuResult' >> "$OUT/native.log" 2>&1 || status=1
  tail -n 6 "$OUT/native.log"
else
  echo "compute-sanitizer not found on this machine" | tee -a "$OUT/native.log"
fi

step "bench_register --quick (CPU)"
timeout 40 python3 benchmarks/bench_register.py --quick --json "$EXTRA/bench_register.json" || status=1

step "issue 15's GPU targets"
python3 - "$OUT" "$EXTRA" <<'PY' || true
import json, pathlib, sys
out, extra = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def value(name, key):  # key: a top-level key, or "outer.inner"
    try:
        v = json.loads((out / name if (out / name).exists() else extra / name).read_text())
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        return v
    except (OSError, ValueError):
        return None
for name, key, target in [
        ("bench_render.json", "cuda_parallel_128_drr_per_s", ">= 50,000 DRR/s"),
        ("bench_render.json", "cuda_cone_512_ms", "<= 0.5 ms"),
        ("bench_render.json", "cuda_cone_512_shear_warp_ms", "(shear-warp, for comparison)"),
        ("bench_render.json", "cuda_cone_200_single_us", "<= 80 us"),
        ("bench_render.json", "cuda_cone_200_single_on_device_us", "(kept on the device)"),
        ("bench_render.json", "cuda_cone_200_single_kernel_us", "(kernel alone)"),
        ("bench_dataset.json", "cuda_cone_samples_per_s", ">= 5,000 samples/s"),
        ("bench_dataset.json", "cuda_cone_shear_warp_samples_per_s", "(shear-warp, for comparison)"),
        ("bench_refine.json", "refine_ms_per_frame_cuda", "(256 frames; register >= 500 frame pairs/s needs < 2 ms)"),
        ("bench_refine.json", "refine_ms_per_frame_cuda_small_batch", "(6 frames)"),
        ("bench_refine.json", "refine_ms_per_frame_cuda_by_render_threads.4", "(4 host threads per gathered round: copies)"),
        ("bench_refine.json", "refine_ms_per_frame_cuda_by_render_threads.8", "(8 host threads per gathered round)"),
        ("bench_refine.json", "cuda_batch.render_calls_per_frame", "(gathered rounds a frame waits for)"),
        ("bench_refine.json", "cuda_batch.rendered_rays_per_frame", "(rays per frame pair)"),
        ("bench_refine.json", "refine_host_ms_per_frame_cuda", "(frames' host work, CPU ms per frame pair: x / cores bounds the rate)"),
        ("bench_refine.json", "refine_cpu_ms_per_frame_cuda", "(process CPU ms per frame pair, all threads)"),
        ("bench_refine_fd.json", "refine_ms_per_frame_cuda", "(FR_REFINE_FD=1: finite-difference Jacobian)"),
        ("bench_long.json", "frames_per_s", ">= 500 frame pairs/s (register end to end; trained detector)"),
        ("bench_long.json", "stage_ms_per_pair.detect", "(the detection pass's share, ms per frame pair)"),
        ("bench_long.json", "stage_cpu_ms_per_pair.detect", "(its CPU time, all threads: near cpus x wall = host-bound)"),
        ("bench_long.json", "stage_ms_per_pair.register", "(the final registration's share)"),
        ("bench_long.json", "stage_ms_per_pair.refine", "(refinement's share, ms per frame pair)"),
        ("bench_long.json", "stage_cpu_ms_per_pair.refine", "(its CPU time, all threads)"),
        ("bench_long.json", "cpus", "(the machine's cores)"),
        ("bench_long.json", "stage_ms_per_pair.write", "(writing and the QC figures)"),
        ("bench_long.json", "registered", "(of 2,000 frame pairs)"),
        ("bench_long.json", "registered_err_deg_median", "(registered frames against the truth)"),
        ("bench_long.json", "registered_false_5deg_5mm", "(registered frames more than 5 deg / 5 mm off: 0)"),
        ("bench_long_spot.json", "frames_per_s", "(spot detector: its refinement stops early; not the target)"),
        ("bench_long_spot.json", "rss_growth_mb_10k", "(MB per 10,000 more frame pairs)"),
        ("bench_long_spot.json", "registered_false_5deg_5mm", "(spot detector: registered frames far off: 0)")]:
    base = value("bench_render_base.json", key) if name == "bench_render.json" else None
    print(f"{key:40s} {value(name, key)!s:>24s}  target {target}" + (f"  (base checkout: {base})" if base else ""))
PY

step "done (status $status)"
exit $status
