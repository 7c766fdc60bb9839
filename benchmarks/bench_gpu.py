#!/usr/bin/env python
"""GPU training throughput and inference latency of the `nvidia` architecture: ours (Keras 3, JAX
backend, XLA) against MONAI's DynUNet (PyTorch), same network, same GPU, same run.

The lent GPU machine has JAX and PyTorch but no TensorFlow, so our model (built from keras /
keras.ops only) runs with KERAS_BACKEND=jax: NVIDIA's 3D-UNet (6 levels, filters 32, 64, 128, 256,
320, 320, kernel 3, strides 1, 2, 2, 2, 2, 2, instance norm, LeakyReLU 0.01, transposed-convolution
upsampling, 3x3x3 softmax head, 4 modalities in, 4 classes out; 31,196,196 parameters) as
``unet3d.training.model.build_unet3d`` builds the ``nvidia`` preset, mixed_bfloat16, ``dice_ce_loss``, Adam,
an XLA-compiled train step. The peer is MONAI's DynUNet with the same settings (as in
benchmarks/bench_train.py) and its 1x1x1 output convolution swapped for a 3x3x3 one, so that both
parameter counts are NVIDIA's; PyTorch eager, bf16 autocast, channels_last_3d, cuDNN benchmark
mode, MONAI's DiceCELoss.

Two measurements per framework, each framework in its own process (JAX and PyTorch never share the
GPU; JAX allocates on demand, XLA_PYTHON_CLIENT_PREALLOCATE=false):
  train      volumes/s at 128^3, batch 2: median step time of --steps steps after --warmup warm-up
             steps (the first of which compiles); the data stays on the device.
  inference  one forward pass of a whole 224x224x160 volume, batch 1, bf16, softmax probabilities
             left on the device: median of --infer-reps passes after one warm-up (compiling) pass.
Then the GPU's bf16 peak from a large matrix product (JAX), and the fraction of it each framework's
training reaches, taking ~2.9 TFLOP per 128^3 volume per training step (NVIDIA's 3D-UNet: forward
~0.97 TFLOP, x 3 with the backward pass).

Ours runs in up to three variants, each its own worker (``--variants``; default all three on a
GPU): ``bf16`` (mixed_bfloat16, the model's UpConv3D up-sampling), ``fp32`` (float32, the same
model: does bf16 pay?) and ``bf16-keras-ct`` (mixed_bfloat16 with Keras's own Conv3DTranspose, the
layer before issue 25: the before/after of that change in one run). ``--profile DIR``: the first
variant also records a jax.profiler trace of a few training steps in DIR
(benchmarks/gpu_profile_report.py turns it into the per-kernel table).

  python benchmarks/bench_gpu.py [--json out.json] [--budget 330] [--no-peer] [--variants bf16 fp32]
  python benchmarks/bench_gpu.py --smoke     # CPU: 32^3 crops, 64x32x32 inference, float32, 2 steps

The MONAI side runs with this interpreter when it imports torch and monai, else with
``.venv-peer`` (``bash benchmarks/peer_env.sh``), else it is skipped with one line. The MONAI
worker runs first (at most 90 s), our variants share the rest of --budget (default 330 s); a worker
that runs past its share is stopped and the table shows what it had measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = Path(os.environ.get("PEER_VENV", ROOT / ".venv-peer"))

TFLOP_PER_VOLUME = 2.9  # one 128^3 training step (forward ~0.97 TFLOP, x3 with the backward pass)
# NVIDIA's network (unet3d.config's `nvidia` preset), for the peer.
FILTERS = [32, 64, 128, 256, 320, 320]
STRIDES = [1, 2, 2, 2, 2, 2]
IN_CHANNELS, N_CLASSES = 4, 4
FULL = dict(crop=128, batch=2, infer=(224, 224, 160), steps=20, warmup=3, infer_reps=5, matmul=16384)
# The smoke run (CPU): float32 unless --precision says otherwise (XLA's bf16 convolutions on a CPU are
# 4x slower than float32 ones); the full network, tiny shapes.
SMOKE = dict(crop=32, batch=1, infer=(64, 32, 32), steps=2, warmup=1, infer_reps=1, matmul=512,
             precision="float32")
PEER_SHARE_S = 90  # at most, of --budget, for the MONAI worker (it runs first; ours gets the rest)
# Our variants: Keras dtype policy, and whether the up-sampling is Keras's Conv3DTranspose (the layer
# before issue 25) instead of the model's UpConv3D.
VARIANTS = {
    "bf16": dict(precision="mixed_bfloat16", keras_upsampling=False),
    "fp32": dict(precision="float32", keras_upsampling=False),
    "fp16": dict(precision="mixed_float16", keras_upsampling=False),
    "bf16-keras-ct": dict(precision="mixed_bfloat16", keras_upsampling=True),
    "fp32-keras-ct": dict(precision="float32", keras_upsampling=True),
}
GPU_VARIANTS = ["bf16", "fp32", "bf16-keras-ct"]
SMOKE_VARIANTS = ["fp32"]  # (each variant compiles the whole network: a minute on a CPU)
PROFILE_STEPS = 3


def emit(**record) -> None:
    """One result line for the parent (workers only)."""
    print("@@ " + json.dumps(record), flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------- workers

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


def worker_ours(job: dict) -> None:
    """Keras 3 on JAX: the `nvidia` preset, XLA train step, then a jitted whole-volume forward."""
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, str(ROOT))
    import jax
    import keras
    import numpy as np

    from unet3d.config import preset
    from unet3d.training.losses import dice_ce_loss
    from unet3d.training.model import build_unet3d

    if keras.backend.backend() != "jax":
        raise SystemExit(f"KERAS_BACKEND is {keras.backend.backend()!r}; this worker needs jax")
    device = jax.devices()[0]
    emit(kind="info", device=device.device_kind, platform=device.platform,
         versions={"jax": jax.__version__, "jaxlib": _version("jaxlib"), "keras": keras.__version__})
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(job["precision"])
    if job.get("keras_upsampling"):
        import unet3d.training.model

        def keras_layer(filters: int, **kwargs):  # (same weights, same names)
            return keras.layers.Conv3DTranspose(filters, 2, strides=2, padding="same", **kwargs)

        unet3d.training.model.UpConv3D = keras_layer
    model = build_unet3d(preset("nvidia").model)
    optimizer = keras.optimizers.Adam(2e-4)
    if job["precision"] == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=dice_ce_loss, jit_compile=True)
    emit(kind="params", params=model.count_params())

    rng = np.random.default_rng(0)
    shape = (job["batch"], *(job["crop"],) * 3)
    x = jax.device_put(rng.standard_normal((*shape, IN_CHANNELS)).astype("float32"))
    y = jax.device_put(rng.integers(0, N_CLASSES, shape).astype("uint8"))
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # returns a host value: the step has finished
    compile_s = time.perf_counter() - t0
    log(f"  ours: first train step (XLA compile) {compile_s:.1f} s")
    for _ in range(job["warmup"] - 1):
        model.train_on_batch(x, y)
    last = {}
    step = _median_time(lambda: last.update(loss=model.train_on_batch(x, y)), job["steps"])
    emit(kind="train", step_s=step, compile_s=compile_s, loss=float(np.asarray(last["loss"])))
    log(f"  ours: {step * 1000:.1f} ms/step")
    if job.get("profile"):
        with jax.profiler.trace(job["profile"]):
            for _ in range(PROFILE_STEPS):
                model.train_on_batch(x, y)
        emit(kind="profile", dir=job["profile"], steps=PROFILE_STEPS)

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    forward = jax.jit(lambda tv, ntv, a: model.stateless_call(tv, ntv, a, training=False)[0])
    xi = jax.device_put(rng.standard_normal((1, *job["infer"], IN_CHANNELS)).astype("float32"))
    t0 = time.perf_counter()
    out_dtype = str(forward(trainable, non_trainable, xi).block_until_ready().dtype)
    infer_compile_s = time.perf_counter() - t0
    infer = _median_time(lambda: forward(trainable, non_trainable, xi).block_until_ready(),
                         job["infer_reps"])
    emit(kind="infer", infer_s=infer, infer_compile_s=infer_compile_s,
         out_dtype=out_dtype)
    log(f"  ours: inference {infer * 1000:.1f} ms (compile {infer_compile_s:.1f} s)")
    if job["matmul"]:
        emit(kind="matmul", n=job["matmul"], tflops=matmul_peak(job["matmul"]))
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        emit(kind="memory", peak_gib=stats["peak_bytes_in_use"] / 1024**3)


def dynunet():
    """MONAI's DynUNet as NVIDIA's network (benchmarks/bench_train.py's peer, 6 levels) with a
    3x3x3 output convolution like ours (DynUNet's own is 1x1x1), so the parameter counts match."""
    import torch
    from monai.networks.nets import DynUNet

    n = len(FILTERS)
    net = DynUNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=N_CLASSES,
                  kernel_size=[3] * n, strides=STRIDES, upsample_kernel_size=[2] * (n - 1),
                  filters=FILTERS, norm_name=("INSTANCE", {"affine": True}),
                  act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                  deep_supervision=False, res_block=False, trans_bias=True)
    net.output_block.conv.conv = torch.nn.Conv3d(FILTERS[0], N_CLASSES, 3, padding=1, bias=True)
    return net


def worker_monai(job: dict) -> None:
    """PyTorch eager: bf16 autocast, channels_last_3d, cuDNN benchmark mode."""
    import monai
    import torch
    from monai.losses import DiceCELoss

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(0)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        name = platform.processor() or "cpu"
    # bf16 autocast on the GPU; on a CPU (the smoke run) float32, as bf16 3D convolutions there
    # have no fast kernels.
    amp = cuda and job["precision"] == "mixed_bfloat16"
    emit(kind="info", device=name, platform=dev.type, amp="bf16" if amp else "fp32",
         versions={"torch": torch.__version__, "monai": monai.__version__,
                   "cuda": torch.version.cuda,
                   "cudnn": torch.backends.cudnn.version() if cuda else None})
    torch.manual_seed(0)
    fmt = torch.channels_last_3d
    net = dynunet().to(dev, memory_format=fmt)
    emit(kind="params", params=sum(p.numel() for p in net.parameters()))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # torch's instance norm refuses a 1x1x1 bottom level in training: a 32^3 smoke crop trains at 64^3.
    c = job["crop"] if job["crop"] >= 64 else 64
    x = torch.randn(job["batch"], IN_CHANNELS, c, c, c, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, N_CLASSES, (job["batch"], 1, c, c, c), device=dev)
    net.train()
    last = {}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        last["loss"] = loss.detach()
        sync()

    t0 = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t0
    for _ in range(job["warmup"] - 1):
        step()
    step_s = _median_time(step, job["steps"])
    emit(kind="train", step_s=step_s, compile_s=compile_s, loss=last["loss"].item(), crop=c)
    log(f"  MONAI: {step_s * 1000:.1f} ms/step")
    opt.zero_grad(set_to_none=True)

    net.eval()
    xi = torch.randn(1, IN_CHANNELS, *job["infer"], device=dev).contiguous(memory_format=fmt)

    def forward() -> None:
        with torch.inference_mode(), autocast():
            out = torch.softmax(net(xi).float(), dim=1)  # probabilities in float32, as ours
        del out
        sync()

    t0 = time.perf_counter()
    forward()
    infer_compile_s = time.perf_counter() - t0
    infer = _median_time(forward, job["infer_reps"])
    emit(kind="infer", infer_s=infer, infer_compile_s=infer_compile_s, out_dtype="float32")
    log(f"  MONAI: inference {infer * 1000:.1f} ms")
    if cuda:
        emit(kind="memory", peak_gib=torch.cuda.max_memory_allocated() / 1024**3)


# ----------------------------------------------------------------------------------------- parent

def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def peer_python(choice: str | None) -> tuple[str | None, str]:
    """The interpreter for the MONAI worker, or None and why not."""
    if choice == "none":
        return None, "--peer-python none"
    if choice:
        return choice, ""
    if importlib.util.find_spec("torch") and importlib.util.find_spec("monai"):
        return sys.executable, ""
    venv = PEER_VENV / "bin" / "python"
    if venv.exists():
        return str(venv), ""
    return None, f"torch/monai not importable here and no {PEER_VENV.name} (bash benchmarks/peer_env.sh)"


def run_worker(side: str, python: str, job: dict, timeout: float) -> tuple[dict, str | None]:
    """Runs one worker; returns the records it emitted (merged) and an error, or None."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if side == "ours":
        env |= {"KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--job", json.dumps(job)]
    merged, error = collect(cmd, env, timeout, " (its share of --budget)")
    if error:
        log(f"{side} worker failed ({error})")
    return merged, error


def collect(cmd: list[str], env: dict, timeout: float, why: str = "") -> tuple[dict, str | None]:
    """Runs a worker process and gathers its ``@@ {json}`` records by kind; the error (non-zero
    exit, or stopped at ``timeout``) or None. Its stderr goes straight through (progress, warnings,
    a traceback), live in the session's log. (bench_memory_gpu's workers too.)"""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    error = None
    try:
        out, _ = p.communicate(timeout=max(1.0, timeout))
        if p.returncode != 0:
            error = f"exit {p.returncode}"
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        error = f"stopped after {timeout:.0f} s{why}"
    records: dict = {}
    for line in out.splitlines():
        if line.startswith("@@ "):
            rec = json.loads(line[3:])
            records[rec.pop("kind")] = rec
    return records, error


def nvidia_smi() -> dict | None:
    """The first GPU's name, memory and driver (nvidia-smi), or None without one."""
    sys.path.insert(0, str(ROOT))
    from unet3d.runtime import nvidia_smi as query  # (no TensorFlow, no JAX: only nvidia-smi)

    rows = query("name", "memory.total", "driver_version")
    if not rows:
        return None
    name, mib, driver = (rows[0] + ["", ""])[:3]
    return {"name": name, "memory": f"{mib} MiB", "driver": driver}


