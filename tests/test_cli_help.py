"""The CLI's help: every command built by its own builder, each option's default stated once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import run_search

COMMANDS = ("synth", "prepare", "plan", "train", "search", "slurm", "retrain-best", "export", "report",
            "predict", "evaluate")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = run_search.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_there():
    assert tuple(_subparsers()) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_each_default_is_stated_once_and_only_real_ones(command):
    sub = _subparsers()[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._get_help_string(action) % {"default": action.default}
        assert text.count("default") <= 1, (command, action.dest, text)
        assert "(default: None)" not in text and "(default: False)" not in text, (command, text)
        if action.default is not None and action.default is not False \
                and action.default != argparse.SUPPRESS:
            assert "default" in text, (command, action.dest, text)  # a real default is shown


def test_train_overrides_map_each_flag_to_one_config_field():
    from unet3d.config import RunConfig

    fields = RunConfig().to_dict()
    for dest, path in run_search.TRAIN_OVERRIDES.items():
        section, field = path.split(".")
        assert field in fields[section], path
        assert dest in {a.dest for a in _subparsers()["train"]._actions}


def test_building_the_parser_loads_no_heavy_library():
    """Every command builds the whole parser first (its help, its errors): in a fresh process that
    loads none of TensorFlow, Keras, Ray, Optuna, SciPy's image functions (0.37 of `--help`'s 0.65
    CPU-s when the synthetic writer imported them at its top for its LAYOUTS and DIFFICULTIES)."""
    import subprocess
    import sys

    heavy = ("tensorflow", "keras", "ray", "optuna", "jax", "scipy.ndimage", "matplotlib", "mlflow")
    code = ("import sys, run_search; run_search.build_parser(); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(run_search.__file__).parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
