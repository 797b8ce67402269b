"""Execute every chapter's Python cells in a fresh Jupyter kernel, in order, as Quarto would."""

from __future__ import annotations

import booktools
import pytest

DOCUMENTS = [p for p in booktools.book_files() if p.suffix == ".qmd"]


@pytest.mark.chapters
@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.stem for p in DOCUMENTS])
def test_chapter_executes(path, root):
    nb, labels = booktools.executable(path)
    if not nb.cells:
        pytest.skip(f"{path.name} has no code to run")
    booktools.execute(nb, root, path.name, labels)
