"""Helpers shared by the data benchmarks: provenance of a result and its atomic JSON record."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from llmbook.fileio import write_json


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(name: str, figures: dict, settings: dict, packages: list[str], out_dir: str = "bench/results",
           device: str = "cpu") -> dict:
    """Print one JSON record and write it to bench/results/<name>-<device>.json."""
    rec = {
        "name": name,
        "device": device,
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})",
        "python": platform.python_version(),
        "versions": {p: version(p) for p in packages},
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        **figures,
    }
    print(json.dumps(rec))
    write_json(Path(out_dir) / f"{name}-{device}.json", rec)
    return rec
