"""The data registry: one place that turns a data file's name into a local path (@sec-data-sources).

A data file is named by its path relative to the data root, laid out like the book's shared data folder:
`"folder/file"`, e.g. `"hh-rlhf/harmless-base_test.jsonl.gz"`. It resolves from the folder named by
`LLMBOOK_DATA`, then from the cache (`$LLMBOOK_CACHE/data`, default `~/.cache/llmbook/data`). Chapters,
notebooks, tests and the CLI never build data paths themselves: they call `fetch`.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def cache_root() -> Path:
    """Root of the llmbook cache: `$LLMBOOK_CACHE`, else `~/.cache/llmbook`."""
    return Path(os.environ.get("LLMBOOK_CACHE") or Path.home() / ".cache" / "llmbook")


def local_root() -> Path | None:
    """The local copy of the data named by `LLMBOOK_DATA`, or None when unset or not a folder."""
    value = os.environ.get("LLMBOOK_DATA")
    return Path(value) if value and Path(value).is_dir() else None


def _checked(relpath: str) -> PurePosixPath:
    """`relpath` as a safe relative path ('folder/file'); absolute paths and '..' are refused."""
    rel = PurePosixPath(relpath)
    if not relpath or rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2:
        raise ValueError(f"data file name must look like 'folder/file' inside the data root, got {relpath!r}")
    return rel


def fetch(relpath: str) -> Path:
    """Local path of the data file `relpath` ('folder/file'), from `LLMBOOK_DATA` or the cache."""
    rel = _checked(relpath)
    for root in (local_root(), cache_root() / "data"):
        if root is not None and (root / rel).is_file():
            return root / rel
    raise FileNotFoundError(
        f"data file {relpath!r} is neither in LLMBOOK_DATA ({os.environ.get('LLMBOOK_DATA') or 'unset'}) "
        f"nor in the cache ({cache_root() / 'data'})"
    )
