#!/usr/bin/env python
"""Training memory on this CPU: the memory model's prediction (unet3d.planning.memory) against the measured
peak resident memory of real training runs, over a grid of configurations.

Each row is a fresh ``run_search.py train`` process (1 epoch of a few steps, then validation by
sliding windows over one whole validation case, the checkpoint and the export, as in any run),
measured from outside by ``/usr/bin/time -v`` ("Maximum resident set size"), with a timeout per
run. The data are 3 synthetic brats2021 cases of 128 x 128 x 96 voxels (about 95 x 104 x 81 after
the brain crop), 3 folds: 2 training cases, 1 validation case, whose cached shape is passed to the
model as ``volume_shape``. Rows marked ``fit`` calibrate the model's constants (``--fit`` prints a
least-squares fit of them on those rows' measurements); the others are held out.

    python benchmarks/bench_memory.py [--quick] [--rows NAME ...] [--fit] [--results FILE]
        [--reuse] [--work DIR] [--timeout 300] [--xla-check]

``--results`` keeps the measurements as JSON; with ``--reuse`` rows already there are not run
again (refitting after a change to the model needs no new runs). Prints a Markdown table:
predicted GiB (with its main parts), measured GiB, the error and pass/fail against 25 %; exits 1
if a row misses. The full grid takes about 10 minutes on 2 cores, ``--quick`` (5 rows) about 2.

``--xla-check`` adds a cross-check of the GPU derivation without a GPU: XLA's buffer sizes for each
row's train step on the JAX backend, compiled for this CPU, against ``estimate(device="gpu")``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unet3d.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from unet3d.planning import memory  # noqa: E402  (after the path: the benchmark runs from a checkout)

TOLERANCE = 0.25
CASES, SHAPE, FOLDS = 3, (128, 128, 96), 3
GIB = memory.GIB


@dataclasses.dataclass(frozen=True)
class Row:
    """One configuration of the grid (``steps``: optimizer steps; ``fit``: used by the fit)."""

    name: str
    crop: tuple[int, int, int]
    batch: int
    depth: int
    base: int
    norm: str = "instance"
    ds: bool = False
    up: str = "transpose"
    precision: str = "fp32"
    val_batch: int = 2
    steps: int = 3
    fit: bool = True
    quick: bool = False

    def config(self) -> RunConfig:
        """The run's configuration: 1 epoch, validation on one case (data.folds=3)."""
        return RunConfig(
            model=ModelConfig(depth=self.depth, base_filters=self.base, norm=self.norm,
                              deep_supervision=self.ds, upsampling=self.up),
            train=TrainConfig(epochs=1, steps_per_epoch=self.steps, batch_size=self.batch,
                              warmup_epochs=0, precision=self.precision,
                              val_batch_size=self.val_batch),
            data=DataConfig(crop=self.crop, folds=FOLDS, max_val_cases=1, labels="brats-legacy"))


def _c(n: int) -> tuple[int, int, int]:
    return (n, n, n)


GRID = [
    Row("tiny", _c(32), 1, 3, 8, quick=True),
    Row("small-bn-b4", _c(32), 4, 4, 8, norm="batch"),
    Row("mid", _c(64), 1, 5, 16, quick=True),
    Row("mid-b2", _c(64), 2, 5, 16),
    Row("mid-none-b2", _c(64), 2, 4, 16, norm="none"),
    Row("mid-b4-d3", _c(64), 4, 3, 32, norm="batch"),
    Row("mid-bf16", _c(64), 2, 5, 16, precision="mixed_bfloat16", steps=2, fit=False),
    Row("wide-nearest", (96, 64, 128), 1, 4, 16, up="nearest", fit=False, quick=True),
    Row("96", _c(96), 1, 5, 16),
    Row("96-bn-ds-b2", _c(96), 2, 4, 16, norm="batch", ds=True, fit=False, quick=True),
    Row("96-ds-nearest-b2", _c(96), 2, 5, 24, ds=True, up="nearest"),
    Row("flat-bn-ds", (128, 128, 64), 1, 5, 16, norm="batch", ds=True),
    Row("128-none-d4", _c(128), 1, 4, 8, norm="none", fit=False),
    Row("128-d6-b1", _c(128), 1, 6, 32, steps=2),
    Row("nvidia-b2", _c(128), 2, 6, 32, steps=1, fit=False),
    Row("32-b2-w32", _c(32), 2, 4, 32, fit=False),
    # 12 validation windows in one forward pass: the validation phase peaks, not the training steps.
    Row("val-b12", _c(64), 1, 5, 16, val_batch=12, fit=False, quick=True),
]


