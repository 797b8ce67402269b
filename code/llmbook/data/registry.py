"""The data registry: every data set the book uses, pinned, checksummed and fetched on demand (@sec-data-sources).

A data file is named by its path relative to the data root, laid out like the book's data folder:
`"folder/file"`, e.g. `"hh-rlhf/harmless-base_test.jsonl.gz"`. `fetch(name)` resolves it from, in order:

1. the folder named by `LLMBOOK_DATA` (a local copy of the data folder),
2. the cache, `$LLMBOOK_CACHE/data` (default `~/.cache/llmbook/data`),
3. a download into the cache: from `$LLMBOOK_DATA_MIRROR/<folder>/<file>` when that variable is set (a
   mirror laid out like the data folder), otherwise from the file's pinned public sources, tried in order.
   A file that is a public file byte for byte is downloaded as it is; a converted one is rebuilt from its
   pinned upstream files by `llmbook.data.convert`.

Every download is checked against the sha256 the registry records before it lands in the cache, written
atomically, so an interrupted or corrupted transfer leaves nothing behind; a body longer than the recorded
size is cut off. A file found in the cache is checked again (once per process while it is unchanged), so a
damaged or stale copy is downloaded anew instead of being used. `LLMBOOK_OFFLINE=1` forbids downloads (the
test suite sets it). Chapters, notebooks, tests and the CLI never build data paths
themselves: they call `fetch`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import lzma
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llmbook.fileio import atomic_write, file_sha256
from llmbook.progress import progress_bar

CHUNK = 1 << 16
TIMEOUT_S = 60
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DataUnavailable(FileNotFoundError):
    """A data file is neither local nor obtainable: the message names the file and every attempt."""


class ChecksumMismatch(ValueError):
    """Downloaded or rebuilt bytes do not match the registry's sha256."""


# ---------------------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class Remote:
    """A pinned public file: alternative URLs serving the same bytes (tried in order), its sha256 and size."""

    urls: tuple[str, ...]
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _check_digest(self.sha256, f"remote {self.urls[:1]}")
        if not self.urls or not all(u.startswith(("https://", "http://127.0.0.1:")) for u in self.urls):
            raise ValueError(f"remote {self.urls!r}: needs https:// URLs (plain http only on 127.0.0.1, for tests)")
        if self.size <= 0:
            raise ValueError(f"remote {self.urls[0]}: size must be positive, got {self.size}")


@dataclass(frozen=True)
class DataFile:
    """One file of a data set: its name under the data root, sha256 and size, and how to obtain it.

    `inputs` are the pinned upstream files. With `convert=None` the file *is* `inputs[0]` byte for byte;
    otherwise `llmbook.data.convert.CONVERTERS[convert](input_bytes, *args)` rebuilds it. For a rebuilt
    compressed file, `content_sha256` (the sha256 of its uncompressed content) is what a rebuild is checked
    against, because the compressed bytes depend on the compressor's version and settings.
    """

    path: str
    sha256: str
    size: int
    inputs: tuple[Remote, ...] = ()
    convert: str | None = None
    args: tuple = ()
    content_sha256: str | None = None

    def __post_init__(self) -> None:
        checked_name(self.path)
        _check_digest(self.sha256, self.path)
        if self.content_sha256 is not None:
            _check_digest(self.content_sha256, self.path)
        if self.size <= 0:
            raise ValueError(f"{self.path}: size must be positive, got {self.size}")
        if self.convert is None:
            if len(self.inputs) != 1 or (self.inputs[0].sha256, self.inputs[0].size) != (self.sha256, self.size):
                raise ValueError(f"{self.path}: a byte-identical file needs exactly one input with its sha256 and size")
        else:
            from llmbook.data.convert import CONVERTERS

            if self.convert not in CONVERTERS:
                raise ValueError(f"{self.path}: unknown converter {self.convert!r} (known: {', '.join(CONVERTERS)})")

    @property
    def folder(self) -> str:
        return self.path.split("/", 1)[0]


