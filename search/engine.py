"""The engine interface: what :class:`search.api.Search` asks of Ray Tune or Keras Tuner (the
engines are listed, with their options and features, in ``search.engines``).

``Search`` holds one engine object and calls, in order: :meth:`Engine.check` (before anything is
written), :meth:`Engine.mapper` (how the cases are preprocessed), :meth:`Engine.placement` (the
default memory budget's input), :meth:`Engine.race` (a race's settings), :meth:`Engine.run`, all
inside :meth:`Engine.environment`, and :meth:`Engine.close` at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.context import SearchContext
    from search.memory_budget import MemoryGuard
    from search.results import TrialRow
    from search.spec import SearchSpec
    from search.storage import Experiment
    from spaces.space import SearchSpace
    from unet3d.planning.budget import Placement

Log = Callable[[str], None]


class Engine:
    """What an engine does for a search. ``settings`` is its options object (``RayOptions``,
    ``KerasTunerOptions``), built and checked from the specification when the engine is made."""

    name: str = ""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self.settings = self.options_of(spec)

    @classmethod
    def options_of(cls, spec: SearchSpec) -> Any:
        """The engine's checked options of ``spec`` (a SearchError names the bad one)."""
        raise NotImplementedError

    def saved_options(self) -> dict[str, Any]:
        """The engine options to save with the search (``search.json``): the given ones, with
        defaults the engine chose that a resumed search must keep."""
        return dict(self.spec.engine_options)

    @classmethod
    def restored_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The saved options of a search made by an earlier release, with the defaults it ran with."""
        return options

    def environment(self) -> contextlib.AbstractContextManager:
        """What the whole search runs inside (process settings, undone afterwards)."""
        return contextlib.nullcontext()

    def check(self, space: SearchSpace, log: Log) -> None:
        """The engine's own checks of the request, before anything is written (its libraries,
        the space, the cluster and its resources)."""

    def mapper(self) -> Any:
        """How the cases are preprocessed (``unet3d.data.preprocess.prepare``'s ``mapper``):
        None for local processes."""
        return None

    def placement(self) -> Placement:
        """Where one training process of a trial runs (the default memory budget's input)."""
        raise NotImplementedError

    def race(self, ctx: SearchContext, log: Log) -> SearchContext:
        """The context a race trains under (its epochs, its schedule), ``ctx`` without a race."""
        return ctx

    def run(self, ctx: SearchContext, exp: Experiment, *, resume: bool, log: Log,
            guard: MemoryGuard | None, mlflow: Any = None) -> tuple[list[TrialRow], bool]:
        """Runs (or resumes) the search: a row per trial and whether Ctrl-C ended it.
        ``mlflow``: the search's ``search.tracking.MlflowSearch`` (--mlflow), None without."""
        raise NotImplementedError

    def close(self) -> None:
        """Frees what the engine started for the search (a local Ray)."""
