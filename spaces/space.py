"""Search spaces as data: validated Int / Float / Choice parameters over RunConfig fields.

A parameter's name is the dotted RunConfig field it sets ("model.depth", "train.learning_rate").
Three derived names exist: "data.crop" takes a single edge length and sets a cubic crop,
"data.crop_scale" scales the base configuration's crop per axis (a planned crop need not be cubic),
and "data.augment" in [0, 1] scales every augmentation strength at once (0 = none, 1 = strong). A
space also carries ``base`` (the preset its unsearched fields come from, or a whole RunConfig dict,
e.g. a plan's) and ``fixed`` (field overrides applied to every trial). Turning a sample into a
RunConfig applies the cross-field repairs the sampler cannot know (``RunConfig.repaired_from_dict``:
the crop is rounded up to a multiple of 2**(depth-1), deep-supervision heads are capped by the
depth, the region loss switches the model to the region head, the warm-up fits in the epochs), so
every sample is trainable.

Files: a user space is YAML or JSON, parsed as data (yaml.safe_load, no code):
    base: cpu-small
    fixed: {train: {steps_per_epoch: 20}}
    params:
      model.depth: {type: int, low: 3, high: 5}
      train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.norm: {type: choice, values: [instance, batch]}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.config import DataConfig, ModelConfig, RunConfig, TrainConfig, preset
from unet3d.errors import UserError


class SpaceError(UserError, ValueError):
    """A malformed search space; the message names the file and field."""


_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


DERIVED: dict[str, type] = {"data.crop": int, "data.crop_scale": float, "data.augment": float}
# data.augment = 1 means these strengths; 0 means no augmentation.
_AUGMENT_AT_ONE = {"flip_prob": 0.5, "intensity_scale": 0.2, "intensity_shift": 0.2, "noise_std": 0.1}
AUGMENT_FIELDS = tuple(f"data.{k}" for k in _AUGMENT_AT_ONE)  # the config fields data.augment sets


def _field_type(name: str) -> type | None:
    """The Python type of the RunConfig field a parameter name points at (None if unknown)."""
    if not isinstance(name, str):
        return None
    if name in DERIVED:
        return DERIVED[name]
    section, _, field = name.partition(".")
    klass = _SECTIONS.get(section)
    if klass is None:
        return None
    for f in dataclasses.fields(klass):
        if f.name == field:
            default = f.default
            return type(default) if default is not dataclasses.MISSING else None
    return None


@dataclasses.dataclass(frozen=True)
class _Numeric:
    """What Int and Float share: a name and bounds (the subclasses add the log scale last)."""

    name: str
    low: Any
    high: Any

    def extremes(self) -> tuple[Any, ...]:
        """The values that bound the parameter (each must make a valid configuration)."""
        return (self.low, self.high)

    @property
    def movable(self) -> bool:
        """Whether it has more than one value."""
        return self.low != self.high

    def unit(self, v: Any) -> float:
        """``v``'s place on [0, 1] between the bounds (on the log scale with ``log``)."""
        lo, hi, x = float(self.low), float(self.high), float(v)
        if self.log and lo > 0 and x > 0:
            lo, hi, x = math.log(lo), math.log(hi), math.log(x)
        return (x - lo) / (hi - lo) if hi > lo else 0.5


