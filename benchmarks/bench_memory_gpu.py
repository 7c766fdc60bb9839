#!/usr/bin/env python
"""The memory model's GPU check: ``unet3d.planning.memory.estimate(cfg, device="gpu")`` against the peak a
training run really reaches on the GPU (Keras 3, JAX backend, XLA).

memory.py's GPU constants were fitted on this script's "process" column (its first run, on an
NVIDIA H200: BENCHMARKS.md, "GPU memory"). Each configuration runs in a fresh process
(XLA_PYTHON_CLIENT_PREALLOCATE=false, so JAX's allocator grows on demand): build the model,
compile the train step with XLA, a few optimizer steps on random data fed from the host as in
training, then, where the estimate peaks in validation (or with --validation always), one forward
pass of ``val_batch_size`` crop-sized windows. Two measurements:
  alloc    JAX's allocator peak, ``jax.devices()[0].memory_stats()['peak_bytes_in_use']``: the
           run's tensors (weights, optimizer state, activations, XLA's temporaries and cuDNN
           workspaces, autotuning's scratch at compile time); compare with the estimate less its
           ``runtime`` part.
  process  the GPU's used memory (nvidia-smi) at the end of the run less before it: the above,
           the allocator's pool rounding, and the CUDA context with its libraries; compare with the
           whole estimate (the constants are fitted on this one).
Error % is (predicted - measured) / measured: positive over-predicts (safe), negative under-predicts.

  python benchmarks/bench_memory_gpu.py [--json out.json] [--budget 165] [--configs NAME ...]
  python benchmarks/bench_memory_gpu.py --smoke     # one tiny config on the CPU (peaks n/a there)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import collect  # noqa: E402  (the worker-process runner both benchmarks share)

GIB = 1024**3
MIN_START_S = 25  # no new configuration starts with less of --budget left


def _cfg(preset: str | None = None, **sections: dict) -> dict:
    """A RunConfig dict: ``preset``'s (or the defaults) with ``sections``' fields overridden."""
    from unet3d.config import RunConfig
    from unet3d.config import preset as get_preset

    base = get_preset(preset) if preset else RunConfig.from_dict({})
    return base.replace(**sections).to_dict()


def configs() -> dict[str, dict]:
    """The measured configurations, the most telling first (a short --budget drops the last)."""
    return {
        "nvidia 128^3 b2 bf16": _cfg("nvidia", train={"precision": "mixed_bfloat16"}),
        "nvidia 128^3 b2 fp32": _cfg("nvidia", train={"precision": "fp32"}),
        "gpu-mid 96^3 b2 fp16 ds": _cfg("gpu-mid", train={"precision": "mixed_float16"}),
        # peaks in validation (8 windows a pass): the one row that checks that phase
        "d4 f16 64^3 b1 fp32 val8": _cfg(model={"depth": 4, "base_filters": 16},
                                         train={"batch_size": 1, "val_batch_size": 8,
                                                "precision": "fp32"},
                                         data={"crop": [64, 64, 64]}),
        "d5 f24 128^3 b1 bf16": _cfg(model={"depth": 5, "base_filters": 24},
                                     train={"batch_size": 1, "precision": "mixed_bfloat16"},
                                     data={"crop": [128, 128, 128]}),
        "nvidia 96^3 b1 bf16": _cfg("nvidia", train={"batch_size": 1, "precision": "mixed_bfloat16"},
                                    data={"crop": [96, 96, 96]}),
    }


def smoke_configs() -> dict[str, dict]:
    """One tiny configuration whose estimate peaks in validation (4 windows a pass)."""
    return {"d3 f8 32^3 b1 fp32 val4": _cfg(model={"depth": 3, "base_filters": 8},
                                            train={"batch_size": 1, "val_batch_size": 4},
                                            data={"crop": [32, 32, 32]})}


def emit(**record) -> None:
    print("@@ " + json.dumps(record), flush=True)


def gpu_used_mib() -> float | None:
    """Used memory of the first visible GPU in MiB (nvidia-smi), or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible:
        cmd.insert(1, f"--id={visible}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _stats(device) -> dict:
    s = device.memory_stats() or {}
    return {k: s[k] / GIB for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in s}


def worker(job: dict) -> None:
    """One configuration: build, compile (XLA), train steps, maybe a validation pass; peaks."""
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    from unet3d.config import RunConfig
    from unet3d.runtime import dtype_policy
    from unet3d.training.losses import deep_supervision_weights, get_loss
    from unet3d.training.model import build_unet3d, inference_model

    cfg = RunConfig.from_dict(job["cfg"])
    device = jax.devices()[0]
    emit(kind="info", device=device.device_kind, platform=device.platform, jax=jax.__version__,
         keras=keras.__version__)
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype_policy(cfg.train.precision))
    model = build_unet3d(cfg.model)
    n = len(model.outputs)
    loss = get_loss(cfg.train.loss, cfg.scheme)
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
    if cfg.train.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=[loss] * n if n > 1 else loss,
                  loss_weights=deep_supervision_weights(n) if n > 1 else None, jit_compile=True)
    emit(kind="params", params=model.count_params())

    rng = np.random.default_rng(0)
    b, crop, m = cfg.train.batch_size, cfg.data.crop, cfg.model
    x = rng.standard_normal((b, *crop, m.in_channels)).astype("float32")
    y = rng.integers(0, m.n_classes, (b, *crop)).astype("uint8")
    t0 = time.perf_counter()
    for _ in range(job["steps"]):
        model.train_on_batch(x, tuple([y] * n) if n > 1 else y)
    emit(kind="train", seconds=time.perf_counter() - t0, **_stats(device))
    if job["validation"]:
        t0 = time.perf_counter()
        windows = rng.standard_normal((cfg.train.val_batch_size, *crop, m.in_channels))
        inference_model(model).predict_on_batch(windows.astype("float32"))
        emit(kind="validation", seconds=time.perf_counter() - t0, **_stats(device))
    emit(kind="end", gpu_used_mib=gpu_used_mib())