def prepare_data(work: Path, timeout: float) -> tuple[Path, Path]:
    """Writes the synthetic dataset and its cache once (reused when present)."""
    data, cache = work / "data", work / "cache"
    py = [sys.executable, str(ROOT / "run_search.py")]
    if not data.exists():
        subprocess.run([*py, "synth", "--out", str(data), "--cases", str(CASES), "--shape",
                        *map(str, SHAPE)], check=True, timeout=timeout, capture_output=True)
    subprocess.run([*py, "prepare", "--data", str(data), "--cache", str(cache)], check=True,
                   timeout=timeout, capture_output=True)
    return data, cache


def split_facts(cache: Path, cfg: RunConfig) -> tuple[tuple[int, ...], int]:
    """(the validation case's cached shape, bytes of the training cases' cached arrays)."""
    from unet3d.data.split import kfold

    metas = {m["case_id"]: (p.parent, m) for p in cache.glob("*/meta.json")
             for m in [json.loads(p.read_text())]}
    train, val = kfold(sorted(metas), cfg.data.folds, cfg.data.fold, cfg.data.split_seed)
    shape = max((tuple(metas[v][1]["shape"]) for v in val[: cfg.data.max_val_cases or None]),
                key=math.prod)
    mapped = sum((metas[t][0] / f).stat().st_size for t in train for f in ("image.npy", "label.npy"))
    return shape, mapped


def measure(row: Row, data: Path, cache: Path, work: Path, timeout: float) -> dict:
    """Runs the training process under /usr/bin/time -v; returns peak RSS (bytes) and seconds."""
    cfg_path, out = work / f"{row.name}.json", work / f"out-{row.name}"
    row.config().save(cfg_path)
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, str(ROOT / "run_search.py"), "train",
           "--data", str(data), "--cache", str(cache), "--config", str(cfg_path), "--out", str(out)]
    t0 = time.perf_counter()
    # Its own session, so that a timeout ends the training process too, not only /usr/bin/time.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, start_new_session=True)
    try:
        _, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return {"error": f"timeout after {timeout:.0f} s"}
    seconds = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if p.returncode != 0 or m is None:
        return {"error": f"exit {p.returncode}: {stderr.strip().splitlines()[-1:]}"}
    return {"peak_bytes": int(m.group(1)) * 1024, "seconds": round(seconds, 1)}



def xla_worker(name: str, precision: str) -> dict:
    """XLA's buffer sizes for one compiled Keras train step (forward, Dice+CE, backward, Adam) of
    a row, on the JAX backend (the caller sets KERAS_BACKEND=jax), compiled for this CPU."""
    import jax
    import jax.numpy as jnp
    import keras

    from unet3d.training.losses import deep_supervision_weights, dice_ce_loss
    from unet3d.training.model import build_unet3d

    row = next(r for r in GRID if r.name == name)
    cfg = row.config().replace(train={"precision": precision})
    keras.config.set_dtype_policy("float32" if precision == "fp32" else precision)
    model = build_unet3d(cfg.model)
    opt = keras.optimizers.Adam(1e-4)
    opt.build(model.trainable_variables)
    weights = deep_supervision_weights(len(model.outputs))

    def loss_fn(tv, ntv, x, y):
        out, ntv = model.stateless_call(tv, ntv, x, training=True)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return sum(w * dice_ce_loss(y, o) for w, o in zip(weights, outs, strict=True)), ntv

    def step(tv, ntv, ov, x, y):
        (loss, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, x, y)
        tv, ov = opt.stateless_apply(ov, grads, tv)
        return loss, tv, ntv, ov

    shape = (cfg.train.batch_size, *cfg.data.crop)
    args = ([v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables], [v.value for v in opt.variables],
            jax.ShapeDtypeStruct((*shape, cfg.model.in_channels), jnp.float32),
            jax.ShapeDtypeStruct(shape, jnp.uint8))
    ma = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*args).compile().memory_analysis()
    return {"temp": ma.temp_size_in_bytes,
            "total": (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                      + ma.temp_size_in_bytes)}


