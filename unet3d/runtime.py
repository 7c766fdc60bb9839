"""Device, precision, XLA and Keras-backend policy: the one place training, inference and export ask.

Importing this module sets process-wide defaults that must be in place before TensorFlow or JAX
loads (``unet3d/__init__.py`` imports it first, so every entry point gets them). TensorFlow 2.21
leaves its oneDNN kernels off on AMD CPUs, and 3D convolutions then run 5-7.5x slower
(BENCHMARKS.md, "CPU training step"): turning it on is the single biggest speed setting on CPU.
TF's C++ INFO logs are muted the same way. JAX would take 75% of every GPU's memory at start-up;
it allocates on demand instead, as TensorFlow's memory growth does, so that trials sharing a GPU
(fractional GPUs in a search) fit; its compiled programs persist on disk between processes
(:func:`_jax_compilation_cache`). A user's explicit setting of any of these variables wins.
For that reason TensorFlow and JAX are imported inside functions, never here.

The Keras backend (``train.backend``: "tensorflow" or "jax") is fixed when Keras is first imported,
from ``KERAS_BACKEND``: :func:`use_backend` sets it before that, or says why it cannot.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from unet3d.errors import UserError

if TYPE_CHECKING:
    from unet3d.config import RunConfig

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's C++ log at level 2 (errors and worse) but, on a machine with no NVIDIA driver, at
# 3: there the first device query logs "E... failed call to cuInit: ... (303)", which reads like a
# crash on every CPU command and says nothing a CPU user can act on. (The lines TF writes before
# its log is initialised, e.g. "Could not find cuda drivers", no variable silences.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                      "2" if os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")
                      else "3")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _jax_compilation_cache() -> None:
    """JAX compiles each distinct program once per process, and a Keras initializer's sampler is one
    program per weight shape: NVIDIA's network spends 21-23 s of every JAX process's start (a search
    trial, a training run) compiling them on this 2-core CPU. A persistent compilation cache on disk
    (``~/.cache/unet3d/jax``, at most 4 GiB, least recently used entries go first) lets the next
    process read them back: 1.3 s. Every program is kept, however quick to compile (JAX's default
    keeps those over 1 s only, which these are not). ``JAX_COMPILATION_CACHE_DIR`` set by the user
    wins; a cache folder that cannot be made leaves JAX as it was."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "unet3d", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    if not os.access(folder, os.W_OK):
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if importlib.util.find_spec("filelock"):  # (JAX needs it to bound the cache's size)
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))


_jax_compilation_cache()

PREDICT_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "trained")


class BackendError(UserError, RuntimeError):
    """The Keras backend asked for cannot be used in this process."""


def use_backend(name: str) -> None:
    """Makes ``name`` ("tensorflow" or "jax") this process's Keras backend.

    Keras reads ``KERAS_BACKEND`` once, when it is first imported: before that this sets it; after
    that it only checks that the running backend is ``name``.

    Raises:
        BackendError: Keras already runs on another backend in this process.
    """
    running = settle_backend(name)
    if running != name:
        raise BackendError(f"backend {name!r}: Keras already runs on {running!r} in this process "
                           f"(start a new one with --backend {name}, or KERAS_BACKEND={name})")


def settle_backend(name: str) -> str:
    """Like :func:`use_backend`, but where Keras already runs on another backend, keeps that one:
    returns the backend this process trains on."""
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = name
        return name
    return keras.backend.backend()


# Keras and TensorFlow load optional libraries when they are first imported, for features this
# package never uses, each behind ``try: import ... except ImportError``: Keras scikit-learn
# (``keras.wrappers``' SKLearn estimators), matplotlib.pyplot (``keras.visualization``'s galleries),
# pandas (DataFrames as ``fit``'s input) and JAX (its Orbax checkpoint callback patches a function
# older JAX versions lack); TensorFlow JAX (TF Lite's converter of JAX functions,
# ``tensorflow.lite.python.util``). All four are installed for other reasons (Keras Tuner's Bayesian
# oracle, the search report's figures, Ray Tune's results, the JAX backend), so every process that
# loads Keras paid for them: 1.5 s of a 6.7 CPU-s start for the first two, 1.1 s of the 3.5 left
# for the last two (BENCHMARKS.md, "Start-up"). JAX only where ``KERAS_BACKEND`` names another
# backend (the processes this package runs set it: :func:`use_backend`); unset, Keras's config file
# decides and may choose JAX.
LEAN_IMPORTS: dict[str, tuple[str, ...]] = {
    "keras": ("sklearn", "matplotlib", "pandas", "jax"),
    "tensorflow": ("jax",),
}


