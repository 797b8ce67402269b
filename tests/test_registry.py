"""The data registry: resolution order, validated entries, checksums that match the data folder, and the real
download code against a server on 127.0.0.1 (success, checksum mismatch, truncated transfer, server error,
fallback to the next URL), with no partial file left behind."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import lzma
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from llmbook.cli import main
from llmbook.data import registry
from llmbook.data.registry import DataFile, Dataset, Registry, Remote
from llmbook.fileio import file_sha256


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh runtime: no LLMBOOK_DATA, an empty cache, downloads allowed."""
    monkeypatch.delenv("LLMBOOK_DATA", raising=False)
    monkeypatch.delenv("LLMBOOK_DATA_MIRROR", raising=False)
    monkeypatch.delenv("LLMBOOK_OFFLINE", raising=False)
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, and misbehaves on request: `/fail/500/...` answers 500, `/fail/short/...` announces the
    file's length and sends half of it, `/fail/endless/...` streams bytes without end, `/fail/huge/...`
    announces a terabyte, `/fail/stall/...` says nothing for a second, `/fail/garbage/...` answers something that is not HTTP, `/redirect/<url>` redirects.
    With `password` set, every request needs basic authentication as `user:<password>`."""

    requests: list[str]
    authorizations: list[str | None]
    password: str | None = None

    def log_message(self, *args):  # keep test output clean
        pass

    def _raw(self, head: bytes, body: bytes = b"") -> None:
        self.wfile.write(head + body)
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self):
        self.requests.append(self.path)
        self.authorizations.append(self.headers.get("Authorization"))
        if self.password is not None:
            token = base64.b64encode(f"user:{self.password}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {token}":
                self.send_error(401, "who are you")
                return
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/fail/500/"):
            self.send_error(500, "server on fire")
            return
        if self.path.startswith("/fail/short/"):
            data = (Path(self.directory) / self.path.rsplit("/", 1)[1]).read_bytes()
            self._raw(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data), data[: len(data) // 2])
            return
        if self.path.startswith("/fail/huge/"):
            self._raw(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", b"x" * 1000)
            return
        if self.path.startswith("/fail/stall/"):
            time.sleep(1.0)
            self.close_connection = True
            return
        if self.path.startswith("/fail/garbage/"):
            self._raw(b"SSH-2.0-not-http\r\n\r\n")
            return
        if self.path.startswith("/fail/endless/"):
            self.wfile.write(b"HTTP/1.0 200 OK\r\n\r\n")
            try:
                for _ in range(100_000):  # 6.5 GB unless the client stops reading
                    self.wfile.write(b"x" * 65536)
            except OSError:
                pass
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def serve():
    """Start a server on 127.0.0.1 (ephemeral port) for a folder; returns (base URL, list of request paths)."""
    servers = []

    def start(folder: Path, password: str | None = None) -> tuple[str, list[str]]:
        requests: list[str] = []
        handler = type("H", (Handler,), {"requests": requests, "authorizations": [], "password": password})
        start.handlers.append(handler)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", requests

    start.handlers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ---------------------------------------------------------------------------------------------- resolution
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


@pytest.mark.parametrize("name", ["", "a.txt", "/etc/passwd", "../x/y", "toy/../../etc/passwd", "toy\\..\\x"])
def test_fetch_refuses_names_outside_the_data_root(name):
    with pytest.raises(ValueError, match="folder/file"):
        registry.fetch(name)


def test_missing_file_error_names_the_file(env):
    with pytest.raises(FileNotFoundError, match="toy/missing.txt.*no such file"):
        registry.fetch("toy/missing.txt")


def test_offline_refuses_to_download(env, monkeypatch):
    monkeypatch.setenv("LLMBOOK_OFFLINE", "1")
    with pytest.raises(registry.DataUnavailable, match="gsm8k/test_dev.jsonl.*LLMBOOK_OFFLINE"):
        registry.fetch("gsm8k/test_dev.jsonl")
    assert leftovers(env) == []


# ---------------------------------------------------------------------------------------------- entries
def test_catalog_lists_every_file_of_the_data_folder_with_matching_checksums(data_dir):
    """Every file of the data folder is in the registry, and every registry sha256 and size is the local copy's
    (so a mirror of the folder, and byte-identical public files, download to the same bytes)."""
    reg = registry.registry()
    on_disk = {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    assert on_disk == set(reg.files)
    for path, entry in reg.files.items():
        assert (file_sha256(data_dir / path), (data_dir / path).stat().st_size) == (entry.sha256, entry.size), path


def test_catalog_entries_are_complete():
    reg = registry.registry()
    for ds in reg.datasets.values():
        assert ds.licence and ds.source and (ds.files or ds.hub), ds.name
        for f in ds.files:
            assert f.convert is not None or f.inputs[0].urls[0].startswith("https://raw.githubusercontent.com/")
            assert all(len(r.urls) >= 2 for r in f.inputs), f"{f.path}: one dead link would break it"
    assert reg.dataset("gutenberg").files[0].content_sha256  # a rebuilt archive is checked by its content
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        reg.dataset("nope")


def test_citations_are_in_the_bibliography(root):
    bib = (root / "references.bib").read_text(encoding="utf-8")
    for ds in registry.registry().datasets.values():
        assert ds.citation, f"{ds.name}: no citation key"
        assert "{" + ds.citation + "," in bib, f"{ds.name}: citation {ds.citation!r} is not in references.bib"


def _file(path="toy/a.txt", data=b"hello\n", urls=("https://example.org/a.txt",), **kw) -> DataFile:
    return DataFile(path, sha(data), len(data), (Remote(urls, sha(data), len(data)),), **kw)


@pytest.mark.parametrize("make, message", [
    (lambda: DataFile("toy/a.txt", "abc", 1, ()), "64 lower-case hex"),
    (lambda: DataFile("a.txt", "0" * 64, 1, ()), "folder/file"),
    (lambda: DataFile("toy/a.txt", "0" * 64, 0, ()), "size must be positive"),
    (lambda: DataFile("toy/a.txt", "0" * 64, 5, (Remote(("https://x.org/a",), "1" * 64, 5),)), "byte-identical"),
    (lambda: DataFile("toy/a.txt", "0" * 64, 5, (), "nope"), "unknown converter 'nope'"),
    (lambda: Remote(("ftp://x.org/a",), "0" * 64, 5), "https://"),
    (lambda: Remote(("http://example.org/a",), "0" * 64, 5), "https://"),
    (lambda: Dataset("Bad Name", "t", "MIT", "s", (_file(),)), "lower-case"),
    (lambda: Dataset("other", "t", "MIT", "s", (_file(),)), "outside its folder"),
    (lambda: Dataset("toy", "t", " ", "s", (_file(),)), "licence is empty"),
    (lambda: Registry([Dataset("toy", "t", "MIT", "s", (_file(), _file()))]), "registered twice"),
])
def test_invalid_entries_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------------------------- downloads
def test_mirror_download_checks_and_caches(data_dir, env, serve, monkeypatch):
    base, requests = serve(data_dir)
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base + "/")
    path = registry.fetch("gsm8k/test_dev.jsonl", progress=False)
    assert path == env / "data" / "gsm8k" / "test_dev.jsonl"
    assert path.read_bytes() == (data_dir / "gsm8k" / "test_dev.jsonl").read_bytes()
    assert registry.fetch("gsm8k/test_dev.jsonl") == path and requests == ["/gsm8k/test_dev.jsonl"]  # cached
    assert [p.name for p in leftovers(env)] == ["test_dev.jsonl"]


def test_mirror_may_be_a_local_folder(data_dir, env, monkeypatch):
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", data_dir.as_uri() + "/")  # file://.../ with a trailing slash
    path = registry.fetch("gsm8k/test_dev.jsonl", progress=False)
    assert path.parent.parent == env / "data" and path.read_bytes() == (data_dir / "gsm8k" / "test_dev.jsonl").read_bytes()


def test_checksum_mismatch_names_file_and_both_digests(env, serve, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "gsm8k").mkdir(parents=True)
    entry = registry.registry().files["gsm8k/test_dev.jsonl"]
    tampered = b"t" * entry.size  # the right size, the wrong bytes
    (mirror / "gsm8k" / "test_dev.jsonl").write_bytes(tampered)
    base, _ = serve(mirror)
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base)
    with pytest.raises(registry.DataUnavailable) as err:
        registry.fetch("gsm8k/test_dev.jsonl", progress=False)
    assert "gsm8k/test_dev.jsonl" in str(err.value) and entry.sha256 in str(err.value) and sha(tampered) in str(err.value)
    assert leftovers(env) == []


@pytest.mark.parametrize("url_path, message", [("fail/short/x.txt", "cut short"), ("fail/500/x.txt", "500")])
def test_failed_transfers_leave_nothing_and_fall_back_to_the_next_url(tmp_path, serve, url_path, message):
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"payload\n")
    base, requests = serve(folder)
    dest = tmp_path / "out" / "x.txt"
    with pytest.raises(registry.DataUnavailable, match=f"'x.txt'.*{message}"):
        registry.download([f"{base}/{url_path}"], dest, sha(b"payload\n"), 8, "x.txt", progress=False)
    assert leftovers(tmp_path / "out") == []
    registry.download([f"{base}/{url_path}", f"{base}/x.txt"], dest, sha(b"payload\n"), 8, "x.txt", progress=False)
    assert dest.read_bytes() == b"payload\n" and leftovers(tmp_path / "out") == [dest]
    assert requests[-2:] == [f"/{url_path}", "/x.txt"]


def test_an_interrupted_download_leaves_no_file_and_is_not_swallowed(tmp_path, serve, monkeypatch):
    """Ctrl-C in the middle of a transfer stops the download (it is not taken for a failed URL to retry)
    and removes the temporary file."""
    import contextlib

    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"payload\n")
    base, requests = serve(folder)

    class Interrupting:
        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(registry, "progress_bar", lambda **kw: contextlib.nullcontext(Interrupting()))
    with pytest.raises(KeyboardInterrupt):
        registry.download([f"{base}/x.txt", f"{base}/x.txt"], tmp_path / "out" / "x.txt", sha(b"payload\n"), 8,
                          "x.txt", progress=False)
    assert leftovers(tmp_path / "out") == [] and requests == ["/x.txt"]


def test_unreachable_server_is_reported(tmp_path):
    with pytest.raises(registry.DataUnavailable, match="could not download 'x.txt': http://127.0.0.1:9/x.txt"):
        registry.download(["http://127.0.0.1:9/x.txt"], tmp_path / "x.txt", "0" * 64, 1, "x.txt", progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url_path, message", [
    ("fail/endless/x.txt", "longer than the 8 bytes"),
    ("fail/huge/x.txt", "announces 1000000000000 bytes, the registry expects 8"),
    ("fail/garbage/x.txt", "SSH-2.0-not-http"),
])
def test_hostile_servers_are_refused_and_the_next_url_tried(tmp_path, serve, url_path, message):
    """A body longer than the registry's size is cut off (not downloaded to the end), a wrong Content-Length
    is refused before the body, and a reply that is not HTTP is an ordinary failure, not a traceback."""
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"payload\n")
    base, requests = serve(folder)
    dest = tmp_path / "out" / "x.txt"
    with pytest.raises(registry.DataUnavailable, match=f"'x.txt'.*{message}"):
        registry.download([f"{base}/{url_path}"], dest, sha(b"payload\n"), 8, "x.txt", progress=False)
    assert leftovers(tmp_path / "out") == []
    registry.download([f"{base}/{url_path}", f"{base}/x.txt"], dest, sha(b"payload\n"), 8, "x.txt", progress=False)
    assert dest.read_bytes() == b"payload\n" and requests[-1] == "/x.txt"


def test_a_silent_server_times_out_and_the_next_url_is_tried(tmp_path, serve, monkeypatch):
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"payload\n")
    base, requests = serve(folder)
    monkeypatch.setattr(registry, "TIMEOUT_S", 0.2)
    dest = tmp_path / "out" / "x.txt"
    registry.download([f"{base}/fail/stall/x.txt", f"{base}/x.txt"], dest, sha(b"payload\n"), 8, "x.txt", progress=False)
    assert dest.read_bytes() == b"payload\n" and requests == ["/fail/stall/x.txt", "/x.txt"]


def test_mirror_credentials_are_sent_to_it_only_and_never_printed(data_dir, env, serve, monkeypatch):
    """`LLMBOOK_DATA_MIRROR=https://user:password@host/...` authenticates (basic auth), keeps the password out
    of messages, and does not hand it to another host a redirect points at."""
    base, requests = serve(data_dir, password="s3cr&t")
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base.replace("//", "//user:s3cr%26t@"))
    path = registry.fetch("gsm8k/test_dev.jsonl", progress=False)
    assert path.read_bytes() == (data_dir / "gsm8k" / "test_dev.jsonl").read_bytes()
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base.replace("//", "//user:wrong@"))
    with pytest.raises(registry.DataUnavailable) as err:
        registry.fetch("gsm8k/train.jsonl", progress=False)
    assert "401" in str(err.value) and "user:***@127.0.0.1" in str(err.value) and "wrong" not in str(err.value)
    other, other_requests = serve(data_dir)
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base.replace("//", "//user:s3cr%26t@") + f"/redirect/{other}")
    assert registry.fetch("gsm8k/train.jsonl", progress=False).stat().st_size == 4166206
    assert other_requests == ["/gsm8k/train.jsonl"] and serve.handlers[-1].authorizations == [None]


def test_a_damaged_cache_file_is_downloaded_again(data_dir, env, serve, monkeypatch, capsys):
    """The cache is checked against the registry (once per process while the file is unchanged): a damaged or
    stale copy is replaced by a fresh download, or refused offline with both checksums."""
    base, requests = serve(data_dir)
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base)
    rel = "gsm8k/test_dev.jsonl"
    good = (data_dir / rel).read_bytes()
    path = registry.fetch(rel, progress=False)
    hashed = []
    monkeypatch.setattr(registry, "file_sha256", lambda p, opener=open: hashed.append(p) or sha(Path(p).read_bytes()))
    assert registry.fetch(rel) == path and registry.fetch(rel) == path and len(hashed) <= 1 and len(requests) == 1
    path.write_bytes(good[:-10] + b"tampered!\n")
    monkeypatch.setenv("LLMBOOK_OFFLINE", "1")
    with pytest.raises(registry.DataUnavailable, match=f"{rel}: sha256 mismatch: expected {sha(good)}, got "
                                                       f"{sha(good[:-10] + b'tampered!' + bytes([10]))}"):
        registry.fetch(rel)
    monkeypatch.delenv("LLMBOOK_OFFLINE")
    assert registry.fetch(rel, progress=False).read_bytes() == good and len(requests) == 2
    assert "downloading it again" in capsys.readouterr().err


def test_a_cache_entry_linking_elsewhere_is_replaced_not_written_through(data_dir, env, serve, tmp_path, monkeypatch):
    """A symlink in the cache to some other file is not taken for the data (its checksum is wrong), and the
    fresh download replaces the link itself: the file it pointed at is left as it was."""
    base, _ = serve(data_dir)
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base)
    elsewhere = tmp_path / "precious.txt"
    elsewhere.write_text("not data\n")
    link = env / "data" / "gsm8k" / "test_dev.jsonl"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    path = registry.fetch("gsm8k/test_dev.jsonl", progress=False)
    assert path == link and not link.is_symlink()
    assert path.read_bytes() == (data_dir / "gsm8k" / "test_dev.jsonl").read_bytes()
    assert elsewhere.read_text() == "not data\n"


def test_a_rebuilt_archive_in_the_cache_is_checked_by_its_content(tmp_path):
    content = b"the books\n" * 1000
    shared = lzma.compress(content, preset=6)
    path = tmp_path / "corpus.txt.xz"
    path.write_bytes(lzma.compress(content, preset=1))  # a rebuild by another xz: other bytes, same content
    assert registry.cached_problem(path, sha(shared), sha(content)) is None
    path.write_bytes(lzma.compress(b"other books\n", preset=1))
    assert "content" in registry.cached_problem(path, sha(shared), sha(content))
    path.write_bytes(b"not xz")
    assert "not a readable xz file" in registry.cached_problem(path, sha(shared), sha(content))


def test_a_damaged_upstream_file_in_the_cache_is_downloaded_again(env, serve, tmp_path):
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "up.txt").write_bytes(b"upstream\n")
    base, requests = serve(folder)
    remote = Remote((f"{base}/up.txt",), sha(b"upstream\n"), 9)
    assert registry.upstream(remote, progress=False).read_bytes() == b"upstream\n"
    (env / "upstream" / remote.sha256).write_bytes(b"upstreaM\n")
    assert registry.upstream(remote, progress=False).read_bytes() == b"upstream\n" and len(requests) == 2


def test_concurrent_fetches_of_one_file_agree(data_dir, env, serve, monkeypatch):
    """Two fetches of one file at once (two notebooks, xdist workers) each download to their own temporary
    file and rename it into place: both get the whole file, and no partial or temporary file remains."""
    base, _ = serve(data_dir)
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base)
    monkeypatch.setattr(registry, "CHUNK", 4096)  # many small reads, so the transfers interleave
    results, errors = [], []

    def get():
        try:
            results.append(registry.fetch("gsm8k/train.jsonl", progress=False).read_bytes())
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=get) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    assert all(r == (data_dir / "gsm8k" / "train.jsonl").read_bytes() for r in results)
    assert [p.name for p in leftovers(env)] == ["train.jsonl"]


def test_converted_file_is_rebuilt_from_upstream_and_checked(env, serve, tmp_path):
    upstream = b'{"q": 1}\n{"q": 2}\n{"q": 3}'
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "test.jsonl").write_bytes(upstream)
    base, _ = serve(folder)
    remote = Remote((f"{base}/fail/500/test.jsonl", f"{base}/test.jsonl"), sha(upstream), len(upstream))
    good = b'{"q": 1}\n{"q": 2}\n'
    entry = DataFile("toy/dev.jsonl", sha(good), len(good), (remote,), "head", (2,))
    assert registry.obtain(entry, env / "data" / "toy" / "dev.jsonl", progress=False).read_bytes() == good
    assert (env / "upstream" / sha(upstream)).read_bytes() == upstream  # upstream files are cached by checksum
    wrong = DataFile("toy/dev3.jsonl", sha(good), len(good), (remote,), "head", (3,))
    with pytest.raises(registry.ChecksumMismatch, match=f"toy/dev3.jsonl.*expected {sha(good)}"):
        registry.obtain(wrong, env / "data" / "toy" / "dev3.jsonl", progress=False)
    assert not (env / "data" / "toy" / "dev3.jsonl").exists()


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_list_shows_every_data_set_with_size_and_licence(capsys):
    assert main(["data", "download", "--list"]) == 0
    out = capsys.readouterr().out
    for ds in registry.registry().datasets.values():
        line = next(line for line in out.splitlines() if line.startswith(ds.name + " "))
        assert ds.licence in line and (registry.human_size(ds.size) in line if ds.files else "sample" in line)
    assert main(["data", "download", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(registry.registry().datasets)
    assert all(r["licence"] and isinstance(r["bytes"], int) for r in rows)


def test_cli_download_through_a_mirror(data_dir, env, serve, monkeypatch, capsys):
    base, _ = serve(data_dir)
    monkeypatch.setenv("LLMBOOK_DATA_MIRROR", base)
    assert main(["data", "download", "winogrande", "mmlu/mmlu_dev.csv", "--json"]) == 0
    fetched = json.loads(capsys.readouterr().out)
    assert set(fetched) == {"winogrande/winogrande_dev_dev.jsonl", "winogrande/README.winogrande.md", "mmlu/mmlu_dev.csv"}
    for rel, where in fetched.items():
        assert Path(where).read_bytes() == (data_dir / rel).read_bytes()


@pytest.mark.parametrize("argv, message", [
    ([], "name the data sets"),
    (["--all", "gsm8k"], "not both"),
    (["nope"], "unknown data set 'nope'"),
    (["gsm8k/nope.jsonl"], "unknown data file"),
    (["fineweb-edu"], "streamed from the hub"),
])
def test_cli_download_errors_are_one_line(argv, message, env, capsys):
    assert main(["data", "download", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
