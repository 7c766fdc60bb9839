"""The memory model: predicted peak memory of one training run of a :class:`RunConfig`.

A run has two phases that never overlap: training steps, then validation (sliding windows over
whole cases, after every ``val_every`` epochs and at the end). Tensors freed by one phase are
reused by (or returned to the system before) the other, so the run's peak is the larger phase on
top of what both hold. Every part is derived from the network's tensors, walked the way
:func:`unet3d.training.model.build_unet3d` builds them, and three constants per device kind scale them
(:data:`CONSTANTS`; ``benchmarks/bench_memory.py`` fits them and prints predicted vs measured):

- ``runtime``: the process before the run's tensors: Python, TensorFlow, Keras, the traced
  training and prediction graphs (a CUDA context and its libraries' handles on a GPU). Fitted.
- ``weights``: the variables, 4 bytes a parameter (Keras keeps float32 masters under mixed
  precision).
- ``optimizer``: the gradients and Adam's two moments, 12 bytes a parameter.
- ``activations``: training: the tensors TensorFlow keeps for the backward pass, per batch element
  (:func:`activation_elements`): the input; per convolution block the convolution output (the
  normalisation's backward reads it), the normalised tensor (the activation's backward reads it)
  and the activated one (the next convolution reads it); per decoder level the concatenation
  (nearest upsampling: also the repeated tensor that the 1x1 projection reads); per output the
  probabilities and the loss's one-hot, clipped and log tensors. Validation: the tensors alive at
  once in a forward pass of ``val_batch_size`` windows. Bytes: 4 an element in fp32; under mixed
  precision 2, except that normalisation reads a float32 copy of its input and heads and losses
  run in float32. Scaled by the fitted ``activation_factor`` (the allocator's rounding,
  fragmentation and oneDNN's own buffers).
- ``workspace``: training only: gradients in flight during the backward pass, in units of the
  largest layer (:func:`largest_layer_elements`, the widest concatenation); the fitted
  ``workspace_layers`` of them.
- ``data`` (CPU only; a GPU's host memory holds it): training: the crops in flight in the tf.data
  pipeline (two batches and four elements in the parallel map stages) plus ``mapped_bytes``;
  validation: these, one volume and its arrays (the memory-mapped image, its zero-padded copy
  when the case is smaller than the crop, the probability accumulator and its weights, the class
  map, the labels and HD95's distance transforms): about 80 bytes a voxel of the case with 4
  modalities and 4 classes.

Memory-mapped cache. Training reads crops from memory-mapped ``.npy`` files, and the pages a run
touches count in its resident memory (``/usr/bin/time``'s maximum RSS). A crop touches whole rows
of the last axes, so a few crops per case touch most of it and a run of hundreds of crops touches
all of its training cases' files: pass their size as ``mapped_bytes`` to predict RSS. These are
clean file pages that the kernel drops under memory pressure (they never cause an out-of-memory
kill), which is why the default is 0: the estimate a planner compares with a budget is the memory
the run cannot give back. The synthetic cases of the benchmark are small (15 MB of training files),
so the calibration does not tell these two choices apart.

Devices. "cpu" predicts the training process's peak resident memory, with constants measured on the
2-core CPU machine (BENCHMARKS.md, "Training memory: predicted vs measured (CPU)"). "gpu" predicts
the GPU memory the training process holds (what nvidia-smi shows, what must fit on the card next
to other trials): it assumes XLA (``xla: auto`` turns it on with a GPU), which fuses normalisation
and activation into the convolution's consumers, so a block keeps two tensors, not three, all in
the compute dtype. Its constants are fitted on 4 runs on an NVIDIA H200 under the Keras JAX
backend (``benchmarks/bench_memory_gpu.py``; BENCHMARKS.md, "GPU memory"): the process holds
about 2.9 bytes per derived activation byte (the allocator's peak is about 1; its pool keeps what
XLA's temporaries and convolution autotuning took) and 2.4 GiB of CUDA context and libraries.
TensorFlow on a GPU is not measured yet; ``plan --probe`` measures the device's peak allocation.

Nothing here imports TensorFlow: the search prunes configurations with it before any trial starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from unet3d.config import RunConfig
from unet3d.runtime import resolve_precision

GIB = 1024**3
DEVICES = ("cpu", "gpu")
PARTS = ("runtime", "weights", "optimizer", "activations", "workspace", "data")

# Bytes per parameter beyond the float32 weights: gradient (4) and Adam's two moments (8).
OPTIMIZER_BYTES = 12
# Crops inside tf.data's two parallel map stages on top of the two batches (in the step, prefetched).
INFLIGHT_ELEMENTS = 4
# Validation arrays per voxel of the case, beyond the image (4 C, its pages; 4 C more for the
# zero-padded copy of a case smaller than the crop) and the accumulators (4 K + 4, padded size):
# the argmax (int64, 8) and class map (1), the labels read whole and their classes (2), HD95's two
# float64 distance maps (16), scipy's int32 feature transform (12) and boolean masks (4).
_VOLUME_EXTRA_BYTES = 8 + 1 + 2 + 16 + 12 + 4


@dataclasses.dataclass(frozen=True)
class DeviceConstants:
    """The constants of one device kind (see the module docstring).

    Attributes:
        runtime: bytes held before the run's tensors (process, libraries, traced graphs).
        activation_factor: resident bytes per derived byte of activations.
        workspace_layers: largest-layer tensors in flight during the backward pass.
        measured: whether the constants were fitted on measurements of this device kind.
    """

    runtime: float
    activation_factor: float
    workspace_layers: float
    measured: bool


# Fitted by benchmarks/bench_memory.py --fit (least squares on the rows marked fit; BENCHMARKS.md).
CONSTANTS: dict[str, DeviceConstants] = {
    # runtime and activation_factor: fitted (10 rows, 2026-11-26); workspace_layers: the
    # derivation's 2 (the grid cannot tell it from the activation factor: fitting it too gives
    # 1.7 +- 2.2 and the same errors).
    "cpu": DeviceConstants(runtime=0.999 * GIB, activation_factor=1.122, workspace_layers=2.0,
                           measured=True),
    # runtime and activation_factor: least squares on the GPU process's memory (4 rows, NVIDIA
    # H200, Keras JAX, 2026-11-27; errors -9..+15%); workspace_layers: the derivation's 2. Fitted
    # on the allocator's peak instead they would be 1.14 GiB and 0.97 (the derivation's 1).
    "gpu": DeviceConstants(runtime=2.44 * GIB, activation_factor=2.90, workspace_layers=2.0,
                           measured=True),
}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A predicted peak in bytes, by part (see the module docstring).

    Attributes:
        device: "cpu" or "gpu".
        parts: bytes per part (:data:`PARTS`), those of the phase that peaks.
        phase: the phase that peaks: "train" (steps) or "validation" (sliding windows).
    """

    device: str
    parts: dict[str, int]
    phase: str = "train"

    @property
    def total(self) -> int:
        """The predicted peak in bytes."""
        return int(sum(self.parts.values()))

    @property
    def gib(self) -> float:
        """The predicted peak in GiB."""
        return self.total / GIB

    def fits(self, budget_gib: float) -> bool:
        """Whether the peak is within ``budget_gib`` GiB."""
        return self.total <= budget_gib * GIB

    def reason(self, budget_gib: float) -> str:
        """Why a configuration is refused: ``needs 31.2 GiB > 24.0 GiB`` (with two decimals where
        one would print the same number twice)."""
        digits = 1 if f"{self.gib:.1f}" != f"{budget_gib:.1f}" else 2
        return f"needs {self.gib:.{digits}f} GiB > {budget_gib:.{digits}f} GiB"

    def to_dict(self) -> dict:
        """JSON-able: device, phase, total and parts in GiB rounded to 3 decimals."""
        return {"device": self.device, "phase": self.phase, "total_gib": round(self.gib, 3),
                "parts_gib": {k: round(v / GIB, 3) for k, v in self.parts.items()}}