def _skipped_by(package: str) -> tuple[str, ...]:
    """What ``package``'s first import skips now (:data:`LEAN_IMPORTS`, JAX only off its backend)."""
    if os.environ.get("KERAS_BACKEND", "jax") == "jax":
        return tuple(name for name in LEAN_IMPORTS[package] if name != "jax")
    return LEAN_IMPORTS[package]


def lean_keras() -> None:
    """Makes this process's first import of Keras and of TensorFlow skip what :data:`LEAN_IMPORTS`
    lists for each (they then find those libraries missing and leave out those features); each
    imports normally afterwards, for whoever needs it. Called by the processes this package runs
    itself (the command line, a search trial's worker and its Horovod workers, the plan's probe),
    not on importing ``unet3d``: a notebook's Keras keeps its scikit-learn wrappers. A no-op where
    both are loaded already.

    The same import is where the process's long-lived objects are made (TensorFlow's or JAX's modules,
    hundreds of thousands of them): Python's cyclic garbage collector is paused while it runs, and
    what it made is then frozen (``gc.freeze``), so later collections (graph tracing makes many) no
    longer walk it. A tiny `train` command: 8.8 CPU-s before, 7.3 with it (BENCHMARKS.md,
    "Start-up").

    Neither library offers a switch for this, hence an import hook of our own: it wraps each
    package's loader once, hides the names from ``sys.modules`` while that package's ``__init__``
    runs (Keras loads TensorFlow inside its own import), and removes itself once both are loaded."""
    pending = {name for name in LEAN_IMPORTS if name not in sys.modules}
    if pending and not any(isinstance(f, _LeanImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _LeanImports(pending))


class _LeanImports(importlib.abc.MetaPathFinder):
    """Finds the packages still ``pending`` as the other finders do, with their loader wrapped.
    (TensorFlow also asks for Keras's spec without loading it: ``importlib.util.find_spec``.)"""

    def __init__(self, pending: set[str]) -> None:
        self.pending = pending

    def find_spec(self, name: str, path: object = None, target: object = None):
        if name not in self.pending:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderWithout(spec.loader, name, self)
                return spec
        return None

    def loaded(self, name: str) -> None:
        self.pending.discard(name)
        if not self.pending:
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]


class _LoaderWithout(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, name: str, finder: _LeanImports) -> None:
        self.loader, self.name, self.finder = loader, name, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        hidden = [name for name in _skipped_by(self.name) if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # (import raises ImportError: the library's fallback)
        collecting = gc.isenabled()  # (False inside the other's import: the outer one freezes)
        gc.disable()
        try:
            self.loader.exec_module(module)
            self.finder.loaded(self.name)  # (a failed import is wrapped again when retried)
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
            module.__loader__ = module.__spec__.loader = self.loader
            gc.freeze()  # (what the import made lives as long as the process)
            if collecting:
                gc.enable()


def backend() -> str:
    """The Keras backend this process runs on (imports Keras)."""
    import keras

    return keras.backend.backend()


def _jax_gpus() -> list:
    import jax

    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU platform
        return []


def gpu_available() -> bool:
    """Whether the Keras backend sees a GPU."""
    if backend() == "jax":
        return bool(_jax_gpus())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def gpu_capability() -> float | None:
    """The first GPU's CUDA compute capability (e.g. 8.0 for an A100, 9.0 for an H100) as the
    Keras backend reports it; None without a GPU, and 0.0 when the backend does not say."""
    if backend() == "jax":
        gpus = _jax_gpus()
        if not gpus:
            return None
        try:
            return float(getattr(gpus[0], "compute_capability", 0.0))
        except ValueError:
            return 0.0
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return float(f"{cc[0]}.{cc[1]}") if cc else 0.0


def configure_devices() -> None:
    """Under TensorFlow, every visible GPU grows its memory on demand (fractional GPUs share a
    card). Under JAX, TensorFlow (still the input pipeline's engine) is kept off the GPUs, which
    JAX owns."""
    import tensorflow as tf

    if backend() == "jax":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            pass  # TensorFlow's runtime is already up in this process
        return
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised by an earlier run in this process


def limit_cpu_threads(n: int) -> None:
    """Keeps this process's compute to ``n`` CPU threads (trials sharing a machine would otherwise
    fight over its cores). TensorFlow takes it at any time before its runtime starts; XLA's CPU
    client (JAX) reads it from ``XLA_FLAGS`` when JAX starts."""
    n = max(1, int(n))
    if n < (os.cpu_count() or n) and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen=false "
                                       f"intra_op_parallelism_threads={n}").strip()
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
    except RuntimeError:
        pass  # the runtime is already up in this worker (a reused actor): keep its setting


