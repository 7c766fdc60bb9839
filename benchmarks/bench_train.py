#!/usr/bin/env python
"""Training throughput (volumes/s) of our 3D-UNet against MONAI's DynUNet, same architecture, same run.

Configs (levels = resolution levels; filters double per level, capped at 320):
  small   32^3 crops, base 8, 3 levels, batch 2
  mid     64^3 crops, base 16, 4 levels, batch 2
  nvidia  128^3 crops, NVIDIA's 6 levels 32..320, batch 1 (CPU) / 2 (GPU)
Both networks: per level two 3x3x3 convolutions (the first strided by 2 below the top level), each
followed by instance norm (affine) and LeakyReLU(0.01); transposed-convolution upsampling (k2, s2,
bias); a 1x1x1 output convolution to 4 classes (DynUNet's output block); Dice + cross-entropy loss;
Adam. The parameter counts printed for both show the architectures match.

A step is one optimizer step on a random batch (forward, loss, backward, update), timed after
warm-up. Ours runs in the project's environment (TensorFlow + Keras, the project's defaults);
MONAI runs in its own environment (``bash benchmarks/peer_env.sh`` makes ``.venv-peer``: PyTorch
2.13 CPU build + MONAI), each measurement in a fresh process, alternating ours / peer for
``--rounds`` rounds, so both see the same machine state. The table gives the median over rounds.

  python benchmarks/bench_train.py [--configs small mid nvidia] [--rounds 3] [--variants ours keras_ct]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from harness import answer, parser, print_table, run_worker  # (benchmarks/: the script's own folder)

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = Path(os.environ.get("PEER_VENV", ROOT / ".venv-peer")) / "bin" / "python"

CONFIGS = {
    "small": dict(crop=32, base=8, levels=3, batch=2, steps=10),
    "mid": dict(crop=64, base=16, levels=4, batch=2, steps=6),
    "nvidia": dict(crop=128, base=32, levels=6, batch=1, steps=3),
}
# Our variants: the defaults, and the settings the defaults decide against, to justify them.
VARIANTS = {
    "ours": dict(env={}, xla="auto", precision="fp32"),
    "xla": dict(env={}, xla="on", precision="fp32"),
    "bf16": dict(env={}, xla="auto", precision="mixed_bfloat16"),
    # the defaults with Keras's Conv3DTranspose as the up-sampling, the layer before issue 25's
    # UpConv3D (one GEMM + depth-to-space): before and after in one run
    "keras_ct": dict(env={}, xla="auto", precision="fp32", keras_upsampling=True),
}


def filters(cfg: dict) -> list[int]:
    return [min(cfg["base"] * 2**i, 320) for i in range(cfg["levels"])]


def ours(cfg: dict, variant: dict, steps: int, warmup: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import unet3d  # noqa: F401, I001  (first: runtime defaults before TensorFlow loads)
    import keras
    import numpy as np

    from unet3d.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from unet3d.training.model import build_unet3d
    from unet3d.training.train import compile_model

    run = RunConfig(
        model=ModelConfig(depth=cfg["levels"], base_filters=cfg["base"], max_filters=320,
                          norm="instance", output_kernel=1, deep_supervision=False),
        train=TrainConfig(batch_size=cfg["batch"], learning_rate=1e-4, warmup_epochs=0,
                          loss="dice_ce", xla=variant["xla"], precision=variant["precision"]),
        data=DataConfig(crop=(cfg["crop"],) * 3))
    keras.utils.set_random_seed(0)
    policy = "float32" if run.train.precision == "fp32" else run.train.precision
    keras.config.set_dtype_policy(policy)
    if variant.get("keras_upsampling"):
        import unet3d.training.model

        def keras_layer(filters: int, **kwargs):  # (same weights, same names)
            return keras.layers.Conv3DTranspose(filters, 2, strides=2, padding="same", **kwargs)

        unet3d.training.model.UpConv3D = keras_layer
    model = build_unet3d(run.model)
    compile_model(model, run)
    rng = np.random.default_rng(0)
    shape = (cfg["batch"], cfg["crop"], cfg["crop"], cfg["crop"])
    x = rng.standard_normal((*shape, 4)).astype("float32")
    y = rng.integers(0, 4, shape).astype("uint8")
    return _time(lambda: model.train_on_batch(x, y), steps, warmup) | {
        "params": model.count_params(), "framework": f"tensorflow {__import__('tensorflow').__version__}"}


def peer(cfg: dict, steps: int, warmup: int) -> dict:
    import monai
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    n = cfg["levels"]
    net = DynUNet(spatial_dims=3, in_channels=4, out_channels=4, kernel_size=[3] * n,
                  strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1),
                  filters=filters(cfg), norm_name=("INSTANCE", {"affine": True}),
                  act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                  deep_supervision=False, res_block=False, trans_bias=True)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.train()
    x = torch.randn(cfg["batch"], 4, cfg["crop"], cfg["crop"], cfg["crop"])
    y = torch.randint(0, 4, (cfg["batch"], 1, cfg["crop"], cfg["crop"], cfg["crop"]))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    return _time(step, steps, warmup) | {
        "params": sum(p.numel() for p in net.parameters()),
        "framework": f"monai {monai.__version__}, torch {torch.__version__}"}


def _time(step, steps: int, warmup: int) -> dict:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times)}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--configs", nargs="+", default=["small", "mid"], choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=["ours"], choices=list(VARIANTS),
                   help="our settings to measure (the peer runs once per round either way)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    if args.worker:
        job = args.worker
        cfg = CONFIGS[job["config"]]
        steps = job.get("steps", cfg["steps"])
        if job["side"] == "peer":
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            res = peer(cfg, steps, job["warmup"])
        else:
            res = ours(cfg, VARIANTS[job["side"]], steps, job["warmup"])
        return answer(res)

    if not PEER_PYTHON.exists():
        print(f"no peer environment at {PEER_PYTHON.parent.parent}: run bash benchmarks/peer_env.sh",
              file=sys.stderr)
        return 2
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for name in args.configs:
            for side in [*args.variants, "peer"]:
                job = {"config": name, "side": side, "warmup": args.warmup}
                python = PEER_PYTHON if side == "peer" else sys.executable
                env = {} if side == "peer" else VARIANTS[side]["env"]
                res = run_worker(__file__, job, python=python, env=env)
                results.setdefault((name, side), []).append(res)
                print(f"  {name:<6} {side:<8} {res['step_s']:.3f} s/step", file=sys.stderr, flush=True)

    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        peer_s = statistics.median(r["step_s"] for r in results[(name, "peer")])
        for side in [*args.variants, "peer"]:
            rs = results[(name, side)]
            s = statistics.median(r["step_s"] for r in rs)
            rows.append((name, f"{cfg['crop']}^3", cfg["batch"], "MONAI" if side == "peer" else side,
                         rs[0]["params"], s, cfg["batch"] / s, f"{peer_s / s:.2f}x",
                         rs[0]["framework"]))
    print_table([("config", "<7"), ("crop", ">5"), ("batch", ">5"), ("side", "<8"), ("params", ">11,"),
                 ("step s", ">8.3f"), ("vol/s", ">7.2f"), ("vs MONAI", ">9"), ("framework", "")],
                rows, f"{args.rounds} rounds, median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
