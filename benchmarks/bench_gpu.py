#!/usr/bin/env python
"""GPU training throughput of the `nvidia` architecture under the Keras JAX backend.

The lent GPU machine has JAX but no TensorFlow, so the same model (built from keras / keras.ops only)
runs with KERAS_BACKEND=jax: NVIDIA's 3D-UNet (6 levels, 32..320 filters, instance norm, 3x3x3 head,
31,196,196 parameters) at 128^3, batch 2, mixed precision (bf16 by default, fp16 with loss scaling
as an option), Dice + CE, Adam, XLA-compiled train step. Prints volumes/s and the fraction of the
GPU's bf16 peak, taking ~2.9 TFLOP per 128^3 volume per training step (NVIDIA's 3D-UNet: forward
~0.97 TFLOP, x 3 with the backward pass) and measuring the peak in the same run with a large bf16
matrix product.

  KERAS_BACKEND=jax python benchmarks/bench_gpu.py [--batch 2] [--precision mixed_bfloat16] [--steps 20]

On the device machine keras travels as wheels (see the device tool's README); a CPU smoke run:
  KERAS_BACKEND=jax python benchmarks/bench_gpu.py --crop 32 --steps 2 --warmup 1 --matmul 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TFLOP_PER_VOLUME = 2.9  # one 128^3 training step (forward ~0.97 TFLOP, x3 with the backward pass)


def matmul_peak(n: int, reps: int = 10) -> float:
    """bf16 TFLOP/s of an n x n matrix product, the best of ``reps`` timed runs."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.bfloat16)
    b = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--precision", default="mixed_bfloat16",
                   choices=["mixed_bfloat16", "mixed_float16", "float32"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--matmul", type=int, default=16384, help="matrix size for the peak measurement")
    args = p.parse_args()

    import jax
    import keras
    import numpy as np

    from unet3d.config import preset
    from unet3d.losses import dice_ce_loss
    from unet3d.model import build_unet3d

    if keras.backend.backend() != "jax":
        print(f"KERAS_BACKEND is {keras.backend.backend()!r}; this benchmark is for jax", file=sys.stderr)
        return 2
    device = jax.devices()[0]
    cfg = preset("nvidia")
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(args.precision)
    model = build_unet3d(cfg.model)
    optimizer = keras.optimizers.Adam(2e-4)
    if args.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=dice_ce_loss, jit_compile=True)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.crop, args.crop, args.crop)
    x = rng.standard_normal((*shape, 4)).astype("float32")
    y = rng.integers(0, 4, shape).astype("uint8")
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = model.train_on_batch(x, y)  # returns a host value: the step has finished
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    vps = args.batch / step
    peak = matmul_peak(args.matmul)
    flop = TFLOP_PER_VOLUME * (args.crop / 128) ** 3
    print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}, keras "
          f"{keras.__version__}; {model.count_params():,} parameters")
    print(f"nvidia architecture, {args.crop}^3, batch {args.batch}, {args.precision}, XLA: "
          f"{step * 1000:.1f} ms/step (median of {args.steps}), {vps:.2f} volumes/s, loss {float(loss):.4f}")
    print(f"bf16 matmul peak ({args.matmul}^2): {peak:.1f} TFLOP/s; model at {flop:.2f} TFLOP/volume: "
          f"{vps * flop:.1f} TFLOP/s = {100 * vps * flop / peak:.1f}% of peak")
    print("NVIDIA's published 3D-UNet (TF1, AMP, XLA), A100 batch 2: 17.91 volumes/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
