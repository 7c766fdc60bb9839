"""Shared fixtures. Every output goes under tmp_path; volumes are tiny (16^3-64^3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unet3d  # noqa: F401  (runtime defaults before TensorFlow loads)

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def synth16(tmp_path_factory) -> Path:
    """16 synthetic 64^3 cases in the BraTS 2021 layout (written once per session)."""
    from unet3d.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth16")
    write_synthetic_dataset(out, 16, (64, 64, 64), seed=0)
    return out
