"""Device, precision and XLA policy: the one place training, inference and export ask.

Importing this module sets process-wide defaults that must be in place before TensorFlow loads
(``unet3d/__init__.py`` imports it first, so every entry point gets them). TensorFlow 2.21 leaves
its oneDNN kernels off on AMD CPUs, and 3D convolutions then run 5-7.5x slower (BENCHMARKS.md,
"CPU training step"): turning it on is the single biggest speed setting on CPU. TF's C++ INFO
logs are muted the same way. A user's explicit TF_ENABLE_ONEDNN_OPTS or TF_CPP_MIN_LOG_LEVEL wins.
For that reason TensorFlow is imported inside functions, never here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unet3d.config import RunConfig

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PREDICT_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "trained")


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def configure_devices() -> None:
    """Lets every visible GPU grow its memory on demand (fractional GPUs share a card)."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised by an earlier run in this process


def resolve_xla(mode: str) -> bool:
    """Whether to JIT-compile with XLA for ``TrainConfig.xla`` ("auto": on a GPU only, as XLA
    is slower than oneDNN on CPU)."""
    return gpu_available() if mode == "auto" else mode == "on"


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy name for ``TrainConfig.precision`` ("fp32" -> "float32")."""
    return "float32" if precision == "fp32" else precision


def resolve_policy(precision: str, cfg: RunConfig, gpu: bool) -> str:
    """The Keras dtype policy to predict with.

    Args:
        precision: "auto" uses the training precision on a GPU and float32 on a CPU (float16
            convolutions have no fast CPU kernels); "trained" always uses the training precision;
            "fp32" always float32.
        cfg: the configuration the model was trained with.
        gpu: whether prediction runs on a GPU.

    Raises:
        ValueError: ``precision`` is not one of :data:`PREDICT_PRECISIONS`.
    """
    if precision not in PREDICT_PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {', '.join(PREDICT_PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and not gpu):
        return "float32"
    return dtype_policy(cfg.train.precision)


def host_memory_gib() -> float:
    """The memory this process may use in GiB: the machine's physical memory, or less where a
    cgroup limits it (a container, a Slurm job, a Kubernetes pod), as Ray also reads it."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit():  # ("max": no limit)
            physical = min(physical, int(text))
        break
    return physical / 1024**3


def gpu_memory_gib() -> float | None:
    """The smallest visible GPU's total memory in GiB, or None without a GPU (or nvidia-smi).

    Asks nvidia-smi rather than TensorFlow: planning and the search's memory budget must not start
    TensorFlow (or take the GPU) in the driver process. CUDA_VISIBLE_DEVICES is honoured.
    """
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    cmd = ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    keep = None if visible is None else {v.strip() for v in visible.split(",") if v.strip()}
    sizes = []
    for line in out.strip().splitlines():
        index, _, mib = line.partition(",")
        if keep is None or index.strip() in keep:
            try:
                sizes.append(float(mib) / 1024)
            except ValueError:
                continue
    return min(sizes) if sizes else None


def peak_memory_gib(gpu: bool) -> float | None:
    """This process's measured peak so far: the first GPU's peak allocation when training on a
    GPU (TensorFlow's allocator statistics), else the peak resident memory (ru_maxrss)."""
    import resource

    if gpu:
        import tensorflow as tf

        try:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1024**3
        except (ValueError, RuntimeError):
            return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1024**3
