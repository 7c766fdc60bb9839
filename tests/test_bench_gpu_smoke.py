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

from unet3d import memory
from unet3d.config import RunConfig, preset

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
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("ours (Keras 3 JAX, XLA)")]
    assert len(table) == 1 and f"{NVIDIA_PARAMS:,}" in table[0], r.stdout
    res = json.loads(out.read_text())
    assert res["smoke"] and res["job"]["crop"] == 32 and res["versions"]["keras"]
    assert [row["framework"] for row in res["rows"]] == ["ours (Keras 3 JAX, XLA)"]
    ours = res["rows"][0]
    assert ours["error"] is None
    # The full-size network whatever the crop: the nvidia preset's count, as the memory model says.
    assert ours["params"] == NVIDIA_PARAMS == memory.parameter_count(preset("nvidia"))
    assert ours["train_ms"] > 0 and ours["volumes_per_s"] > 0 and ours["infer_ms"] > 0
    assert ours["volumes_per_s"] == pytest.approx(res["job"]["batch"] / (ours["train_ms"] / 1000))
    assert ours["loss"] > 0 and res["matmul"]["tflops"] > 0


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
