#!/usr/bin/env bash
# Set up fluororeg on a fresh Debian machine, doing only what is missing:
#   1. system packages (compiler, CMake helpers, Ceres, Eigen, GoogleTest, Python venv),
#   2. a virtual environment in .venv with the Python dependencies,
#   3. the package itself (C++ core + extension), built incrementally in build/.
# Environment: PYTHON (interpreter for the venv, default python3), FLUORO_CUDA (AUTO/ON/OFF).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
packages=(g++ make pkg-config libceres-dev libeigen3-dev libgtest-dev)
# plastimatch: optional at run time (fluororeg.simulation.plastimatch_drr renders test recordings
# with it, and its tests skip without it), installed here so CI exercises it.
packages+=(plastimatch)
command -v "$PYTHON" >/dev/null 2>&1 || packages+=(python3 python3-venv python3-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ! "$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1; then
  missing+=(python3-venv python3-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fluororeg-deps
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing Python dependencies"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.2" cmake ninja \
    numpy scipy nibabel pynrrd pydicom tifffile pillow tqdm h5py onnxruntime av scikit-image matplotlib pytest hypothesis \
    torch==2.13.0 onnx "dask[distributed]>=2024.1"   # the train extra (torch CPU build, onnx) and the
                                                       # study extra (Dask), needed by the tests
  touch "$stamp"
fi

echo "[setup] building and installing fluororeg (FLUORO_CUDA=${FLUORO_CUDA:-AUTO})"
FLUORO_CUDA=${FLUORO_CUDA:-AUTO} .venv/bin/python -m pip install -q --no-build-isolation --no-deps .
.venv/bin/python -c "import fluororeg; print('[setup] fluororeg', fluororeg.__version__, '| CUDA built:', fluororeg.cuda_built(), '| CUDA device:', fluororeg.has_cuda())"
