"""Every notebook runs in a fresh runtime, as a reader's Colab or laptop would run it (BOOK_DESIGN section 3).

A new virtual environment gets only what the README tells a reader to install (the pinned torch, then the
package with its `notebook` extra) plus nbval to check the outputs; `LLMBOOK_DATA` is unset and the cache is
empty, so every data file comes through the data registry's download code, from a mirror of the data folder
served on 127.0.0.1. nbval then runs the committed notebooks: strictly where every output is deterministic,
laxly (no errors) elsewhere. `make test` runs this test on its own after the rest of the suite, so each
notebook executes once per run.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = [pytest.mark.slow, pytest.mark.notebooks, pytest.mark.fresh_runtime]

STRICT = ("costs",)  # notebooks whose every output is deterministic: compared cell by cell
NBVAL_TOOLS = ("pytest", "pytest-xdist", "nbval", "ipykernel")  # what nbval needs, pinned as in the test extra
DEFAULT_TORCH = "torch==2.13.0"  # the CPU build the book is tested with (the Makefile's TORCH)


def _requirement(root: Path, name: str) -> str:
    extras = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for req in extras["test"]:
        if re.split(r"[<>=!;\[ ]", req, maxsplit=1)[0].lower() == name:
            return req
    return name


def _run(cmd: list, **kw) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{(done.stdout + done.stderr)[-6000:]}"


@pytest.fixture
def mirror(data_dir):
    """The data folder served over HTTP on 127.0.0.1 (an ephemeral port), as `LLMBOOK_DATA_MIRROR` expects it;
    yields its URL and the list of (path, status) it answered."""
    answered: list[tuple[str, int]] = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def log_request(self, code="-", size="-"):
            answered.append((self.path, int(code)))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(data_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answered
    server.shutdown()
    server.server_close()


def test_notebooks_pass_in_a_fresh_runtime(root, mirror, tmp_path):
    url, answered = mirror
    # the README's install, in a new venv: torch first, then the package (built from a copy of the source,
    # not installed in editable mode, so missing package data would show) with the notebook extra
    source = tmp_path / "source"
    shutil.copytree(root / "code", source / "code", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, source / name)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, os.environ.get("LLMBOOK_TORCH") or DEFAULT_TORCH])
    _run([*pip, f"{source}[notebook]", *(_requirement(root, n) for n in NBVAL_TOOLS)])

    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMBOOK_DATA", "LLMBOOK_OFFLINE", "PYTHONPATH", "PYTEST_XDIST_WORKER")}
    env.update(LLMBOOK_DATA_MIRROR=url, LLMBOOK_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"),
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    (tmp_path / "home").mkdir()
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    strict = [p for p in notebooks if p.stem in STRICT]
    lax = [p for p in notebooks if p.stem not in STRICT]
    nbval = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "--dist", "loadfile",
             "--nbval-current-env", "--nbval-cell-timeout=900",
             "--nbval-sanitize-with", root / "tests" / "nbval_sanitize.cfg"]
    for mode, paths in (("--nbval", strict), ("--nbval-lax", lax)):
        if paths:
            _run([*nbval, mode, *paths], cwd=root, env=env)
    cached = {str(p.relative_to(tmp_path / "cache" / "data")) for p in (tmp_path / "cache" / "data").rglob("*")
              if p.is_file()}
    assert cached, "the notebooks read no data through the registry's download path"
    # every cached file came from the mirror, and every request named a file of the data folder
    assert {path.lstrip("/") for path, status in answered if status == 200} == cached
    assert all(status == 200 for _, status in answered), f"failed requests: {answered}"
