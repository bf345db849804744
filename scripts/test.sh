#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite (GUI tests under Xvfb) plus the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
# pytest-xvfb starts a virtual X server itself; xvfb-run is the fallback if it is absent.
if .venv/bin/python -c "import pytest_xvfb" 2>/dev/null; then
  .venv/bin/python -m pytest "$@"
else
  xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
fi
