#!/usr/bin/env bash
# Set up if needed, then run every test: the C++ tests (CTest, GoogleTest) of a standalone
# C++ build (CUDA compiled when FLUORO_CUDA allows; kernels run on the CPU backend) and the
# Python tests (pytest) against the installed package.
# Extra arguments go to pytest (e.g. scripts/test.sh -k render). With FLUORO_TEST_WITHOUT_TORCH=1
# (set by .ci/run) the inference tests then run again in a venv without torch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "[test] C++ build and CTest (FLUORO_CUDA=${FLUORO_CUDA:-AUTO})"
cmake -S . -B build/cpp -G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/.venv/bin/ninja" \
  -DFLUORO_CUDA="${FLUORO_CUDA:-AUTO}" -DFLUORO_BUILD_TESTS=ON -DFLUORO_BUILD_EXAMPLES=ON \
  -DFLUORO_BUILD_PYTHON=OFF > build/cpp-configure.log 2>&1 || { cat build/cpp-configure.log; exit 1; }
.venv/bin/cmake --build build/cpp -j "$(nproc)"
(cd build/cpp && ctest --output-on-failure -j "$(nproc)")

echo "[test] pytest"
export FLUORO_BUILD_DIR="$PWD/build/cpp"   # the installed-package consumer test uses it
export PATH="$PWD/.venv/bin:$PATH"           # cmake and ninja from the venv
(cd tests && ../.venv/bin/python -m pytest -q -p no:cacheprovider "$@")

if [ "${FLUORO_TEST_WITHOUT_TORCH:-0}" = 1 ]; then
  # Inference needs only NumPy, the compiled core and onnxruntime: run the inference tests and
  # the register command in a small venv without torch (build/venv-inference), on the package
  # installed in .venv (its folder is put on PYTHONPATH, not the rest of .venv's packages).
  echo "[test] inference without torch"
  venv=build/venv-inference
  stamp=$venv/.fluororeg-deps
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q numpy scipy onnxruntime pillow tifffile h5py nibabel pynrrd pydicom \
      tqdm av scikit-image matplotlib pytest onnx   # onnx: the tests build their tiny models with its helper API
    touch "$stamp"
  fi
  if "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    echo "[test] $venv has torch: it must not" >&2
    exit 1
  fi
  package=$(.venv/bin/python -c "import fluororeg, os; print(os.path.dirname(fluororeg.__file__))")
  mkdir -p build/inference-path
  ln -sfn "$package" build/inference-path/fluororeg
  export PYTHONPATH="$PWD/build/inference-path"
  "$venv/bin/python" -c "import sys, fluororeg.pipeline, fluororeg.pipeline.register, fluororeg.inference.detector, \
fluororeg.inference.translator, fluororeg.cli; assert 'torch' not in sys.modules"
  (cd tests && "../$venv/bin/python" -m pytest -q -p no:cacheprovider inference)
fi
