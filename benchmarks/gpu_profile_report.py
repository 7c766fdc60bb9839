#!/usr/bin/env python
"""Per-op tables of a GPU training step from a jax.profiler trace (``bench_gpu.py --profile DIR``,
brought back by ``gpu_session.sh`` as ``profile.xplane.pb.gz``): where the step's time goes, and how
far each op is from the time it would take at the GPU's bf16 peak.

Reads the trace with TensorFlow's profiler converter (the one TensorBoard's profile plugin uses; in
this project's environment, not on the GPU machine), so it runs here, after the GPU session:

  python benchmarks/gpu_profile_report.py profile.xplane.pb.gz --steps 2 --peak 790

Table 1, device ops (XLA ops, grouped by the JAX operation they come from): time per step, share of
the device's busy time, achieved TFLOP/s, and the FLOP-bound time (its FLOPs at ``--peak``
TFLOP/s) with the ratio of the two: a convolution at 20x its FLOP-bound time is the lever, an
elementwise op is bound by memory and its FLOP-bound time says nothing. Table 2, the kernels that
ran: time per step, whether the op could use tensor cores and whether the kernel did.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path


def rows_of(table: dict) -> list[dict]:
    """A Google DataTable (what the profiler's tools return) as one dict per row, by column id."""
    ids = [c["id"] for c in table.get("cols", [])]
    return [{k: (cell or {}).get("v") for k, cell in zip(ids, r.get("c", []), strict=False)}
            for r in table.get("rows", [])]


def tools_data(xplane: Path, tool: str) -> object:
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    data, ok = plugin.xspace_to_tools_data([str(xplane)], tool, {})
    if not ok:
        raise SystemExit(f"{xplane}: the profiler cannot make {tool} of it ({data[:200]!r})")
    return json.loads(data)


def op_table(ops: list[dict], steps: int, peak_tflops: float, top: int = 10) -> list[str]:
    """Table 1 from framework_op_stats' device rows (times in microseconds, rates in GFLOP/s)."""
    device = [o for o in ops if o.get("host_or_device") == "Device" and o.get("type") != "IDLE"]
    if not device:
        return ["no device ops in the trace (a CPU trace has none)"]
    busy = sum(o["total_self_time"] or 0 for o in device)
    device.sort(key=lambda o: o["total_self_time"] or 0, reverse=True)
    lines = [f"{'op':<58} {'type':<22} {'ms/step':>8} {'share':>6} {'TFLOP/s':>8} "
             f"{'at peak ms':>10} {'x peak':>7}  bound by"]
    for o in device[:top]:
        ms = (o["total_self_time"] or 0) / 1000 / steps
        tflops = (o.get("measured_flop_rate") or 0) / 1000
        bound_ms = ms * tflops / peak_tflops if tflops else None
        ratio = f"{ms / bound_ms:7.1f}" if bound_ms else f"{'-':>7}"
        lines.append(f"{str(o['operation'])[-58:]:<58} {str(o['type'])[:22]:<22} {ms:8.2f} "
                     f"{100 * (o['total_self_time'] or 0) / busy:5.1f}% {tflops:8.1f} "
                     + (f"{bound_ms:10.3f}" if bound_ms else f"{'-':>10}")
                     + f" {ratio}  {o.get('bound_by') or ''}")
    lines.append(f"device busy {busy / 1000 / steps:.1f} ms/step over {len(device)} ops")
    return lines


def kernel_table(kernels: list[dict], steps: int, top: int = 10) -> list[str]:
    """Table 2 from kernel_stats (durations in microseconds)."""
    if not kernels:
        return ["no GPU kernels in the trace"]
    kernels = sorted(kernels, key=lambda k: k.get("total_duration_us") or 0, reverse=True)
    total = sum(k.get("total_duration_us") or 0 for k in kernels)
    lines = [f"{'kernel':<60} {'op':<34} {'ms/step':>8} {'share':>6} {'TC eligible/used':>16}"]
    for k in kernels[:top]:
        us = k.get("total_duration_us") or 0
        tc = f"{'yes' if k.get('is_op_tensor_core_eligible') else 'no'}/" \
             f"{'yes' if k.get('is_kernel_using_tensor_core') else 'no'}"
        lines.append(f"{str(k.get('kernel_name'))[:60]:<60} {str(k.get('op_name'))[-34:]:<34} "
                     f"{us / 1000 / steps:8.2f} {100 * us / total:5.1f}% {tc:>16}")
    lines.append(f"kernels {total / 1000 / steps:.1f} ms/step over {len(kernels)} kernels")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("xplane", type=Path, help="an .xplane.pb (or .xplane.pb.gz) file")
    p.add_argument("--steps", type=int, default=3, help="training steps the trace holds")
    p.add_argument("--peak", type=float, default=790.0,
                   help="the GPU's bf16 dense peak, TFLOP/s (H200/H100 SXM: about 790-990; "
                   "bench_gpu.py's matmul line measures it)")
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args()
    if not args.xplane.is_file():
        print(f"{args.xplane}: no such file", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = args.xplane
        if path.suffix == ".gz":  # (the converter reads a plain .xplane.pb)
            path = Path(tmp) / path.name.removesuffix(".gz")
            with gzip.open(args.xplane, "rb") as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        op_stats = tools_data(path, "framework_op_stats")
        ops = rows_of(op_stats[0] if isinstance(op_stats, list) else op_stats)
        kernels = rows_of(tools_data(path, "kernel_stats"))
    print(f"{args.xplane}: {args.steps} steps, peak {args.peak:.0f} TFLOP/s")
    print("\n".join(op_table(ops, args.steps, args.peak, args.top)))
    print()
    print("\n".join(kernel_table(kernels, args.steps, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
