"""Worker processes that never run the caller's main script.

Preprocessing, the fingerprint's lesion count and the plan's probe run in *spawned* processes (a
forked child of a process holding threads, Ray's or TensorFlow's, can deadlock). A spawned child
normally re-imports the parent's ``__main__`` first, so that functions defined there can be
unpickled: a script read from standard input (``python - <<EOF``, as job files do) then fails with
``FileNotFoundError: '.../<stdin>'``, and a script without an ``if __name__ == "__main__":`` guard
runs again in every child, which tries to start its own pool. Our workers run functions of this
package only, so their children skip that step (multiprocessing reads ``__main__`` only while it
launches a child; it is hidden for that moment): a notebook, a ``-c`` one-liner, a script on
standard input and an unguarded script all work. (Python has no switch for this; forkserver
re-imports ``__main__`` the same way.)
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import context as mp_context

from unet3d.errors import UserError

_LOCK = threading.Lock()
_HIDDEN = ("__file__", "__spec__")


class PoolError(UserError, RuntimeError):
    """Worker processes could not start or died (killed for memory, say); names what was running."""


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """``__main__`` without ``__file__`` and with ``__spec__`` None (what multiprocessing reads to
    re-import it in a child), restored at once."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _LOCK:
        saved = {k: main.__dict__[k] for k in _HIDDEN if k in main.__dict__}
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


class _Process(mp_context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):  # noqa: N802  (multiprocessing's name)
        with _main_hidden():
            return mp_context.SpawnProcess._Popen(process_obj)


class _Context(mp_context.SpawnContext):
    Process = _Process


CONTEXT = _Context()
"""A spawn context whose children do not import the caller's ``__main__``."""


@contextlib.contextmanager
def worker_pool(jobs: int, what: str) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``jobs`` spawned processes that do not import the caller's ``__main__``, shut down
    on leaving (pending work cancelled). A worker that could not start or died is one line naming
    ``what`` (e.g. "preprocessing DATA"), not the pool's traceback.

    Raises:
        PoolError: a worker process stopped (BrokenProcessPool).
    """
    ex = ProcessPoolExecutor(max_workers=jobs, mp_context=CONTEXT)
    try:
        yield ex
    except BrokenProcessPool:
        raise PoolError(f"{what}: a worker process stopped unexpectedly (killed for memory?); run "
                        f"with one process (--jobs 1, jobs=1) to see the cause") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