def xla_check(rows: list[Row], timeout: float) -> list[str]:
    """A Markdown table: XLA's temporaries for a train step (JAX, compiled for this CPU) against
    the GPU derivation's activations + workspace (XLA on a GPU fuses similarly; its constants are
    not measured). XLA's "peak" field is wrong on CPU; argument + output - alias + temp is used."""
    out = ["| row | precision | XLA temp GiB | gpu activations + workspace GiB | ratio "
           "| XLA all buffers GiB | gpu estimate - runtime GiB |", "|" + "---|" * 7]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    for r in rows:
        for precision in dict.fromkeys(("fp32", r.precision)):
            cmd = [sys.executable, __file__, "--xla-worker", f"{r.name}:{precision}"]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                x = json.loads(p.stdout.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError):
                out.append(f"| {r.name} | {precision} | failed | | | | |")
                continue
            # One validation window: the training phase is the one compared (XLA's step has no
            # validation in it).
            cfg = r.config().replace(train={"precision": precision, "val_batch_size": 1})
            e = memory.estimate(cfg, device="gpu")
            derived = e.parts["activations"] + e.parts["workspace"]
            out.append(f"| {r.name} | {precision} | {x['temp'] / GIB:.3f} | {derived / GIB:.3f} "
                       f"| {derived / x['temp']:.2f} | {x['total'] / GIB:.3f} "
                       f"| {(e.total - e.parts['runtime']) / GIB:.3f} |")
    return out


def predict(row: Row, facts: dict, constants: memory.DeviceConstants | None = None
            ) -> memory.MemoryEstimate:
    """The model's CPU estimate for a row, with the facts its run had (validation shape, files)."""
    return memory.estimate(row.config(), device="cpu", volume_shape=facts["volume_shape"],
                           mapped_bytes=facts["mapped_bytes"], constants=constants)


def fit(rows: list[Row], results: dict, *, workspace: bool) -> tuple[list[float], list[float]]:
    """Least squares on the relative errors of ``rows``: (runtime GiB, activation_factor[,
    workspace_layers]) and their standard errors. Without ``workspace`` the workspace constant
    stays the library's (the grid cannot tell it apart from the activation factor)."""
    import numpy as np
    from scipy.optimize import least_squares

    fixed = memory.CONSTANTS["cpu"]

    def residuals(x: np.ndarray) -> np.ndarray:
        k = memory.DeviceConstants(runtime=x[0] * GIB, activation_factor=x[1],
                                   workspace_layers=x[2] if workspace else fixed.workspace_layers,
                                   measured=True)
        return np.array([predict(r, results[r.name], k).total / results[r.name]["peak_bytes"] - 1
                         for r in rows])

    x0 = [1.0, 1.0, 2.0] if workspace else [1.0, 1.0]
    sol = least_squares(residuals, x0, bounds=(0, [8, 8, 16][: len(x0)]))
    dof = max(1, len(rows) - len(x0))
    cov = np.linalg.pinv(sol.jac.T @ sol.jac) * (sol.fun @ sol.fun / dof)
    return [float(v) for v in sol.x], [float(v) for v in np.sqrt(np.diag(cov))]


def _parts(e: memory.MemoryEstimate) -> str:
    g = {k: v / GIB for k, v in e.parts.items()}
    return (f"{g['runtime']:.2f} + {g['weights'] + g['optimizer']:.2f} + {g['activations']:.2f} "
            f"+ {g['workspace']:.2f} + {g['data']:.2f}")


