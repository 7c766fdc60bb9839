"""Portfolios: configurations of a space learned offline that the search's race tries first.

A portfolio file is JSON (``benchmarks/portfolio_study.py`` writes them; ``spaces/portfolios/``
ships the ``demo`` space's, with the command that produced it):

    {"space": "demo",
     "configs": [{"model.depth": 4, "train.learning_rate": 0.0012, ...}, ...],
     "race": {"epochs": 2, ...},
     "produced_by": "python benchmarks/portfolio_study.py ...", ...}

Each config is a point of the space, every parameter inside its bounds (checked like a space: a
file that breaks a rule is one line naming the file and the field); ``race.epochs``, when
present, is how many epochs the race compares trials at (chosen by rank agreement with full-budget
results). A search uses ``--portfolio FILE``, ``--portfolio none``, or by default the shipped
file named after its space (its configurations that lie inside the space).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from spaces.space import SearchSpace, SpaceError

PORTFOLIOS = Path(__file__).resolve().parent / "portfolios"
NONE = "none"


@dataclasses.dataclass(frozen=True)
class Portfolio:
    """``configs`` in the order the race tries them; ``race_epochs`` learned with them (None:
    not said); ``source``: the file, or "" for none."""

    configs: tuple[dict[str, Any], ...] = ()
    race_epochs: int | None = None
    source: str = ""

    def describe(self) -> str:
        if not self.source:
            return "no portfolio"
        return f"portfolio {self.source} ({len(self.configs)} configurations)"


def load_portfolio(path: str | Path, space: SearchSpace, *, strict: bool = True) -> Portfolio:
    """The portfolio in ``path`` for ``space``. ``strict``: a config outside the space is an
    error; otherwise it is left out (a shipped portfolio of a space the user has narrowed).

    Raises:
        SpaceError: the file is missing, not JSON, or breaks a rule (the message names the file
            and the field).
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path}: portfolio file not found") from None
    except (OSError, ValueError) as e:
        raise SpaceError(f"{path}: not a readable JSON portfolio ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("configs"), list):
        raise SpaceError(f"{path}: must be an object with a list 'configs'")
    configs = []
    for i, c in enumerate(d["configs"]):
        why = _outside(c, space)
        if why and strict:
            raise SpaceError(f"{path}: configs[{i}]: {why}")
        if not why:
            configs.append(dict(c))
    race = d.get("race", {})
    if not isinstance(race, dict):
        raise SpaceError(f"{path}: race must be an object")
    epochs = race.get("epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or epochs < 1):
        raise SpaceError(f"{path}: race.epochs={epochs!r} must be an integer >= 1")
    return Portfolio(configs=tuple(configs), race_epochs=epochs, source=str(path))


def _outside(config: Any, space: SearchSpace) -> str:
    """Why ``config`` is not a point of ``space`` ("" if it is)."""
    if not isinstance(config, dict):
        return f"must be an object of parameter values, got {config!r}"
    missing = sorted(set(space.names) - set(config))
    extra = sorted(set(config) - set(space.names))
    if missing or extra:
        return (f"parameters {missing} missing" if missing else "") + \
            ("; " if missing and extra else "") + \
            (f"{extra} not in space {space.name!r}" if extra else "")
    for p in space.params:
        if not p.contains(config[p.name]):
            return f"{p.name}={config[p.name]!r} is outside the space ({_bounds(p)})"
    return ""


def _bounds(p: Any) -> str:
    values = getattr(p, "values", None)
    return f"one of {list(values)}" if values is not None else f"{p.low}..{p.high}"


def portfolio_for(space: SearchSpace, option: str | None) -> Portfolio:
    """``--portfolio``: a file (strict), "none", or None: the shipped portfolio named after the
    space, if there is one (the configurations inside the space)."""
    if option == NONE:
        return Portfolio()
    if option is not None:
        return load_portfolio(option, space)
    shipped = PORTFOLIOS / f"{space.name}.json"
    return load_portfolio(shipped, space, strict=False) if shipped.is_file() else Portfolio()
