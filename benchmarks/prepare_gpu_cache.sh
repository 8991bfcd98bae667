#!/usr/bin/env bash
# Fills .frcache with what benchmarks/gpu_check.sh reads, on this (CPU) machine before the
# device call: a fresh checkout has none of it, and without it gpu_check skips the target's run
# (register end to end with a trained detector). Only those files go there, because .frcache
# travels to the GPU machine in the call's carry (64 MiB in all with the checkout and .gpu):
#
#   cranium_hu.npz                 the example CT (7.5 MB; made from Debian's invesalius-examples,
#                                  fetched once into the user's cache, not into .frcache)
#   bench_long_spot_detector.onnx  the tests' spot detector (made with the onnx package, which
#                                  the GPU machine lacks)
#   bench_long_detector.onnx       a detector trained for the example subject (11 MB): a copy of
#                                  out/demo/models/detector.onnx; when there is none, the demo
#                                  runs first (bash scripts/run.sh: about 30 min on 2 cores),
#                                  unless --no-demo (then the target's run is skipped there)
#
#     bash benchmarks/prepare_gpu_cache.sh [--no-demo]
#
# Ends with the sizes that will travel and the device call to make.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) demo=0 ;;
    *) echo "prepare_gpu_cache.sh: unknown argument '$arg' (expected --no-demo)" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash scripts/setup.sh
py=.venv/bin/python
cache=$PWD/.frcache
mkdir -p "$cache"
# The CT's download and conversion stay in the user's cache (the .deb is 19 MB).
source_cache=${FLUORO_CACHE:-$HOME/.cache/fluororeg}
[ "$(cd "$source_cache" 2>/dev/null && pwd)" = "$cache" ] && source_cache=$HOME/.cache/fluororeg
rm -f "$cache"/*.deb  # left by a run with FLUORO_CACHE=.frcache: it would not fit the carry

if [ ! -f "$cache/cranium_hu.npz" ]; then
  echo "[prepare] the example CT (cranium_hu.npz)"
  "$py" -c "import sys; from fluororeg.subject.example import cranium_volume; cranium_volume(sys.argv[1])" \
    "$source_cache"
  cp "$source_cache/cranium_hu.npz" "$cache/"
fi

if [ ! -f "$cache/bench_long_spot_detector.onnx" ]; then
  echo "[prepare] the spot detector (bench_long_spot_detector.onnx)"
  FLUORO_CACHE=$cache "$py" benchmarks/bench_long.py --quick --frames 16 --refine-device off \
    --detector "$cache/bench_long_spot_detector.onnx" > /dev/null
fi

if [ ! -f "$cache/bench_long_detector.onnx" ]; then
  trained=out/demo/models/detector.onnx
  if [ ! -f "$trained" ] && [ "$demo" = 1 ]; then
    echo "[prepare] no $trained: running the demo to train it (about 30 min on 2 cores)"
    bash scripts/run.sh
  fi
  if [ -f "$trained" ]; then
    cp "$trained" "$cache/bench_long_detector.onnx"
  else
    echo "[prepare] no $trained (--no-demo): gpu_check.sh will skip the target's run"
  fi
fi

echo "[prepare] .frcache holds:"
ls -l "$cache"
"$py" - "$cache" <<'EOF'
import subprocess, sys
from pathlib import Path

def size(paths):
    return sum(p.stat().st_size for p in paths if p.is_file())

tracked = [Path(p) for p in subprocess.run(["git", "ls-files"], capture_output=True, text=True,
                                           check=True).stdout.splitlines()]
cache = size(Path(sys.argv[1]).rglob("*"))
kit = size(Path(".gpu").rglob("*")) if Path(".gpu").is_dir() else None
total = size(tracked) + cache + (kit or 0)
print(f"[prepare] checkout {size(tracked) / 2**20:.1f} MiB, .frcache {cache / 2**20:.1f} MiB, "
      + (f".gpu {kit / 2**20:.1f} MiB" if kit is not None else "no .gpu yet (about 45 MiB less its 2.3 MiB pydicom wheel)")
      + f": {total / 2**20:.1f} MiB of the carry's 64 MiB" + ("" if kit is not None else " before .gpu"))
if kit is not None and total > 64 * 2**20:
    print("[prepare] WARNING: more than the carry's 64 MiB: the device call would refuse it; leave the pydicom wheel "
          "out of .gpu, or bench_long_detector.onnx out of .frcache (gpu_check then skips the target's run)")
EOF
echo "[prepare] next: mkdir -p .gpu && cp -r ../shared/gpu/. .gpu/ && rm .gpu/wheels/pydicom-*"
echo "[prepare] then the device call: OUT=\$OUT FR_REFINE_FD=1 bash benchmarks/gpu_check.sh, carry [\".gpu\", \".frcache\"]"