def row(label: str, res: dict, job: dict, error: str | None) -> dict:
    train, infer = res.get("train", {}), res.get("infer", {})
    step, batch = train.get("step_s"), job["batch"]
    return {"framework": label, "params": res.get("params", {}).get("params"),
            "train_crop": train.get("crop", job["crop"]),
            "train_ms": None if step is None else step * 1000,
            "volumes_per_s": None if step is None else batch / step,
            "infer_ms": None if "infer_s" not in infer else infer["infer_s"] * 1000,
            "train_compile_s": train.get("compile_s"), "infer_compile_s": infer.get("infer_compile_s"),
            "loss": train.get("loss"), "device": res.get("info", {}).get("device"),
            "precision": res.get("info", {}).get("amp", job["precision"]),
            "peak_gib": res.get("memory", {}).get("peak_gib"), "error": error}


def ratio_lines(ours: dict[str, dict], peer: dict | None) -> list[str]:
    """What issue 25's acceptance reads: each variant's training volumes/s and inference time
    against MONAI's; bf16 against fp32; the model's up-sampling against Keras's layer."""
    def speed(a: dict | None, b: dict | None, key: str, inverse: bool = False) -> str:
        if not (a and b and a.get(key) and b.get(key)):
            return "-"
        return f"{(b[key] / a[key]) if inverse else (a[key] / b[key]):.2f}x"

    lines = []
    if peer is not None:
        for name, r in ours.items():
            same = r.get("train_crop") == peer.get("train_crop")  # (the smoke run's differ)
            train = speed(r, peer, "volumes_per_s") if same else "- (other crops)"
            lines.append(f"ours {name} / MONAI: training {train}, "
                         f"inference {speed(r, peer, 'infer_ms', inverse=True)} as fast")
    for low, full in (("bf16", "fp32"), ("bf16-keras-ct", "fp32-keras-ct")):
        if low in ours and full in ours:
            lines.append(f"{low} / {full}: training {speed(ours[low], ours[full], 'volumes_per_s')}")
    for mine, keras_ct in (("bf16", "bf16-keras-ct"), ("fp32", "fp32-keras-ct")):
        if mine in ours and keras_ct in ours:
            lines.append(f"UpConv3D / Keras's Conv3DTranspose ({mine}): training "
                         f"{speed(ours[mine], ours[keras_ct], 'volumes_per_s')}, inference "
                         f"{speed(ours[mine], ours[keras_ct], 'infer_ms', inverse=True)} as fast")
    return lines


