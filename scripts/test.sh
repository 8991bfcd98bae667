#!/usr/bin/env bash
# Set up if needed, then run every test: the C++ tests (CTest, GoogleTest) of a standalone
# C++ build (CUDA compiled when FLUORO_CUDA allows; kernels run on the CPU backend) and the
# Python tests (pytest) against the installed package.
# Extra arguments go to pytest (e.g. scripts/test.sh -k render).
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
cd tests && ../.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
