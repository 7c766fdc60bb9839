"""The memory model: predicted peak memory of one training run of a :class:`RunConfig`.

A run's peak is the sum of parts, each derived from the network's tensors (walked the way
:func:`unet3d.model.build_unet3d` builds them) and scaled by constants measured on the device kind
(``benchmarks/bench_memory.py`` measures them and prints predicted vs measured):

- ``runtime``: the process before training (Python, TensorFlow/Keras, the CUDA context on a GPU).
- ``weights``: variables (float32 even under mixed precision, Keras keeps float32 masters).
- ``optimizer``: gradients and Adam's two moments (3x the weights).
- ``activations``: tensors kept for the backward pass, per batch element and voxel of the crop:
  every convolution block keeps its convolution output, normalised and activated tensors; decoder
  levels keep the upsampled and concatenated tensors; heads keep their outputs. 2 bytes per element
  under mixed precision, 4 otherwise.
- ``workspace``: temporaries of the largest layer (convolution reorders, gradients in flight).
- ``data``: on CPU, what the input pipeline and validation hold (crops in flight, one validation
  volume and its probability maps).

Devices: "cpu" predicts the training process's peak resident memory; "gpu" the device memory.

Nothing here imports TensorFlow: the search prunes configurations with it before any trial starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from unet3d.config import RunConfig

GIB = 1024**3
DEVICES = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A predicted peak in bytes, by part (see the module docstring)."""

    device: str
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def gib(self) -> float:
        return self.total / GIB

    def fits(self, budget_gib: float) -> bool:
        return self.total <= budget_gib * GIB

    def reason(self, budget_gib: float) -> str:
        """Why a configuration is refused: ``needs 31.2 GiB > 24.0 GiB``."""
        return f"needs {self.gib:.1f} GiB > {budget_gib:.1f} GiB"

    def to_dict(self) -> dict:
        return {"device": self.device, "total_gib": round(self.gib, 3),
                "parts_gib": {k: round(v / GIB, 3) for k, v in self.parts.items()}}


def parameter_count(cfg: RunConfig) -> int:
    """Trainable parameters of the network ``cfg.model`` describes (equal to Keras's count)."""
    m = cfg.model
    norm = 0 if m.norm == "none" else 2  # scale and offset per channel (batch norm: + 2 statistics)
    stats = 2 if m.norm == "batch" else 0
    total, cin = 0, m.in_channels
    for level, f in enumerate(m.filters):
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


def activation_elements(cfg: RunConfig) -> int:
    """Elements of the tensors kept for the backward pass, for one batch element."""
    m, crop = cfg.model, cfg.data.crop
    voxels = [math.prod(c // 2**level for c in crop) for level in range(m.depth)]
    per_block = 2 if m.norm == "none" else 3  # conv out, (normalised,) activated
    total = voxels[0] * m.in_channels
    for level, f in enumerate(m.filters):
        total += 2 * per_block * voxels[level] * f
    for level in range(m.depth - 2, -1, -1):
        f = m.filters[level]
        total += voxels[level] * f * (1 if m.upsampling == "transpose" else 2)  # upsampled
        total += voxels[level] * 2 * f  # concatenated
        total += 2 * per_block * voxels[level] * f
        if m.dropout > 0:
            total += voxels[level] * f
        if m.deep_supervision and 1 <= level <= m.deep_supervision_heads:
            total += voxels[level] * m.out_channels + 2 * voxels[0] * m.out_channels
    total += 2 * voxels[0] * m.out_channels  # logits, probabilities
    return total


def largest_layer_elements(cfg: RunConfig) -> int:
    """Elements of the largest single tensor (one batch element): the workspace's unit."""
    m, crop = cfg.model, cfg.data.crop
    return max(math.prod(c // 2**level for c in crop) * 2 * f for level, f in enumerate(m.filters))


# Constants per device kind, measured by benchmarks/bench_memory.py (see BENCHMARKS.md).
_RUNTIME = {"cpu": 1.0 * GIB, "gpu": 0.5 * GIB}
_ACT_FACTOR = {"cpu": 1.0, "gpu": 1.0}
_WORKSPACE_LAYERS = {"cpu": 2.0, "gpu": 2.0}


def estimate(cfg: RunConfig, *, device: str = "cpu",
             volume_shape: Sequence[int] | None = None) -> MemoryEstimate:
    """Predicted peak memory of training ``cfg`` on ``device`` ("cpu": the process's peak resident
    memory; "gpu": the device's memory).

    Args:
        cfg: the run configuration (crop, batch, depth, filters, norm, deep supervision, precision).
        device: "cpu" or "gpu".
        volume_shape: (D, H, W) of the largest validation volume (CPU: validation holds it and its
            probability maps); default: the crop's shape.

    Raises:
        ValueError: an unknown device.
    """
    if device not in DEVICES:
        raise ValueError(f"device={device!r} must be one of {', '.join(DEVICES)}")
    mixed = cfg.train.precision != "fp32" and device == "gpu"
    act_bytes = 2 if mixed else 4
    batch = cfg.train.batch_size
    params = parameter_count(cfg)
    parts = {
        "runtime": int(_RUNTIME[device]),
        "weights": 4 * params * (2 if mixed else 1),
        "optimizer": 12 * params,
        "activations": int(_ACT_FACTOR[device] * batch * activation_elements(cfg) * act_bytes),
        "workspace": int(_WORKSPACE_LAYERS[device] * batch * largest_layer_elements(cfg)
                         * act_bytes),
        "data": 0,
    }
    if device == "cpu":
        shape = tuple(volume_shape) if volume_shape is not None else cfg.data.crop
        crop_bytes = math.prod(cfg.data.crop) * (4 * cfg.model.in_channels + 1)
        volume = math.prod(shape)
        parts["data"] = (4 * batch * crop_bytes  # crops in flight (prefetch)
                         + volume * 4 * (cfg.model.in_channels + 2 * cfg.model.out_channels))
    return MemoryEstimate(device=device, parts=parts)
