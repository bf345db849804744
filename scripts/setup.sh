#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh Debian machine: system packages for a virtual
# display, a virtual environment in .venv with the pinned torch, and this package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_apt=()
command -v xvfb-run >/dev/null 2>&1 || need_apt+=(xvfb xauth)
for lib in libGL.so.1 libEGL.so.1 libxkbcommon-x11.so.0 libxcb-cursor.so.0 libxcb-icccm.so.4 \
           libxcb-image.so.0 libxcb-keysyms.so.1 libxcb-randr.so.0 libxcb-render-util.so.0 \
           libxcb-xinerama.so.0 libxcb-shape.so.0 libfontconfig.so.1 libdbus-1.so.3; do
  ldconfig -p | grep -q "$lib" || { need_apt+=(libgl1-mesa-dri libegl1 libxkbcommon-x11-0 \
    libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
    libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-xkb1 \
    libfontconfig1 libdbus-1-3); break; }
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.napari-attribution-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing torch (pinned) and napari-attribution with test extras"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # The pip config of these machines lists local index folders that may be absent;
  # hide its harmless "is ignored" warnings.
  .venv/bin/pip install -q -c constraints.txt "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q -c constraints.txt -e ".[testing,batch]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, napari, napari_attribution" || { echo "setup failed"; exit 1; }
  echo "$want" > "$stamp"
fi
