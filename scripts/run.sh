#!/usr/bin/env bash
# Set up if needed, then run the main job on the built-in default (the example subject):
# render DRRs of the default CT and save them under out/. Extra arguments go to
# `fluororeg render`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fluororeg render --out out/render "$@"
