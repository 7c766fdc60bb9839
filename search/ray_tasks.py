"""Preprocessing on a Ray cluster: a mapper for :func:`unet3d.data.preprocess.prepare` that runs each
case as a Ray task on whichever node has a free CPU, so a cluster prepares a large dataset in
parallel. The cache must be on storage every node sees at the same path (the search's shared cache).

Kept in ``search``: ``unet3d`` knows nothing of Ray and only sees a function that maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def task_mapper(num_cpus: float = 1.0) -> Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]:
    """A mapper over the connected Ray cluster: keeps twice as many cases in flight as the cluster
    has CPUs for them (Ray queues them on the nodes), yields the results in order, and raises the
    first failing item's own error (a DataError naming the case and file, not Ray's wrapper) once
    the cases already in flight have finished; later cases are never submitted. A task lost with
    its node is retried by Ray (a case's files are written atomically, so a rerun is safe); one
    lost for good is a one-line ClusterError. Paths in ``items`` must be absolute: a task's
    working directory is wherever its node's Ray was started.

    Why no ``ray.cancel`` of the queued tasks on a failure: cancelling a task while its result
    comes back races inside Ray's core worker and aborts the driver (``Check failed ... task that
    was not pending``, ray-project/ray#54846; seen here under Ray 2.60). A bounded window keeps
    what is left to finish after a failure small instead.
    """

    def mapper(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        from search.ray_cluster import ClusterError

        remote = ray.remote(num_cpus=num_cpus)(fn)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        window = max(2, 2 * int(cpus // max(num_cpus, 1e-9)))
        refs: list[Any] = []
        submitted = 0

        def top_up() -> None:
            nonlocal submitted
            while submitted < len(items) and len(refs) < window:
                refs.append(remote.remote(items[submitted]))
                submitted += 1

        top_up()
        while refs:
            ref = refs.pop(0)
            try:
                result = ray.get(ref)
            except RayTaskError as e:
                _drain(ray, refs)
                cause = e.cause if isinstance(e.cause, BaseException) else e
                raise cause from None
            except RayError as e:  # the task's node or worker died, its result was lost, ...
                _drain(ray, refs)
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ClusterError(f"a preprocessing task on the Ray cluster failed "
                                   f"({type(e).__name__}: {msg})") from None
            top_up()
            yield result

    return mapper


def _drain(ray: Any, refs: list[Any]) -> None:
    """Waits for the tasks still in flight (their outcome no longer matters) so none is left
    writing into the cache when the error reaches the user."""
    if refs:
        ray.wait(refs, num_returns=len(refs), fetch_local=False)


def prepare_on_cluster(data: str | Path, cache: str | Path, *, address: str,
                       labels: Any = None, log: Callable[[str], None] | None = None,
                       progress: Callable[[int, int, str], None] | None = None) -> Any:
    """``unet3d.api.prepare`` with every case a Ray task on the cluster at ``address`` (``prepare
    --address``): joins it (a ClusterError names the address if it cannot), prepares, leaves.
    ``data`` and ``cache`` must be on storage every node sees at the same path."""
    import ray

    from search import ray_cluster
    from search.ray_options import RayOptions
    from unet3d import api

    log = log or (lambda _line: None)
    opts = RayOptions(address=address)
    with ray_cluster.environment(opts):
        ray_cluster.connect(opts)
        try:
            log(f"preprocessing as Ray tasks on {ray_cluster.cluster_summary()}")
            # (absolute paths: a task's working directory is where its node's Ray was started)
            return api.prepare(Path(data).resolve(), Path(cache).resolve(), labels=labels,
                               mapper=task_mapper(), log=log, progress=progress)
        finally:
            ray.shutdown()