def _fmt(v, spec: str, width: int) -> str:
    return f"{'-' if v is None else format(v, spec):>{width}}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps (runs on a CPU)")
    p.add_argument("--batch", type=int)
    p.add_argument("--crop", type=int)
    p.add_argument("--infer-shape", type=int, nargs=3, metavar=("D", "H", "W"))
    p.add_argument("--precision",
                   choices=["mixed_bfloat16", "mixed_float16", "float32"],
                   help="ours' Keras dtype policy (default mixed_bfloat16, --smoke float32); the "
                   "peer: bf16 autocast unless float32")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--infer-reps", type=int)
    p.add_argument("--matmul", type=int, help="matrix size for the peak measurement (0: skip)")
    p.add_argument("--budget", type=float,
                   help=f"seconds for both workers together (default 210, --smoke 1200); MONAI "
                   f"runs first, for at most {PEER_SHARE_S} s, ours gets the rest")
    p.add_argument("--no-peer", action="store_true", help="measure ours only")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help=f"our variants, each its own worker (default {' '.join(GPU_VARIANTS)}; "
                   f"--smoke {' '.join(SMOKE_VARIANTS)}; --precision: that one only)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help=f"the first variant records a jax.profiler trace of {PROFILE_STEPS} "
                   "training steps in DIR (benchmarks/gpu_profile_report.py reads it)")
    p.add_argument("--peer-python", help="interpreter with torch and monai ('none': skip the peer)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", choices=["ours", "monai"], help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        job = json.loads(args.job)
        (worker_ours if args.worker == "ours" else worker_monai)(job)
        return 0

    base = SMOKE if args.smoke else FULL
    job = {"crop": args.crop or base["crop"], "batch": args.batch or base["batch"],
           "infer": list(args.infer_shape or base["infer"]),
           "precision": args.precision or base.get("precision", "mixed_bfloat16"),
           "steps": args.steps or base["steps"], "warmup": max(1, args.warmup or base["warmup"]),
           "infer_reps": args.infer_reps or base["infer_reps"],
           "matmul": base["matmul"] if args.matmul is None else args.matmul}
    if job["crop"] % 32 or any(s % 32 for s in job["infer"]):
        p.error("--crop and --infer-shape must be multiples of 32 (the network downsamples 5 times)")
    t_start = time.perf_counter()
    smi = nvidia_smi()
    python, why_not = (None, "--no-peer") if args.no_peer else peer_python(args.peer_python)

    if args.precision:
        variants = [next(k for k, v in VARIANTS.items() if v["precision"] == args.precision
                         and not v["keras_upsampling"])]
        if args.variants:
            p.error("--precision and --variants: give one of them")
    else:
        variants = args.variants or (SMOKE_VARIANTS if args.smoke else GPU_VARIANTS)
    budget = args.budget or (1200.0 if args.smoke else 330.0)
    monai_res, monai_err = {}, None
    if python:  # first: its time is the more predictable (eager, no compile)
        log(f"MONAI DynUNet ({python}) ...")
        monai_res, monai_err = run_worker("monai", python, job,
                                          budget / 2 if args.smoke else min(PEER_SHARE_S, budget / 2))
    else:
        print(f"MONAI DynUNet skipped: {why_not}")
    rows, results, errors = [], [], []
    for i, name in enumerate(variants):
        v = VARIANTS[name]
        vjob = {**job, "precision": v["precision"], "keras_upsampling": v["keras_upsampling"],
                "profile": str(args.profile.resolve()) if args.profile and i == 0 else None,
                "matmul": job["matmul"] if i == 0 else 0}
        log(f"ours {name}: Keras JAX, {v['precision']}, XLA ...")
        left = budget - (time.perf_counter() - t_start)
        res, err = run_worker("ours", sys.executable, vjob, max(left / (len(variants) - i), 30.0))
        rows.append(row(f"ours {name} (Keras JAX, XLA)", res, vjob, err))
        results.append(res)
        errors.append(err)
    ours = next((r for r in results if r.get("info")), results[0])
    ours_err = next((e for e in errors if e), None)
    if python:
        rows.append(row("MONAI DynUNet (PyTorch)", monai_res, job, monai_err))
    versions = {"python": platform.python_version(), **ours.get("info", {}).get("versions", {}),
                **monai_res.get("info", {}).get("versions", {})}
    device = (smi or {}).get("name") or ours.get("info", {}).get("device") or "unknown"
    matmul = next((r["matmul"] for r in results if r.get("matmul")), None)

    print(f"device: {device}" + (f" ({smi['memory']}, driver {smi['driver']})" if smi else "")
          + f"; jax sees {ours.get('info', {}).get('device')} "
          f"({ours.get('info', {}).get('platform')})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None))
    print(f"train: {job['crop']}^3, batch {job['batch']}, Dice+CE, Adam, median of {job['steps']} "
          f"steps after {job['warmup']} warm-up; inference: 1x{'x'.join(map(str, job['infer']))}, "
          f"median of {job['infer_reps']}"
          + ("" if not python else "; MONAI "
             + ("bf16 autocast" if monai_res.get("info", {}).get("amp", "bf16") == "bf16" else "fp32")
             + ", channels_last_3d"))
    print(f"{'framework':<36} {'params':>11} {'train ms/step':>14} {'volumes/s':>10} "
          f"{'infer ms':>9} {'compile s':>10} {'peak GiB':>9}")
    for r in rows:
        compile_s = None if r["train_compile_s"] is None else r["train_compile_s"] + (
            r["infer_compile_s"] or 0)
        print(f"{r['framework']:<36} {_fmt(r['params'], ',', 11)} {_fmt(r['train_ms'], '.1f', 14)} "
              f"{_fmt(r['volumes_per_s'], '.2f', 10)} {_fmt(r['infer_ms'], '.1f', 9)} "
              f"{_fmt(compile_s, '.1f', 10)} {_fmt(r['peak_gib'], '.2f', 9)}"
              + (f"  (trained at {r['train_crop']}^3)" if r["train_crop"] != job["crop"] else "")
              + (f"  ({r['error']})" if r["error"] else ""))
    flop = TFLOP_PER_VOLUME * (job["crop"] / 128) ** 3
    for r in rows:
        r["tflops"] = (None if not r["volumes_per_s"]
                       else r["volumes_per_s"] * TFLOP_PER_VOLUME * (r["train_crop"] / 128) ** 3)
        r["peak_fraction"] = None if not (matmul and r["tflops"]) else r["tflops"] / matmul["tflops"]
    if matmul:
        peak = matmul["tflops"]
        parts = [f"{' '.join(r['framework'].split(' ')[:2])} {r['tflops']:.1f} TFLOP/s = "
                 f"{100 * r['peak_fraction']:.1f}% of peak" for r in rows if r["tflops"]]
        print(f"bf16 matmul peak ({matmul['n']}^2): {peak:.1f} TFLOP/s; model at {flop:.2f} "
              f"TFLOP/volume: " + "; ".join(parts))
    ratios = ratio_lines(dict(zip(variants, rows[:len(variants)], strict=True)),
                         rows[-1] if python else None)
    for line in ratios:
        print(line)
    if not args.smoke:
        print("NVIDIA's published 3D-UNet (TF1, AMP, XLA), A100 batch 2: 17.91 volumes/s")
    elapsed = time.perf_counter() - t_start
    print(f"({elapsed:.0f} s)")
    if args.json:
        out = {"device": device, "nvidia_smi": smi, "versions": versions, "job": job,
               "smoke": args.smoke, "rows": rows, "matmul": matmul,
               "tflop_per_volume": flop, "peer_skipped": None if python else why_not,
               "variants": variants, "ratios": ratios,
               "profile": next((r["profile"] for r in results if r.get("profile")), None),
               "elapsed_s": elapsed}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if ours_err is None and monai_err is None else 1


if __name__ == "__main__":
    sys.exit(main())
