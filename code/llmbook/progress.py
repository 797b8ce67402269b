"""Progress bars for long work (training, data preparation, downloads) that rendering can silence."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable | None = None, progress: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar that `TQDM_DISABLE=1` can silence (passing `disable=False` would override the variable)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs, **({} if progress else {"disable": True}))
