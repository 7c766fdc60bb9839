"""Horovod data parallelism with 2 CPU (Gloo) workers on this machine."""

from __future__ import annotations

import subprocess
import sys
import time

import cloudpickle
import numpy as np
import psutil
import pytest
from conftest import ROOT, error_line, run_cli

from unet3d.config import DataConfig, ModelConfig, RunConfig, TrainConfig

pytestmark = pytest.mark.slow

# Workers unpickle the functions below; this test module is not importable there, so ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Instance norm and a batch-separable loss: the mean loss over 2b crops is the average of two
# means over b crops, so two workers with batch b and one with 2b follow the same gradients. The
# augmentation runs on the host, where each crop's draws follow its index in the stream whatever
# the batch and rank (on the device each rank draws from its own generator, by design).
CFG = RunConfig(model=ModelConfig(depth=3, base_filters=4, norm="instance"),
                train=TrainConfig(epochs=1, steps_per_epoch=4, batch_size=2, learning_rate=1e-3,
                                  warmup_epochs=0, min_lr_ratio=1.0, xla="off"),
                data=DataConfig(crop=(16, 16, 16), augment_on="host"))


def _cases(cache, ids):
    import json
    from pathlib import Path

    from unet3d.data.preprocess import CachedCase

    return [CachedCase(Path(cache) / i, json.loads((Path(cache) / i / "meta.json").read_text()))
            for i in ids]


def _worker(config, cache, ids, out):
    """Trains on every rank and returns (rank, weights): the test compares them."""
    from unet3d.config import RunConfig
    from unet3d.training import distributed
    from unet3d.training.train import Trainer

    workers = distributed.init()
    t = Trainer(RunConfig.from_dict(config), _cases(cache, ids), [], out, workers=workers)
    t.fit()
    return workers.rank, [np.asarray(w) for w in t.model.get_weights()]


@pytest.fixture(scope="module")
def prepared(synth16, tmp_path_factory):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare

    cache = tmp_path_factory.mktemp("cache")
    entries = prepare(discover(synth16).cases[:4], cache)
    return str(cache), [e.case_id for e in entries]


def test_every_rank_holds_identical_weights_and_matches_one_worker_with_twice_the_batch(
        prepared, tmp_path):
    from unet3d.training import distributed
    from unet3d.training.train import Trainer

    cache, ids = prepared
    results = distributed.launch(_worker, dict(config=CFG.to_dict(), cache=cache, ids=ids,
                                               out=str(tmp_path / "two")), 2)
    by_rank = dict(results)
    assert sorted(by_rank) == [0, 1]
    for a, b in zip(by_rank[0], by_rank[1], strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical: same allreduced update on each rank

    one = Trainer(CFG.replace(train={"batch_size": 4}), _cases(cache, ids), [], tmp_path / "one")
    one.fit()
    import keras

    from unet3d.training.model import build_unet3d

    keras.utils.set_random_seed(CFG.train.seed)  # the initial weights both runs started from
    w0 = build_unet3d(CFG.model).get_weights()
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one.model.get_weights(), w0, strict=True))
    diff = max(float(np.abs(a - b).max())
               for a, b in zip(one.model.get_weights(), by_rank[0], strict=True))
    # Tolerance: the two runs see the same 16 crops and the same initial weights; only float32
    # summation order differs (allreduce of two half-batch means vs one mean). Adam normalises
    # each step to about lr = 1e-3 per weight, so 4 steps move weights up to ~4e-3; the runs must
    # agree far more closely than that: within 5% of the largest move.
    print(f"max weight move {moved:.3e}, max 2-worker vs 1-worker difference {diff:.3e}")
    assert moved > 1e-3
    assert diff < 0.05 * moved, (diff, moved)


def _listening(pids: set[int]) -> set[str]:
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    return {ln.split()[3] for ln in ss.splitlines() if any(f"pid={p}," in ln for p in pids)}


def test_cli_train_with_two_workers(synth16, tmp_path):
    """Trains with 2 workers, and every socket the launcher and the workers listen on is on
    127.0.0.1 (Horovod's own servers would bind every interface)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), "train", "--data", str(synth16), "--cache",
         str(tmp_path / "cache"), "--preset", "cpu-small", "--epochs", "2", "--steps-per-epoch", "4",
         "--workers", "2", "--scale-lr", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            tree = psutil.Process(proc.pid)
            pids = {proc.pid, *(c.pid for c in tree.children(recursive=True))}
        except psutil.NoSuchProcess:
            break
        seen |= _listening(pids)
        time.sleep(0.3)
    stdout, stderr = proc.communicate(timeout=600)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert seen, "saw no listening socket of the launcher or its workers"
    assert all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in seen), seen
    assert "launching 2 Horovod workers" in r.stdout
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    cfg = RunConfig.load(out / "config.json")
    assert cfg.train.learning_rate == pytest.approx(2 * 3e-3)  # --scale-lr with 2 workers
    assert len(metrics["history"]) == 2 and len(metrics["per_case"]) == 4  # every case, once
    assert (out / "model.keras").exists()
    # only rank 0 logs epochs
    assert r.stdout.count("epoch 2/2") == 1


def test_workers_without_horovod_give_a_clear_error_and_one_worker_still_trains(synth16, tmp_path):
    # A package that fails to import shadows the installed Horovod, as on a machine without it.
    fake = tmp_path / "nohvd" / "horovod"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named horovod')\n")
    env = {"PYTHONPATH": str(tmp_path / "nohvd")}
    args = ["train", "--data", str(synth16), "--cache", str(tmp_path / "cache"), "--preset",
            "cpu-small", "--epochs", "1", "--steps-per-epoch", "2"]
    r = run_cli(*args, "--workers", "2", "--out", str(tmp_path / "a"), env=env, timeout=300)
    line = error_line(r)
    assert line.startswith("error: --workers 2: Horovod is not installed") and "make setup" in line
    r = run_cli(*args, "--out", str(tmp_path / "b"), env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ", 1 epoch x 2 steps" in r.stdout, r.stdout  # (not "1 epochs")


def _amp_worker(config, cache, ids, out):
    from unet3d.config import RunConfig
    from unet3d.training import distributed
    from unet3d.training.train import Trainer

    workers = distributed.init()
    t = Trainer(RunConfig.from_dict(config), _cases(cache, ids[:3]), _cases(cache, ids[3:]), out,
                workers=workers)
    metrics = t.fit()
    return (workers.rank, type(t.train_model.optimizer).__name__, metrics["history"][-1]["loss"],
            [np.asarray(w) for w in t.model.get_weights()])


def test_mixed_float16_with_xla_and_loss_scaling_across_workers(prepared, tmp_path):
    """XLA compiles the forward/backward; the allreduce and the loss-scaled update run outside it."""
    from unet3d.training import distributed

    cache, ids = prepared
    cfg = CFG.replace(train={"precision": "mixed_float16", "xla": "on", "epochs": 2})
    results = sorted(distributed.launch(_amp_worker, dict(config=cfg.to_dict(), cache=cache, ids=ids,
                                                          out=str(tmp_path / "amp")), 2))
    (r0, opt0, loss0, w0), (r1, opt1, loss1, w1) = results
    assert (r0, r1) == (0, 1) and opt0 == opt1 == "LossScaleOptimizer"
    assert np.isfinite(loss0) and loss0 == loss1  # the epoch loss is averaged across ranks
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)
