"""The one place a SearchSpace becomes each engine's own space.

- Optuna distributions (for Ray Tune's ``OptunaSearch(space=...)``), and NVIDIA's configuration as
  a point inside the space (offered to the searcher as the first point to evaluate).
- Ray Tune's own domains (for BOHB's searcher and PBT's population and mutations).
- Keras Tuner ``HyperParameters``.
- TensorBoard HParams (the dashboard's parameter columns).
"""

from __future__ import annotations

from typing import Any

from spaces.space import Choice, Float, Int, SearchSpace, config_value, project
from unet3d.config import preset


def to_optuna(space: SearchSpace) -> dict[str, Any]:
    """{name: optuna distribution}."""
    from optuna import distributions as d

    out: dict[str, Any] = {}
    for p in space.params:
        if isinstance(p, Int):
            out[p.name] = d.IntDistribution(p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, Float):
            out[p.name] = d.FloatDistribution(p.low, p.high, log=p.log)
        else:
            out[p.name] = d.CategoricalDistribution(list(p.values))
    return out


def to_tune(space: SearchSpace) -> dict[str, Any]:
    """{name: Ray Tune domain} (``tune.choice`` / ``randint`` / ``qrandint`` / ``uniform``, log
    variants where the parameter is on a log scale)."""
    from ray import tune

    out: dict[str, Any] = {}
    for p in space.params:
        if isinstance(p, Int):
            if p.log:
                out[p.name] = tune.lograndint(p.low, p.high + 1)
            elif p.step == 1:
                out[p.name] = tune.randint(p.low, p.high + 1)
            else:
                out[p.name] = tune.qrandint(p.low, p.high, p.step)
        elif isinstance(p, Float):
            out[p.name] = (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
        else:
            out[p.name] = tune.choice(list(p.values))
    return out


def nvidia_point(space: SearchSpace) -> dict[str, Any]:
    """NVIDIA's reference configuration projected into ``space`` (nearest value per parameter)."""
    ref = preset("nvidia")
    return {p.name: project(p, config_value(ref, p.name)) for p in space.params}


def define_keras_tuner(space: SearchSpace, hp: Any) -> dict[str, Any]:
    """Registers every parameter on a ``keras_tuner.HyperParameters`` and returns the sample."""
    sample: dict[str, Any] = {}
    for p in space.params:
        if isinstance(p, Int):
            # Keras Tuner's log-scale step is a multiplier (> 1); no step = every integer.
            sample[p.name] = hp.Int(p.name, p.low, p.high, step=None if p.log else p.step,
                                    sampling="log" if p.log else "linear")
        elif isinstance(p, Float):
            sample[p.name] = hp.Float(p.name, p.low, p.high, sampling="log" if p.log else "linear")
        elif len(p.values) == 1:
            # hp.Boolean would also offer the other boolean; hp.Choice turns True into 1.
            sample[p.name] = hp.Fixed(p.name, p.values[0])
        elif set(p.values) == {False, True} and all(isinstance(v, bool) for v in p.values):
            sample[p.name] = hp.Boolean(p.name)
        else:
            sample[p.name] = hp.Choice(p.name, list(p.values))
    return sample


def to_hparams(space: SearchSpace) -> list[Any]:
    """TensorBoard ``HParam`` declarations: a domain per parameter (values TensorBoard can show)."""
    from tensorboard.plugins.hparams import summary_v2 as hp  # (its `api` imports TensorFlow)

    out = []
    for p in space.params:
        if isinstance(p, Choice):
            vals = [v if isinstance(v, (bool, int, float, str)) else str(v) for v in p.values]
            out.append(hp.HParam(p.name, hp.Discrete(vals)))
        elif isinstance(p, Int):
            out.append(hp.HParam(p.name, hp.IntInterval(p.low, p.high)))
        else:
            out.append(hp.HParam(p.name, hp.RealInterval(float(p.low), float(p.high))))
    return out


__all__ = ["to_optuna", "to_tune", "nvidia_point", "define_keras_tuner", "to_hparams"]