@dataclasses.dataclass(frozen=True)
class Int(_Numeric):
    """Integer in [low, high] (inclusive), optional step, optional log scale."""

    kind = "int"

    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for k in ("low", "high", "step"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpaceError(f"{self.name}: {k}={v!r} must be an integer")
        if not isinstance(self.log, bool):
            raise SpaceError(f"{self.name}: log={self.log!r} must be true or false")
        if self.low > self.high:
            raise SpaceError(f"{self.name}: low={self.low} must be <= high={self.high}")
        if self.step < 1:
            raise SpaceError(f"{self.name}: step={self.step} must be >= 1")
        if self.log and (self.low < 1 or self.step != 1):
            raise SpaceError(f"{self.name}: log scale needs low >= 1 and step 1")
        if (self.high - self.low) % self.step:
            raise SpaceError(f"{self.name}: high - low = {self.high - self.low} must be a multiple of "
                             f"step={self.step}")

    def contains(self, v: Any) -> bool:
        return (isinstance(v, int) and not isinstance(v, bool) and self.low <= v <= self.high
                and (v - self.low) % self.step == 0)

    def sample(self, rng: np.random.Generator) -> int:
        """A value drawn uniformly (log-uniformly with ``log``)."""
        if self.log:
            v = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return min(max(int(v), self.low), self.high)
        return self.low + self.step * int(rng.integers(0, (self.high - self.low) // self.step + 1))

    def neighbour(self, v: int, rng: np.random.Generator) -> int:
        """One step up or down from ``v`` (the other way at a bound; ``v`` if there is no other)."""
        moves = [u for u in (v - self.step, v + self.step) if self.low <= u <= self.high]
        return int(moves[int(rng.integers(len(moves)))]) if moves else v

    def project(self, v: Any) -> int:
        """The value nearest to ``v`` (clipped to the bounds, on the step)."""
        v = min(max(float(v), self.low), self.high)
        return min(self.low + int(round((v - self.low) / self.step)) * self.step, self.high)

    def field_error(self, t: type) -> str:
        """Why the parameter cannot set a field of type ``t`` ("" if it can)."""
        return "" if t is int else f"is a {t.__name__} field, not int"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclasses.dataclass(frozen=True)
class Float(_Numeric):
    """Real number in [low, high], linear or log scale."""

    kind = "float"

    log: bool = False

    def __post_init__(self) -> None:
        for k in ("low", "high"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SpaceError(f"{self.name}: {k}={v!r} must be a finite number")
        if not isinstance(self.log, bool):
            raise SpaceError(f"{self.name}: log={self.log!r} must be true or false")
        if self.low > self.high:
            raise SpaceError(f"{self.name}: low={self.low} must be <= high={self.high}")
        if self.log and self.low <= 0:
            raise SpaceError(f"{self.name}: log scale needs low > 0, got {self.low}")

    def contains(self, v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and \
            self.low <= float(v) <= self.high

    def sample(self, rng: np.random.Generator) -> float:
        """A value drawn uniformly (log-uniformly with ``log``)."""
        if self.log:
            v = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            v = rng.uniform(self.low, self.high)
        return float(min(max(v, self.low), self.high))  # (exp(log(x)) may overshoot by an ulp)

    def neighbour(self, v: float, rng: np.random.Generator, scale: float = 0.25) -> float:
        """``v`` moved by a normal step of ``scale`` times the range (on the log scale with
        ``log``: a factor), clipped to the bounds."""
        if self.log:
            width = math.log(self.high / self.low)
            u = math.exp(math.log(v) + rng.normal(0.0, scale * width))
        else:
            u = v + rng.normal(0.0, scale * (self.high - self.low))
        return float(min(max(u, self.low), self.high))

    def project(self, v: Any) -> float:
        """The value nearest to ``v`` (clipped to the bounds)."""
        return float(min(max(float(v), self.low), self.high))

    def field_error(self, t: type) -> str:
        return "" if t is float else f"is a {t.__name__} field, not float"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a list of values of one type (strings, numbers or booleans).

    Integers mixed with floats become floats ([0, 0.5, 1] -> [0.0, 0.5, 1.0]); any other mix of types
    is refused (no config field takes two types, and Keras Tuner's Choice cannot hold them).
    """

    name: str
    values: tuple[Any, ...]
    kind = "choice"

    def __post_init__(self) -> None:
        vals = tuple(self.values) if isinstance(self.values, (list, tuple)) else None
        if not vals:
            raise SpaceError(f"{self.name}: values must be a non-empty list")
        for v in vals:
            if not isinstance(v, (str, int, float, bool)):
                raise SpaceError(f"{self.name}: value {v!r} must be a string, number or boolean")
        types = {type(v) for v in vals}
        if types == {int, float}:
            vals = tuple(float(v) for v in vals)
        elif len(types) > 1:
            raise SpaceError(f"{self.name}: values {list(vals)} mix types "
                             f"({', '.join(sorted(t.__name__ for t in types))}); use one type")
        if len(set(map(repr, vals))) != len(vals):
            raise SpaceError(f"{self.name}: values {list(vals)} has duplicates")
        object.__setattr__(self, "values", vals)

    def contains(self, v: Any) -> bool:
        return any(v == c and type(v) is type(c) for c in self.values)

    def sample(self, rng: np.random.Generator) -> Any:
        """One of the values, each as likely."""
        return self.values[int(rng.integers(len(self.values)))]

    def neighbour(self, v: Any, rng: np.random.Generator) -> Any:
        """Another value: for numbers, the next one up or down in order; otherwise any other."""
        others = [c for c in self.values if not (c == v and type(c) is type(v))]
        if not others:
            return v
        numbers = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.values)
        if numbers and self.contains(v):
            order = sorted(self.values)
            i = order.index(v)
            others = [order[j] for j in (i - 1, i + 1) if 0 <= j < len(order)]
        return others[int(rng.integers(len(others)))]

    def extremes(self) -> tuple[Any, ...]:
        return self.values

    @property
    def movable(self) -> bool:
        return len(self.values) > 1

    def project(self, v: Any) -> Any:
        """``v`` if it is a value; else the nearest number for a number, else the first value."""
        if self.contains(v):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            nums = [c for c in self.values if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if nums:
                return min(nums, key=lambda c: abs(c - v))
        return self.values[0]

    def unit(self, v: Any) -> float:
        """``v``'s place on [0, 1] in the list of values (NaN if it is none of them)."""
        values = list(self.values)
        return values.index(v) / max(1, len(values) - 1) if v in values else float("nan")

    def field_error(self, t: type) -> str:
        ok = {int: (int,), float: (int, float)}.get(t, (t,))
        bad = [v for v in self.values if isinstance(v, bool) is not (t is bool)
               or not isinstance(v, ok)]
        return f"is a {t.__name__} field; value(s) {bad} are not" if bad else ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


Param = Int | Float | Choice


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A named set of parameters over a base (a preset name or a RunConfig dict), plus fixed
    overrides."""

    name: str
    params: tuple[Param, ...]
    base: str | Mapping[str, Any] = "cpu-small"
    fixed: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def without_value(self, name: str, value: Any) -> SearchSpace:
        """A copy whose Choice ``name`` no longer offers ``value`` (unchanged if it did not).

        Raises:
            SpaceError: ``value`` was the only choice left.
        """
        params = []
        for p in self.params:
            if isinstance(p, Choice) and p.name == name and p.contains(value):
                rest = tuple(v for v in p.values if not (v == value and type(v) is type(value)))
                if not rest:
                    raise SpaceError(f"space {self.name}: {name}: {value!r} is its only choice")
                p = dataclasses.replace(p, values=rest)
            params.append(p)
        return dataclasses.replace(self, params=tuple(params))

    def __post_init__(self) -> None:
        for p in self.params:
            if not isinstance(p, (Int, Float, Choice)):
                raise SpaceError(f"space {self.name}: parameter {p!r} must be an Int, Float or Choice")
        names = [p.name for p in self.params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpaceError(f"space {self.name}: parameter(s) {dup} defined twice")
        for p in self.params:
            t = _field_type(p.name)
            if t is None:
                raise SpaceError(f"space {self.name}: {p.name}: not a config field "
                                 f"(use model.*, train.* or data.* field names)")
            if p.field_error(t):
                raise SpaceError(f"space {self.name}: {p.name}: {p.field_error(t)}")
            if p.name == "model.head":
                raise SpaceError(f"space {self.name}: model.head: follows train.loss (region -> "
                                 f"regions, else softmax); search train.loss instead")
        if not isinstance(self.fixed, Mapping) or not all(
                isinstance(v, Mapping) for v in self.fixed.values()):
            raise SpaceError(f"space {self.name}: fixed={self.fixed!r} must map model/train/data to "
                             f"field overrides")
        try:
            self.base_config()
        except ValueError as e:
            raise SpaceError(f"space {self.name}: {e}") from None
        # Every extreme of every parameter must make a valid config (checked once, here).
        for p in self.params:
            for v in p.extremes():
                sample = self.default_sample()
                sample[p.name] = v
                try:
                    self.to_run_config(sample)
                except ValueError as e:
                    raise SpaceError(f"space {self.name}: {p.name}={v!r} gives an invalid "
                                     f"configuration: {e}") from None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def base_config(self) -> RunConfig:
        base = (preset(self.base) if isinstance(self.base, str)
                else RunConfig.from_dict(dict(self.base), source=f"space {self.name}: base"))
        return base.replace(**{k: dict(v) for k, v in self.fixed.items()})

    def default_sample(self) -> dict[str, Any]:
        """The base configuration's values, projected into the space (clipped to its bounds)."""
        return self.point_of(self.base_config())

    def point_of(self, cfg: RunConfig) -> dict[str, Any]:
        """The point of the space nearest to configuration ``cfg`` (each parameter's value
        projected: NVIDIA's configuration as a point of any space)."""
        return {p.name: p.project(config_value(cfg, p.name)) for p in self.params}

    def contains(self, sample: Mapping[str, Any]) -> bool:
        return set(sample) == set(self.names) and all(p.contains(sample[p.name]) for p in self.params)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """A configuration drawn at random, each parameter independently."""
        return {p.name: p.sample(rng) for p in self.params}

    def neighbour(self, point: Mapping[str, Any], rng: np.random.Generator,
                  changes: int = 2) -> dict[str, Any]:
        """A configuration near ``point`` (a sample of this space): 1 to ``changes`` of its
        parameters, picked at random, each moved to a neighbouring value (:meth:`Int.neighbour`,
        ...); ``point`` itself only if no parameter can move."""
        out = dict(point)
        movable = [p for p in self.params if p.movable]
        if not movable:
            return out
        k = int(rng.integers(1, min(changes, len(movable)) + 1))
        for i in rng.choice(len(movable), size=k, replace=False):
            p = movable[int(i)]
            out[p.name] = p.neighbour(out[p.name], rng)
        return out

    def to_run_config(self, sample: Mapping[str, Any]) -> RunConfig:
        """The RunConfig for one sample (unknown names raise; then ``RunConfig.repaired_from_dict``)."""
        unknown = set(sample) - set(self.names)
        if unknown:
            raise SpaceError(f"space {self.name}: sample has unknown parameter(s) {sorted(unknown)}")
        base = self.base_config()
        over: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
        for name, v in sample.items():
            section, _, field = name.partition(".")
            if name == "data.crop":
                if int(v) < 1:
                    raise SpaceError(f"space {self.name}: data.crop={v!r} must be >= 1")
                v = [int(v)] * 3
            elif name == "data.crop_scale":
                # rounded up to the downsampling by the repair below
                over["data"]["crop"] = [max(1, int(round(c * float(v)))) for c in base.data.crop]
                continue
            elif name == "data.augment":
                over["data"].update({k: float(v) * a for k, a in _AUGMENT_AT_ONE.items()})
                continue
            elif isinstance(v, float) and _field_type(name) is int:
                v = int(round(v))
            over[section][field] = v
        d = base.to_dict()
        for k, fields in over.items():
            d[k].update(fields)
        return RunConfig.repaired_from_dict(d, source=f"space {self.name}")

    def to_dict(self) -> dict[str, Any]:
        params = {p.name: p.to_dict() for p in self.params}
        base = self.base if isinstance(self.base, str) else dict(self.base)
        return {"name": self.name, "base": base,
                "fixed": {k: dict(v) for k, v in self.fixed.items()}, "params": params}


def config_value(cfg: RunConfig, name: str) -> Any:
    if name == "data.augment":
        return cfg.data.noise_std / _AUGMENT_AT_ONE["noise_std"]
    if name == "data.crop_scale":
        return 1.0  # the base's own crop
    section, _, field = name.partition(".")
    v = getattr(getattr(cfg, section), field)
    return v[0] if name == "data.crop" else v


def space_from_dict(d: Any, *, source: str) -> SearchSpace:
    """Parses a space from plain data; every problem names ``source`` and the field."""
    if not isinstance(d, dict):
        raise SpaceError(f"{source}: top level must be a mapping with 'params'")
    extra = set(d) - {"name", "base", "fixed", "params"}
    if extra:
        raise SpaceError(f"{source}: unknown key(s) {sorted(extra)}; expected name, base, fixed, params")
    params_in = d.get("params")
    if not isinstance(params_in, dict) or not params_in:
        raise SpaceError(f"{source}: 'params' must be a non-empty mapping of field name -> spec")
    params: list[Param] = []
    for name, spec in params_in.items():
        where = f"{source}: params.{name}"
        if not isinstance(spec, dict) or "type" not in spec:
            raise SpaceError(f"{where}: must be a mapping with 'type' (int, float or choice)")
        kind = spec["type"]
        args = {k: v for k, v in spec.items() if k != "type"}
        allowed = {"int": {"low", "high", "step", "log"}, "float": {"low", "high", "log"},
                   "choice": {"values"}}.get(kind)
        if allowed is None:
            raise SpaceError(f"{where}: type={kind!r} must be int, float or choice")
        bad = set(args) - allowed
        if bad:
            raise SpaceError(f"{where}: unknown key(s) {sorted(bad)} for type {kind}")
        missing = ({"values"} if kind == "choice" else {"low", "high"}) - set(args)
        if missing:
            raise SpaceError(f"{where}: missing {sorted(missing)}")
        klass = {"int": Int, "float": Float, "choice": Choice}[kind]
        try:
            params.append(klass(name=name, **args))
        except SpaceError as e:
            raise SpaceError(f"{source}: params.{e}") from None
        except TypeError as e:
            raise SpaceError(f"{where}: {e}") from None
    fixed = d.get("fixed", {})
    if not isinstance(fixed, dict) or not all(isinstance(v, dict) for v in fixed.values()):
        raise SpaceError(f"{source}: 'fixed' must map model/train/data to field overrides")
    try:
        base = d.get("base", "cpu-small")
        return SearchSpace(name=str(d.get("name", Path(source).stem)), params=tuple(params),
                           base=base if isinstance(base, dict) else str(base), fixed=fixed)
    except SpaceError as e:
        raise SpaceError(f"{source}: {e}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Loads a YAML or JSON space file (parsed as data, never executed)."""
    import json

    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpaceError(f"{p}: cannot read ({e.strerror})") from None
    try:
        d = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpaceError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} "
                         f"({str(e).splitlines()[0]})") from None
    return space_from_dict(d, source=str(p))
