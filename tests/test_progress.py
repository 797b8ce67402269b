"""`llmbook.progress.progress_bar`: silenced by TQDM_DISABLE whenever it is set, and by
progress=False."""

from __future__ import annotations

import pytest

from llmbook.progress import progress_bar


@pytest.mark.parametrize("value", ["1", "true"])
def test_tqdm_disable_is_read_when_the_bar_is_made(monkeypatch, value):
    monkeypatch.setenv("TQDM_DISABLE", value)  # after importing tqdm, as setup() does
    with progress_bar(total=3) as bar:
        assert bar.disable


def test_notebook_bar_is_silenced(monkeypatch):
    """tqdm.notebook passes disable=False unless told: the variable is lost."""
    pytest.importorskip("ipywidgets")
    import tqdm.auto
    import tqdm.notebook

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with progress_bar(total=3) as bar:
        assert bar.disable


def test_progress_false_disables(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with progress_bar(range(3), progress=False) as bar:
        assert bar.disable
