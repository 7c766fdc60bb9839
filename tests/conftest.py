"""Shared fixtures. Every output goes under tmp_path; volumes are tiny (16^3-64^3).

Tiers: tests marked ``slow`` run a search end to end or train in several processes; the rest are
the fast tier (``make test-fast``, a few minutes). A new test of a finished search should read one
of the searches the suite already runs rather than start another (each costs a minute or more):
``ray_search`` (search/test_search_e2e.py: Ray + Optuna + ASHA, 3 trials, exported, with its
report, TensorBoard logs and checkpoints), ``tracked`` (search/test_tracking.py: MLflow and W&B),
the default run (search/test_default_run.py: the race, `make search` itself), ``cluster``
(search/test_cluster.py: a two-node Ray cluster) and ``shared_ray`` (search/test_searchers.py:
one local Ray for the searcher x scheduler grid through the Python API).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# One compute thread per process: `make test` runs two xdist workers on two cores, each starting
# CLI commands and Ray trials of its own, so every process finds the cores already taken; with
# TensorFlow's and XLA's default pools (a thread per core, spinning while they wait) the processes
# only take turns less efficiently (test_train + test_predict in two workers: 255 s with the
# default pools, 228 s with one thread). Set before TensorFlow loads here; the commands and Ray's
# workers the tests start inherit it. A trial's own limit (limit_cpu_threads) still applies.
for _var, _value in (("TF_NUM_INTRAOP_THREADS", "1"), ("TF_NUM_INTEROP_THREADS", "1"),
                     ("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")):
    os.environ.setdefault(_var, _value)

import unet3d  # noqa: E402, F401  (runtime defaults before TensorFlow loads)
from unet3d.runtime import lean_keras  # noqa: E402

# The tests' own processes load Keras as the package's processes do (unet3d.runtime.lean_keras:
# the garbage collector paused for the import, what it made frozen), so that each test's graph
# tracing does not walk TensorFlow's objects again.
lean_keras()

ROOT = Path(__file__).resolve().parents[1]


# The longest test files, longest first (seconds on the 2-core machine, a /tmp clone of a44d963,
# two workers, 2026-12-07; the default run's before its budget was cut to a quarter). `make test`
# hands files to its two xdist workers in collection order (--no-loadscope-reorder; xdist's own
# order, most tests first, left the default run for last and one worker idle for its length):
# longest first is the greedy schedule that ends the two workers closest together. Files not
# listed follow in pytest's order.
LONGEST_FIRST = [
    "search/test_search_e2e.py",       # 342
    "search/test_searchers.py",        # 312
    "search/test_default_run.py",      # 210 at a third of the demo budget (199 at a quarter, 07b52d8)
    "unet3d/test_train.py",            # 204
    "search/test_cluster.py",          # 191
    "unet3d/test_backends.py",         # 147
    "unet3d/test_predict.py",          # 139
    "unet3d/test_distributed.py",      # 127
    "search/test_slurm.py",            # 94
    "search/test_search_horovod.py",   # 89
    "search/test_api.py",              # 83
    "search/test_tracking.py",         # 64
    "unet3d/test_schemes_e2e.py",      # 62
    "search/test_planned_search.py",   # 61
    "search/test_faults.py",           # 49
    "unet3d/test_onnx.py",             # 49
    "search/test_search_schemes.py",   # 47
    "search/test_memory_budget.py",    # 46
    "test_cli_errors.py",              # 44
]


def pytest_collection_modifyitems(config, items) -> None:
    missing = [f for f in LONGEST_FIRST if not (ROOT / "tests" / f).exists()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST: no such test file {missing}")
    rank = {str(ROOT / "tests" / f): i for i, f in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))  # (stable: in-file order kept)


@pytest.fixture
def seed() -> int:
    """Seeds numpy and Keras for a test; returns the seed."""
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    return 1234


def run_cli(*args: str, timeout: float = 600, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs ``python run_search.py ARGS`` in a subprocess, bounded in time."""
    return subprocess.run([sys.executable, str(ROOT / "run_search.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or ROOT,
                          env={**os.environ, **(env or {})})


# TensorFlow 2.21 writes these C++ log lines on import whatever TF_CPP_MIN_LOG_LEVEL says; they are
# not the command's output.
TF_IMPORT_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
                           r"[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


def error_line(r: subprocess.CompletedProcess, alone: bool = False) -> str:
    """The house rule for bad input, checked on a finished command: exit 2, no traceback, exactly one
    line ``error: ...`` on stderr (with ``alone``: nothing else there, not even a blank line, but
    TensorFlow's import log). Returns that line."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if not TF_IMPORT_LOG.match(ln)]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and (lines == errors or not alone), r.stderr[-3000:]
    return errors[0]


@pytest.fixture
def pools_started(monkeypatch) -> list[str]:
    """What each worker pool the test starts is for (``unet3d.processes.worker_pool``'s ``what``),
    in order: the pools still start."""
    from unet3d import processes

    started: list[str] = []
    real = processes.worker_pool

    def pool(jobs: int, what: str):
        started.append(what)
        return real(jobs, what)

    monkeypatch.setattr(processes, "worker_pool", pool)
    return started


@pytest.fixture(scope="session")
def synth16(tmp_path_factory) -> Path:
    """16 synthetic 64^3 cases in the BraTS 2021 layout (written once per session)."""
    from unet3d.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth16")
    write_synthetic_dataset(out, 16, (64, 64, 64), seed=0)
    return out