@dataclass(frozen=True)
class HubCorpus:
    """A large corpus streamed from the Hugging Face hub (needs `datasets` and a network), read only up to
    the sample size the caller asks for. Not checksummed: it is streamed, not stored."""

    repo: str
    config: str | None
    split: str
    text_field: str = "text"
    revision: str = "main"


@dataclass(frozen=True)
class Dataset:
    """One data set: a folder of the data root and its files, where they come from, licence and citation."""

    name: str
    title: str
    licence: str
    source: str
    files: tuple[DataFile, ...] = ()
    citation: str | None = None  # key in references.bib
    hub: HubCorpus | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ValueError(f"dataset name {self.name!r}: use lower-case letters, digits, '.', '_' and '-'")
        if not self.files and self.hub is None:
            raise ValueError(f"dataset {self.name!r}: needs files or a hub corpus")
        for f in self.files:
            if f.folder != self.name:
                raise ValueError(f"dataset {self.name!r}: file {f.path!r} is outside its folder {self.name}/")
        if not self.licence.strip():
            raise ValueError(f"dataset {self.name!r}: licence is empty")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class Registry:
    """Data sets by name and their files by path, validated once: unique names and paths."""

    def __init__(self, datasets: Iterable[Dataset]):
        self.datasets: dict[str, Dataset] = {}
        self.files: dict[str, DataFile] = {}
        for ds in datasets:
            if ds.name in self.datasets:
                raise ValueError(f"dataset {ds.name!r} is registered twice")
            self.datasets[ds.name] = ds
            for f in ds.files:
                if f.path in self.files:
                    raise ValueError(f"data file {f.path!r} is registered twice")
                self.files[f.path] = f

    def dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(self.datasets))}")
        return self.datasets[name]


def _check_digest(value: str, where: str) -> None:
    if not _SHA256.match(value or ""):
        raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits, got {value!r}")


def registry() -> Registry:
    """The book's registry (`llmbook.data.catalog`)."""
    from llmbook.data.catalog import REGISTRY

    return REGISTRY


# ---------------------------------------------------------------------------------------------- roots
def cache_root() -> Path:
    """Root of the llmbook cache: `$LLMBOOK_CACHE`, else `~/.cache/llmbook`."""
    return Path(os.environ.get("LLMBOOK_CACHE") or Path.home() / ".cache" / "llmbook")


def local_root() -> Path | None:
    """The local copy of the data named by `LLMBOOK_DATA`, or None when unset or not a folder."""
    value = os.environ.get("LLMBOOK_DATA")
    return Path(value) if value and Path(value).is_dir() else None


def mirror_url() -> str | None:
    """The mirror named by `LLMBOOK_DATA_MIRROR` (laid out like the data folder), or None."""
    value = os.environ.get("LLMBOOK_DATA_MIRROR", "").strip()
    return value.rstrip("/") or None


