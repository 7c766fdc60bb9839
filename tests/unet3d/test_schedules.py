"""Learning-rate schedules: the rate at known steps, and a ``wsd`` run continued from its checkpoint
taking exactly the steps of a run that was that long from the start."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet3d.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from unet3d.training.schedules import continues, make_schedule, stable_until


def _cfg(**train) -> RunConfig:
    base = dict(epochs=10, steps_per_epoch=10, learning_rate=1e-3, warmup_epochs=2,
                min_lr_ratio=0.05)
    return RunConfig(train=TrainConfig(**{**base, **train}))


def _rate(cfg: RunConfig, step: int) -> float:
    return float(np.asarray(make_schedule(cfg)(step)))


def test_cosine_warms_up_from_one_percent_then_decays_over_the_steps_after_it():
    cfg = _cfg()
    assert _rate(cfg, 0) == pytest.approx(1e-5)
    assert _rate(cfg, 10) == pytest.approx(0.5 * (1e-5 + 1e-3))  # half-way through the warm-up
    assert _rate(cfg, 20) == pytest.approx(1e-3)  # the peak when the warm-up ends
    # Half-way through the 80 decay steps, the cosine's midpoint; the last step at the floor.
    assert _rate(cfg, 60) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5), rel=1e-5)
    assert _rate(cfg, 100) == pytest.approx(5e-5, rel=1e-5)
    assert _rate(_cfg(warmup_epochs=0), 0) == pytest.approx(1e-3)


def test_the_optimizer_follows_the_configured_schedule():
    from unet3d.training.train import make_optimizer

    opt = make_optimizer(_cfg(schedule="wsd", cooldown_epochs=3))
    assert float(np.asarray(opt.learning_rate)) == pytest.approx(1e-5)  # step 0
    opt.iterations.assign(50)
    assert float(np.asarray(opt.learning_rate)) == pytest.approx(1e-3)
    assert type(make_optimizer(_cfg(weight_decay=0.01))).__name__ == "AdamW"


def test_wsd_holds_the_peak_then_cools_down_in_the_one_minus_sqrt_shape():
    cfg = _cfg(schedule="wsd", cooldown_epochs=4)  # decay over steps 60..100
    assert _rate(cfg, 0) == pytest.approx(1e-5)
    assert _rate(cfg, 20) == pytest.approx(1e-3)
    assert _rate(cfg, 59) == pytest.approx(1e-3)
    assert _rate(cfg, 60) == pytest.approx(1e-3)
    quarter = 1e-3 * (0.05 + 0.95 * (1 - math.sqrt(0.25)))
    assert _rate(cfg, 70) == pytest.approx(quarter, rel=1e-5)
    assert _rate(cfg, 100) == pytest.approx(5e-5, rel=1e-5)
    assert _rate(cfg, 150) == pytest.approx(5e-5, rel=1e-5)  # (stays at the floor)
    open_ended = _cfg(schedule="wsd")
    assert [_rate(open_ended, s) for s in (20, 99, 100, 1000)] == pytest.approx([1e-3] * 4)
    assert stable_until(cfg) == 60 and stable_until(open_ended) == 100
    assert stable_until(_cfg()) is None


def test_the_schedule_fields_are_validated_and_repaired():
    with pytest.raises(ConfigError, match="train.schedule='linear' is not one of cosine, wsd"):
        _cfg(schedule="linear")
    with pytest.raises(ConfigError, match="train.cooldown_epochs=3 needs train.schedule='wsd'"):
        _cfg(cooldown_epochs=3)
    with pytest.raises(ConfigError, match="train.cooldown_epochs=9 must be <= 8"):
        _cfg(schedule="wsd", cooldown_epochs=9)  # (10 epochs, 2 of warm-up)
    shorter = _cfg(schedule="wsd", cooldown_epochs=8).with_epochs(5)
    assert (shorter.train.warmup_epochs, shorter.train.cooldown_epochs) == (2, 3)


def test_which_runs_can_be_continued():
    open_ended = _cfg(schedule="wsd", epochs=4)
    longer = _cfg(schedule="wsd", epochs=10, cooldown_epochs=2)
    assert continues(open_ended, longer, steps_done=40)
    assert continues(open_ended, longer, steps_done=20)
    # Not past the new schedule's cool-down start (step 80), nor after the old one cooled down.
    assert not continues(_cfg(schedule="wsd", epochs=9), longer, steps_done=90)
    assert not continues(_cfg(schedule="wsd", epochs=4, cooldown_epochs=1), longer, steps_done=40)
    assert continues(_cfg(schedule="wsd", epochs=4, cooldown_epochs=1), longer, steps_done=30)
    # Cosine rates depend on the length; other fields may not change.
    assert not continues(_cfg(epochs=4), _cfg(epochs=10), steps_done=40)
    assert not continues(open_ended, longer.replace(train={"learning_rate": 2e-3}), 40)


def _tiny(epochs: int, cooldown: int) -> RunConfig:
    return RunConfig(model=ModelConfig(depth=2, base_filters=4, max_filters=8),
                     train=TrainConfig(epochs=epochs, steps_per_epoch=2, batch_size=2,
                                       warmup_epochs=1, schedule="wsd", cooldown_epochs=cooldown,
                                       min_lr_ratio=0.1, learning_rate=3e-3, xla="off",
                                       precision="fp32"),
                     data=DataConfig(crop=(16, 16, 16)))


def test_a_wsd_run_continued_from_its_checkpoint_equals_one_trained_straight_through(
        synth16, tmp_path, seed):
    """2 epochs at the constant rate, then continued to 4 epochs whose last 2 cool down, against
    the 4-epoch run trained straight: the same steps on the same crops, so the same weights to
    float32 round-off (a skipped, repeated or differently-scaled step moves them by ~1e-3)."""
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.training.train import Trainer, TrainError

    entries = prepare(discover(synth16).cases[:2], tmp_path / "cache")
    straight = Trainer(_tiny(4, 2), entries, [], tmp_path / "straight")
    m_straight = straight.fit()
    Trainer(_tiny(2, 0), entries, [], tmp_path / "cont").fit()
    lines: list[str] = []
    continued = Trainer(_tiny(4, 2), entries, [], tmp_path / "cont", resume=True, log=lines.append)
    m_cont = continued.fit()
    assert any("continuing" in ln and "to 4 epochs, cool-down 2" in ln for ln in lines), lines
    assert [h["epoch"] for h in m_cont["history"]] == [1, 2, 3, 4]
    for key in ("loss", "learning_rate"):
        np.testing.assert_allclose([h[key] for h in m_cont["history"]],
                                   [h[key] for h in m_straight["history"]], rtol=1e-5, atol=1e-7)
    assert m_cont["history"][-1]["learning_rate"] < m_cont["history"][1]["learning_rate"] / 2
    assert int(continued.train_model.optimizer.iterations) == 8
    for a, b in zip(straight.model.get_weights(), continued.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

    # A run that has cooled down has ended for good; a cosine run cannot be lengthened.
    with pytest.raises(TrainError, match="only a train.schedule 'wsd' run that has not started"):
        Trainer(_tiny(6, 2), entries, [], tmp_path / "straight", resume=True).fit()
    cosine = _tiny(1, 0).replace(train={"schedule": "cosine"})
    Trainer(cosine, entries, [], tmp_path / "cos").fit()
    with pytest.raises(TrainError, match="different configuration"):
        Trainer(cosine.with_epochs(2), entries, [], tmp_path / "cos", resume=True).fit()
