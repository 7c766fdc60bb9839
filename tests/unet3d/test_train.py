"""Training end to end through the CLI: it learns, and a killed run resumes from its checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, error_line, run_cli

from unet3d.config import DataConfig, ModelConfig, RunConfig, TrainConfig


@pytest.mark.slow
def test_cli_train_learns_far_above_an_untrained_model(synth16, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(synth16), "--cache", str(tmp_path / "cache"),
                "--preset", "cpu-small", "--epochs", "6", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation (4 cases): Dice WT" in r.stdout
    for name in ("model.keras", "config.json", "metrics.json", "checkpoint.npz"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = RunConfig.load(out / "config.json")
    assert cfg.train.epochs == 6 and len(metrics["history"]) == 6
    final = metrics["final"]
    assert set(final) >= {"dice_WT", "dice_TC", "dice_ET", "dice_mean", "hd95_WT", "hd95_mean"}
    # The final scores are the last epoch's validation (predicted once), which every epoch's
    # record holds without HD95.
    assert final["dice_mean"] == metrics["history"][-1]["val_dice_mean"]
    assert not [k for h in metrics["history"] for k in h if k.startswith("val_hd95")]

    # The same architecture, untrained, on the same validation cases.
    from unet3d.data.preprocess import CachedCase
    from unet3d.evaluation.evaluate import evaluate_cases, mean_scores
    from unet3d.training.checkpoint import load_model
    from unet3d.training.model import build_unet3d

    val = [CachedCase(tmp_path / "cache" / cid,
                      json.loads((tmp_path / "cache" / cid / "meta.json").read_text()))
           for cid in metrics["val_cases"]]
    untrained = mean_scores(evaluate_cases(build_unet3d(cfg.model), val, cfg))
    print("trained", final, "untrained", untrained)
    assert final["dice_WT"] > 0.6
    assert final["dice_WT"] > untrained["dice_WT"] + 0.3
    assert final["dice_mean"] > untrained["dice_mean"] + 0.2

    # The saved model loads with safe mode and scores what the run reported.
    reloaded = mean_scores(evaluate_cases(load_model(out / "model.keras"), val, cfg))
    assert reloaded["dice_WT"] == pytest.approx(final["dice_WT"], abs=1e-6)

    # `export RUN` writes RUN/export as a search exports its best; its model is the run's.
    r = run_cli("export", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == (f"exported: {out / 'export'} (model.keras, saved_model/, model.onnx "
                                f"checked against Keras, MODEL_CARD.md)")
    assert json.loads((out / "export" / "metrics.json").read_text()) == metrics
    assert (out / "export" / "model.onnx").exists() and (out / "export" / "saved_model").is_dir()
    for a, b in zip(load_model(out / "export" / "model.keras").get_weights(),
                    load_model(out / "model.keras").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    # TensorBoard got the per-epoch scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
    assert {"loss", "learning_rate", "throughput_vps", "val_dice_WT", "val_dice_mean"} <= tags


def _state(ckpt: Path) -> dict | None:
    try:
        with np.load(ckpt) as z:
            return json.loads(str(z["state"]))
    except Exception:  # noqa: BLE001  (not there yet, or being replaced)
        return None


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(synth16, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(synth16), "--cache", str(tmp_path / "cache"), "--preset",
            "cpu-small", "--epochs", "5", "--steps-per-epoch", "6", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    state = None
    try:
        while time.monotonic() < deadline:
            state = _state(out / "checkpoint.npz")
            if state and state["epoch"] >= 2:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert state and 2 <= state["epoch"] < 5, state
    killed_at = _state(out / "checkpoint.npz")
    assert not (out / "model.keras").exists()

    # A run stopped before its end exports its last checkpoint (an --out beside it).
    r = run_cli("export", str(out), "--out", str(tmp_path / "killed_export"))
    assert r.returncode == 0, r.stderr[-3000:]
    exported = json.loads((tmp_path / "killed_export" / "metrics.json").read_text())
    assert exported["epoch"] == killed_at["epoch"] and exported["history"] == killed_at["history"]
    assert {"model.keras", "model.onnx", "saved_model", "config.json", "MODEL_CARD.md"} <= \
        {p.name for p in (tmp_path / "killed_export").iterdir()}
    assert f"last checkpoint (epoch {killed_at['epoch']})" in \
        (tmp_path / "killed_export" / "MODEL_CARD.md").read_text()

    # Without --resume the run refuses to overwrite the checkpoint.
    r = run_cli(*args)
    assert "--resume" in error_line(r)

    r = run_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"after epoch {killed_at['epoch']}" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = [h["epoch"] for h in metrics["history"]]
    assert epochs == [1, 2, 3, 4, 5]
    # The epochs done before the kill are kept as they were, not retrained.
    assert metrics["history"][: killed_at["epoch"]] == killed_at["history"]
    assert r.stdout.count("epoch ") - r.stdout.count("after epoch") == 5 - killed_at["epoch"]


def test_checkpoint_restores_weights_and_optimizer_state(synth16, tmp_path, seed):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.folders import RunFolder
    from unet3d.training.checkpoint import _random_states
    from unet3d.training.train import Trainer

    entries = prepare(discover(synth16).cases[:3], tmp_path / "cache")
    cfg = RunConfig(model=ModelConfig(depth=3, base_filters=4),
                    train=TrainConfig(epochs=2, steps_per_epoch=2, warmup_epochs=0, xla="off"),
                    data=DataConfig(crop=(16, 16, 16)))
    t1 = Trainer(cfg.replace(train={"epochs": 1}), entries[:2], [], tmp_path / "a")
    t1.fit()
    assert RunFolder(tmp_path / "a").checkpoint.exists()
    t2 = Trainer(cfg.replace(train={"epochs": 1}), entries[:2], [], tmp_path / "a", resume=True)
    t2.fit()  # nothing left to train: loads the checkpoint and finishes
    for a, b in zip(t1.model.get_weights(), t2.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    o1, o2 = t1.train_model.optimizer, t2.train_model.optimizer
    assert int(o2.iterations) == int(o1.iterations) == 2
    for a, b in zip(o1.variables, o2.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The on-device augmentation's random-number state too (two draws per step: it moved).
    s1, s2 = _random_states(t1.train_model), _random_states(t2.train_model)
    assert len(s1) == 1 and int(np.asarray(s1[0])[1]) > cfg.train.seed
    np.testing.assert_array_equal(np.asarray(s1[0]), np.asarray(s2[0]))


def test_resume_with_another_config_is_refused(synth16, tmp_path):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.training.train import Trainer, TrainError

    entries = prepare(discover(synth16).cases[:2], tmp_path / "cache")
    cfg = RunConfig(model=ModelConfig(depth=3, base_filters=4),
                    train=TrainConfig(epochs=1, steps_per_epoch=1, warmup_epochs=0, xla="off"),
                    data=DataConfig(crop=(16, 16, 16)))
    Trainer(cfg, entries, [], tmp_path / "a").fit()
    other = cfg.replace(model={"base_filters": 8})
    with pytest.raises(TrainError, match="different configuration"):
        Trainer(other, entries, [], tmp_path / "a", resume=True).fit()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_runs_a_step_with_loss_scaling(precision, synth16, tmp_path):
    import keras

    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.training.train import Trainer

    entries = prepare(discover(synth16).cases[:2], tmp_path / "cache")
    cfg = RunConfig(model=ModelConfig(depth=3, base_filters=4),
                    train=TrainConfig(epochs=1, steps_per_epoch=2, warmup_epochs=0, xla="off",
                                      precision=precision, val_overlap=0.0),  # (64 windows, not 343)
                    data=DataConfig(crop=(16, 16, 16)))
    t = Trainer(cfg, entries[:1], entries[1:], tmp_path / "a")
    m = t.fit()
    assert np.isfinite(m["history"][0]["loss"])
    scaled = isinstance(t.train_model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_a_diverged_loss_stops_training_and_keeps_the_last_good_checkpoint(synth16, tmp_path, seed):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.folders import RunFolder
    from unet3d.training.checkpoint import read_checkpoint
    from unet3d.training.train import Trainer, TrainError

    cases = prepare(discover(synth16).cases[:3], tmp_path / "cache")
    cfg = RunConfig(model=ModelConfig(depth=2, base_filters=4, max_filters=8, norm="batch"),
                    train=TrainConfig(epochs=3, steps_per_epoch=2, batch_size=1, warmup_epochs=0),
                    data=DataConfig(crop=(16, 16, 16)))
    trainer = None

    def poison(epoch, record):  # after epoch 1's checkpoint, the weights go NaN
        for v in trainer.model.trainable_variables:
            v.assign(np.full(v.shape, np.nan, dtype=v.dtype))

    trainer = Trainer(cfg, cases[:2], cases[2:], tmp_path / "run", epoch_hook=poison)
    with pytest.raises(TrainError, match=r"loss is nan in epoch 2: training diverged .*last good "
                                         r"checkpoint is epoch 1"):
        trainer.fit()
    weights, _, state = read_checkpoint(RunFolder(tmp_path / "run").checkpoint)
    assert state["epoch"] == 1 and all(np.isfinite(w).all() for w in weights)


def test_a_fit_traces_its_training_step_once(synth16, tmp_path, monkeypatch):
    """Keras runs the training step in a tf.function; one that creates variables on its first
    call (the optimizer's slots, were they built lazily) is traced a second time: every fit paid
    two traces (~2 s on a CPU) until compile_model built the optimizer."""
    import keras

    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.training.train import Trainer

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow backend's tracing")
    traced = []
    step = keras.Model.train_step

    def counting(model, data):
        traced.append(len(model.optimizer.variables))
        return step(model, data)

    monkeypatch.setattr(keras.Model, "train_step", counting)
    entries = prepare(discover(synth16).cases[:1], tmp_path / "cache")
    cfg = RunConfig(model=ModelConfig(depth=2, base_filters=4),
                    train=TrainConfig(epochs=2, steps_per_epoch=2, warmup_epochs=0, xla="off"),
                    data=DataConfig(crop=(16, 16, 16)))
    Trainer(cfg, entries, [], tmp_path / "run").fit()
    # one trace, with Adam's iteration count, learning rate and two slots per weight already there
    assert len(traced) == 1 and traced[0] > 2, traced


def test_two_epochs_equal_one_epoch_plus_one_resumed(synth16, tmp_path, seed):
    """A resumed run neither repeats nor skips an epoch, a training crop or an optimizer step.

    fp32 on one CPU thread pool with deterministic tf.data: the two runs do the same arithmetic on
    the same crops, so the weights agree to float32 round-off (atol 1e-6 on weights of size ~0.1-1;
    a repeated or skipped step of Adam at lr 2e-4 moves weights by ~1e-4, far above that).
    """
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.training.train import Trainer

    entries = prepare(discover(synth16).cases[:2], tmp_path / "cache")
    cfg = RunConfig(model=ModelConfig(depth=2, base_filters=4, max_filters=8),
                    train=TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, warmup_epochs=1,
                                      xla="off", precision="fp32"),
                    data=DataConfig(crop=(16, 16, 16)))
    straight = Trainer(cfg, entries, [], tmp_path / "straight")
    m_straight = straight.fit()

    # The same 2-epoch run killed after epoch 1 (the hook runs once the checkpoint is written; a
    # fresh run with epochs=1 would be another configuration, refused on resume), then resumed.
    class Killed(Exception):
        pass

    def kill_after_first(epoch, _record):
        if epoch == 1:
            raise Killed

    first = Trainer(cfg, entries, [], tmp_path / "resumed", epoch_hook=kill_after_first)
    with pytest.raises(Killed):
        first.fit()
    resumed = Trainer(cfg, entries, [], tmp_path / "resumed", resume=True)
    m_resumed = resumed.fit()

    assert [h["epoch"] for h in m_resumed["history"]] == [1, 2]
    for key in ("loss", "learning_rate"):
        np.testing.assert_allclose([h[key] for h in m_resumed["history"]],
                                   [h[key] for h in m_straight["history"]], rtol=1e-5, atol=1e-7)
    assert int(resumed.train_model.optimizer.iterations) == 4
    assert int(straight.train_model.optimizer.iterations) == 4
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
