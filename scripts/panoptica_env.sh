#!/usr/bin/env bash
# panoptica's own environment, the test oracle for unet3d.evaluation.metrics.lesion_scores/nsd (the official
# BraTS lesion-wise evaluation is built on panoptica). Kept out of the project's dependencies because
# panoptica 2.1.7 pins numpy<2.3, pandas<3 and rich<14, which clash with the project's own pins; in a
# venv of its own those constraints resolve freely. Idempotent: exits at once when the venv imports
# panoptica already.
set -euo pipefail
VENV=${PANOPTICA_VENV:-.venv-panoptica}
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif command -v python3.11 >/dev/null 2>&1 && python3.11 -c "" 2>/dev/null; then
  PY=python3.11
else
  PY=python3
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import panoptica" 2>/dev/null; then
  echo "panoptica environment ready: $VENV"; exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "panoptica==2.1.7"
"$VENV/bin/python" -c "import importlib.metadata as m, panoptica; print('panoptica environment ready:', 'panoptica', m.version('panoptica'))"
