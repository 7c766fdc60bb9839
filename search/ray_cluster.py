"""The Ray Tune engine's connection to Ray: a local Ray bound to 127.0.0.1 or a cluster joined at
``--address`` (one clear line when it cannot be reached), Ray's process switches for one search,
the GPUs a trial needs, and where one trial's training process runs (the memory budget's input).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from search.ray_options import RayOptions
from unet3d.errors import UserError
from unet3d.planning.budget import Placement
from unet3d.text import plural

_NO_CLUSTER = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's no-cluster mode when "0" (see connect)


class ClusterError(UserError, RuntimeError):
    """The Ray cluster named by --address cannot be reached or joined."""


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fails fast, with one line, when ``host:port`` does not accept connections (``ray.init`` would
    retry for a minute). "auto" is left to Ray (it reads RAY_ADDRESS or the local cluster file)."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise ClusterError(f"--address {address}: give the cluster's GCS address HOST:PORT (e.g. "
                           f"10.0.0.5:6379) or 'auto'; Ray Client (ray://) is not supported")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterError(f"--address {address}: no Ray cluster answers there "
                           f"({e.strerror or type(e).__name__})") from None


def _is_loopback(address: str) -> bool:
    """True for a cluster on this machine's loopback (127.x.x.x:PORT, localhost:PORT)."""
    host = address.rpartition(":")[0]
    return host == "localhost" or host.startswith("127.")


def cluster_summary() -> str:
    """One line about the connected Ray cluster: alive nodes and their total resources."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return (f"{len(nodes)} node(s) ({', '.join(sorted({n['NodeManagerAddress'] for n in nodes}))}), "
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


@contextlib.contextmanager
def environment(opts: RayOptions) -> Iterator[None]:
    """Ray's switches for one search, undone afterwards: a search run from a notebook or a test must
    not leave them to later Ray users of the process or to its child processes.

    A local search (or one joining a loopback cluster) needs Ray's no-cluster mode (see
    :func:`connect`). Ray reads that switch once, when it is first imported; when Ray was imported
    before the search (a notebook's own ``import ray``), its module constant is set as well.
    ``verbose`` 0 is silent: Ray Tune's console output prints its "Configuration for experiment"
    box and "View detailed results here" whatever the verbosity; its older reporter, which a
    verbosity of 0 silences, is used then (unless the user chose one with RAY_AIR_NEW_OUTPUT).
    """
    saved = {k: os.environ.get(k) for k in (_NO_CLUSTER, "TUNE_DISABLE_SIGINT_HANDLER",
                                            "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
                                            "RAY_AIR_NEW_OUTPUT")}
    if opts.verbose == 0 and saved["RAY_AIR_NEW_OUTPUT"] is None:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    local = not opts.address or _is_loopback(opts.address)
    was = _no_cluster_constant(True if local else None)
    if local:
        os.environ[_NO_CLUSTER] = "0"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if local and was is not None:
            _no_cluster_constant(not was)


def _no_cluster_constant(off: bool | None) -> bool | None:
    """Ray's module constant for the no-cluster mode, when Ray is imported already (otherwise the
    environment switch does it, and Ray is not imported here): ``search.ray_adapters``."""
    if sys.modules.get("ray") is None:  # (imported: so is its ray_constants)
        return None
    from search.ray_adapters import set_no_cluster

    return set_no_cluster(off)


def connect(opts: RayOptions) -> bool:
    """Connects to ``opts.address``, or starts a local Ray whose every service is on 127.0.0.1.
    Returns True when it started a local Ray (the caller shuts it down), False otherwise.

    Ray 2.60 swaps 127.0.0.1 for the machine's external address and listens on all interfaces,
    unless its "no cluster" mode is on (the switch Ray uses on Windows/macOS, read when Ray is
    imported). A local search needs no cluster, so that mode is set before Ray loads, inherited by
    every Ray process, and checked after start. The same mode lets a driver join a cluster bound to
    loopback (``--address 127.0.0.1:PORT``): otherwise Ray rewrites that address to the external
    one, where nothing listens.
    """
    if not opts.address or _is_loopback(opts.address):
        os.environ[_NO_CLUSTER] = "0"
    import ray

    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=opts.verbose > 1,
                  configure_logging=True, logging_level="ERROR")
    if opts.address:
        _check_reachable(opts.address)
        try:
            ray.init(address=opts.address, **common)
        except Exception as e:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError, ...)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"--address {opts.address}: cannot join the Ray cluster ({msg})") \
                from None
        return False
    # address="local": always a new instance of our own, never a cluster that `ray start` (or
    # RAY_ADDRESS) left on this machine; ray.init() alone would try to join that one.
    ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count(),
             _node_ip_address="127.0.0.1", **common)
    addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
    if addresses != {"127.0.0.1"}:
        ray.shutdown()
        raise RuntimeError(f"local Ray started on {sorted(addresses)} instead of 127.0.0.1 (was Ray "
                           f"imported before the search set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0?)")
    return True


def check_resources(opts: RayOptions, workers_per_trial: int, log: Callable[[str], None]) -> None:
    """Fails, before anything is written, when a local Ray lacks the GPUs one trial asks for (Ray
    would wait for them forever). A cluster may still grow (autoscaler): there it is a warning."""
    import ray

    need = opts.gpus_per_trial * (workers_per_trial if workers_per_trial > 1 else 1)
    have = ray.cluster_resources().get("GPU", 0.0)
    if need <= have:
        return
    what = f"--gpus-per-trial {opts.gpus_per_trial:g}"
    if workers_per_trial > 1:
        what += f" with --workers-per-trial {workers_per_trial}"
    if not opts.address:
        raise ClusterError(f"{what}: a trial needs {need:g} GPU(s) and this machine has {have:g}")
    log(f"warning: {what}: a trial needs {need:g} GPU(s), the cluster has {have:g} now; trials wait "
        f"until its autoscaler adds GPU nodes")


def placement(opts: RayOptions, workers_per_trial: int) -> Placement:
    """One training process of a trial, for the default memory budget: its share of a GPU (a
    Horovod worker has a whole one), or on CPUs how many run at once on this machine (trials at
    once, bounded by its CPUs, --max-concurrent and --num-samples, times the workers per trial).
    On a cluster this machine stands for the nodes; give --memory when they differ."""
    n = max(1, workers_per_trial)
    if opts.gpus_per_trial > 0:
        return Placement(gpus=1.0 if n > 1 else min(1.0, opts.gpus_per_trial))
    cpus = opts.num_cpus or os.cpu_count() or 1
    fit = int(cpus // (n if n > 1 else opts.cpus_per_trial))  # a Horovod worker takes one CPU
    at_once = max(1, min(fit, opts.max_concurrent or fit, opts.num_samples))
    what = plural(at_once, "concurrent trial") + (f" x {n} workers" if n > 1 else "")
    return Placement(gpus=0.0, processes=at_once * n, what=what)


def horovod_workers_alive(wait_s: float = 10.0) -> int:
    """Horovod worker actors (processes titled ``ray::BaseHorovodWorker``) alive on this machine,
    after giving Ray ``wait_s`` to finish ending those of stopped trials."""
    import time

    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        alive = 0
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any("BaseHorovodWorker" in part for part in (p.info["cmdline"] or [])[:1]):
                    alive += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)
