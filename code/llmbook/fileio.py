"""File helpers every subpackage shares: atomic writes (temp file, fsync, rename), directory fsync, SHA-256,
output-directory checks and the run-directory lock.

Data shards, tokenizers, checkpoints, evaluation results and exports all go through these, so a crash
mid-write leaves the previous file intact (@sec-data-pack), and two commands never write one folder at once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Callable

LOCK_NAME = ".llmbook.lock"


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "w") -> Path:
    """Write `path` through `write(file)` so readers never see a partial file (@sec-data-pack)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _named(err, path) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):  # a full disk or a vanished folder: say which file could not be written
            raise _named(err, path) from None
        raise
    return path


def _named(err: OSError, path: Path) -> OSError:
    """The same OSError with `path` as its file name (a failed `write()` names no file)."""
    return type(err)(err.errno, err.strerror or str(err), str(path)) if err.errno else err


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


def replace_dir(new: str | Path, out: str | Path) -> Path:
    """Put the finished folder `new` at `out` in two renames (the old `out` aside as `.NAME.old-*`, `new` in its
    place), then remove the old one: a crash at any point leaves a complete folder, old or new, at `out` or
    beside it. The names inside `new` and the swap itself are fsynced."""
    new, out = Path(new), Path(out)
    fsync_dir(new)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rmdir(old)
        os.replace(out, old)
    os.replace(new, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def write_json(path: str | Path, obj: object) -> Path:
    """Write `obj` as indented JSON atomically (@sec-data-pack)."""
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False))


def file_sha256(path: str | Path, opener: Callable = open) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (manifests, checkpoints and the data registry record it); `opener`
    may decompress (`lzma.open`: the checksum of the content)."""
    h = hashlib.sha256()
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create (if needed) and return the output folder `path`; ValueError naming `flag` when it cannot be one.

    An existing file is never replaced by a folder, and a folder that cannot be written fails here, before
    any work is done, instead of at the end of a long run.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a directory; refusing to replace a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".llmbook-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None
    return path


class LockedError(RuntimeError):
    """Another live process holds the lock of an output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock on an output folder, held by this process until `release()` (or its exit).

    The lock is an OS file lock (`fcntl.flock`) on `DIR/.llmbook.lock`, which records the holder's PID. The OS
    drops it when the holder exits, even on SIGKILL, so a lock file left by a dead process is stale: the next
    run takes it over and says so. A second live writer gets LockedError naming the holder (@sec-scale-checkpoint).
    The folder itself is locked too where the file system allows it, so deleting the lock file while its
    holder runs does not let a second writer in.
    """

    def __init__(self, directory: str | Path, name: str = LOCK_NAME, log: Callable[[str], None] | None = None):
        self.path = Path(directory) / name
        self._fd: int | None = None
        self._dir_fd: int | None = None
        self._log = log if log is not None else (lambda msg: print(msg, file=sys.stderr))

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        collected = False
        while True:
            try:  # never through a symbolic link: the PID would overwrite the file it points to
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as err:
                if not self.path.is_symlink():
                    raise
                raise ValueError(f"{self.path}: is a symbolic link, not a lock file written by llmbook; remove it "
                                 "and run again") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                if holder == os.getpid() and not collected:  # an unreachable object of ours may still hold it
                    import gc

                    gc.collect()
                    collected = True
                    continue
                who = f"process {holder}" if holder else "another process"
                raise LockedError(f"{self.path.parent} is in use by {who} (lock file {self.path.name}); wait for "
                                  "it to finish or choose another output") from None
            except OSError:
                os.close(fd)
                raise
            try:  # the holder may have released and unlinked the file between our open and flock: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            self._dir_fd = _lock_folder(self.path.parent) if self.path.name == LOCK_NAME else None
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{self.path.parent} is in use by another process (its lock file {self.path.name} was "
                              "deleted while it runs); wait for it to finish or choose another output") from None
        previous = _read_pid(fd)
        if previous and previous != os.getpid() and not _pid_alive(previous):
            self._log(f"took over the lock of {self.path.parent} left by process {previous}, which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:  # never another process's lock file
                os.unlink(self.path)  # while still holding the lock, so no other process holds an unlinked one
        except OSError:
            pass
        os.close(fd)
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _lock_folder(directory: Path) -> int | None:
    """flock the folder itself: its descriptor, or None where folders cannot be locked (NFS); BlockingIOError
    if another process holds it."""
    import fcntl

    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a folder we may write but not read
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)
        return None
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def run_lock(directory: str | Path, name: str = LOCK_NAME, log: Callable[[str], None] | None = None) -> RunLock:
    """Lock the output folder `directory` for this process (a context manager); LockedError if another holds it."""
    return RunLock(directory, name, log).acquire()