def resolve_xla(mode: str) -> bool:
    """Whether to JIT-compile with XLA for ``TrainConfig.xla`` ("auto": on a GPU only, as XLA
    is slower than oneDNN on CPU). Under JAX always: XLA is JAX's only compiler (Keras would
    otherwise run every layer eagerly, one dispatch at a time)."""
    if backend() == "jax":
        return True
    return gpu_available() if mode == "auto" else mode == "on"


def auto_precision(capability: float | None) -> str:
    """What ``precision: auto`` means on a device: float32 on a CPU (``capability`` None: its
    half-precision convolutions have no fast kernels), mixed bfloat16 on GPUs with bfloat16 tensor
    cores (compute capability 8.0 and later: A100, H100, ...), mixed float16 with dynamic loss
    scaling on older ones (V100, T4)."""
    if capability is None:
        return "fp32"
    return "mixed_bfloat16" if capability >= 8.0 or capability == 0.0 else "mixed_float16"


def resolve_precision(precision: str, capability: float | None = None) -> str:
    """``TrainConfig.precision`` made concrete for a device (see :func:`auto_precision`)."""
    return auto_precision(capability) if precision == "auto" else precision


def training_precision(precision: str) -> str:
    """``precision`` resolved for this process's device (asks the Keras backend)."""
    if precision != "auto":
        return precision
    return auto_precision(gpu_capability())


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy name for a concrete ``TrainConfig.precision`` ("fp32" -> "float32");
    "auto" is resolved for this process's device first."""
    precision = training_precision(precision)
    return "float32" if precision == "fp32" else precision


def resolve_policy(precision: str, cfg: RunConfig, gpu: bool) -> str:
    """The Keras dtype policy to predict with.

    Args:
        precision: "auto" uses the training precision on a GPU and float32 on a CPU (float16
            convolutions have no fast CPU kernels); "trained" always uses the training precision;
            "fp32" always float32. A model trained with ``precision: auto`` predicts with what auto
            means on this device.
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


def nvidia_smi(*fields: str) -> list[list[str]] | None:
    """One row per GPU of ``nvidia-smi --query-gpu=FIELDS`` (its values as strings, without
    units), or None without nvidia-smi or when it fails."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    cmd = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[v.strip() for v in line.split(",")] for line in out.strip().splitlines()]


def gpu_memory_gib() -> float | None:
    """The smallest visible GPU's total memory in GiB, or None without a GPU (or nvidia-smi).

    Asks nvidia-smi rather than TensorFlow: planning and the search's memory budget must not start
    TensorFlow (or take the GPU) in the driver process. CUDA_VISIBLE_DEVICES is honoured.
    """
    rows = nvidia_smi("index", "memory.total")
    if rows is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    keep = None if visible is None else {v.strip() for v in visible.split(",") if v.strip()}
    sizes = []
    for index, mib, *_ in (r + [""] for r in rows):
        if keep is None or index in keep:
            try:
                sizes.append(float(mib) / 1024)
            except ValueError:
                continue
    return min(sizes) if sizes else None


def reset_peak_memory(gpu: bool) -> None:
    """Starts this process's measured peak (:func:`peak_memory_gib`) afresh, so that a run reports
    its own peak also in a process that ran another before it (a notebook, Keras Tuner's trials, a
    Ray worker that trained an earlier trial): on the CPU the resident high-water mark (Linux's
    ``/proc/self/clear_refs``), on a GPU TensorFlow's allocator peak. JAX's GPU allocator keeps no
    peak that can be reset: there the figure stays the process's."""
    if gpu:
        if backend() == "tensorflow":
            import tensorflow as tf

            try:
                tf.config.experimental.reset_memory_stats("GPU:0")
            except (ValueError, RuntimeError):
                pass
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # (not Linux, or not allowed: the peak stays the process's)


def peak_memory_gib(gpu: bool) -> float | None:
    """This process's measured peak since :func:`reset_peak_memory` (or its start): the first
    GPU's peak allocation when training on a GPU (the backend's allocator statistics), else the
    peak resident memory (Linux's VmHWM, which the reset restarts; elsewhere ru_maxrss)."""
    import resource

    if gpu:
        if backend() == "jax":
            gpus = _jax_gpus()
            stats = gpus[0].memory_stats() if gpus else None
            peak = (stats or {}).get("peak_bytes_in_use")
            return None if peak is None else peak / 1024**3
        import tensorflow as tf

        try:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1024**3
        except (ValueError, RuntimeError):
            return None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2  # (kB)
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1024**3
