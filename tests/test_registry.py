"""The data registry resolves 'folder/file' names: LLMBOOK_DATA first, then the cache; bad names are refused."""

from __future__ import annotations

import pytest

from llmbook.data import registry


def test_fetch_prefers_local_copy_then_cache(tmp_path, monkeypatch):
    local, cache = tmp_path / "local", tmp_path / "cache"
    (local / "toy").mkdir(parents=True)
    (cache / "data" / "toy").mkdir(parents=True)
    (cache / "data" / "toy" / "a.txt").write_text("cached")
    monkeypatch.setenv("LLMBOOK_CACHE", str(cache))
    monkeypatch.setenv("LLMBOOK_DATA", str(local))
    assert registry.fetch("toy/a.txt").read_text() == "cached"
    (local / "toy" / "a.txt").write_text("local")
    assert registry.fetch("toy/a.txt").read_text() == "local"


@pytest.mark.parametrize("name", ["", "a.txt", "/etc/passwd", "../x/y", "toy/../../etc/passwd"])
def test_fetch_refuses_names_outside_the_data_root(name):
    with pytest.raises(ValueError, match="folder/file"):
        registry.fetch(name)


def test_missing_file_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    monkeypatch.delenv("LLMBOOK_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="toy/missing.txt"):
        registry.fetch("toy/missing.txt")
