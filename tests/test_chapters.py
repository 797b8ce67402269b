"""Execute every chapter in a fresh Jupyter kernel, in order, as Quarto would; run pandoc on the Markdown
Quarto would make of it (to LaTeX and Typst) and fail on what would break or spoil the PDF."""

from __future__ import annotations

import booktools
import pytest

DOCUMENTS = [p for p in booktools.book_files() if p.suffix == ".qmd"]


@pytest.mark.chapters
@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.stem for p in DOCUMENTS])
def test_chapter_executes_and_renders(path, root):
    if not any(c.cell_type == "code" for c in booktools.quarto_cells(path)):
        pytest.skip(f"{path.name} has no code to run")
    cells = booktools.run_document(path, root)
    for fmt in booktools.output_formats().values():  # every format's Markdown can be made
        booktools.quarto_markdown(cells, path.stem, fmt)
    problems = booktools.check_document(path, cells)
    assert not problems, "\n".join(problems)


def test_chapter_failure_names_chapter_and_cell(tmp_path):
    chapter = tmp_path / "broken.qmd"
    chapter.write_text("# Broken\n\n```{python}\nx = 1\n```\n\n```{python}\n#| label: fig-bad\n1 / 0\n```\n")
    with pytest.raises(booktools.ExecutionFailed, match=r"broken\.qmd: code cell 2 \(fig-bad\) failed"):
        booktools.run_document(chapter, tmp_path)
    chapter.write_text("# Broken\n\nThe value is `{python} undefined_name`.\n")
    with pytest.raises(booktools.ExecutionFailed, match=r"inline expression `\{python\} undefined_name`.*NameError"):
        booktools.run_document(chapter, tmp_path)


def test_freeze_is_in_sync_with_the_chapters():
    """`_freeze/` holds each executed document's results for HTML, LaTeX and Typst, made from the
    current source (`python scripts/booktools.py freeze` rewrites it), so Quarto renders without
    running the chapters."""
    problems = booktools.check_freeze()
    assert not problems, "\n".join(problems)
