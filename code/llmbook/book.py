"""Chapter setup helpers: one call at the top of every chapter and notebook (BOOK_DESIGN section 2)."""

from __future__ import annotations

import ast
import inspect
import io
import os
import random
import re
import sys
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_SEED = 1234
# Characters per line of code and output that fit the printed page (PDF through LaTeX and Typst); the
# book's checks (scripts/booktools.py) fail on longer lines in code and output blocks.
PAGE_WIDTH = 88


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
        _wrap_stdout()
    seed_everything(seed)
    np.set_printoptions(precision=4, suppress=True, linewidth=PAGE_WIDTH)
    import torch

    torch.set_printoptions(precision=4, linewidth=PAGE_WIDTH, sci_mode=False)
    _style_plots()
    try:
        import pandas as pd

        pd.set_option("display.width", PAGE_WIDTH)
        pd.set_option("display.max_columns", 20)
        pd.set_option("display.precision", 3)
    except ImportError:
        pass
    device = pick_device()
    return Setup(seed=seed, device=device, preset=preset_name(device), interactive=interactive)


class PageWidthWriter:
    """A stdout that wraps printed lines longer than the page (`PAGE_WIDTH`) at spaces, continuation
    lines indented by two more spaces, so printed output fits the PDF page. Installed by `setup()`
    when a chapter is rendered or tested."""

    def __init__(self, stream, width: int = PAGE_WIDTH):
        self.stream, self.width, self.pending = stream, width, ""

    def _wrap(self, line: str) -> str:
        if len(line) <= self.width:
            return line
        indent = line[: len(line) - len(line.lstrip())]
        return "\n".join(textwrap.wrap(line, self.width, subsequent_indent=indent + "  ", break_on_hyphens=False,
                                        replace_whitespace=False, drop_whitespace=True)) or line

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            *lines, self.pending = self.pending.split("\n")
            self.stream.write("".join(self._wrap(line) + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.stream.write(self._wrap(self.pending))
            self.pending = ""
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _wrap_stdout() -> None:
    """Route `print` through `PageWidthWriter` (once); in a kernel, flush it at the end of every cell."""
    if isinstance(sys.stdout, PageWidthWriter):
        return
    sys.stdout = PageWidthWriter(sys.stdout)
    shell = _ipython_shell()
    if shell is not None:
        shell.events.register("post_execute", sys.stdout.flush)


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


def printable(text: str) -> str:
    """`text` safe to typeset: control, format and private-use characters and U+FFFD (the mark of
    undecodable bytes) shown as Python escapes, newlines and tabs kept.

    Fonts have no glyph for these, so a PDF would show blanks or stop; an escape shows what is there.
    """
    import unicodedata

    def visible(ch: str) -> str:
        if ch in "\n\t" or (ch != "\ufffd" and unicodedata.category(ch)[0] != "C"):
            return ch
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    return "".join(visible(ch) for ch in text)


def md_code(value: object) -> str:
    """`value` as a Markdown inline code span (literal text: no emphasis, citations or raw TeX),
    for table cells and prose that show strings such as `repr()` output."""
    text = printable(str(value)).replace("\n", "\\n").replace("\t", "\\t")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _visible_length(cell: str) -> int:
    """Rough printed width of a Markdown table cell in characters (citations expand to author-year)."""
    text = re.sub(r"\[-?@[^\]]*\]", "x" * 24, cell)
    text = re.sub(r"`|\*\*|\\(?=[|\\])", "", text)  # markup that prints nothing; `_` may be a letter
    return len(text)


# Widest table (in characters of body text, two per column for the gaps) printed at its natural width;
# wider ones get relative column widths so the typesetter wraps their cells within the text width.
TABLE_WIDTH = 80

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

    `align` has one letter per column: l, r or c (default: text left, numbers right). Strings are
    Markdown (citations and code work; `|` is escaped); wrap literal text with `md_code`. A table
    wider than `TABLE_WIDTH` characters gets column widths proportional to its content, so it wraps
    within the page instead of running off it.
    """
    from IPython.display import Markdown

    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row needs {len(headers)} cells to match the headers {headers}")
    if align is None:
        align = "".join("r" if rows and isinstance(v, (int, float)) else "l" for v in (rows[0] if rows else headers))
    if len(align) != len(headers) or set(align) - set("lrc"):
        raise ValueError(f"align needs one of l, r, c per column ({len(headers)}), got {align!r}")

    def cell(v: object) -> str:
        text = v if isinstance(v, str) else inline(v)
        return re.sub(r"(?<!\\)\|", r"\\|", text.replace("\n", " "))

    body = [[cell(v) for v in r] for r in rows]
    head = [cell(h) for h in headers]
    widths = [max(_visible_length(c) for c in column) for column in zip(head, *body)]
    if sum(widths) + 2 * len(widths) <= TABLE_WIDTH:
        dashes = [3] * len(widths)
    else:  # a separator line longer than pandoc's 72 columns makes the widths relative
        total = sum(widths)
        dashes = [max(3, round(100 * w / total)) for w in widths]
    rule = {"l": ":{}", "r": "{}:", "c": ":{}:"}
    sep = "|" + "|".join(rule[a].format("-" * (d - len(rule[a]) + 2)) for a, d in zip(align, dashes)) + "|"
    lines = ["| " + " | ".join(head) + " |", sep]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return Markdown("\n".join(lines))


def _statement_at(tree: ast.AST, line: int) -> tuple[ast.stmt, list[ast.stmt]] | None:
    """The outermost statement that starts on `line`, with its enclosing compound statements."""
    def walk(node: ast.AST, parents: list[ast.stmt]):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                if child.lineno == line:
                    return child, parents
                if child.lineno < line <= child.end_lineno:
                    return walk(child, parents + [child])
        return None

    return walk(tree, [])


def _excerpt(lines: list[str], tree: ast.Module, first: int, last: int) -> list[str]:
    """Lines `first`..`last` (1-based, whole statements) with the headers of their enclosing blocks,
    and `...` where lines are left out, so that the excerpt is still valid Python."""
    found = _statement_at(tree, first)
    if found is None:
        raise ValueError(f"line {first} of the source does not start a statement")
    stmt, parents = found
    siblings = [s for s in (parents[-1].body if parents else tree.body)]
    chosen = [s for s in siblings if first <= s.lineno <= last] or [stmt]
    out: list[str] = []
    shown = 0  # last line number already shown
    for parent in parents:
        body_start = parent.body[0].lineno
        header_start = min([parent.lineno] + [d.lineno for d in getattr(parent, "decorator_list", [])])
        if header_start > shown + 1 and out:
            out.append(" " * (parent.col_offset) + "...")
        out.extend(lines[header_start - 1:body_start - 1])
        shown = body_start - 1
        doc = parent.body[0]
        if (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
                and isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))):
            out.extend(lines[doc.lineno - 1:doc.end_lineno])
            shown = doc.end_lineno
    start, end = chosen[0].lineno, chosen[-1].end_lineno
    indent = " " * chosen[0].col_offset
    if start > shown + 1:
        out.append(indent + "...")
    out.extend(lines[start - 1:end])
    if any(s.lineno > end for s in siblings) or (parents and parents[-1].end_lineno > end):
        out.append(indent + "...")
    return out


def _comments_above(code: str, width: int) -> str:
    """Move the trailing comment of each line longer than `width` onto its own line above it."""
    lines = code.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code
    for tok in reversed([t for t in tokens if t.type == tokenize.COMMENT]):
        row, col = tok.start
        line = lines[row - 1]
        if len(line) > width and line[:col].strip():
            indent = line[: len(line) - len(line.lstrip())]
            lines[row - 1: row] = [indent + line[col:], line[:col].rstrip()]
    return "\n".join(lines) + "\n"


def _rewrap_docstring(lines: list[str], indent: str, width: int) -> list[str]:
    """A docstring's paragraphs re-filled to `width` columns, quotes and indentation kept."""
    text = "\n".join(line.strip() for line in lines)
    quote = re.match(r'^[rRuU]?("""|\'\'\')', text)
    opening = quote.group(0) if quote else ""
    closing = quote.group(1) if quote else ""
    body = text[len(opening):len(text) - len(closing)] if text.endswith(closing) else text[len(opening):]
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body.strip())]
    out: list[str] = []
    for i, paragraph in enumerate(paragraphs):
        if i:
            out.append("")
        first = indent + (opening if i == 0 else "")
        wrapped = textwrap.wrap(paragraph, width, initial_indent=first, subsequent_indent=indent,
                                break_on_hyphens=False, break_long_words=False)
        out.extend(wrapped or [first])
    if len(out[-1]) + len(closing) <= width and len(paragraphs) == 1:
        out[-1] += closing
    else:
        out.append(indent + closing)
    return out