def run_worker(job: dict, timeout: float) -> tuple[dict, str | None]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    res, error = collect(cmd, env, timeout)
    if error:
        print(f"  failed ({error})", file=sys.stderr, flush=True)
    return res, error


def _err(pred: float | None, meas: float | None) -> float | None:
    return None if pred is None or not meas else 100 * (pred - meas) / meas


def _f(v, spec: str, width: int) -> str:
    return f"{'n/a' if v is None else format(v, spec):>{width}}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one tiny configuration (runs on a CPU)")
    p.add_argument("--configs", nargs="+", help="names to run (default: all, in order)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per configuration")
    p.add_argument("--validation", choices=["auto", "always", "never"], default="auto",
                   help="the validation pass: auto = where the estimate peaks in validation")
    p.add_argument("--budget", type=float, help="seconds for all configurations (default 165; "
                   "--smoke: 600); a configuration gets what is left, at most --per-config")
    p.add_argument("--per-config", type=float, default=80.0)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    from unet3d.config import RunConfig
    from unet3d.planning.memory import CONSTANTS, estimate

    table = smoke_configs() if args.smoke else configs()
    names = args.configs or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {list(table)}")
    budget = args.budget or (600.0 if args.smoke else 165.0)
    t_start = time.perf_counter()
    rows = []
    for name in names:
        cfg = RunConfig.from_dict(table[name])
        est = estimate(cfg, device="gpu")
        validate = args.validation == "always" or (args.validation == "auto"
                                                   and est.phase == "validation")
        left = budget - (time.perf_counter() - t_start)
        r = {"config": name, "cfg": table[name], "estimate": est.to_dict(),
             "predicted_gib": est.gib, "predicted_tensors_gib": (est.total - est.parts["runtime"]) / GIB,
             "validation_run": validate}
        if left < MIN_START_S:
            r["error"] = "skipped: --budget spent"
            rows.append(r)
            print(f"{name}: skipped (--budget spent)", file=sys.stderr, flush=True)
            continue
        print(f"{name}: predicted {est.gib:.2f} GiB ({est.phase}) ...", file=sys.stderr, flush=True)
        before = gpu_used_mib()
        job = {"cfg": table[name], "steps": args.steps, "validation": validate}
        res, error = run_worker(job, min(left, args.per_config))
        last = res.get("validation") or res.get("train") or {}
        end = res.get("end", {}).get("gpu_used_mib")
        r |= {"error": error, "params": res.get("params", {}).get("params"),
              "device": res.get("info", {}).get("device"),
              "alloc_peak_gib": last.get("peak_bytes_in_use"),
              "alloc_peak_train_gib": res.get("train", {}).get("peak_bytes_in_use"),
              "bytes_in_use_end_gib": last.get("bytes_in_use"),
              "process_gib": None if before is None or end is None else (end - before) / 1024,
              "train_s": res.get("train", {}).get("seconds")}
        r["error_alloc_pct"] = _err(r["predicted_tensors_gib"], r["alloc_peak_gib"])
        r["error_process_pct"] = _err(r["predicted_gib"], r["process_gib"])
        rows.append(r)

    device = next((r["device"] for r in rows if r.get("device")), "unknown")
    k = CONSTANTS["gpu"]
    print(f"device: {device}; memory model GPU constants: runtime {k.runtime / GIB:.2f} GiB, "
          f"activation factor {k.activation_factor}, workspace {k.workspace_layers} layers "
          f"({'measured' if k.measured else 'not measured'})")
    print(f"{'config':<26} {'phase':<5} {'pred':>6} {'runtm':>6} {'weigh':>6} {'optim':>6} "
          f"{'activ':>6} {'works':>6} | {'pred-rt':>7} {'alloc':>6} {'err%':>6} | "
          f"{'process':>7} {'err%':>6}")
    for r in rows:
        parts = r["estimate"]["parts_gib"]
        print(f"{r['config']:<26} {r['estimate']['phase'][:5]:<5} {r['predicted_gib']:>6.2f} "
              + " ".join(f"{parts[p]:>6.2f}" for p in ("runtime", "weights", "optimizer",
                                                       "activations", "workspace"))
              + f" | {r['predicted_tensors_gib']:>7.2f} {_f(r.get('alloc_peak_gib'), '.2f', 6)} "
              f"{_f(r.get('error_alloc_pct'), '+.0f', 6)} | {_f(r.get('process_gib'), '.2f', 7)} "
              f"{_f(r.get('error_process_pct'), '+.0f', 6)}"
              + (f"  ({r['error']})" if r.get("error") else ""))
    print("GiB; pred-rt: the estimate less its runtime part, against alloc (JAX's allocator peak); "
          "pred against process (nvidia-smi's used memory, the run's share). err% = (pred - "
          "measured) / measured.")
    elapsed = time.perf_counter() - t_start
    print(f"({elapsed:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "smoke": args.smoke, "steps": args.steps,
                                         "constants": {"runtime_gib": k.runtime / GIB,
                                                       "activation_factor": k.activation_factor,
                                                       "workspace_layers": k.workspace_layers},
                                         "rows": rows, "elapsed_s": elapsed}, indent=2) + "\n")
    # (a row skipped because the time budget was spent is not a failure: the table says so)
    return 0 if all(r.get("error") is None or str(r["error"]).startswith("skipped")
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
