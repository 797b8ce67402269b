"""Progress bars for long work (training, data preparation, downloads) that rendering can silence."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable | None = None, progress: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar that `TQDM_DISABLE=1` silences, read when the bar is made: tqdm reads
    the variable only on import, and Jupyter's bar (`tqdm.notebook`) ignores it."""
    from tqdm.auto import tqdm

    quiet = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
    off = {"disable": True} if quiet or not progress else {}
    return tqdm(iterable, **kwargs, **off)
