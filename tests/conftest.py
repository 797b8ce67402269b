"""Shared test fixtures: the repository root, the book tooling, the data (through the data registry) and the
code sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

# Tests never reach the internet: the registry may resolve data from LLMBOOK_DATA or the cache, and tests
# that download start their own server on 127.0.0.1.
os.environ["LLMBOOK_OFFLINE"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: two workers already fill two cores


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local copy of the data folder (the registry's `LLMBOOK_DATA` root); tests that need it skip without it.
    Tests that read a data file use `data_file` instead."""
    from llmbook.data import registry

    root = registry.local_root()
    if root is None:
        pytest.skip("LLMBOOK_DATA is not set to a data directory")
    return root


@pytest.fixture(scope="session")
def data_file():
    """`data_file("folder/file") -> Path` through the data registry (LLMBOOK_DATA or the cache); skips the test
    when the file is not there, since tests never download from the internet."""
    from llmbook.data import registry

    def get(name: str) -> Path:
        try:
            return registry.fetch(name)
        except registry.DataUnavailable as err:
            pytest.skip(str(err))

    return get


def _can_install_system_packages() -> bool:
    """Whether `make sysdeps` can install packages here: apt-get, run as root or with passwordless sudo."""
    if shutil.which("apt-get") is None:
        return False
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return sudo is not None and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def sandbox_ready() -> None:
    """For tests that run code in the bubblewrap sandbox: they skip only where bubblewrap cannot be had."""
    from llmbook.eval import sandbox

    problem = sandbox.isolation_problem()
    if problem is None:
        return
    if shutil.which("bwrap") is None and _can_install_system_packages():
        pytest.fail(f"{problem}, but it can be installed here: run `make sysdeps` (make test runs it first)")
    pytest.skip(f"no code sandbox: {problem}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for the browser tests (driven by Playwright): they skip only where it cannot be had."""
    pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install -e '.[test]'")
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if _can_install_system_packages():
        pytest.fail("Chromium is not installed, but it can be installed here: run `make sysdeps` (make test runs it first)")
    pytest.skip("no Chromium for the browser tests: install your system's chromium package")
