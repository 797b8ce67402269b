"""`llmbook.progress.progress_bar`: silenced by TQDM_DISABLE, also where tqdm.auto picks the notebook bar."""

from __future__ import annotations

import io

import pytest

from llmbook.progress import progress_bar


@pytest.mark.parametrize("value,disabled", [("1", True), ("true", True), ("", False)])
def test_tqdm_disable_is_obeyed(monkeypatch, value, disabled):
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress_bar(range(3), file=io.StringIO()).disable is disabled
    assert progress_bar(range(3), progress=False).disable


def test_the_notebook_bar_obeys_it_too(monkeypatch):
    notebook = pytest.importorskip("tqdm.notebook")
    pytest.importorskip("ipywidgets", reason="tqdm's notebook bar needs ipywidgets")
    import tqdm.auto

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(tqdm.auto, "tqdm", notebook.tqdm)  # what tqdm.auto gives inside Jupyter
    bar = progress_bar(range(3))
    assert isinstance(bar, notebook.tqdm) and bar.disable