def offline() -> bool:
    """True when `LLMBOOK_OFFLINE` forbids downloads (set by the test suite)."""
    return os.environ.get("LLMBOOK_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def checked_name(relpath: str) -> PurePosixPath:
    """`relpath` as a safe relative path ('folder/file'); absolute paths and '..' are refused."""
    rel = PurePosixPath(relpath)
    if not relpath or "\\" in relpath or rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2:
        raise ValueError(f"data file name must look like 'folder/file' inside the data root, got {relpath!r}")
    return rel


def local(relpath: str) -> Path | None:
    """The data file from `LLMBOOK_DATA` or the cache without downloading anything, or None."""
    rel = checked_name(relpath)
    for root in (local_root(), cache_root() / "data"):
        if root is not None and (root / rel).is_file():
            return root / rel
    return None


# ---------------------------------------------------------------------------------------------- fetch
def fetch(relpath: str, progress: bool = True) -> Path:
    """Local path of the data file `relpath` ('folder/file'): `LLMBOOK_DATA`, the cache, else a checked download.

    A registered file found in the cache is checked against its sha256 first; a damaged or stale copy is
    downloaded again (or, offline, refused with both checksums)."""
    found = local(relpath)
    rel = str(checked_name(relpath))
    entry = registry().files.get(rel)
    dest = cache_root() / "data" / rel
    if found is not None and (entry is None or found != dest):
        return found
    where = f"LLMBOOK_DATA ({os.environ.get('LLMBOOK_DATA') or 'unset'}) nor the cache ({cache_root() / 'data'})"
    if entry is None:
        raise DataUnavailable(f"data file {relpath!r} is in neither {where}, and the registry has no such file")
    if found is not None:
        problem = cached_problem(dest, entry.sha256, entry.content_sha256)
        if problem is None:
            return dest
        if offline():
            raise DataUnavailable(f"cached data file {dest}: {problem}; LLMBOOK_OFFLINE forbids downloading it again")
        print(f"llmbook: cached data file {dest}: {problem}; downloading it again", file=sys.stderr)
    elif offline():
        raise DataUnavailable(f"data file {relpath!r} is in neither {where}, and LLMBOOK_OFFLINE forbids downloading it")
    return obtain(entry, dest, progress=progress)


def cached_problem(path: Path, sha256: str, content_sha256: str | None = None) -> str | None:
    """Why the cached file `path` is not the registry's (a sha256 mismatch), or None when it is.

    A rebuilt compressed file (`content_sha256` set) may differ in its bytes and is checked by its content.
    The answer is remembered while the file's size, mtime and inode stay the same, so a file is hashed once
    per process."""
    st = path.stat()
    return _cached_problem(str(path), st.st_size, st.st_mtime_ns, st.st_ino, sha256, content_sha256)


@functools.lru_cache(maxsize=1024)
def _cached_problem(path: str, size: int, mtime_ns: int, ino: int, sha256: str, content_sha256: str | None) -> str | None:
    actual = file_sha256(path)
    if actual == sha256:
        return None
    if content_sha256 is not None:
        try:
            content = file_sha256(path, lzma.open)
        except (lzma.LZMAError, EOFError) as err:
            return f"not a readable xz file ({err})"
        if content == content_sha256:
            return None
        return f"sha256 mismatch of its content: expected {content_sha256}, got {content}"
    return f"sha256 mismatch: expected {sha256}, got {actual} ({size} bytes)"


def obtain(entry: DataFile, dest: Path, progress: bool = True) -> Path:
    """Download or rebuild `entry` into `dest`: from the mirror if one is set, else from its pinned sources."""
    mirror = mirror_url()
    if mirror is not None:
        return download((f"{mirror}/{entry.path}",), dest, entry.sha256, entry.size, entry.path, progress)
    if entry.convert is None:
        return download(entry.inputs[0].urls, dest, entry.sha256, entry.size, entry.path, progress)
    from llmbook.data.convert import CONVERTERS

    blobs = [upstream(r, progress=progress).read_bytes() for r in entry.inputs]
    data = CONVERTERS[entry.convert](blobs, *entry.args)
    if entry.content_sha256 is not None:
        verify(lzma.decompress(data), entry.content_sha256, f"{entry.path} (uncompressed, rebuilt)")
    else:
        verify(data, entry.sha256, f"{entry.path} (rebuilt from {entry.inputs[0].urls[0] if entry.inputs else 'the package'})")
    atomic_write(dest, lambda f: f.write(data), "wb")
    return dest


def upstream(remote: Remote, progress: bool = True) -> Path:
    """An upstream file in the cache (`$LLMBOOK_CACHE/upstream/<sha256>`), downloaded and checked once."""
    dest = cache_root() / "upstream" / remote.sha256
    if dest.is_file():
        problem = cached_problem(dest, remote.sha256)
        if problem is None:
            return dest
        if offline():
            raise DataUnavailable(f"cached upstream file {dest}: {problem}; LLMBOOK_OFFLINE forbids downloading it again")
        print(f"llmbook: cached upstream file {dest}: {problem}; downloading it again", file=sys.stderr)
    elif offline():
        raise DataUnavailable(f"upstream file {remote.urls[0]} is not cached, and LLMBOOK_OFFLINE forbids downloading it")
    name = PurePosixPath(remote.urls[0]).name
    return download(remote.urls, dest, remote.sha256, remote.size, name, progress)


def verify(data: bytes, expected: str, what: str) -> None:
    """Raise ChecksumMismatch naming `what`, the expected and the actual sha256, unless they agree."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumMismatch(f"{what}: sha256 mismatch: expected {expected}, got {actual}")


def download(urls: Iterable[str], dest: Path, sha256: str, size: int, name: str, progress: bool = True) -> Path:
    """Download the first URL that delivers bytes with `sha256` into `dest`, atomically, with a progress bar.

    Each URL is tried in turn; a failed transfer (network error, HTTP or protocol error, truncated or
    over-long body, wrong checksum) leaves no file behind and moves on to the next. When all fail,
    DataUnavailable lists every attempt. A URL may carry `user:password@` (a private mirror): they are sent
    as HTTP basic authentication to that host only, and never printed.
    """
    failures = []
    for url in urls:
        try:
            atomic_write(dest, lambda f, url=url: _stream(url, f, sha256, size, name, progress), "wb")
            return dest
        except (OSError, ChecksumMismatch, ValueError, http.client.HTTPException) as err:
            detail = str(err) or type(err).__name__
            failures.append(f"{_redact_url(url)}: {_redact_secret(detail, url)}")
    raise DataUnavailable(f"could not download {name!r}: " + "; ".join(failures))


def _redact_url(url: str) -> str:
    """`url` with the password of a `user:password@` part replaced by `***` (for messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@" + parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _redact_secret(text: str, url: str) -> str:
    password = urllib.parse.urlsplit(url).password
    return text.replace(password, "***") if password else text


def _request(url: str) -> urllib.request.Request:
    """A GET request for `url`; credentials in the URL become a basic-auth header that redirects do not carry."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return urllib.request.Request(url, headers={"User-Agent": "llmbook"})
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(bare, headers={"User-Agent": "llmbook"})
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _stream(url: str, f, sha256: str, size: int, name: str, progress: bool) -> None:
    """Copy `url` into the open file `f` while hashing it; refuse short or over-long bodies (the registry
    knows the size) and wrong checksums."""
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(_request(url), timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) != size:
            raise OSError(f"the server announces {length} bytes, the registry expects {size}")
        with progress_bar(total=size, unit="B", unit_scale=True, desc=name, leave=False, progress=progress) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as err:
                    raise OSError(f"transfer cut short after {received + len(err.partial)} of {size} bytes") from None
                if not chunk:
                    break
                if received + len(chunk) > size:
                    raise OSError(f"the body is longer than the {size} bytes the registry expects; stopped")
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if received != size:
        raise OSError(f"transfer cut short after {received} of {size} bytes")
    actual = digest.hexdigest()
    if actual != sha256:
        raise ChecksumMismatch(f"sha256 mismatch for {name}: expected {sha256}, got {actual} ({received} bytes)")


# ---------------------------------------------------------------------------------------------- listing
def human_size(n: int) -> str:
    """Bytes as a short human-readable size (1 kB = 1000 bytes)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def describe() -> list[dict]:
    """One row per data set: name, title, files, bytes, licence, citation, source and where it is now."""
    rows = []
    for ds in registry().datasets.values():
        present = [local(f.path) is not None for f in ds.files]
        rows.append({
            "name": ds.name, "title": ds.title, "files": [f.path for f in ds.files], "bytes": ds.size,
            "licence": ds.licence, "citation": ds.citation, "source": ds.source, "notes": ds.notes,
            "hub": None if ds.hub is None else {**ds.hub.__dict__},
            "local": "all" if present and all(present) else ("some" if any(present) else "none"),
        })
    return rows

