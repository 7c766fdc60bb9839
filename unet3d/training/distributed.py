"""Horovod data parallelism for one training run (Keras 3 on TensorFlow, low-level horovod.tensorflow).

``horovod.tensorflow.keras`` targets Keras 2, so this module works with the low-level API: every
worker builds the same model, rank 0's initial variables are broadcast, each step averages the
gradients with one grouped allreduce, and the optimizer applies them on every rank, so all ranks
keep identical weights. Without Horovod's XLA ops (dropped from our build, see
scripts/install_horovod.sh) the allreduce must stay outside any jit-compiled function: the forward
and backward pass is compiled (XLA when asked), the allreduce and the update are not.

Only rank 0 (the chief) writes checkpoints, TensorBoard and exports; each rank scores its share of
the validation cases and every rank gathers all per-case scores, so all report the same means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

INSTALL_HINT = ("Horovod is not installed in this environment: run `make setup` (CPU, Gloo) or "
                "`HOROVOD_GPU_OPERATIONS=NCCL bash scripts/install_horovod.sh` (GPU nodes)")


class HorovodUnavailable(RuntimeError):
    """Workers were asked for but Horovod cannot be imported."""


# Why a JAX run or trial cannot have Horovod workers (the CLI's, the trainer's and the search's
# messages say it alike).
JAX_NO_WORKERS = "Horovod workers train under tensorflow only"


def horovod_available() -> bool:
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def require_horovod() -> None:
    if not horovod_available():
        raise HorovodUnavailable(INSTALL_HINT)


@dataclasses.dataclass
class Workers:
    """This process's place among the workers (a single worker without Horovod: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init() -> Workers:
    """Initialises Horovod, pins this process to its local GPU (memory growth on), returns its place."""
    require_horovod()
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[hvd.local_rank() % len(gpus)]
        tf.config.set_visible_devices(gpu, "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
    return Workers(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank())


def broadcast_variables(variables: Sequence[Any], root_rank: int = 0) -> None:
    """Makes every rank's ``variables`` (Keras or TF variables) equal to ``root_rank``'s."""
    import horovod.tensorflow as hvd

    for i, v in enumerate(variables):
        v.assign(hvd.broadcast(v.value if hasattr(v, "value") else v, root_rank,
                               name=f"unet3d_bcast_{i}"))


def average(tensors: Sequence[Any]) -> list[Any]:
    """Averages a list of tensors across ranks with one grouped allreduce."""
    import horovod.tensorflow as hvd

    return hvd.grouped_allreduce(list(tensors), op=hvd.Average)


def shard(items: Sequence[Any], workers: Workers) -> list[Any]:
    """This rank's share of ``items`` (round robin)."""
    return list(items[workers.rank::workers.size])


def bind_loopback() -> None:
    """Makes this process's Horovod servers (rendezvous, KV store, task services) listen on
    127.0.0.1 only. Horovod binds them to every interface ('', port); for workers on this machine
    talking over ``lo`` that exposes them for nothing. Idempotent."""
    import horovod.runner.common.util.network as service_net
    import horovod.runner.http.http_server as http_server
    from horovod.runner.util import network

    original = network.find_port
    if getattr(http_server.find_port, "_loopback", False):
        return

    def find_port(server_factory):
        return original(lambda addr: server_factory(("127.0.0.1", addr[1])))

    find_port._loopback = True  # type: ignore[attr-defined]
    http_server.find_port = find_port
    service_net.find_port = find_port


def launch(fn: Any, kwargs: dict[str, Any], num_workers: int, *, hosts: str | None = None) -> list[Any]:
    """Runs ``fn(**kwargs)`` in ``num_workers`` Horovod processes (Gloo) and returns their results.

    On one machine the workers talk over the loopback interface only. ``hosts`` ("h1:2,h2:2")
    spreads them over machines reachable by ssh, as horovodrun does.
    """
    require_horovod()
    import horovod.runner

    if hosts is None:
        bind_loopback()
    return horovod.runner.run(fn, kwargs=kwargs, np=num_workers,
                              hosts=hosts or f"localhost:{num_workers}", use_gloo=True,
                              network_interface=None if hosts else "lo")
