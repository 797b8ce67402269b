"""Shared test fixtures: the repository root, the book tooling, and the data directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: two workers already fill two cores


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local copy of the shared data (LLMBOOK_DATA); tests that need it skip without it."""
    value = os.environ.get("LLMBOOK_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("LLMBOOK_DATA is not set to a data directory")
    return Path(value)
