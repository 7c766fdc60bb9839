"""The GPU benchmarks' smoke runs on the CPU (benchmarks/bench_gpu.py, bench_memory_gpu.py): they run
as they will on the lent GPU machine, under Keras's JAX backend with TensorFlow made unimportable
(that machine has none), and print and write the tables the GPU session reads. Tiny shapes; the
MONAI side is left out here (it needs PyTorch, which the project's environment has not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unet3d.config import RunConfig, preset
from unet3d.planning import memory

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_PARAMS = 31_196_196

pytestmark = pytest.mark.slow


@pytest.fixture
def no_tf_env(tmp_path) -> dict[str, str]:
    """The environment of the GPU machine as far as imports go: JAX backend, no TensorFlow."""
    pytest.importorskip("jax")
    site = tmp_path / "no_tf"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorflow'] = None  # import tensorflow raises ImportError\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    return r


def test_bench_gpu_smoke(tmp_path, no_tf_env):
    out = tmp_path / "bench_gpu.json"
    r = _run("bench_gpu.py", "--peer-python", "none", "--json", str(out), env=no_tf_env)
    assert "MONAI DynUNet skipped" in r.stdout
    assert "bf16 matmul peak" in r.stdout
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("ours fp32 (Keras JAX, XLA)")]
    assert len(table) == 1 and f"{NVIDIA_PARAMS:,}" in table[0], r.stdout
    res = json.loads(out.read_text())
    assert res["smoke"] and res["job"]["crop"] == 32 and res["versions"]["keras"]
    assert [row["framework"] for row in res["rows"]] == ["ours fp32 (Keras JAX, XLA)"]
    assert res["variants"] == ["fp32"] and res["rows"][0]["precision"] == "float32"
    ours = res["rows"][0]
    assert ours["error"] is None
    # The full-size network whatever the crop: the nvidia preset's count, as the memory model says.
    assert ours["params"] == NVIDIA_PARAMS == memory.parameter_count(preset("nvidia"))
    assert ours["train_ms"] > 0 and ours["volumes_per_s"] > 0 and ours["infer_ms"] > 0
    assert ours["volumes_per_s"] == pytest.approx(res["job"]["batch"] / (ours["train_ms"] / 1000))
    assert ours["loss"] > 0 and res["matmul"]["tflops"] > 0


def test_the_ratios_the_gpu_acceptance_reads():
    """bench_gpu's summary lines: each variant against MONAI (training faster is > 1x, inference
    faster is > 1x too), bf16 against fp32, the model's up-sampling against Keras's layer."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_gpu import ratio_lines

    def r(vps, infer_ms):
        return {"volumes_per_s": vps, "infer_ms": infer_ms}

    lines = ratio_lines({"bf16": r(26.0, 100.0), "fp32": r(13.0, 150.0),
                         "bf16-keras-ct": r(3.25, 120.0)}, r(20.0, 200.0))
    assert lines == [
        "ours bf16 / MONAI: training 1.30x, inference 2.00x as fast",
        "ours fp32 / MONAI: training 0.65x, inference 1.33x as fast",
        "ours bf16-keras-ct / MONAI: training 0.16x, inference 1.67x as fast",
        "bf16 / fp32: training 2.00x",
        "UpConv3D / Keras's Conv3DTranspose (bf16): training 8.00x, inference 1.20x as fast"]
    # a worker that measured nothing: a dash, not a crash
    assert ratio_lines({"bf16": r(None, None)}, r(20.0, 200.0)) == [
        "ours bf16 / MONAI: training -, inference - as fast"]
    # volumes/s of other crops (the CPU smoke run trains MONAI at 64^3) are not compared
    assert ratio_lines({"fp32": {**r(2.0, 100.0), "train_crop": 32}},
                       {**r(1.0, 100.0), "train_crop": 64}) == [
        "ours fp32 / MONAI: training - (other crops), inference 1.00x as fast"]


def test_the_profile_report_ranks_device_ops_against_their_flop_bound_time():
    """gpu_profile_report's tables from the profiler's DataTables (as its GPU traces give them;
    a CPU trace has no device ops): 2 steps, a 1000 TFLOP/s peak."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_profile_report import kernel_table, op_table, rows_of

    cols = ["host_or_device", "type", "operation", "total_self_time", "measured_flop_rate",
            "bound_by"]
    table = {"cols": [{"id": c} for c in cols], "rows": [{"c": [{"v": v} for v in row]} for row in [
        ("Device", "conv_general_dilated", "jit(step)/conv", 8000.0, 100_000.0, "Compute"),
        ("Device", "add", "jit(step)/add", 2000.0, 0.0, "HBM"),
        ("Host", "Function", "train_on_batch", 99999.0, 0.0, ""),
        ("Device", "IDLE", "IDLE", 5000.0, 0.0, "")]]}
    ops = rows_of(table)
    lines = op_table(ops, steps=2, peak_tflops=1000.0)
    assert lines[1].split()[:2] == ["jit(step)/conv", "conv_general_dilated"]
    # 4 ms a step, 80% of the busy time, 100 TFLOP/s: 0.4 ms at peak, 10x it
    assert lines[1].split()[2:7] == ["4.00", "80.0%", "100.0", "0.400", "10.0"]
    assert lines[2].split()[:4] == ["jit(step)/add", "add", "1.00", "20.0%"]
    assert lines[-1] == "device busy 5.0 ms/step over 2 ops"
    kernels = [{"kernel_name": "sm90_gemm", "op_name": "dot", "total_duration_us": 3000.0,
                "is_op_tensor_core_eligible": True, "is_kernel_using_tensor_core": True},
               {"kernel_name": "conv_wgrad", "op_name": "conv", "total_duration_us": 9000.0,
                "is_op_tensor_core_eligible": True, "is_kernel_using_tensor_core": False}]
    lines = kernel_table(kernels, steps=3)
    assert lines[1].split() == ["conv_wgrad", "conv", "3.00", "75.0%", "yes/no"]
    assert lines[-1] == "kernels 4.0 ms/step over 2 kernels"


def test_bench_memory_gpu_smoke(tmp_path, no_tf_env):
    out = tmp_path / "bench_memory_gpu.json"
    r = _run("bench_memory_gpu.py", "--json", str(out), env=no_tf_env)
    res = json.loads(out.read_text())
    assert res["smoke"] and len(res["rows"]) == 1
    row = res["rows"][0]
    assert row["error"] is None and row["config"] in r.stdout
    cfg = RunConfig.from_dict(row["cfg"])
    est = memory.estimate(cfg, device="gpu")
    assert row["predicted_gib"] == pytest.approx(est.gib) and row["estimate"] == est.to_dict()
    assert row["estimate"]["phase"] == "validation" and row["validation_run"]
    assert row["params"] == memory.parameter_count(cfg)  # the worker's Keras count
    # A CPU has no device allocator statistics and no nvidia-smi: n/a, not a number.
    if row["alloc_peak_gib"] is None:
        assert "n/a" in r.stdout
    else:
        assert row["alloc_peak_gib"] > 0
    assert row["process_gib"] is None or row["process_gib"] >= 0
