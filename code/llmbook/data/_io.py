"""Atomic file writes shared by the data pipeline (temp file in the same folder, fsync, os.replace)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from collections.abc import Iterable
from typing import IO, Any, Callable


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "w") -> Path:
    """Write `path` through `write(file)` so readers never see a partial file (@sec-data-pack)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (new names from renames) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, obj: object) -> Path:
    """Write `obj` as indented JSON atomically (@sec-data-pack)."""
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False))


def progress_bar(iterable: Iterable | None = None, progress: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar that `TQDM_DISABLE=1` can silence (passing `disable=False` would override the variable)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs, **({} if progress else {"disable": True}))
