#!/usr/bin/env python
"""Where does ours lose to MONAI on the GPU? The train-step time of NVIDIA's network at 128^3, batch 2,
under Keras JAX, one variant per process: normalisation (instance = GroupNormalization(groups=-1),
batch, none), precision (mixed_bfloat16, float32), loss (Dice+CE, plain cross-entropy). Prints one
JSON line per variant. Needs a GPU (128^3); on the lent machine, from the repo root, with keras
carried as wheels (see gpu_session.sh):

  XLA_PYTHON_CLIENT_PREALLOCATE=false python3 benchmarks/bench_gpu_variants.py
"""
import json
import os
import subprocess
import sys
import time

VARIANTS = [("instance", "mixed_bfloat16", "dice_ce"), ("instance", "float32", "dice_ce"),
            ("batch", "mixed_bfloat16", "dice_ce"), ("none", "mixed_bfloat16", "dice_ce"),
            ("instance", "mixed_bfloat16", "ce")]



def worker(norm: str, precision: str, loss: str) -> None:
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, os.getcwd())
    import jax
    import keras
    import numpy as np

    from unet3d.config import preset
    from unet3d.training.losses import dice_ce_loss
    from unet3d.training.model import build_unet3d
    keras.config.set_dtype_policy(precision)
    cfg = preset("nvidia")
    cfg = cfg.replace(model={"norm": norm})
    model = build_unet3d(cfg.model)
    lossf = dice_ce_loss if loss == "dice_ce" else keras.losses.SparseCategoricalCrossentropy()
    model.compile(optimizer=keras.optimizers.Adam(2e-4), loss=lossf, jit_compile=True)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((2, 128, 128, 128, 4)).astype("float32"))
    y = jax.device_put(rng.integers(0, 4, (2, 128, 128, 128)).astype("uint8"))
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # (returns a host value: the step has finished)
    c = time.perf_counter() - t0
    model.train_on_batch(x, y)
    ts = []
    for _ in range(8):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    print(json.dumps({"norm": norm, "precision": precision, "loss": loss, "compile_s": round(c, 1),
                      "step_ms": round(1000 * ts[len(ts) // 2], 1)}), flush=True)



def main() -> None:
    for v in VARIANTS:
        try:
            r = subprocess.run([sys.executable, __file__, *v], capture_output=True, text=True,
                               timeout=75)
        except subprocess.TimeoutExpired:
            print(f"{v}: timed out", flush=True)
            continue
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        print(lines[-1] if lines else f"{v}: rc {r.returncode} {r.stderr[-600:]}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        worker(*sys.argv[1:])
    else:
        main()
