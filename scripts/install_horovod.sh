#!/usr/bin/env bash
# Builds Horovod 0.28.1 (the last release) from its sdist against the TensorFlow already installed in
# the active Python. Plain `pip install horovod` fails on TF 2.21: horovod/tensorflow/xla_mpi_ops.cc
# includes XLA headers TF no longer ships, so that one source is dropped from the CMake list (the XLA
# ops only matter for an allreduce inside a jit_compile'd function, which we never do).
# CPU here: Gloo only. On a GPU node set HOROVOD_GPU_OPERATIONS=NCCL before running this.
set -euo pipefail
PY=${PYTHON:-python}
VERSION=0.28.1
if "$PY" -c "import os, horovod.tensorflow as h; assert h.gloo_built()
assert not os.environ.get('HOROVOD_GPU_OPERATIONS') or h.nccl_built()" 2>/dev/null; then
  echo "horovod already installed with TensorFlow + Gloo${HOROVOD_GPU_OPERATIONS:+ + NCCL}"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary=:all: "horovod==$VERSION" -d "$work"
tar -xzf "$work"/horovod-$VERSION.tar.gz -C "$work"
src="$work/horovod-$VERSION"
sed -i '/xla_mpi_ops.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
if grep -q xla_mpi_ops.cc "$src/horovod/tensorflow/CMakeLists.txt"; then
  echo "install_horovod.sh: could not drop xla_mpi_ops.cc from horovod/tensorflow/CMakeLists.txt" >&2; exit 1
fi
"$PY" -m pip install --quiet cmake 2>/dev/null || true   # the machine's cmake works too; this pins a known one
export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
       HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS="-j$(nproc)"
"$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir --force-reinstall "$src"
"$PY" -m pip install --quiet cloudpickle psutil pyyaml packaging
"$PY" -c "import horovod.tensorflow as h; assert h.gloo_built(); print('horovod', h.__version__ if hasattr(h,'__version__') else '', 'built with Gloo')"
