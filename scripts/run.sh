#!/usr/bin/env bash
# Set up if needed, then run the main job on the built-in default (the example subject):
# the end-to-end demo (dataset, training, simulated recording, registration, evaluation,
# report and overlays under out/demo). Extra arguments go to `fluororeg demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fluororeg demo --out out/demo "$@"
