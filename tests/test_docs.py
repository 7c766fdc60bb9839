"""The docs site (issue 29): the reference pages written from the code are up to date, a flag or a
configuration field without a description fails their generator, and the site builds with
``mkdocs build --strict`` (a broken link, a missing page or a docstring griffe cannot read fails)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """``scripts/NAME.py`` loaded as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _script("gen_reference")


@pytest.fixture(scope="module")
def examples():
    return _script("docs_examples")


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


def test_a_file_name_a_folder_class_owns_but_does_not_describe_is_a_hole(gen, monkeypatch):
    from search.storage import ExperimentFolder

    page = gen.folders_page()
    assert "search.json" in page and "model.onnx" in page and "checkpoint.npz" in page
    monkeypatch.setattr(ExperimentFolder, "SUMMARY", "summary.txt", raising=False)
    with pytest.raises(gen.DocHole, match="ExperimentFolder: summary.txt not described"):
        gen.folders_page()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `make docs` builds it (strict)."""
    site = tmp_path_factory.mktemp("docs") / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return site


def test_the_site_builds_strictly_with_every_reference_page(site):
    for page in ("index", "architecture", "benchmarks", "reference/cli", "reference/config",
                 "reference/api", "reference/labels", "reference/spaces", "reference/folders"):
        assert (site / f"{page}.html").is_file(), page
    api = (site / "reference" / "api.html").read_text()
    assert all(f'id="{n}"' in api for n in ("search.Search", "search.Search.run", "unet3d.api.train",
                                               "unet3d.api.predict"))  # (from the docstrings)
    assert "fonts.googleapis" not in (site / "index.html").read_text()  # (nothing from the internet)


@pytest.mark.slow  # (Chromium: `make test` installs it)
def test_the_sites_search_box_finds_pages_offline_in_chromium(site):
    """Served from 127.0.0.1, as the docs say to open it: no request leaves the machine (a failed
    one would be a console error), the search box finds the pages that name a flag, and the home
    page and the CLI reference render (screenshots in test-artifacts/)."""
    import time

    sys.path.insert(0, str(ROOT / "tests" / "search"))
    from cdp import Browser, serve

    with serve(site) as base:
        browser = Browser()
        try:
            session = browser.load(f"{base}/index.html")
            home = browser.screenshot(session)
            browser.evaluate("(() => { const i = document.querySelector('.md-search__input'); i.focus(); "
                             "i.value = 'lesionwise'; i.dispatchEvent(new Event('input', {bubbles: true})); "
                             "return 1; })()", session)
            deadline, found = time.monotonic() + 30, 0
            while not found and time.monotonic() < deadline:
                time.sleep(0.5)
                found = browser.evaluate("document.querySelectorAll('.md-search-result__item').length",
                                         session)
            hit = browser.evaluate("document.querySelector('.md-search-result__item a').href", session)
            errors = browser.errors()
            browser.close()
            browser = Browser()  # (a second page of one browser cannot be captured: a browser a page)
            cli = browser.screenshot(browser.load(f"{base}/reference/cli.html"))
            errors += browser.errors()
        finally:
            browser.close()
    assert errors == []
    assert found >= 3 and hit.startswith(base) and "h=lesionwise" in hit, (found, hit)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for name, shot in (("docs-home.png", home), ("docs-cli.png", cli)):
        assert shot.startswith(b"\x89PNG") and len(shot) > 30_000, name
        (artifacts / name).write_bytes(shot)


def test_every_relative_link_of_the_readme_leads_to_a_file():
    import re

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert len(links) > 10
    missing = [t for t in links if "://" not in t and not (ROOT / t).exists()]
    assert not missing, missing


def test_every_example_of_the_docs_shows_the_output_the_script_pasted(examples):
    """Each example of README.md and docs/ (scripts/docs_examples.py's markers) has its output block
    written by the script, with its date and commit: an example added, or its output edited by
    hand into an unmarked block, without rerunning the script fails here."""
    pages = examples.pages()
    found = {m["name"]: (p, m) for p in pages for m in examples.examples(p)}
    markers = sum(p.read_text().count("<!-- example: ") for p in pages)
    assert len(found) == markers >= 12, (len(found), markers)  # (names unique, every marker parsed)
    for name, (page, m) in found.items():
        assert re.fullmatch(r"Its output \(run by scripts/docs_examples\.py, \d{4}-\d\d-\d\d, commit "
                            r"[0-9a-f]{7,}, this machine: \d+ s\):", m["prose"]), (name, page, m["prose"])
        assert m["output"].strip(), (name, page)


def test_no_page_shows_an_output_block_that_no_example_wrote(examples):
    """A code block followed at once by another block is output pasted by hand (the script always
    writes its "Its output (run by ...)" line between an example and its output): such a pair must
    become an example. (docs/how-to/python.md's two-objective search was one.)"""
    pasted = [f"{p.relative_to(ROOT)}:{p.read_text()[:m.start()].count(chr(10)) + 1}"
              for p in examples.pages() for m in re.finditer(r"```\n```", p.read_text())]
    assert not pasted, f"output blocks no example writes: {pasted}"


def test_the_python_api_example_of_the_docs_runs_as_written_on_tiny_data(examples, tmp_path,
                                                                         monkeypatch, capsys):
    """docs/how-to/python.md's one-training-run example, on 6 synthetic cases (32^3 rather than the
    page's 48^3: the same code, quicker), run as written in a fresh folder."""
    from unet3d.data.synthetic import write_synthetic_dataset

    (m,) = [m for m in examples.examples(ROOT / "docs" / "how-to" / "python.md")
            if m["name"] == "api-train"]  # (the example scripts/docs_examples.py reruns)
    block = m["code"]
    assert "from unet3d import api" in block and "run by scripts/docs_examples.py" in m["prose"]
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
