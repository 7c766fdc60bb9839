#!/usr/bin/env python
"""CPU training-step throughput of the 3D-UNet (volumes/s) for a small and a mid-size config.

Each (config, setting) runs in its own process, because TensorFlow reads TF_ENABLE_ONEDNN_OPTS once
at import. Settings compared in the same run:
  ours      the project's defaults (oneDNN on, XLA auto = off on CPU)
  tf-plain  TensorFlow's own default on this CPU (oneDNN off): the speed trap recorded in BENCHMARKS.md
  xla       ours + XLA jit_compile (slower on CPU, shown so the default is justified)
A step is one optimizer step (forward, Dice+CE loss, backward, Adam) on a random batch, timed after
warm-up; the table prints the median over repeats.

  python benchmarks/bench_train_step.py [--configs small mid] [--settings ours tf-plain xla]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness import answer, parser, print_table, run_worker  # (benchmarks/: the script's own folder)

ROOT = Path(__file__).resolve().parents[1]

# depth = resolution levels (downsamplings = depth - 1)
CONFIGS = {
    "small": dict(crop=32, base=8, depth=4, batch=2),
    "mid": dict(crop=64, base=16, depth=5, batch=1),
}
SETTINGS = {
    "ours": dict(env={}, xla=False),
    "tf-plain": dict(env={"TF_ENABLE_ONEDNN_OPTS": "0"}, xla=False),
    "xla": dict(env={}, xla=True),
}


def worker(cfg: dict, xla: bool, steps: int, warmup: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import unet3d  # noqa: F401, I001  (first: sets TensorFlow's oneDNN switch before keras loads it)
    import keras
    import numpy as np

    from unet3d.config import ModelConfig
    from unet3d.training.losses import dice_ce_loss
    from unet3d.training.model import build_unet3d

    keras.utils.set_random_seed(0)
    model = build_unet3d(ModelConfig(depth=cfg["depth"], base_filters=cfg["base"], max_filters=320))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=dice_ce_loss, jit_compile=xla)
    rng = np.random.default_rng(0)
    shape = (cfg["batch"], cfg["crop"], cfg["crop"], cfg["crop"])
    x = rng.standard_normal((*shape, 4)).astype("float32")
    y = rng.integers(0, 4, shape).astype("uint8")
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    return {"params": model.count_params(), "step_s": step, "vps": cfg["batch"] / step}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    if args.worker:
        return answer(worker(**args.worker))

    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        for setting in args.settings:
            s = SETTINGS[setting]
            steps = args.steps if setting == "ours" else max(3, args.steps // 3)
            job = {"cfg": cfg, "xla": s["xla"], "steps": steps, "warmup": args.warmup}
            rows.append((name, cfg, setting, run_worker(__file__, job, env=s["env"])))

    ours = {n: r["vps"] for n, _, s, r in rows if s == "ours"}
    print_table([("config", "<7"), ("crop", ">5"), ("base", ">4"), ("levels", ">6"), ("batch", ">5"),
                 ("params", ">10,"), ("setting", "<9"), ("step s", ">8.3f"), ("vol/s", ">7.2f"),
                 ("vs ours", ">8")],
                [(name, f"{cfg['crop']}^3", cfg["base"], cfg["depth"], cfg["batch"], r["params"], setting,
                  r["step_s"], r["vps"], f"{r['vps'] / ours[name]:.2f}x" if name in ours else "-")
                 for name, cfg, setting, r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