def parameter_count(cfg: RunConfig) -> int:
    """Trainable parameters of the network ``cfg.model`` describes (equal to Keras's count)."""
    m = cfg.model
    norm = 0 if m.norm == "none" else 2  # scale and offset per channel (batch norm: + 2 statistics)
    stats = 2 if m.norm == "batch" else 0
    total, cin = 0, m.in_channels
    for f in m.filters:
        for _ in range(2):
            total += 27 * cin * f + (f if m.norm == "none" else 0) + (norm + stats) * f
            cin = f
    for level in range(m.depth - 2, -1, -1):
        f = m.filters[level]
        k = 8 if m.upsampling == "transpose" else 1
        total += k * cin * f + f
        cin = 2 * f
        for _ in range(2):
            total += 27 * cin * f + (f if m.norm == "none" else 0) + (norm + stats) * f
            cin = f
        if m.deep_supervision and 1 <= level <= m.deep_supervision_heads:
            total += f * m.out_channels + m.out_channels
    total += m.output_kernel**3 * cin * m.out_channels + m.out_channels
    return total


def _voxels(cfg: RunConfig) -> list[int]:
    """Voxels of one crop at each resolution level."""
    return [math.prod(c // 2**level for c in cfg.data.crop) for level in range(cfg.model.depth)]


def _n_outputs(cfg: RunConfig) -> int:
    m = cfg.model
    return 1 + (m.deep_supervision_heads if m.deep_supervision else 0)


def _kept_elements(cfg: RunConfig, *, fused: bool) -> tuple[int, int]:
    """Elements kept for the backward pass for one batch element, as (compute dtype, float32).

    Unfused (TensorFlow's graph on CPU): a normalised block keeps its convolution output as the
    float32 copy normalisation reads, the normalised and the activated tensor; a block without
    normalisation keeps the biased output and the activated one. Fused (XLA): a block keeps the
    convolution output and the activated tensor, and a loss only the probabilities and one term.
    """
    m, v = cfg.model, _voxels(cfg)
    act, f32 = v[0] * m.in_channels, 0  # the input (cast to the compute dtype)
    split = m.norm != "none" and not fused

    def block(n: int) -> None:
        nonlocal act, f32
        if split:  # the float32 convolution output, the normalised and the activated tensors
            f32 += n
        act += 2 * n  # (without split: the convolution's (biased) output and the activated one)

    for level, f in enumerate(m.filters):
        block(v[level] * f)
        block(v[level] * f)
    for level in range(m.depth - 2, -1, -1):
        f = m.filters[level]
        if m.upsampling == "nearest":
            act += v[level] * m.filters[level + 1]  # the repeated tensor the 1x1 projection reads
        act += v[level] * 2 * f  # the concatenation (the transposed convolution's output is not kept)
        block(v[level] * f)
        if m.dropout > 0:
            act += v[level] * f
        block(v[level] * f)
    per_output = 2 if fused else 5  # probabilities; one-hot (x2), clipped and log probabilities
    f32 += _n_outputs(cfg) * per_output * v[0] * m.out_channels
    return act, f32


def activation_elements(cfg: RunConfig) -> int:
    """Elements of the tensors kept for the backward pass, for one batch element (CPU graph)."""
    return sum(_kept_elements(cfg, fused=False))


def largest_layer_elements(cfg: RunConfig) -> int:
    """Elements of the largest single tensor (one batch element): the workspace's unit."""
    m, v = cfg.model, _voxels(cfg)
    return max(v[level] * 2 * f for level, f in enumerate(m.filters))


def _forward_elements(cfg: RunConfig) -> int:
    """Elements alive at once in a forward pass without gradients, for one window: the skips of
    the shallower levels, and at the worst decoder level the skip and upsampled tensor, their
    concatenation, and a convolution's output with its successor; then the heads."""
    m, v = cfg.model, _voxels(cfg)
    worst = 0
    for level in range(m.depth - 1):
        shallower = sum(v[j] * m.filters[j] for j in range(level))
        here = v[level] * 4 * m.filters[level]
        if m.upsampling == "nearest":
            here += v[level] * m.filters[level + 1]
        worst = max(worst, shallower + here)
    return worst + 2 * v[0] * m.out_channels


def _mixed(cfg: RunConfig, device: str) -> bool:
    """Whether ``device`` trains ``cfg`` under mixed precision ("auto": on a GPU; bfloat16 and
    float16 take the same bytes, so the GPU's generation does not matter here)."""
    return resolve_precision(cfg.train.precision, None if device == "cpu" else 0.0) != "fp32"


def _compute_bytes(cfg: RunConfig, device: str) -> int:
    """Bytes of an element in the compute dtype (2 under mixed precision)."""
    return 2 if _mixed(cfg, device) else 4


def _pipeline_bytes(cfg: RunConfig, mapped_bytes: int) -> int:
    """CPU: the crops in flight in tf.data (the iterator keeps prefetching while validation runs,
    so both phases hold them) and the touched pages of the memory-mapped training files."""
    element = math.prod(cfg.data.crop) * (4 * cfg.model.in_channels + 1)  # float32 image, uint8 label
    return (2 * cfg.train.batch_size + INFLIGHT_ELEMENTS) * element + int(mapped_bytes)


def _train_parts(cfg: RunConfig, device: str, k: DeviceConstants,
                 mapped_bytes: int) -> dict[str, int]:
    """activations, workspace and data of the training phase."""
    act, f32 = _kept_elements(cfg, fused=device == "gpu")
    b, batch = _compute_bytes(cfg, device), cfg.train.batch_size
    return {"activations": int(k.activation_factor * batch * (act * b + f32 * 4)),
            "workspace": int(k.workspace_layers * batch * largest_layer_elements(cfg) * b),
            "data": _pipeline_bytes(cfg, mapped_bytes) if device == "cpu" else 0}


def _validation_parts(cfg: RunConfig, device: str, k: DeviceConstants,
                      volume_shape: Sequence[int], mapped_bytes: int) -> dict[str, int]:
    """activations, workspace and data of the validation phase (one whole volume)."""
    m, batch = cfg.model, cfg.train.val_batch_size
    crop = math.prod(cfg.data.crop)
    data = 0
    if device == "cpu":
        voxels = math.prod(volume_shape)
        padded = math.prod(max(int(s), c) for s, c in zip(volume_shape, cfg.data.crop, strict=True))
        copy = padded if padded != voxels else 0  # numpy pads a volume smaller than the crop
        data = (4 * m.in_channels * (voxels + copy) + (4 * m.out_channels + 4) * padded
                + _VOLUME_EXTRA_BYTES * voxels
                + batch * crop * (4 * m.in_channels + 8 * m.out_channels)  # windows, probabilities
                + _pipeline_bytes(cfg, mapped_bytes))
    activations = (k.activation_factor * batch * _forward_elements(cfg)
                   * _compute_bytes(cfg, device))
    return {"activations": int(activations), "workspace": 0, "data": data}


def estimate(cfg: RunConfig, *, device: str = "cpu",
             volume_shape: Sequence[int] | None = None, mapped_bytes: int = 0,
             constants: DeviceConstants | None = None) -> MemoryEstimate:
    """Predicted peak memory of training ``cfg`` on ``device`` ("cpu": the process's peak resident
    memory; "gpu": the device's memory), the larger of its training and validation phases.

    Args:
        cfg: the run configuration (crop, batch, depth, filters, norm, deep supervision, precision,
            validation batch).
        device: "cpu" or "gpu".
        volume_shape: (D, H, W) of the largest validation case as cached (after the brain crop;
            ``meta.json``'s "shape"); default: the crop's shape. CPU only: validation holds the
            volume (padded to at least the crop) and its arrays, about 80 bytes a voxel.
        mapped_bytes: bytes of the training cases' cached image and label files, whose pages the
            run touches (see the module docstring); default 0, the memory the run cannot give back.
        constants: the device's constants (default :data:`CONSTANTS`; the benchmark's fit passes
            its own).

    Raises:
        ValueError: an unknown device.
    """
    if device not in DEVICES:
        raise ValueError(f"device={device!r} must be one of {', '.join(DEVICES)}")
    k = constants if constants is not None else CONSTANTS[device]
    shape = tuple(volume_shape) if volume_shape is not None else cfg.data.crop
    if len(shape) != 3:
        raise ValueError(f"volume_shape={volume_shape!r} must be (D, H, W)")
    params = parameter_count(cfg)
    mixed = _mixed(cfg, device)
    common = {"runtime": int(k.runtime),
              # float32 masters; under mixed precision also their compute-dtype copies
              "weights": (6 if mixed else 4) * params,
              "optimizer": OPTIMIZER_BYTES * params}
    phases = {"train": _train_parts(cfg, device, k, mapped_bytes),
              "validation": _validation_parts(cfg, device, k, shape, mapped_bytes)}
    phase = max(phases, key=lambda p: sum(phases[p].values()))
    parts = {**common, **phases[phase]}
    return MemoryEstimate(device=device, parts={p: parts[p] for p in PARTS}, phase=phase)