def table(rows: list[Row], results: dict) -> tuple[list[str], float]:
    """The Markdown table and the largest absolute error among measured rows."""
    out = ["| row | crop | batch | depth | base | norm | ds | up | precision | val batch | params "
           "| predicted GiB | runtime + weights/opt + act + ws + data | phase | measured GiB "
           "| error | within 25% | fit | run s |",
           "|" + "---|" * 19]
    worst = 0.0
    for r in rows:
        res = results.get(r.name, {})
        if "peak_bytes" not in res:
            out.append(f"| {r.name} | {res.get('error', 'not run')} |")
            continue
        e = predict(r, res)
        err = e.total / res["peak_bytes"] - 1
        worst = max(worst, abs(err))
        crop = "x".join(map(str, r.crop))
        out.append(
            f"| {r.name} | {crop} | {r.batch} | {r.depth} | {r.base} | {r.norm} "
            f"| {'on' if r.ds else 'off'} | {r.up} | {r.precision} | {r.val_batch} "
            f"| {memory.parameter_count(r.config()):,} | {e.gib:.2f} | {_parts(e)} | {e.phase} "
            f"| {res['peak_bytes'] / GIB:.2f} | {err * 100:+.1f}% "
            f"| {'pass' if abs(err) <= TOLERANCE else 'FAIL'} | {'fit' if r.fit else 'held out'} "
            f"| {res['seconds']:.0f} |")
    return out, worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only the rows marked quick (5 rows)")
    p.add_argument("--rows", nargs="+", default=None, help="only these rows (by name)")
    p.add_argument("--fit", action="store_true", help="print least-squares constants")
    p.add_argument("--results", type=Path, default=None, help="JSON file of measurements")
    p.add_argument("--reuse", action="store_true", help="do not re-measure rows in --results")
    p.add_argument("--work", type=Path, default=None, help="data and run folder (default: temp)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per training run")
    p.add_argument("--xla-check", action="store_true",
                   help="also compare XLA's buffer sizes (JAX, CPU compile) with the GPU derivation")
    p.add_argument("--xla-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.xla_worker:
        print(json.dumps(xla_worker(*args.xla_worker.split(":"))))
        return 0
    rows = [r for r in GRID if (not args.quick or r.quick) and (not args.rows or r.name in args.rows)]
    results = json.loads(args.results.read_text()) if args.results and args.results.exists() else {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, cache = prepare_data(work, args.timeout)
        for row in rows:
            if args.reuse and "peak_bytes" in results.get(row.name, {}):
                continue
            shape, mapped = split_facts(cache, row.config())
            res = measure(row, data, cache, work, args.timeout)
            results[row.name] = {**res, "volume_shape": list(shape), "mapped_bytes": mapped}
            print(f"{row.name}: {res}", file=sys.stderr, flush=True)
            if args.results:
                args.results.write_text(json.dumps(results, indent=1) + "\n")
    lines, worst = table(rows, results)
    print("\n".join(lines))
    k = memory.CONSTANTS["cpu"]
    print(f"\nconstants: runtime {k.runtime / GIB:.3f} GiB, activation_factor "
          f"{k.activation_factor:.3f}, workspace_layers {k.workspace_layers:.2f}; worst error "
          f"{worst * 100:.1f}%; {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPU cores")
    if args.fit:
        fit_rows = [r for r in rows if r.fit and "peak_bytes" in results.get(r.name, {})]
        for ws in (False, True):
            if len(fit_rows) < 6:  # a fit needs more rows than constants to mean anything
                print(f"fit: {len(fit_rows)} measured rows marked fit; at least 6 needed")
                break
            x, se = fit(fit_rows, results, workspace=ws)
            names = ["runtime GiB", "activation_factor", "workspace_layers"][: len(x)]
            print(f"fit on {len(fit_rows)} rows: " + ", ".join(
                f"{n} {v:.3f} +- {s:.3f}" for n, v, s in zip(names, x, se, strict=True)))
    if args.xla_check:
        print("\n" + "\n".join(xla_check(rows, args.timeout)))
    measured = [r for r in rows if "peak_bytes" in results.get(r.name, {})]
    return 0 if measured and worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
