"""Keras backends and precision: TensorFlow and JAX take the same training steps (same losses and
Dice from the same weights and crops), each trains through the CLI to a useful Dice (JAX
data-parallel over two devices), a model trained under one predicts the same labels under the
other, ``precision: auto`` resolves per device, a backend that cannot be had is one line, and JAX
processes share a persistent compilation cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, run_cli

from unet3d.config import RunConfig, preset
from unet3d.planning import memory
from unet3d.runtime import BackendError, auto_precision, resolve_precision, use_backend

BACKENDS = ("tensorflow", "jax")


def test_precision_auto_resolves_per_device():
    assert auto_precision(None) == "fp32"  # CPU
    assert auto_precision(7.0) == "mixed_float16"  # V100: no bfloat16 tensor cores
    assert auto_precision(7.5) == "mixed_float16"  # T4
    assert auto_precision(8.0) == "mixed_bfloat16"  # A100
    assert auto_precision(9.0) == "mixed_bfloat16"  # H100 / H200
    assert resolve_precision("fp32", 9.0) == "fp32"  # an explicit choice stays
    assert resolve_precision("mixed_float16", None) == "mixed_float16"
    assert RunConfig().train.precision == "auto"
    # The memory model sizes auto as the device trains it: half-size activations on a GPU.
    auto = preset("cpu-small")
    fp32 = auto.replace(train={"precision": "fp32"})
    mixed = auto.replace(train={"precision": "mixed_bfloat16"})
    assert memory.estimate(auto, device="cpu").parts == memory.estimate(fp32, device="cpu").parts
    assert memory.estimate(auto, device="gpu").parts == memory.estimate(mixed, device="gpu").parts
    assert memory.estimate(auto, device="gpu").gib < memory.estimate(fp32, device="gpu").gib


def test_a_backend_keras_was_not_loaded_with_is_one_line():
    import keras

    assert keras.backend.backend() == "tensorflow"  # (the test process's)
    use_backend("tensorflow")
    with pytest.raises(BackendError, match=r"backend 'jax': Keras already runs on 'tensorflow'"):
        use_backend("jax")


CACHE_SCRIPT = """
import os, sys, json
import unet3d  # (the runtime defaults, before JAX loads)
import keras
from unet3d.config import ModelConfig
from unet3d.training.model import build_unet3d
if sys.argv[1:] != ["env-only"]:
    build_unet3d(ModelConfig(depth=3, base_filters=4))