def _fit(code: str, width: int) -> str:
    """Reformat Python `code` to `width` columns: black (long strings split), comments and docstrings
    re-wrapped."""
    code = _comments_above(code, width)
    try:
        import black

        mode = black.Mode(line_length=width, string_normalization=False,
                          enabled_features={black.mode.Preview.string_processing})
        code = black.format_str(code, mode=mode)
    except ImportError:  # black is in the `notebook` extra; without it the code is shown as written
        pass
    except Exception as err:  # an excerpt black cannot parse is a bug in the excerpt
        raise ValueError(f"show_source: cannot format the excerpt: {err}") from None
    comments = {}  # line number -> column where a comment starts
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.start[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    docstrings: dict[int, int] = {}  # first line -> last line of each docstring
    try:
        for node in ast.walk(ast.parse(code)):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                docstrings[body[0].lineno] = body[0].end_lineno
    except SyntaxError:
        pass
    lines = code.rstrip("\n").splitlines()
    out: list[str] = []
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        indent = line[: len(line) - len(line.lstrip())]
        last = docstrings.get(number)
        if last is not None and any(len(x) > width for x in lines[number - 1:last]):
            out.extend(_rewrap_docstring(lines[number - 1:last], indent, width))
            number = last
        elif len(line) <= width:
            out.append(line)
        elif number in comments and not line[: comments[number]].strip():
            comment = line[comments[number]:].lstrip("#").strip()
            out.extend(f"{indent}# {part}" for part in textwrap.wrap(comment, width - len(indent) - 2,
                                                                      break_on_hyphens=False))
        else:
            out.append(line)
    return "\n".join(out)


def _first_match(lines: list[str], pattern: str, target: object) -> int:
    """1-based number of the first line matching the regular expression `pattern`."""
    regex = re.compile(pattern)
    for number, line in enumerate(lines, start=1):
        if regex.search(line):
            return number
    raise ValueError(f"show_source: no line of {getattr(target, '__qualname__', target)} matches {pattern!r}")


def show_source(obj: object, lines: None | str | tuple[int | str, int | str] = None, width: int = PAGE_WIDTH):
    """The source of a function, method or class from `llmbook` as a highlighted Python block that fits
    the page (`width` columns), for chapters and notebooks (BOOK_DESIGN section 2).

    `lines` picks a focused excerpt of a long function: `None` shows it all; a regular expression shows
    the statement on the first line that matches it (with its whole block); `(start, stop)` shows the
    statements that start on lines `start`..`stop` of the object's source (1-based line numbers, or
    regular expressions naming the first lines that match). Excerpts keep the
    signature, docstring and enclosing block headers and mark left-out lines with `...`. The code is
    reformatted to the page width (black); the first line names the file it comes from.
    """
    from IPython.display import Markdown

    target = inspect.unwrap(obj)
    source = textwrap.dedent(inspect.getsource(target))
    src_lines = source.splitlines()
    if lines is not None:
        tree = ast.parse(source)
        if isinstance(lines, str):
            first = last = _first_match(src_lines, lines, target)
        else:
            first, last = (_first_match(src_lines, x, target) if isinstance(x, str) else x for x in lines)
            if not 1 <= first <= last <= len(src_lines):
                raise ValueError(f"show_source: lines {lines} outside 1..{len(src_lines)}")
            starts = sorted({n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt) and first <= n.lineno <= last})
            if not starts:
                raise ValueError(f"show_source: no statement starts on lines {lines}")
            first = starts[0]
        src_lines = _excerpt(src_lines, tree, first, last)
    code = _fit("\n".join(src_lines) + "\n", width)
    try:
        path = Path(inspect.getsourcefile(target)).resolve()
        package = Path(__file__).resolve().parent
        origin = f"# {Path('llmbook') / path.relative_to(package)}\n"
    except (TypeError, ValueError):
        origin = ""
    fence = "````" if "```" in code else "```"
    return Markdown(f"{fence}python\n{origin}{code}\n{fence}")
