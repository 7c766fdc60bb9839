"""Frozen, validated configuration for one 3D-UNet training run.

Three dataclasses, one per concern, and :class:`RunConfig` that holds them together and checks the
rules that span them (the crop must be divisible by the model's total downsampling, a region loss
needs a region head). The repairs that make a sampled or overridden config obey those rules live
here too (:meth:`RunConfig.with_epochs`, :meth:`RunConfig.repaired_from_dict`). Every class
round-trips through plain JSON so that a run (and later every search trial) saves exactly the
configuration it trained.

Terminology: ``depth`` is the number of resolution levels; the network downsamples ``depth - 1``
times. NVIDIA's reference has 6 levels (filters 32, 64, 128, 256, 320, 320).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

from unet3d import labels as labels_mod
from unet3d.errors import UserError
from unet3d.labels import LabelError, LabelScheme

NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("leaky_relu", "relu", "elu", "gelu", "swish")
UPSAMPLINGS = ("transpose", "nearest")
HEADS = ("softmax", "regions")
LOSSES = ("dice", "dice_ce", "region")
PRECISIONS = ("auto", "fp32", "mixed_float16", "mixed_bfloat16")
BACKENDS = ("tensorflow", "jax")
AUGMENT_ON = ("device", "host")
XLA_MODES = ("on", "off", "auto")
OBJECTIVES = ("dice", "lesionwise")
SCHEDULES = ("cosine", "wsd")  # unet3d.training.schedules


class ConfigError(UserError, ValueError):
    """A configuration value breaks a rule; the message names the field and the value."""


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(choices)}")


def _check_range(field: str, value: float, lo: float | None = None, hi: float | None = None,
                 *, lo_open: bool = False, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}={value!r} must be a number")
    if integer and not float(value).is_integer():
        raise ConfigError(f"{field}={value!r} must be an integer")
    if not math.isfinite(value):
        raise ConfigError(f"{field}={value!r} must be finite")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{field}={value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{field}={value!r} must be <= {hi}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of the 3D-UNet.

    Attributes:
        depth: resolution levels (2-7); the encoder downsamples ``depth - 1`` times.
        base_filters: filters at the first level; doubled per level up to ``max_filters``.
        max_filters: cap on filters per level (NVIDIA: 320).
        norm: "instance" | "batch" | "group" | "none".
        activation: "leaky_relu" (slope 0.01) | "relu" | "elu" | "gelu" | "swish".
        upsampling: "transpose" (Conv3DTranspose k2 s2) | "nearest" (repeat + 1x1x1 conv).
        deep_supervision: add auxiliary heads at the ``deep_supervision_heads`` decoder levels below
            the top; their outputs are upsampled to full size and follow the main output.
        deep_supervision_heads: how many auxiliary heads (1 .. depth-2).
        dropout: spatial dropout rate between the two convolutions of each decoder block.
        in_channels: input modalities (4 for BraTS; 1 for MEN-RT's T1c alone).
        n_classes: softmax classes including background (the label scheme's: 4 for BraTS 2019-2023,
            5 for 2024 GLI and PED, 2 for MEN-RT).
        n_regions: sigmoid channels of a region head: one per region of the label scheme.
        head: "softmax" (n_classes channels) or "regions" (n_regions sigmoid channels, e.g. WT, TC, ET).
        output_kernel: kernel size of the output convolution (NVIDIA: 3).
        group_norm_groups: groups for norm="group" (must divide every level's filters).
    """

    depth: int = 4
    base_filters: int = 16
    max_filters: int = 320
    norm: str = "instance"
    activation: str = "leaky_relu"
    upsampling: str = "transpose"
    deep_supervision: bool = False
    deep_supervision_heads: int = 2
    dropout: float = 0.0
    in_channels: int = 4
    n_classes: int = 4
    n_regions: int = 3
    head: str = "softmax"
    output_kernel: int = 3
    group_norm_groups: int = 8

    def __post_init__(self) -> None:
        _check_range("model.depth", self.depth, 2, 7, integer=True)
        _check_range("model.base_filters", self.base_filters, 1, 1024, integer=True)
        _check_range("model.max_filters", self.max_filters, self.base_filters, 4096, integer=True)
        _check_choice("model.norm", self.norm, NORMS)
        _check_choice("model.activation", self.activation, ACTIVATIONS)
        _check_choice("model.upsampling", self.upsampling, UPSAMPLINGS)
        _check_choice("model.head", self.head, HEADS)
        if not isinstance(self.deep_supervision, bool):
            raise ConfigError(f"model.deep_supervision={self.deep_supervision!r} must be true or false")
        if self.deep_supervision:
            _check_range("model.deep_supervision_heads", self.deep_supervision_heads, 1,
                         max(1, self.depth - 2), integer=True)
            if self.depth < 3:
                raise ConfigError(f"model.deep_supervision needs depth >= 3, got depth={self.depth}")
        _check_range("model.dropout", self.dropout, 0.0, 0.9)
        _check_range("model.in_channels", self.in_channels, 1, 64, integer=True)
        _check_range("model.n_classes", self.n_classes, 2, 64, integer=True)
        _check_range("model.n_regions", self.n_regions, 1, 64, integer=True)
        if self.output_kernel not in (1, 3):
            raise ConfigError(f"model.output_kernel={self.output_kernel!r} must be 1 or 3")
        if self.norm == "group":
            _check_range("model.group_norm_groups", self.group_norm_groups, 1, 1024, integer=True)
            bad = [f for f in self.filters if f % self.group_norm_groups]
            if bad:
                raise ConfigError(
                    f"model.group_norm_groups={self.group_norm_groups} must divide every level's "
                    f"filters {self.filters}")

    @property
    def filters(self) -> tuple[int, ...]:
        """Filters per level, top to bottom."""
        return tuple(min(self.base_filters * 2**i, self.max_filters) for i in range(self.depth))

    @property
    def downsample_factor(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2 ** (self.depth - 1)

    @property
    def out_channels(self) -> int:
        return self.n_regions if self.head == "regions" else self.n_classes


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and run settings.

    Attributes:
        epochs: training epochs.
        steps_per_epoch: optimizer steps per epoch (crops are sampled, so an epoch is a step count).
        batch_size: crops per step.
        learning_rate: peak Adam learning rate (after warm-up).
        warmup_epochs: linear warm-up length (from 1% of the peak rate).
        min_lr_ratio: final learning rate as a fraction of the peak.
        schedule: after the warm-up, "cosine" (decay to ``min_lr_ratio`` of the peak over the rest
            of the run; every rate depends on ``epochs``) or "wsd" (warmup-stable-decay: the peak
            held, then a cool-down over the last ``cooldown_epochs``; a run can be continued to
            more epochs until its cool-down starts; see unet3d.training.schedules).
        cooldown_epochs: "wsd" only: the epochs at the end whose rate decays to ``min_lr_ratio`` of
            the peak; 0 = constant to the end (a run meant to be continued).
        weight_decay: decoupled weight decay (AdamW) when > 0.
        loss: "dice" | "dice_ce" | "region" (a sigmoid per region of the label scheme; needs
            model.head="regions").
        precision: "auto" (mixed bfloat16 on GPUs with compute capability 8.0+, mixed float16
            on older GPUs, float32 on CPUs; see unet3d.runtime.auto_precision) | "fp32" |
            "mixed_float16" (dynamic loss scaling) | "mixed_bfloat16".
        xla: "on" | "off" | "auto" (on for GPU, off for CPU, where XLA is slower); under JAX
            always on (XLA is JAX's compiler).
        backend: the Keras backend that trains: "tensorflow" (also the only one with Horovod
            workers) or "jax" (several GPUs of one machine data-parallel through
            keras.distribution). Models and checkpoints load under either.
        seed: seeds weights, crops and augmentation.
        val_every: validate every N epochs (and always after the last).
        val_overlap: sliding-window overlap for validation, in [0, 1).
        val_batch_size: windows per forward pass in validation.
        objective: the validation score that picks the best epoch: "dice" (mean whole-image Dice
            of the scheme's tumour regions, ``val_dice_mean``) or "lesionwise" (mean lesion-wise
            Dice, ``val_lesionwise_dice_mean``, as the BraTS 2023+ ranking; slower to compute).
        latency: measure the inference seconds of one window (batch 1, the crop's size) on the
            training device at the first validation, reported every validated epoch as
            ``latency_s`` (what a search with a latency objective ranks by).
    """

    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 2
    learning_rate: float = 2e-4
    warmup_epochs: int = 1
    min_lr_ratio: float = 0.01
    schedule: str = "cosine"
    cooldown_epochs: int = 0
    weight_decay: float = 0.0
    loss: str = "dice_ce"
    precision: str = "auto"
    xla: str = "auto"
    backend: str = "tensorflow"
    seed: int = 0
    val_every: int = 1
    val_overlap: float = 0.5
    val_batch_size: int = 2
    objective: str = "dice"
    latency: bool = False

    def __post_init__(self) -> None:
        _check_range("train.epochs", self.epochs, 1, 100000, integer=True)
        _check_range("train.steps_per_epoch", self.steps_per_epoch, 1, 10**7, integer=True)
        _check_range("train.batch_size", self.batch_size, 1, 1024, integer=True)
        _check_range("train.learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        _check_range("train.warmup_epochs", self.warmup_epochs, 0, self.epochs, integer=True)
        _check_range("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_choice("train.schedule", self.schedule, SCHEDULES)
        _check_range("train.cooldown_epochs", self.cooldown_epochs, 0,
                     self.epochs - self.warmup_epochs, integer=True)
        if self.cooldown_epochs and self.schedule != "wsd":
            raise ConfigError(f"train.cooldown_epochs={self.cooldown_epochs} needs "
                              f"train.schedule='wsd' (cosine decays over the whole run)")
        _check_range("train.weight_decay", self.weight_decay, 0.0, 1.0)
        _check_choice("train.loss", self.loss, LOSSES)
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_choice("train.xla", self.xla, XLA_MODES)
        _check_choice("train.backend", self.backend, BACKENDS)
        _check_range("train.seed", self.seed, 0, 2**31 - 1, integer=True)
        _check_range("train.val_every", self.val_every, 1, 100000, integer=True)
        _check_range("train.val_overlap", self.val_overlap, 0.0, 0.95)
        _check_range("train.val_batch_size", self.val_batch_size, 1, 1024, integer=True)
        _check_choice("train.objective", self.objective, OBJECTIVES)
        if not isinstance(self.latency, bool):
            raise ConfigError(f"train.latency={self.latency!r} must be true or false")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Sampling, augmentation and split.

    Attributes:
        crop: training crop size (D, H, W) in voxels; validation windows use the same size.
        foreground_ratio: fraction of crops centred on a labelled (tumour) voxel.
        folds: number of cross-validation folds (split by patient ID).
        fold: the fold held out for validation (0 .. folds-1).
        split_seed: seeds the fold assignment of the sorted case IDs.
        flip_prob: per-axis probability of a mirror flip.
        intensity_scale: multiplicative jitter, factor drawn from [1-s, 1+s] per channel.
        intensity_shift: additive jitter, drawn from [-s, s] per channel (data are z-scored).
        noise_std: upper bound of the Gaussian noise standard deviation.
        augment_on: where the augmentation runs: "device" (inside the compiled training step, on
            the GPU when there is one: the host only slices crops) or "host" (in the tf.data
            pipeline's CPU threads, the way before).
        max_val_cases: cap on validation cases evaluated per epoch (0 = all).
        val_seconds: time budget of a validation (0 = none): the first validation stops starting
            cases once it has taken this long, and every later one scores the same cases (all of
            them when they fit; the default suits a GPU fold of a few hundred cases).
        labels: the label scheme (:mod:`unet3d.labels`): a built-in name, or a user scheme whole
            (its plain dict), so that a saved config knows its label values and regions.
    """

    crop: tuple[int, int, int] = (64, 64, 64)
    foreground_ratio: float = 0.5
    folds: int = 5
    fold: int = 0
    split_seed: int = 0
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    augment_on: str = "device"
    max_val_cases: int = 0
    val_seconds: float = 600.0
    labels: str | dict[str, Any] = "brats-legacy"

    def __post_init__(self) -> None:
        crop = tuple(self.crop) if isinstance(self.crop, (list, tuple)) else self.crop
        if not (isinstance(crop, tuple) and len(crop) == 3
                and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in crop)):
            raise ConfigError(f"data.crop={self.crop!r} must be three positive integers (D, H, W)")
        object.__setattr__(self, "crop", crop)
        _check_range("data.foreground_ratio", self.foreground_ratio, 0.0, 1.0)
        _check_range("data.folds", self.folds, 2, 100, integer=True)
        _check_range("data.fold", self.fold, 0, self.folds - 1, integer=True)
        _check_range("data.split_seed", self.split_seed, 0, 2**31 - 1, integer=True)
        _check_range("data.flip_prob", self.flip_prob, 0.0, 1.0)
        _check_range("data.intensity_scale", self.intensity_scale, 0.0, 0.9)
        _check_range("data.intensity_shift", self.intensity_shift, 0.0, 5.0)
        _check_range("data.noise_std", self.noise_std, 0.0, 5.0)
        _check_choice("data.augment_on", self.augment_on, AUGMENT_ON)
        _check_range("data.max_val_cases", self.max_val_cases, 0, 10**6, integer=True)
        _check_range("data.val_seconds", self.val_seconds, 0.0, 10.0**7)
        if not isinstance(self.labels, (str, dict)):
            raise ConfigError(f"data.labels={self.labels!r} must be a scheme name or a scheme")
        try:
            # The canonical form (a name, or the scheme's dict with int label values), so a config
            # read back from JSON (string keys) equals the one that was saved.
            object.__setattr__(self, "labels", labels_mod.to_config(self.scheme))
        except LabelError as e:
            raise ConfigError(str(e)) from None

    @functools.cached_property
    def scheme(self) -> LabelScheme:
        """The label scheme ``labels`` names (resolved once)."""
        return labels_mod.resolve(self.labels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one training run needs; checks the rules that span its parts."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        f = self.model.downsample_factor
        bad = [c for c in self.data.crop if c % f]
        if bad:
            raise ConfigError(
                f"data.crop={list(self.data.crop)} must be divisible by 2**(model.depth-1)={f} "
                f"in every axis")
        scheme = self.data.scheme
        if (self.model.n_classes, self.model.n_regions) != (scheme.n_classes, len(scheme.regions)):
            raise ConfigError(
                f"model.n_classes={self.model.n_classes} and model.n_regions={self.model.n_regions} "
                f"must be the label scheme's {scheme.n_classes} classes (with background) and "
                f"{len(scheme.regions)} regions (data.labels={scheme.name})")
        if self.train.loss == "region" and not scheme.region_head:
            raise ConfigError(
                f"train.loss='region' needs regions that nest; those of data.labels={scheme.name} "
                f"({', '.join(scheme.regions)}) do not: use dice or dice_ce")
        if (self.train.loss == "region") != (self.model.head == "regions"):
            raise ConfigError(
                f"train.loss={self.train.loss!r} needs model.head="
                f"{'regions' if self.train.loss == 'region' else 'softmax'!r}, got {self.model.head!r}")

    @property
    def scheme(self) -> LabelScheme:
        """The label scheme this run trains and scores with."""
        return self.data.scheme

    def with_labels(self, scheme: LabelScheme, in_channels: int | None = None) -> RunConfig:
        """A copy for data of ``scheme`` (and ``in_channels`` modalities, if given): records it and
        sizes the model's outputs to it (classes, regions); a region loss falls back to dice_ce when
        the scheme's regions do not nest."""
        d = self.to_dict()
        d["data"]["labels"] = labels_mod.to_config(scheme)
        if in_channels is not None:
            d["model"]["in_channels"] = in_channels
        return RunConfig.repaired_from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"]["crop"] = list(self.data.crop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Builds a config from a JSON-like dict; unknown or mistyped fields raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: top level must be an object with model/train/data")
        # "plan": what `run_search.py plan --out` adds (prediction, fingerprint); read, not trained.
        unknown = set(d) - {"model", "train", "data", "plan"}
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; "
                              f"expected model, train, data")
        parts = {}
        for name, klass in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):
            sub = d.get(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{source}: {name} must be an object")
            known = {f.name for f in dataclasses.fields(klass)}
            extra = set(sub) - known
            if extra:
                names = ", ".join(f"{name}.{e}" for e in sorted(extra))
                raise ConfigError(f"{source}: unknown field(s) {names}")
            if name == "data" and "crop" in sub and isinstance(sub["crop"], list):
                sub = {**sub, "crop": tuple(sub["crop"])}
            try:
                parts[name] = klass(**sub)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
        try:
            return cls(**parts)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> RunConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d, source=source)

    def save(self, path: str | Path) -> None:
        """Writes the config as JSON atomically (temp name, then rename)."""
        from unet3d.io_utils import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
        if p.suffix in (".yaml", ".yml"):
            import yaml

            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
            return cls.from_dict(d, source=str(p))
        return cls.from_json(text, source=str(p))

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """Returns a copy with fields of the named sections overridden, e.g. train={"epochs": 3}."""
        d = self.to_dict()
        for name, fields in sections.items():
            if name not in d:
                raise ConfigError(f"unknown section {name!r}")
            d[name].update(fields)
        return RunConfig.from_dict(d)

    def with_epochs(self, epochs: int) -> RunConfig:
        """A copy that trains ``epochs`` epochs, its warm-up clamped to fit in them.

        Raises:
            ConfigError: ``epochs`` is not a valid epoch count.
        """
        d = self.to_dict()
        d["train"]["epochs"] = epochs
        return RunConfig.repaired_from_dict(d)

    @classmethod
    def repaired_from_dict(cls, d: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Like :meth:`from_dict`, after repairing the fields a sampler or override cannot know
        depend on each other (``d`` is not changed):

        - ``train.warmup_epochs`` is clamped to ``train.epochs``, then ``train.cooldown_epochs`` to
          the epochs after the warm-up;
        - every ``data.crop`` edge is rounded up to a multiple of 2**(model.depth-1);
        - ``model.deep_supervision_heads`` is capped at depth-2, and deep supervision is turned
          off below depth 3;
        - ``model.head`` follows ``train.loss`` ("region" -> "regions", else "softmax");
        - ``model.n_classes`` and ``model.n_regions`` follow the label scheme (``data.labels``), and
          a region loss becomes dice_ce for a scheme whose regions do not nest.

        A valid config is its own repair. Values of the wrong type are left for validation.

        Raises:
            ConfigError: the repaired dict is still not a valid config.
        """
        return cls.from_dict(_repaired(d), source=source)


def _repaired(d: Any) -> Any:
    """A copy of a RunConfig dict with the rules of :meth:`RunConfig.repaired_from_dict` applied."""
    if not isinstance(d, dict) or not all(isinstance(d.get(k, {}), dict)
                                          for k in ("model", "train", "data")):
        return d  # not a config's shape: from_dict names the problem
    out = {**d, **{k: dict(d.get(k, {})) for k in ("model", "train", "data")}}
    model, train, data = out["model"], out["train"], out["data"]
    try:
        depth = model.get("depth", ModelConfig.depth)
        f = 2 ** (depth - 1)
        data["crop"] = [max(f, int(math.ceil(c / f)) * f) for c in data.get("crop", DataConfig.crop)]
        if model.get("deep_supervision"):
            heads = model.get("deep_supervision_heads", ModelConfig.deep_supervision_heads)
            model["deep_supervision_heads"] = min(heads, max(1, depth - 2))
            if depth < 3:
                model["deep_supervision"] = False
        _repair_labels(model, train, data)
        model["head"] = "regions" if train.get("loss", TrainConfig.loss) == "region" else "softmax"
        epochs = train.get("epochs", TrainConfig.epochs)
        if train.get("warmup_epochs", TrainConfig.warmup_epochs) > epochs:
            train["warmup_epochs"] = epochs
        room = epochs - train.get("warmup_epochs", TrainConfig.warmup_epochs)
        if train.get("cooldown_epochs", TrainConfig.cooldown_epochs) > room:
            train["cooldown_epochs"] = max(0, room)
    except TypeError:
        pass  # a value of the wrong type: validation reports it with its field name
    return out


def _repair_labels(model: dict[str, Any], train: dict[str, Any], data: dict[str, Any]) -> None:
    try:
        scheme = labels_mod.resolve(data.get("labels", DataConfig.labels))
    except (LabelError, TypeError):
        return  # validation names the bad scheme
    model["n_classes"], model["n_regions"] = scheme.n_classes, len(scheme.regions)
    if train.get("loss") == "region" and not scheme.region_head:
        train["loss"] = "dice_ce"


PRESETS: dict[str, RunConfig] = {
    # NVIDIA DeepLearningExamples UNet_3D_Medical: 6 levels, 32..320 filters, instance norm,
    # LeakyReLU 0.01, transposed-conv upsampling, 3x3x3 softmax head; dice+CE, Adam 2e-4, 128^3
    # crops, batch 2, 16000 steps.
    "nvidia": RunConfig(
        model=ModelConfig(depth=6, base_filters=32, max_filters=320, norm="instance",
                          activation="leaky_relu", upsampling="transpose", output_kernel=3),
        train=TrainConfig(epochs=160, steps_per_epoch=100, batch_size=2, learning_rate=2e-4,
                          warmup_epochs=0, min_lr_ratio=1.0, loss="dice_ce", xla="auto"),
        data=DataConfig(crop=(128, 128, 128), foreground_ratio=0.5),
    ),
    # Sized for 2 CPU cores on the synthetic 64^3 data: trains to a useful Dice in minutes.
    "cpu-small": RunConfig(
        model=ModelConfig(depth=4, base_filters=8, max_filters=64, norm="instance"),
        train=TrainConfig(epochs=12, steps_per_epoch=40, batch_size=2, learning_rate=3e-3,
                          warmup_epochs=1, min_lr_ratio=0.05, loss="dice_ce", xla="auto"),
        data=DataConfig(crop=(32, 32, 32), foreground_ratio=0.5, max_val_cases=4),
    ),
    # A mid-size model for a single GPU or a patient CPU: 5 levels, 16..256 filters, 96^3 crops.
    "gpu-mid": RunConfig(
        model=ModelConfig(depth=5, base_filters=16, max_filters=256, norm="instance",
                          deep_supervision=True),
        train=TrainConfig(epochs=100, steps_per_epoch=100, batch_size=2, learning_rate=3e-4,
                          loss="dice_ce", precision="auto", xla="auto"),
        data=DataConfig(crop=(96, 96, 96)),
    ),
}


def preset(name: str) -> RunConfig:
    """Returns a named preset; unknown names raise ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
