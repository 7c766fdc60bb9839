#!/usr/bin/env bash
# One session on a lent GPU machine (JAX and PyTorch, no TensorFlow, no network): the framework
# comparison (bench_gpu.py: ours in bf16, fp32 and bf16 with Keras's Conv3DTranspose, against
# MONAI, with a profiler trace of our bf16 step) and, with MEMORY=1, the memory model's GPU check
# (bench_memory_gpu.py), each under its own time limit so that one failing or hanging step still
# leaves the other. Results go to $OUT (bench_gpu.json, profile.xplane.pb.gz, bench_memory_gpu.json,
# log.txt); tables to stdout. Always exits 0; the last line names the steps that failed. Then, here:
# python benchmarks/gpu_profile_report.py <files_at>/profile.xplane.pb.gz --steps 3
#
#   OUT=/some/dir bash benchmarks/gpu_session.sh          # the GPU run (about 6.5 minutes at most)
#   MEMORY=1 OUT=/some/dir bash benchmarks/gpu_session.sh # + the memory check (about 9.5 minutes)
#   SMOKE=1 OUT=/tmp/x bash benchmarks/gpu_session.sh     # the same on a CPU, tiny shapes
#
# keras (and monai) travel as wheels in .whl/, installed first with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=3
LOG="$OUT/log.txt"
: > "$LOG"
SMOKE_FLAG=()
GPU_LIMIT=360 MEM_LIMIT=185  # seconds: bench_gpu's --budget 330 and bench_memory_gpu's 165, + exits
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_FLAG=(--smoke); GPU_LIMIT=900 MEM_LIMIT=600; fi
failed=()

step() {  # step NAME LIMIT CMD...: runs CMD under timeout, tee'd to the log; records a failure
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit} s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" = 0 ] || failed+=("$name (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))")
}

{
  echo "=== nvidia-smi"
  if command -v nvidia-smi >/dev/null; then timeout 30 nvidia-smi 2>&1; else echo "no nvidia-smi"; fi
  echo "=== versions"
  timeout 60 "$PY" - <<'EOF' 2>&1
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("jax", "jaxlib", "keras", "torch", "monai", "numpy", "optree", "ml_dtypes"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}  ({mod.__file__})")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: not importable ({type(e).__name__}: {e})")
try:
    import jax
    print("jax devices:", jax.devices())
except Exception as e:  # noqa: BLE001
    print("jax devices: n/a", e)
EOF
} 2>&1 | tee -a "$LOG"

PROFILE=$(mktemp -d)
step bench_gpu "$GPU_LIMIT" "$PY" benchmarks/bench_gpu.py "${SMOKE_FLAG[@]}" --json "$OUT/bench_gpu.json" \
  --profile "$PROFILE"
# (only files two folders down come back: the trace's own folders are deeper)
XPLANE=$(find "$PROFILE" -name '*.xplane.pb' | head -n 1)
if [ -n "$XPLANE" ]; then gzip -c "$XPLANE" > "$OUT/profile.xplane.pb.gz"; fi
rm -rf "$PROFILE"
if [ "${MEMORY:-0}" = 1 ]; then
  step bench_memory_gpu "$MEM_LIMIT" "$PY" benchmarks/bench_memory_gpu.py "${SMOKE_FLAG[@]}" \
    --json "$OUT/bench_memory_gpu.json"
fi

if [ ${#failed[@]} -eq 0 ]; then
  echo "=== all steps passed" | tee -a "$LOG"
else
  echo "=== FAILED: $(printf '%s; ' "${failed[@]}")" | tee -a "$LOG"
fi
exit 0
