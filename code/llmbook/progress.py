"""Progress bars for long work (training, data preparation, downloads) that rendering can silence."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable | None = None, progress: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar that `TQDM_DISABLE=1` can silence (passing `disable=False` would override the variable).

    The variable is applied here as well: in Jupyter with ipywidgets, `tqdm.auto` gives the notebook bar, whose
    constructor sets `disable=False` unless told otherwise and so ignores the variable.
    """
    from tqdm.auto import tqdm

    if not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