print(json.dumps({k: os.environ.get(k) for k in (
    "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}))
"""


@pytest.mark.slow  # (two processes of JAX training)
def test_jax_processes_share_a_persistent_compilation_cache(tmp_path):
    """A JAX process's compiled programs (an initializer's sampler per weight shape: 23 s of
    NVIDIA's network's start on this CPU) go to ~/.cache/unet3d/jax, and the next process compiles
    none of them again: the second build adds no cache entry. A folder that cannot be made leaves
    JAX without one; the user's own JAX_COMPILATION_CACHE_DIR wins."""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("JAX_")}
    env |= {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "c")}

    def build(*args: str, **extra: str) -> dict:
        r = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, *args], capture_output=True,
                           text=True, timeout=300, env=env | extra, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    cache = tmp_path / "c" / "unet3d" / "jax"
    assert build()["JAX_COMPILATION_CACHE_DIR"] == str(cache)
    first = sorted(f.name for f in cache.iterdir())
    assert len(first) > 5
    assert build()["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert sorted(f.name for f in cache.iterdir()) == first  # every program read back
    (tmp_path / "file").write_text("")
    unmade = build("env-only", XDG_CACHE_HOME=str(tmp_path / "file"))
    assert unmade["JAX_COMPILATION_CACHE_DIR"] is None
    mine = str(tmp_path / "mine")
    assert build("env-only", JAX_COMPILATION_CACHE_DIR=mine)["JAX_COMPILATION_CACHE_DIR"] == mine


@pytest.fixture(scope="module")
def lockstep(synth16, tmp_path_factory) -> dict:
    """The same initial weights trained on the same crops (the real pipeline, host augmentation)
    under each backend in a fresh process: {backend: {"loss", "dice_mean", "model": folder}}."""
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.training.model import build_unet3d

    root = tmp_path_factory.mktemp("lockstep")
    cfg = preset("cpu-small").replace(
        model={"depth": 3, "base_filters": 8, "max_filters": 32},
        train={"epochs": 2, "steps_per_epoch": 10, "xla": "off"})
    entries = prepare(discover(synth16).cases[:6], root / "cache")
    np.savez(root / "w0.npz", *build_unet3d(cfg.model).get_weights())
    job = {"root": str(ROOT), "config": cfg.to_dict(), "weights": str(root / "w0.npz"),
           "cache": str(root / "cache"), "train": [e.case_id for e in entries[:4]],
           "val": [e.case_id for e in entries[4:]], "out": str(root)}
    (root / "job.json").write_text(json.dumps(job))
    out = {}
    for backend in BACKENDS:
        r = subprocess.run([sys.executable, str(ROOT / "tests" / "unet3d" / "lockstep_worker.py"),
                            backend, str(root / "job.json")], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        out[backend] = {**json.loads(r.stdout.strip().splitlines()[-1]), "model": root / backend}
    return out


@pytest.mark.slow
def test_both_backends_take_the_same_training_steps(lockstep):
    """Same weights, same crops: the same losses step by step and the same validation Dice.
    (Trained from each backend's own random initialisation, Dice after 100 steps varies from seed
    to seed by up to 0.4 under either backend, so comparing two such runs would test the seeds.)"""
    tf_, jax_ = lockstep["tensorflow"], lockstep["jax"]
    print({b: (r["loss"], r["dice_mean"]) for b, r in lockstep.items()})
    assert tf_["loss"][-1] < tf_["loss"][0]  # (it trained)
    np.testing.assert_allclose(jax_["loss"], tf_["loss"], rtol=2e-3)
    assert jax_["dice_mean"] == pytest.approx(tf_["dice_mean"], abs=0.02)


@pytest.mark.slow
def test_train_under_jax_through_the_cli_data_parallel_on_two_devices(synth16, tmp_path):
    """CLI train --backend jax where JAX sees two devices (XLA's host platform split in two): it
    trains data-parallel through keras.distribution, one crop of the batch of 2 on each, as on a
    machine with 2 GPUs, and records it. (That JAX learns as TensorFlow does is the lockstep test
    above; TensorFlow's CLI training is tests/unet3d/test_train.py.)"""
    config = preset("cpu-small").replace(
        model={"depth": 2, "base_filters": 4, "max_filters": 8},
        train={"epochs": 1, "steps_per_epoch": 4}, data={"crop": (16, 16, 16), "max_val_cases": 1})
    config.save(tmp_path / "tiny.json")
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(synth16), "--cache", str(tmp_path / "cache"), "--config",
                str(tmp_path / "tiny.json"), "--backend", "jax", "--out", str(out), timeout=600,
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = RunConfig.load(out / "config.json")
    assert cfg.train.backend == "jax" and metrics["backend"] == "jax"
    assert metrics["precision"] == "fp32" and cfg.train.precision == "auto"  # (on a CPU)
    assert cfg.data.augment_on == "device" and metrics["devices"] == 2
    assert np.isfinite(metrics["history"][0]["loss"]) and "dice_mean" in metrics["final"]


def _labels(folder: Path) -> np.ndarray:
    (f,) = folder.glob("*.nii.gz")
    return np.asarray(nib.load(f).dataobj)


@pytest.mark.slow
def test_a_model_trained_under_one_backend_predicts_the_same_under_the_other(lockstep, synth16,
                                                                           tmp_path):
    """predict --backend jax (CLI) against predict under TensorFlow (this process), for a model
    trained under each backend."""
    from run_search import main

    case = sorted(p for p in synth16.iterdir() if p.is_dir())[0]
    for trained_under in BACKENDS:
        model = lockstep[trained_under]["model"]
        labels = {}
        for backend in BACKENDS:
            out = tmp_path / f"{trained_under}-on-{backend}"
            args = ["predict", "--model", str(model), "--input", str(case), "--out", str(out),
                    "--backend", backend]
            if backend == "tensorflow":
                assert main(args) == 0
            else:
                r = run_cli(*args)
                assert r.returncode == 0, r.stderr[-3000:]
            assert json.loads((out / "predict.json").read_text())["backend"] == backend
            labels[backend] = _labels(out)
        same = np.mean(labels["tensorflow"] == labels["jax"])
        print(trained_under, "trained: labels equal under both backends on", same, "of voxels")
        assert same > 0.999 and len(np.unique(labels["jax"])) > 1  # (not all background)
