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


@pytest.mark.parametrize("stem", STEMS)
def test_figure_cells_have_images(stem, root):
    """Every figure of the chapter shows up as an image in the committed notebook (not '<Figure ...>')."""
    nb = nbformat.read(root / "notebooks" / f"{stem}.ipynb", as_version=4)
    figure_sources = [c.source for c in booktools.read_chapter(root / "chapters" / f"{stem}.qmd")
                      if c.kind == "code" and str(c.options.get("label", "")).startswith("fig-")
                      and c.options.get("eval", True) is not False]
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip() in {s.strip() for s in figure_sources}:
            kinds = {k for o in cell.get("outputs", []) for k in o.get("data", {})}
            assert kinds & {"image/png", "image/svg+xml"}, f"notebooks/{stem}.ipynb: a figure cell has no image"


def test_setup_shows_figures_inline_despite_agg(root, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os; os.environ['MPLBACKEND'] = 'Agg'\n"
                                          "from llmbook.book import setup; setup()\n"
                                          "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()")]
    booktools.execute(nb, tmp_path, "inline-figures")
    kinds = {k for o in nb.cells[0].outputs for k in o.get("data", {})}
    assert "image/png" in kinds
