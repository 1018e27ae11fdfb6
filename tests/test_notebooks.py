"""Committed notebooks are clean sources that follow the page layout of CONTRIBUTING.md.

(The notebooks themselves are executed by nbval: ``pytest --nbval-lax notebooks``.)
"""
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def test_every_notebook_is_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {ch["file"] for part in toc["parts"] for ch in part["chapters"]}
    assert {f"notebooks/{p.stem}" for p in NOTEBOOKS} <= files
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in _tags(c)]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters' (want exactly 1)"
    source = nb.cells[tagged[0]].source
    assert "get_profile()" in source, f"{path.name}: the parameters cell must take its defaults from get_profile()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_page_layout(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name}: starts with a title"
    assert first.source.count("```{admonition}") == 1, f"{path.name}: one opening admonition"
    for word in ("You will learn", "Prerequisites", "Runtime", "smoke", "full"):
        assert word in first.source, f"{path.name}: opening admonition lacks {word!r}"
    assert any("profile.show(" in c.source and "remove-input" in _tags(c)
               for c in nb.cells), f"{path.name}: no profile banner cell (profile.show() tagged remove-input)"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("## Summary", "## Exercises", "```{bibliography}"):
        assert heading in text, f"{path.name}: missing {heading!r}"
    exercises_at = next(i for i, c in enumerate(nb.cells) if "## Exercises" in c.source)
    solutions = [c for c in nb.cells[exercises_at:] if c.cell_type == "code" and "hide-input" in _tags(c)]
    assert len(solutions) >= 2, f"{path.name}: at least two exercises with hidden, runnable solutions"
