"""Companion notebooks exist for every chapter and match it; nbval (run by `make test`) executes them."""

from __future__ import annotations

import booktools
import nbformat
import pytest

STEMS = booktools.chapter_stems()


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_in_sync_with_chapter(stem, root):
    path = root / "notebooks" / f"{stem}.ipynb"
    assert path.is_file(), f"notebooks/{stem}.ipynb is missing: run `python scripts/booktools.py notebooks {stem}`"
    committed = nbformat.read(path, as_version=4)
    expected = booktools.make_notebook(root / "chapters" / f"{stem}.qmd")
    assert booktools.notebook_signature(committed) == booktools.notebook_signature(expected), (
        f"notebooks/{stem}.ipynb is out of sync with chapters/{stem}.qmd: "
        f"run `python scripts/booktools.py notebooks {stem}`"
    )


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_committed_with_outputs(stem, root):
    nb = nbformat.read(root / "notebooks" / f"{stem}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.get("outputs") for c in code), f"notebooks/{stem}.ipynb has no outputs: execute it before committing"
    errors = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not errors, f"notebooks/{stem}.ipynb was committed with errors in code cells {errors}"


def test_colab_setup_cell_only_installs_on_colab(root):
    nb = booktools.make_notebook(root / "chapters" / f"{STEMS[0]}.qmd")
    setup = nb.cells[1].source
    assert 'if "google.colab" in sys.modules:' in setup and "pip install" in setup
    assert booktools.repo_slug() in nb.cells[0].source
