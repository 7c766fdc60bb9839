"""Preprocessing on a Ray cluster: a mapper for :func:`unet3d.data.preprocess.prepare` that runs each
case as a Ray task on whichever node has a free CPU, so a cluster prepares a large dataset in
parallel. The cache must be on storage every node sees at the same path (the search's shared cache).

Kept in ``search``: ``unet3d`` knows nothing of Ray and only sees a function that maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def task_mapper(num_cpus: float = 1.0) -> Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]:
    """A mapper over the connected Ray cluster: submits every item at once (Ray queues them on the
    nodes' CPUs), yields the results in order, and raises the first failing item's own error (a
    DataError naming the case and file, not Ray's wrapper); tasks not yet run are cancelled then.
    A task lost with its node is retried by Ray (a case's files are written atomically, so a rerun
    is safe); one lost for good is a one-line ClusterError. Paths in ``items`` must be absolute:
    a task's working directory is wherever its node's Ray was started.
    """

    def mapper(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        from search.ray_engine import ClusterError

        remote = ray.remote(num_cpus=num_cpus)(fn)
        refs = [remote.remote(item) for item in items]
        done = 0
        try:
            for ref in refs:
                try:
                    result = ray.get(ref)
                except RayTaskError as e:
                    cause = e.cause if isinstance(e.cause, BaseException) else e
                    raise cause from None
                except RayError as e:  # the task's node or worker died, its result was lost, ...
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ClusterError(f"a preprocessing task on the Ray cluster failed "
                                       f"({type(e).__name__}: {msg})") from None
                done += 1
                yield result
        finally:
            for ref in refs[done:]:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001  (already finished or gone: nothing to cancel)
                    pass

    return mapper
