"""File helpers every subpackage shares: atomic writes (temp file, fsync, rename), directory fsync, SHA-256.

Data shards, tokenizers, checkpoints, evaluation results and exports all go through these, so a crash
mid-write leaves the previous file intact (@sec-data-pack)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


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


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (manifests, checkpoints and the data registry record it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
