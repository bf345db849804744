#!/usr/bin/env bash
# Set up (if needed), train DCMIX on the built-in synthetic sample data, print and save the
# channel importance to demo_output/; with a display, open napari with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/napari-attribution demo --output demo_output "$@"
