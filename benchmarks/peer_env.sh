#!/usr/bin/env bash
# The peer's own environment for the side-by-side benchmarks: MONAI on PyTorch (CPU build), kept out
# of the project's dependencies. PyTorch is pinned to the CPU build this machine kind has on disk
# (a plain `pip install torch` would pull the newest CUDA build, several GB); MONAI then finds its
# torch requirement satisfied and installs nothing more of it.
set -euo pipefail
PY=${PYTHON:-python3}
VENV=${PEER_VENV:-.venv-peer}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch, monai" 2>/dev/null; then
  echo "peer environment ready: $VENV"; exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet "monai>=1.4" numpy
"$VENV/bin/python" -c "import torch, monai; print('peer environment ready:', 'torch', torch.__version__, 'monai', monai.__version__)"
