"""The docs site (issue 29): the reference pages written from the code are up to date, a flag or a
configuration field without a description fails their generator, and the site builds with
``mkdocs build --strict`` (a broken link, a missing page or a docstring griffe cannot read fails)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_pages_are_up_to_date(gen, capsys):
    assert gen.main(["--check"]) == 0, capsys.readouterr().err  # (run scripts/gen_reference.py)


def test_the_cli_page_lists_every_command_and_flag_with_its_default(gen):
    from run_search import build_parser

    page = gen.cli_page()
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in sub.choices.items():
        assert f"## `{name}`" in page
        for action in parser._actions:
            for flag in action.option_strings if action.dest != "help" else ():
                assert f"`{flag}`" in page, (name, flag)
    assert "| `--cases` `CASES` | `16` | number of cases |" in page  # (synth's)


def test_a_flag_without_help_text_is_a_hole_in_the_reference(gen, monkeypatch):
    import run_search

    build = run_search.build_parser

    def with_a_bare_flag() -> argparse.ArgumentParser:
        parser = build()
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices["train"].add_argument("--new-thing")
        return parser

    monkeypatch.setattr(run_search, "build_parser", with_a_bare_flag)
    with pytest.raises(gen.DocHole, match="run_search.py train `--new-thing` `NEW_THING`: no help"):
        gen.cli_page()


def test_every_config_field_has_its_type_default_and_meaning_and_a_missing_one_is_a_hole(
        gen, monkeypatch):
    from unet3d.config import TrainConfig

    page = gen.config_page()
    for f in dataclasses.fields(TrainConfig):
        assert f"| `train.{f.name}` |" in page
    assert "| `model.depth` | `int` | `4` | resolution levels (2-7)" in page
    doc = TrainConfig.__doc__
    field = dataclasses.fields(TrainConfig)[-1].name
    cut = "\n".join(ln for ln in doc.splitlines() if not ln.startswith(f"        {field}: "))
    monkeypatch.setattr(TrainConfig, "__doc__", cut)
    with pytest.raises(gen.DocHole, match=f"TrainConfig.{field}: not in the class docstring"):
        gen.config_page()


def test_the_site_builds_strictly_with_every_reference_page(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    for page in ("index", "architecture", "benchmarks", "reference/cli", "reference/config", "reference/api",
                 "reference/labels", "reference/spaces"):
        assert (site / f"{page}.html").is_file(), page
    api = (site / "reference" / "api.html").read_text()
    assert all(f'id="{n}"' in api for n in ("search.Search", "search.Search.run", "unet3d.api.train",
                                               "unet3d.api.predict"))  # (from the docstrings)
    assert (site / "search" / "search_index.js").is_file()  # (the offline search's index)


def test_every_relative_link_of_the_readme_leads_to_a_file():
    import re

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert len(links) > 10
    missing = [t for t in links if "://" not in t and not (ROOT / t).exists()]
    assert not missing, missing


def _python_blocks(page: Path) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_the_python_api_example_of_the_docs_runs_as_written_on_tiny_data(tmp_path, monkeypatch,
                                                                         capsys):
    """docs/how-to/python.md's one-training-run example, on 6 synthetic cases (32^3 rather than the
    page's 48^3: the same code, quicker), run as written in a fresh folder."""
    from unet3d.data.synthetic import write_synthetic_dataset

    (block,) = [b for b in _python_blocks(ROOT / "docs" / "how-to" / "python.md")
                if "from unet3d import api" in b]
    write_synthetic_dataset(tmp_path / "data", 6, (32, 32, 32), seed=0)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/how-to/python.md", "exec"), {})
    out = capsys.readouterr().out
    assert "training fold 0/3: 4 train, 2 validation cases" in out and "model: runs/a/model.keras" in out
    assert (tmp_path / "pred" / "evaluation.csv").is_file()
    assert (tmp_path / "runs" / "a" / "model.keras").is_file()


def test_the_benchmarks_page_opens_with_the_headline_figures_and_ends_with_the_superseded():
    text = (ROOT / "BENCHMARKS.md").read_text()
    first_table = next(ln for ln in text.splitlines() if ln.startswith("|"))
    assert first_table == "| what | figure | measured with | machine | when | commit |"
    sections = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert all(s.startswith("## Appendix") for s in sections[sections.index(
        next(s for s in sections if s.startswith("## Appendix"))):])
