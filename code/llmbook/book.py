"""Chapter setup helpers: one call at the top of every chapter and notebook (BOOK_DESIGN section 2)."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_SEED = 1234


def project_root(start: Path | None = None) -> Path:
    """Return the repository root (the folder holding `_quarto.yml`), searching upwards from `start`."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "_quarto.yml").is_file():
            return candidate
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "_quarto.yml").is_file():
        return package_root
    raise FileNotFoundError(f"no _quarto.yml found above {here}; run from inside the book's repository")


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so chapter outputs are reproducible."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device() -> str:
    """Return 'cuda' when a GPU is usable, else 'cpu' (the book's reference device)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_interactive() -> bool:
    """True in a terminal or a live notebook, False when a chapter is rendered or tested."""
    if os.environ.get("LLMBOOK_QUIET") or os.environ.get("QUARTO_PROJECT_DIR") or os.environ.get("CI"):
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def preset_name(device: str | None = None) -> str:
    """Name of the size preset for this machine: `cpu-tiny` on CPU, bigger ones on GPUs (section 2)."""
    if os.environ.get("LLMBOOK_PRESET"):
        return os.environ["LLMBOOK_PRESET"]
    device = device or pick_device()
    if device != "cuda":
        return "cpu-tiny"
    import torch

    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return "h100-124m" if total_gib >= 40 else "colab-t4"


def preset(name: str | None = None) -> dict:
    """Load the TOML preset `configs/<name>.toml` (default: the one `preset_name` picks)."""
    name = name or preset_name()
    path = project_root() / "configs" / f"{name}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"unknown preset {name!r}: {path} does not exist")
    with path.open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class Setup:
    """What `setup()` decided, so a chapter can print or branch on it."""

    seed: int
    device: str
    preset: str
    interactive: bool


def setup(seed: int = DEFAULT_SEED, quiet: bool | None = None) -> Setup:
    """Seed everything, pick the device, style plots and silence progress bars when rendering.

    Called by the hidden first cell of every chapter (BOOK_DESIGN section 2).
    """
    interactive = is_interactive() if quiet is None else not quiet
    if not interactive:
        os.environ["TQDM_DISABLE"] = "1"
    seed_everything(seed)
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    import torch

    torch.set_printoptions(precision=4, linewidth=100, sci_mode=False)
    _style_plots()
    try:
        import pandas as pd

        pd.set_option("display.width", 100)
        pd.set_option("display.max_columns", 20)
        pd.set_option("display.precision", 3)
    except ImportError:
        pass
    device = pick_device()
    return Setup(seed=seed, device=device, preset=preset_name(device), interactive=interactive)


def _ipython_shell():
    """The running IPython kernel's shell, or None outside a notebook."""
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if shell is not None and "ipykernel" in sys.modules else None


def _style_plots() -> None:
    """A clean, print-friendly matplotlib style shared by every figure in the book."""
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError:
        return
    shell = _ipython_shell()
    if shell is not None:  # figures inline in notebooks and Quarto, even when MPLBACKEND says Agg
        shell.run_line_magic("matplotlib", "inline")
    plt.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "font.size": 10,
            "legend.frameon": False,
        }
    )
    matplotlib.rcParams["svg.hashsalt"] = "llmbook"


def inline(value: object) -> str:
    """Format a computed value for the prose: thousands separators for ints, 3 significant digits for floats."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{mantissa} × 10^{int(exponent)}^"
        return f"{value:,.3g}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def human(value: float, digits: int = 3) -> str:
    """Counts the way the LLM literature writes them: 124M parameters, 1.4T tokens, 6.7B."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def _two_digits(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2g}"


def duration(hours: float) -> str:
    """A time span in the unit a reader would use: '45 s', '12 min', '3.4 h', '5.2 days', '1.3 years'."""
    seconds = hours * 3600
    for limit, size, unit in ((90, 1, "s"), (90 * 60, 60, "min"), (48 * 3600, 3600, "h"),
                              (730 * 86400, 86400, "days")):
        if abs(seconds) < limit:
            return f"{_two_digits(seconds / size)} {unit}"
    return f"{_two_digits(seconds / (365 * 86400))} years"


def si(value: float, unit: str) -> str:
    """A quantity with an SI prefix: si(1.5e6, "Wh") -> '1.5 MWh'; grams of a million or more become tonnes."""
    if unit == "g" and abs(value) >= 1e6:
        return si(value / 1e6, "t")
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{_two_digits(value / scale)} {prefix}{unit}"
    return f"{_two_digits(value)} {unit}"


def md_table(rows: list[list[object]], headers: list[str], align: str | None = None):
    """A pipe table as a Markdown display object, so Quarto renders it natively in HTML and PDF.

    `align` has one letter per column: l, r or c (default: text left, numbers right).
    """
    from IPython.display import Markdown

    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row needs {len(headers)} cells to match the headers {headers}")
    if align is None:
        align = "".join("r" if rows and isinstance(v, (int, float)) else "l" for v in (rows[0] if rows else headers))
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(inline(v) if not isinstance(v, str) else v for v in r) + " |" for r in rows]
    return Markdown("\n".join(lines))
