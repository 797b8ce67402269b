"""Book tooling: execute chapters as Quarto does, write Quarto's freezer, check the executed Markdown with
pandoc, build companion notebooks, collect labels and references.

Used by the tests (tests/test_book.py, tests/test_chapters.py, tests/test_notebooks.py) and from the
command line:

    python scripts/booktools.py notebooks            # regenerate notebooks/ from chapters/ and execute them
    python scripts/booktools.py notebooks costs      # only one chapter
    python scripts/booktools.py freeze               # execute every chapter once, write _freeze/ for Quarto
    python scripts/booktools.py check                # cross-references, citations, bibliography
    python scripts/booktools.py fit-code chapters/costs.qmd   # reformat over-long code lines (black)

Quarto's Jupyter engine turns a `.qmd` file into a notebook, executes it (inline `{python}` expressions
as kernel `user_expressions`), converts the result to Markdown with `::: {.cell}` divs and stores that
Markdown per output format in `_freeze/<path>/execute-results/<html|tex|typ>.json`, with figures in
`_freeze/<path>/figure-<format>/`. `run_document` and `quarto_markdown` reproduce those steps for the
cell options the book uses (quarto-cli 1.10, src/core/jupyter/jupyter.ts); an option they do not model
is an error, not a silent difference. `freeze` writes the freezer from one execution, so `quarto
render` uses it instead of running the chapters (`execute: freeze: auto`), and the tests run pandoc on
the same Markdown, to LaTeX and Typst, to catch what would break or spoil the PDF.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FREEZE = ROOT / "_freeze"
KERNEL = "python3"
CELL_TIMEOUT = 900

OPTION_LINE = re.compile(r"^#\|\s?(.*)$")
INLINE_EXPR = re.compile(r"(?:^|(?<=[^`]))`\{python\}[ \t]([^`]+)`", re.M)
CROSSREF_PREFIXES = ("fig", "tbl", "sec", "eq", "lst", "thm", "lem", "def", "exm", "exr", "cor", "prp", "cnj", "rem", "sol", "nte", "tip", "wrn", "imp", "cau")


# ---------------------------------------------------------------------------------------------- project
def quarto_config(profile: str | None = None) -> dict:
    """The parsed `_quarto.yml` (or `_quarto-<profile>.yml`)."""
    name = "_quarto.yml" if profile is None else f"_quarto-{profile}.yml"
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def book_files() -> list[Path]:
    """Every document listed in `_quarto.yml` (chapters and appendices, parts flattened), in reading order."""
    book = quarto_config()["book"]
    files: list[Path] = []

    def walk(entries: list) -> None:
        for entry in entries or []:
            if isinstance(entry, str):
                files.append(ROOT / entry)
            elif isinstance(entry, dict):
                if "part" in entry and str(entry["part"]).endswith(".qmd"):
                    files.append(ROOT / entry["part"])
                walk(entry.get("chapters", []))
    walk(book.get("chapters", []))
    walk(book.get("appendices", []))
    return files


def chapter_stems() -> list[str]:
    """Stems of the chapters that run code and get a companion notebook (everything but index/references)."""
    return [p.stem for p in book_files() if p.parent.name == "chapters" and p.stem != "references"]


def repo_url() -> str:
    """`book.repo-url`, the one place the repository address is written (Lua filter and notebooks read it)."""
    return quarto_config()["book"]["repo-url"].rstrip("/")


def repo_branch() -> str:
    """`book.repo-branch`: the branch that source links, Colab links and the install cell point at."""
    return str(quarto_config()["book"].get("repo-branch", "main"))


def repo_slug() -> str:
    """`owner/name` from `book.repo-url`."""
    return "/".join(repo_url().split("/")[-2:])


def colab_url(stem: str) -> str:
    """The "Open in Colab" address of a chapter's notebook (the Lua filter builds the same one)."""
    return f"https://colab.research.google.com/github/{repo_slug()}/blob/{repo_branch()}/notebooks/{stem}.ipynb"


# ---------------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One chunk of a chapter: markdown text or a code cell with its Quarto `#|` options parsed."""

    kind: str  # "markdown" or "code"
    source: str  # without option lines for code
    options: dict
    index: int  # position among the chapter's code cells (1-based), 0 for markdown


def parse_options(source: str) -> tuple[dict, str]:
    """Split a code chunk into its `#|` options (YAML) and the code below them."""
    lines = source.splitlines()
    option_lines = []
    while lines and OPTION_LINE.match(lines[0]):
        option_lines.append(OPTION_LINE.match(lines.pop(0)).group(1))
    options = yaml.safe_load("\n".join(option_lines)) if option_lines else {}
    return options or {}, "\n".join(lines)


def read_chapter(path: Path) -> list[Cell]:
    """Cells of a `.qmd` file in order (front matter dropped), read with jupytext's R Markdown reader."""
    nb = jupytext.reads(path.read_text(encoding="utf-8"), fmt="Rmd")
    cells, n_code = [], 0
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.startswith("---"):
            continue
        if cell.cell_type == "code":
            n_code += 1
            options, code = parse_options(cell.source)
            cells.append(Cell("code", code, options, n_code))
        else:
            cells.append(Cell("markdown", cell.source, {}, 0))
    return cells


# ---------------------------------------------------------------------------------------------- Quarto's notebook
# Cell options Quarto handles itself (jupyter.ts, kJupyterCellOptionKeys); other keys move to the cell's
# metadata and come back as attributes of its div.
QUARTO_OPTION_KEYS = {
    "eval", "echo", "warning", "error", "output", "include", "label", "classes", "panel", "column", "fig-cap",
    "fig-subcap", "fig-scap", "fig-cap-location", "tbl-cap-location", "cap-location", "fig-column", "tbl-column",
    "fig-link", "fig-align", "fig-alt", "fig-env", "fig-pos", "lst-label", "lst-cap", "out-width", "out-height",
    "md-indent", "code-fold", "code-line-numbers", "code-summary", "code-overflow", "html-table-processing",
    "layout-align", "layout-valign", "layout-ncol", "layout-nrow", "layout", "tbl-cap", "tbl-colwidths",
}
# Options whose effect on the Markdown `quarto_markdown` reproduces; any other option is refused.
MODELLED_OPTIONS = {"eval", "echo", "include", "output", "warning", "label", "fig-cap", "fig-alt", "tbl-cap", "nbval"}
# Quarto keeps these out of the div attributes (kJupyterCellInternalOptionKeys).
INTERNAL_OPTION_KEYS = QUARTO_OPTION_KEYS - {"layout-align", "layout-valign", "layout-ncol", "layout-nrow", "layout",
                                             "tbl-cap", "tbl-colwidths"}


@dataclass
class QCell:
    """A cell of the notebook Quarto makes from a `.qmd` file, with what executing it produced."""

    cell_type: str  # "markdown", "code" or "raw"
    source: str  # markdown text, or code without its `#|` option lines
    options: dict = field(default_factory=dict)  # Quarto options of a code cell
    metadata: dict = field(default_factory=dict)  # other `#|` keys (e.g. nbval), as Quarto moves them
    index: int = 0  # 1-based number among the code cells
    outputs: list = field(default_factory=list)
    execution_count: int | None = None
    user_expressions: dict = field(default_factory=dict)  # inline expression -> kernel result

    @property
    def label(self) -> str:
        return str(self.options.get("label", ""))


def _trim_empty(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def quarto_cells(path: Path) -> list[QCell]:
    """The cells Quarto's `quartoMdToJupyter` makes of a `.qmd` file (front matter as a raw cell)."""
    start_cell = re.compile(r"^(\s*)(```+)\s*\{python( *[ ,].*)?\}\s*$")
    start_code = re.compile(r"^(\s*)```")
    cells: list[QCell] = []
    buffer: list[str] = []
    n_code = 0

    def flush(kind: str) -> None:
        nonlocal n_code
        lines = list(buffer)
        buffer.clear()
        if lines and lines[0] == "":
            lines = lines[1:]
        if lines and lines[-1] == "":
            lines = lines[:-1]
        lines = _trim_empty(lines)
        if not lines:
            return
        if kind != "code":
            cells.append(QCell(kind, "\n".join(lines)))
            return
        option_lines = []
        while lines and OPTION_LINE.match(lines[0]):
            option_lines.append(OPTION_LINE.match(lines.pop(0)).group(1))
        parsed = yaml.safe_load("\n".join(option_lines)) if option_lines else {}
        options = {k: v for k, v in (parsed or {}).items() if k in QUARTO_OPTION_KEYS}
        metadata = {k: v for k, v in (parsed or {}).items() if k not in QUARTO_OPTION_KEYS and k != "id"}
        unknown = sorted(set(parsed or {}) - MODELLED_OPTIONS - {"id"})
        if unknown:
            raise ValueError(f"{path.name}: cell option(s) {unknown} are not modelled by scripts/booktools.py "
                             f"(quarto_markdown); add them there before using them in a chapter")
        lines = _trim_empty(lines)
        n_code += 1
        cells.append(QCell("code", "\n".join(lines), options, metadata, n_code))

    in_yaml = in_cell = in_code = False
    ticks, indent = 0, ""
    lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else None
        if re.match(r"^---\s*$", line) and not in_cell and not in_code and (nxt is None or nxt.strip() != ""):
            if in_yaml:
                buffer.append(line)
                flush("raw")
                in_yaml = False
            else:
                flush("markdown")
                buffer.append(line)
                in_yaml = True
        elif not in_cell and start_cell.match(line):
            flush("markdown")
            in_cell = True
            m = start_cell.match(line)
            indent, ticks = m.group(1), len(m.group(2))
            if indent:
                raise ValueError(f"{path.name}: indented code cells are not modelled by scripts/booktools.py")
        elif in_cell and re.match("^" + indent + "`" * ticks + r"\s*$", line):
            in_cell = False
            flush("code")
        elif not in_cell and start_code.match(line):
            in_code = True  # as in Quarto: after any fenced block, `---` no longer opens YAML
            buffer.append(line)
        else:
            buffer.append(line)
    flush("markdown")
    return cells


def quarto_input_hash(path: Path) -> str:
    """The hash Quarto's freezer stores for a source file: md5 of its text with LF line endings."""
    return hashlib.md5(path.read_text(encoding="utf-8").replace("\r\n", "\n").encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- execution
class ExecutionFailed(RuntimeError):
    pass


def _cell_name(cell: QCell) -> str:
    return f"code cell {cell.index}" + (f" ({cell.label})" if cell.label else "")


# Run before a chapter, as Quarto's python setup does: figures in every format the book's outputs use
# (the Markdown of each format then keeps its own), with the inline backend Quarto selects.
SETUP_CODE = (
    "import matplotlib.pyplot as plt\n"
    "from matplotlib_inline.backend_inline import set_matplotlib_formats\n"
    "set_matplotlib_formats('png', 'svg', 'pdf')\n"
)


def kernel_env() -> dict[str, str]:
    """Environment of the chapter kernel: quiet progress bars, Quarto's matplotlib backend."""
    env = dict(os.environ)
    env.update({"LLMBOOK_QUIET": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "PYTHONHASHSEED": env.get("PYTHONHASHSEED", "0")})
    return env


def run_document(path: Path, cwd: Path | None = None, timeout: int = CELL_TIMEOUT) -> list[QCell]:
    """Execute a `.qmd` file's cells in one fresh kernel, in order, as Quarto does: code cells (unless
    `eval: false`) with their outputs, and each Markdown cell's inline `{python}` expressions as
    `user_expressions`. On an error raise `ExecutionFailed` naming the file and the cell."""
    from nbclient import NotebookClient

    cells = quarto_cells(path)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(cwd or ROOT)}})
    with client.setup_kernel(env=kernel_env(), cwd=str(cwd or ROOT)):
        setup = nbformat.v4.new_code_cell(SETUP_CODE)
        nb.cells.append(setup)
        client.execute_cell(setup, 0, store_history=False)
        for cell in cells:
            if cell.cell_type == "code" and cell.options.get("eval", True) is not False:
                node = nbformat.v4.new_code_cell(cell.source)
                nb.cells.append(node)
                try:
                    client.execute_cell(node, len(nb.cells) - 1)
                except Exception as err:  # CellExecutionError or a timeout
                    raise ExecutionFailed(f"{path.name}: {_cell_name(cell)} failed:\n{err}") from None
                cell.outputs = [_plain(o) for o in node.outputs]
                cell.execution_count = node.get("execution_count")
            elif cell.cell_type == "markdown":
                expressions = INLINE_EXPR.findall(cell.source)
                if not expressions:
                    continue
                request = {str(i): expr for i, expr in enumerate(expressions)}
                reply = client.wait_for_reply(client.kc.execute("", user_expressions=request))
                content = reply["content"]
                results = content.get("user_expressions", {})
                for key, expr in request.items():
                    result = results.get(key, {})
                    if content.get("status") != "ok" or result.get("status") != "ok":
                        error = result or content
                        first = cell.source.strip().splitlines()[0][:60]
                        raise ExecutionFailed(f"{path.name}: inline expression `{{python}} {expr}` in "
                                              f"'{first}' failed: {error.get('ename')}: {error.get('evalue')}")
                    cell.user_expressions[expr.strip()] = result
    return cells


def _plain(output: nbformat.NotebookNode) -> dict:
    """An output as plain JSON-like data (nbformat nodes are dict subclasses)."""
    return json.loads(json.dumps(output))


def execute(nb: nbformat.NotebookNode, cwd: Path, name: str, labels: list[str] | None = None,
            timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every code cell of a notebook in a fresh kernel; on error raise with the name, cell and traceback."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except CellExecutionError as err:
        code_cells = [c for c in nb.cells if c.cell_type == "code"]
        failed = next((i for i, c in enumerate(code_cells)
                       if any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        where = labels[failed] if labels and failed is not None else f"cell {failed}"
        raise ExecutionFailed(f"{name}: {where} failed:\n{err}") from None
    return nb


# ---------------------------------------------------------------------------------------------- Quarto's Markdown
@dataclass(frozen=True)
class OutputFormat:
    """What Quarto's Markdown depends on for one output format (jupyter.ts, display-data.ts)."""

    name: str  # html, latex, typst
    freeze_name: str  # execute-results/<freeze_name>.json (extension of the format's output file)
    figures: str  # folder of the figures next to the source: <stem>_files/<figures>
    image_mime: str  # the figure format the book configures for it
    to_html: bool = False
    to_latex: bool = False


IMAGE_MIMES = {"svg": "image/svg+xml", "png": "image/png", "retina": "image/png", "pdf": "application/pdf",
               "jpeg": "image/jpeg"}
IMAGE_EXT = {"image/svg+xml": "svg", "image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf"}


def output_formats() -> dict[str, OutputFormat]:
    """The book's formats: HTML and Typst from `_quarto.yml`, LaTeX from `_quarto-latex.yml`."""
    main, latex = quarto_config()["format"], quarto_config("latex")["format"]
    return {
        "html": OutputFormat("html", "html", "figure-html", IMAGE_MIMES[main["html"].get("fig-format", "png")],
                             to_html=True),
        "latex": OutputFormat("latex", "tex", "figure-pdf", IMAGE_MIMES[latex["pdf"].get("fig-format", "pdf")],
                              to_latex=True),
        "typst": OutputFormat("typst", "typ", "figure-typst", IMAGE_MIMES[main["typst"].get("fig-format", "svg")]),
    }


def display_mime(data: dict, fmt: OutputFormat) -> str | None:
    """The representation Quarto shows of a display output (displayDataMimeType)."""
    priority = ["text/markdown", "image/svg+xml", "image/png", "image/jpeg"]
    if fmt.to_html:
        priority = ["application/vnd.jupyter.widget-state+json", "application/vnd.jupyter.widget-view+json",
                    "application/javascript", "text/html"] + priority
    elif fmt.to_latex:
        priority = ["text/latex", "application/pdf"] + priority
    html = data.get("text/html", "")
    html = "".join(html) if isinstance(html, list) else html
    if re.search(r"<table", html, re.I) and re.search(r"</table", html, re.I) and "text/html" not in priority:
        priority.append("text/html")
    priority.append("text/plain")
    return next((m for m in priority if m in data), None)


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def _ticks(text: str, minimum: int = 3) -> str:
    leading = [len(m.group(0).strip()) for m in re.finditer(r"(?m)^\s*`+", text)]
    return "`" * max(minimum, max(leading, default=0) + 1)


def _code_output(text: str) -> str:
    ticks = _ticks(text)
    return f"{ticks}\n{text}{'' if text.endswith(chr(10)) else chr(10)}{ticks}\n"


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _escape_plain(value: str) -> str:
    """Quarto's `asEscapedMarkdown` for an inline expression's text/plain value."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].replace("\\", "\\\\")
        return re.sub(r"([\\`*_{}\[\]()>#+\-.!])", r"\\\1", value)
    return value


def inline_value(result: dict, fmt: OutputFormat) -> str:
    """An inline expression's result as Quarto writes it into the Markdown (resolveUserExpressions)."""
    data = result.get("data", {})
    mime = display_mime(data, fmt)
    text = _text(data.get(mime, "")) if mime else ""
    if mime == "text/html":
        return f"`{text}`{{=html}}"
    if mime == "text/latex":
        return f"`{text}`{{=tex}}"
    if mime == "text/markdown":
        return text
    return _escape_plain(text)


def substitute_inline(cell: QCell, fmt: OutputFormat) -> str:
    """A Markdown cell's text with each inline `{python}` expression replaced by its value."""
    def value(m: re.Match) -> str:
        result = cell.user_expressions.get(m.group(1).strip())
        return inline_value(result, fmt) if result else m.group(0)
    return INLINE_EXPR.sub(value, cell.source)


def _discardable(output: dict, have_image: bool) -> bool:
    """Quarto's isDiscardableTextExecuteResult: matplotlib reprs echoed next to a figure."""
    if output["output_type"] != "execute_result" or list(output.get("data", {})) != ["text/plain"]:
        return False
    lines = _text(output["data"]["text/plain"]).splitlines() or [""]
    if have_image:
        if len(lines) == 1:
            first = lines[0].strip()
            return bool(re.match(r"^([<(\[]).*?([>)\]])$", first) or re.match(r"^Text\([-\d]", first)
                        or (first.startswith("{") and "<matplotlib." in first))
        return any("<matplotlib." in line for line in lines)
    return any(lines[0].startswith(s) for s in ("[<matplotlib", "<matplotlib", "<seaborn.", "<ggplot:"))


def _format_outputs(outputs: list[dict], fmt: OutputFormat) -> list[dict]:
    """Outputs as Quarto sees them when it renders `fmt`: consecutive streams merged, figures only in
    the format's image type (one execution made all of them)."""
    merged: list[dict] = []
    for output in outputs:
        output = json.loads(json.dumps(output))
        if output["output_type"] == "stream" and merged and merged[-1]["output_type"] == "stream" \
                and merged[-1]["name"] == output["name"]:
            merged[-1]["text"] = _text(merged[-1]["text"]) + _text(output["text"])
            continue
        if output["output_type"] in ("display_data", "execute_result"):
            data = output["data"]
            for mime in IMAGE_EXT:
                if mime in data and mime != fmt.image_mime:
                    del data[mime]
        merged.append(output)
    return merged


def _pandoc_identifier(text: str) -> str:
    """pandoc's auto identifier (ascii) for a label."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s.-]", "", text.lower()).strip()
    return re.sub(r"\s+", "-", text).lstrip("0123456789.-_") or "section"


def _attr_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("'", "\\'")


def code_cell_markdown(cell: QCell, fmt: OutputFormat, stem: str, warning: bool = False) -> tuple[str, dict]:
    """Quarto's Markdown for one executed code cell (mdFromCodeCell) and the figure files it refers to."""
    files: dict[str, bytes] = {}
    opts = cell.options
    if not opts.get("include", True):
        return "", files
    raw = _format_outputs(cell.outputs, fmt)
    have_image = any(o["output_type"] in ("display_data", "execute_result")
                     and (display_mime(o["data"], fmt) or "") in IMAGE_EXT for o in raw)
    outputs = [o for o in raw
               if not (o["output_type"] == "stream" and o["name"] == "stderr" and not opts.get("warning", warning))
               and not _discardable(o, have_image)]
    if not cell.source.strip() and not outputs:
        return "", files
    for o in outputs:
        if o["output_type"] == "error":
            raise ValueError(f"{stem}: {_cell_name(cell)} has an error output")
        if o["output_type"] in ("display_data", "execute_result"):
            mime = display_mime(o["data"], fmt)
            html_page = mime == "text/html" and fmt.to_html  # raw HTML (an embedded page), HTML output only
            if mime is None or (mime.startswith(("text/html", "application/")) and mime != "application/pdf"
                                and not html_page):
                raise ValueError(f"{stem}: {_cell_name(cell)} displays {mime or sorted(o['data'])}, which "
                                 f"scripts/booktools.py does not model for {fmt.name} (use Markdown or a figure)")
    asis = opts.get("output") == "asis"
    label = "#" + cell.label if cell.label else ""
    display = [o for o in outputs if o["output_type"] in ("display_data", "execute_result")]
    include_output = bool(opts.get("output", True))
    label_container = (not outputs or not include_output or not display
                       or (len(display) > 1 and not isinstance(opts.get("fig-cap"), list))
                       or cell.label.startswith("tbl-"))
    div = ["::: {"]
    if label and label_container:
        div.append(f"{label} ")
    elif fmt.to_html:
        div.append(f"#cell-{cell.label} " if cell.label else f"#cell-{cell.index} ")
    div.append(".cell ")
    attrs = {**cell.metadata, **{k: v for k, v in opts.items() if k not in INTERNAL_OPTION_KEYS}}
    for key, value in attrs.items():
        div.append(f"{key}='{_attr_value(value)}' ")
    captions = [str(opts["fig-cap"]).strip().replace("\n", " ")] if opts.get("fig-cap") else []
    need_cell = bool((label and label_container) or attrs or captions)
    if isinstance(cell.execution_count, int):
        div.append(f"execution_count={cell.execution_count} ")
    div_begin = "".join(div).rstrip(" ") + "}\n"

    md: list[str] = []
    if opts.get("echo", True):
        ticks = _ticks(cell.source)
        md.append(f"{ticks} {{.python .cell-code}}\n{cell.source}\n{ticks}\n")
    if include_output:
        label_name = cell.label.replace(":", "-") if cell.label else f"cell-{cell.index + 1}"
        output_name = f"{_pandoc_identifier(label_name)}-output"
        suffix = 1
        fig_pos = "H" if fmt.to_latex and opts.get("echo", True) else None  # Quarto's default for LaTeX
        for index, output in enumerate(outputs):
            is_display = output["output_type"] in ("display_data", "execute_result")
            out_label = label + "-" + str(suffix) if label and label_container and is_display else label
            if label and label_container and is_display:
                suffix += 1
            mime = display_mime(output["data"], fmt) if is_display else None
            is_image = mime in IMAGE_EXT
            if not asis:
                head = ["\n::: {"]
                if out_label and is_display and not cell.label.startswith("tbl-") and not is_image:
                    head.append(out_label + " ")
                head.append(".cell-output ")
                head.append(f".cell-output-{output['name']}" if output["output_type"] == "stream"
                            else ".cell-output-display")
                if mime == "text/markdown":
                    head.append(" .cell-output-markdown")
                if output["output_type"] == "execute_result" and isinstance(output.get("execution_count"), int):
                    head.append(f" execution_count={output['execution_count']}")
                head.append("}\n")
                md.append("".join(head))
            if output["output_type"] == "stream":
                text = _text(output["text"])
                md.append(text if asis and output["name"] == "stdout" else _code_output(ANSI.sub("", text)))
            else:
                caption = captions.pop(0) if captions else None
                data = _text(output["data"][mime]) if not isinstance(output["data"][mime], dict) else ""
                if is_image:
                    name = f"{output_name}-{index + 1}.{IMAGE_EXT[mime]}"
                    rel = f"{stem}_files/{fmt.figures}/{name}"
                    raw_data = _text(output["data"][mime])
                    files[f"{fmt.figures}/{name}"] = (raw_data.encode("utf-8") if mime == "image/svg+xml" and "<svg" in raw_data
                                                      else base64.b64decode(raw_data.replace("\n", "")))
                    image = f"![{caption or ''}]({rel})"
                    attributes = [out_label] if out_label else []
                    for key in ("fig-align", "fig-env", "fig-alt", "fig-pos", "fig-scap"):
                        value = opts.get(key) or (fig_pos if key == "fig-pos" else None)
                        if value:
                            attributes.append(f"{key}='" + str(value).replace("'", "\\'") + "'")
                    if attributes:
                        image += "{" + " ".join(attributes) + "}"
                    md.append(image + "\n")
                elif mime == "text/markdown":
                    md.append(data + "\n")
                elif mime == "text/latex":
                    md.append(f"{_ticks(data)}{{=tex}}\n{data}{'' if data.endswith(chr(10)) else chr(10)}{_ticks(data)}\n")
                elif mime == "text/html":  # Quarto's mdHtmlOutput: a raw HTML block
                    md.append(f"{_ticks(data)}{{=html}}\n{data}{'' if data.endswith(chr(10)) else chr(10)}{_ticks(data)}\n")
                else:  # text/plain
                    md.append(_code_output(ANSI.sub("", data)))
                if caption and not is_image:
                    md.append(f"\n{caption}\n")
            if not asis:
                md.append(":::\n")
    if md and (need_cell or not asis):
        md.insert(0, div_begin)
        md.append(":::\n")
    md.append("\n")
    return "".join(md), files


def quarto_markdown(cells: list[QCell], stem: str, fmt: OutputFormat) -> tuple[str, dict[str, bytes]]:
    """The Markdown Quarto's Jupyter engine hands to pandoc for an executed document (jupyterToMarkdown),
    and its figure files by path relative to `<stem>_files/`."""
    warning = bool(quarto_config().get("execute", {}).get("warning", True))
    parts, files = [], {}
    for cell in cells:
        if cell.cell_type == "code":
            md, figs = code_cell_markdown(cell, fmt, stem, warning)
            files.update(figs)
        else:
            md = substitute_inline(cell, fmt) if cell.cell_type == "markdown" else cell.source
            md = md if md.endswith("\n") else md + "\n"
        parts.append(md + "\n")
    return "".join(parts), files


# ---------------------------------------------------------------------------------------------- freezer
def freeze_dir(path: Path) -> Path:
    """`_freeze/<path without .qmd>`: where Quarto keeps a document's frozen results and figures."""
    return FREEZE / path.relative_to(ROOT).with_suffix("")


def freeze_record(path: Path, markdown: str, fmt: OutputFormat) -> dict:
    """The JSON Quarto writes to `execute-results/<format>.json` (freezeExecuteResult)."""
    result = {"engine": "jupyter", "markdown": markdown, "supporting": [f"{path.stem}_files"], "filters": []}
    if fmt.to_html:
        result["includes"] = {}
    return {"hash": quarto_input_hash(path), "result": result}


def _write_bytes(path: Path, data: bytes) -> None:
    from llmbook.fileio import atomic_write

    atomic_write(path, lambda f: f.write(data), "wb")


def write_freeze(path: Path, cells: list[QCell]) -> Path:
    """Write a document's freezer for every book format from one execution; returns its folder."""
    from llmbook.fileio import replace_dir

    target = freeze_dir(path)
    fresh = Path(tempfile.mkdtemp(prefix=".freeze-", dir=FREEZE.parent))
    try:
        for fmt in output_formats().values():
            markdown, files = quarto_markdown(cells, path.stem, fmt)
            record = json.dumps(freeze_record(path, markdown, fmt), indent=2, ensure_ascii=False) + "\n"
            _write_bytes(fresh / "execute-results" / f"{fmt.freeze_name}.json", record.encode("utf-8"))
            for rel, data in files.items():
                _write_bytes(fresh / rel, data)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(fresh, target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return target


def executable_documents() -> list[Path]:
    """Book documents with Python cells: the ones Quarto runs with Jupyter (and freezes)."""
    return [p for p in book_files() if any(c.cell_type == "code" for c in quarto_cells(p))]


def check_freeze(files: list[Path] | None = None) -> list[str]:
    """Problems with `_freeze/`: missing or stale results (hash of the source), missing figures."""
    problems = []
    for path in files or executable_documents():
        rel = path.relative_to(ROOT)
        folder = freeze_dir(path)
        for fmt in output_formats().values():
            record_path = folder / "execute-results" / f"{fmt.freeze_name}.json"
            if not record_path.is_file():
                problems.append(f"{rel}: {record_path.relative_to(ROOT)} is missing: run `python scripts/booktools.py freeze`")
                continue
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("hash") != quarto_input_hash(path):
                problems.append(f"{rel}: {record_path.relative_to(ROOT)} is stale (the chapter changed): "
                                f"run `python scripts/booktools.py freeze {path.stem}`")
            for figure in re.findall(rf"\]\({re.escape(path.stem)}_files/([^)]+)\)", record["result"]["markdown"]):
                if not (folder / figure).is_file():
                    problems.append(f"{rel}: {fmt.freeze_name}.json refers to {figure}, not in {folder.relative_to(ROOT)}")
    return problems


# ---------------------------------------------------------------------------------------------- pandoc checks
# Characters the PDF fonts can typeset, the same set for both engines (fonts are set in `_quarto.yml` for
# Typst and `_quarto-latex.yml` for LaTeX): the monospaced font DejaVu Sans Mono, which both list after the
# text font, covers these ranges (derived once from its cmap, version 2.35, restricted to the Latin, Greek,
# Cyrillic, punctuation and symbol blocks); the CJK fallback covers kana and the unified ideographs; the
# emoji fallback the emoji blocks. Control characters and U+FFFD never reach the typesetter.
MONO_COVERAGE = """
0020-007E 00A0-01C3 01CD-01E3 01E6-01F0 01F4-01F6 01F8-01F9 01FC-0221 0224-0241 0243-0245 024C-024D
0250-02B9 02BB-02C1 02C6-02C9 02CC-02D3 02D6-02DE 02E0-02E9 02EE 02F3 0300-033F 0343 0358 0361
0374-0375 037A 037E 0384-038A 038C 038E-03A1 03A3-03CE 03D0-03E1 03F0-045F 0462-0463 0472-0473
0490-049B 04A2-04A5 04AA-04B3 04BA-04BB 04C0-04C4 04C7-04C8 04CB-04CC 04CF-04F9 2000-200A 2010-2023
2026 202F-2037 2039-203A 203C-203F 2045-2049 204B 205F 2070-2071 2074-208E 2090-209C 20A0-20B5
20B8-20B9 2102 2105 210D-210F 2115-2117 2119-211A 211D 2122 2124 2126 212A-212B 212E 2148 2150-2151
2153-215F 2189 2190-2213 2215 2217-2220 2223 2227-222D 2234-223D 2241-2269 226D-228B 228D-22A5
22B2-22B5 22B8 22C2-22C6 22CD-22D1 22DA-22E9 22EF 2300-2306 2308-2315 2318-2319 231C-2321 2325-2328
232B 2335-237A 237D 2380-2383 2388-238B 2395 239B-23AE 23CE-23CF 2423 2500-262F 2638-268B 2690-269C
26A0-26A1 26B0-26B1 2701-2704 2706-2709 270C-2727 2729-274B 274D 274F-2752 2756 2758-275E 2761-2775
2794 2798-27AF 27B1-27BE
"""
CJK_COVERAGE = "3000-303F 3040-309F 30A0-30FF 4E00-9FFF FF01-FF60"
EMOJI_COVERAGE = "200D FE0F 1F300-1F5FF 1F600-1F64F 1F680-1F6FF 1F900-1F9FF 1FA70-1FAFF"


def _ranges(spec: str) -> list[tuple[int, int]]:
    out = []
    for item in spec.split():
        lo, _, hi = item.partition("-")
        out.append((int(lo, 16), int(hi or lo, 16)))
    return out


COVERED = _ranges(MONO_COVERAGE) + _ranges(CJK_COVERAGE) + _ranges(EMOJI_COVERAGE)


def typesettable(ch: str) -> bool:
    """True when the book's PDF fonts have a glyph for `ch` (tab and newline count)."""
    if ch in "\n\t":
        return True
    code = ord(ch)
    return code != 0xFFFD and any(lo <= code <= hi for lo, hi in COVERED)


def pandoc_binary() -> str:
    """pandoc from `pypandoc-binary` (in the `test` extra), else one on the PATH."""
    try:
        import pypandoc

        return pypandoc.get_pandoc_path()
    except (ImportError, OSError):
        found = shutil.which("pandoc")
        if not found:
            raise RuntimeError("pandoc is needed for the book checks: pip install pypandoc-binary") from None
        return found


def run_pandoc(args: list[str], text: str = "") -> tuple[str, list[str]]:
    """Run pandoc in the repository root; return stdout and its warnings; raise on failure."""
    proc = subprocess.run([pandoc_binary(), *args], input=text, capture_output=True, text=True, cwd=ROOT)
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0:
        raise RuntimeError(f"pandoc {' '.join(args)} failed: " + "\n".join(warnings))
    return proc.stdout, warnings


def check_bibliography(bib: Path | None = None) -> list[str]:
    """pandoc's verdict on `references.bib` (as Quarto reads it, biblatex): parse errors, warnings, and
    entries it drops; then every entry formatted by citeproc (`nocite: '@*'`)."""
    bib = bib or ROOT / "references.bib"
    name = bib.name
    try:
        csl, warnings = run_pandoc(["-f", "biblatex", "-t", "csljson", str(bib)])
    except RuntimeError as err:
        return [f"{name}: pandoc cannot read it: {err}"]
    problems = [f"{name}: {w}" for w in warnings]
    ids = {entry["id"] for entry in json.loads(csl)}
    keys = set(re.findall(r"(?m)^\s*@\w+\s*\{\s*([^,\s]+)\s*,", bib.read_text(encoding="utf-8")))
    problems += [f"{name}: pandoc drops entry {key}" for key in sorted(keys - ids)]
    try:
        _, warnings = run_pandoc(["--citeproc", f"--bibliography={bib}", "-t", "plain", "-M", "nocite=@*"],
                                 "All references.\n")
    except RuntimeError as err:
        return problems + [f"{name}: citeproc fails: {err}"]
    return problems + [f"{name}: citeproc: {w}" for w in warnings]


def _stringify(inlines: list) -> str:
    """Plain text of pandoc AST inlines, citations as citeproc rendered them."""
    out = []
    for node in inlines:
        t, c = node["t"], node.get("c")
        if t == "Str":
            out.append(c)
        elif t in ("Space", "SoftBreak", "LineBreak"):
            out.append(" ")
        elif t in ("Code", "Math"):
            out.append(c[1])
        elif t in ("Emph", "Strong", "Underline", "Strikeout", "SmallCaps", "Superscript", "Subscript"):
            out.append(_stringify(c))
        elif t in ("Link", "Image", "Span"):
            out.append(_stringify(c[1]))
        elif t == "Cite":
            out.append(_stringify(c[1]))
        elif t == "Quoted":
            out.append('"' + _stringify(c[1]) + '"')
    return "".join(out)


def _cell_text(cell: list) -> str:
    return " ".join(_stringify(b["c"]) for b in cell if b["t"] in ("Plain", "Para"))


def _table_rows(table_c: list) -> list[list[str]]:
    head, bodies = table_c[3], table_c[4]
    rows = [r[1] for r in head[1]]
    for body in bodies:
        rows += [r[1] for r in body[2]] + [r[1] for r in body[3]]
    return [[_cell_text(cell[4]) for cell in row] for row in rows]


@dataclass
class Where:
    """Where in a chapter a problem is: the code cell (from the enclosing cell div) or the prose."""

    cell: str = ""
    output: bool = False


def _walk(node, where: Where, visit) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, where, visit)
        return
    if not isinstance(node, dict) or "t" not in node:
        return
    if node["t"] == "Div":
        (ident, classes, attrs), content = node["c"]
        inner = where
        if "cell" in classes:
            attrs = dict(attrs)
            inner = Where(cell=f"#{ident}" if ident else f"execution_count={attrs.get('execution_count', '?')}")
        elif "cell-output" in classes:
            inner = Where(cell=where.cell, output=True)
        visit(node, inner)
        _walk(content, inner, visit)
        return
    visit(node, where)
    c = node.get("c")
    if isinstance(c, list):
        _walk(c, where, visit)


def _describe(where: Where, cells: dict[str, str]) -> str:
    name = cells.get(where.cell, where.cell)
    if not where.cell:
        return "prose"
    return f"{'output of ' if where.output else ''}{name}"


PROGRESS_BAR = re.compile(r"\d+%\|")


def check_markdown(markdown: str, name: str, cells: list[QCell] | None = None, width: int | None = None,
                   table_width: int | None = None) -> list[str]:
    """Problems pandoc finds in a document's executed Markdown: citations it cannot resolve, warnings,
    raw TeX (an output read as a TeX command), characters the PDF fonts lack or that are control or
    replacement characters, code and output lines longer than the page, tables wider than the text,
    progress bars; then the Markdown must convert to LaTeX and to Typst."""
    from llmbook.book import PAGE_WIDTH, TABLE_WIDTH

    width = width or PAGE_WIDTH
    table_width = table_width or TABLE_WIDTH
    by_count = {f"execution_count={c.execution_count}": _cell_name(c) for c in cells or [] if c.execution_count}
    by_count.update({f"#{c.label}": _cell_name(c) for c in cells or [] if c.label})
    bib = ROOT / "references.bib"
    problems: list[str] = []
    try:
        ast_json, warnings = run_pandoc(["-f", "markdown", "-t", "json", "--citeproc", f"--bibliography={bib}"],
                                        markdown)
    except RuntimeError as err:
        return [f"{name}: {err}"]
    for warning in warnings:
        missing = re.search(r"[Cc]itation (\S+) not found", warning)
        if missing and missing.group(1).startswith(tuple(f"{p}-" for p in CROSSREF_PREFIXES)):
            continue  # a cross-reference: Quarto's crossref filter resolves it (check_references checks it)
        problems.append(f"{name}: pandoc: {warning}")
    doc = json.loads(ast_json)

    def visit(node: dict, where: Where) -> None:
        t, c = node["t"], node.get("c")
        place = _describe(where, by_count)
        if t in ("RawInline", "RawBlock") and c[0] in ("tex", "latex"):
            problems.append(f"{name}: raw TeX {c[1][:40]!r} in {place} (pandoc hands it to LaTeX as a command; "
                            f"show literal text with llmbook.book.md_code)")
        texts = []
        if t in ("Str", "Code", "CodeBlock"):
            texts.append(c if t == "Str" else c[1])
        for text in texts:
            bad = sorted({ch for ch in text if not typesettable(ch)})
            for ch in bad:
                kind = ("replacement character (undecodable bytes)" if ch == "\ufffd"
                        else "control character" if unicodedata.category(ch)[0] == "C" else "no glyph in the PDF fonts")
                snippet = next(line for line in text.splitlines() or [text] if ch in line)[:60]
                problems.append(f"{name}: U+{ord(ch):04X} {unicodedata.name(ch, '')} ({kind}) in {place}: "
                                f"{snippet!r} (llmbook.book.printable shows it as an escape)")
        if t == "CodeBlock":
            text = c[1]
            kind = "output" if where.output else "code"
            for line in text.splitlines():
                if len(line) > width:
                    problems.append(f"{name}: {kind} line of {len(line)} characters (the page fits {width}) in "
                                    f"{place}: {line[:50]!r}...")
            if PROGRESS_BAR.search(text):
                problems.append(f"{name}: a progress bar in {place}: {PROGRESS_BAR.search(text).group(0)!r}")
        if t == "Table":
            colspecs = c[2]
            if all(spec[1]["t"] == "ColWidthDefault" for spec in colspecs):
                rows = _table_rows(c)
                widths = [max((len(r[i]) for r in rows if i < len(r)), default=0) for i in range(len(colspecs))]
                total = sum(widths) + 2 * len(widths)
                if total > table_width:
                    problems.append(f"{name}: table in {place} is {total} characters wide at its natural width "
                                    f"(the text fits {table_width}): give it relative column widths "
                                    f"(llmbook.book.md_table does when it is wide); header: {rows[0][:4] if rows else []}")

    _walk(doc["blocks"], Where(), visit)
    for target in ("latex", "typst"):
        try:
            _, warnings = run_pandoc(["-f", "json", "-t", target], ast_json)
        except RuntimeError as err:
            problems.append(f"{name}: {err}")
            continue
        problems += [f"{name}: pandoc to {target}: {w}" for w in warnings]
    return list(dict.fromkeys(problems))


def check_document(path: Path, cells: list[QCell]) -> list[str]:
    """`check_markdown` on a document's executed Markdown for the two PDF formats (LaTeX and Typst)."""
    problems = []
    formats = output_formats()
    for key in ("latex", "typst"):
        markdown, _ = quarto_markdown(cells, path.stem, formats[key])
        problems += check_markdown(markdown, f"{path.relative_to(ROOT)} ({key})", cells)
    # the same offender reported for both formats once
    seen, unique = set(), []
    for p in problems:
        key = re.sub(r" \((latex|typst)\)", "", p, count=1)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


# ---------------------------------------------------------------------------------------------- notebooks
FENCED_DIV = re.compile(r"^(:{3,})\s*(\{[^}]*\}|[\w-]+)?\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*(\{[^}]*\})?\s*$")


@dataclass
class Target:
    """What a cross-reference label points at, for readable text in notebooks."""

    kind: str  # fig, tbl, eq, sec, chapter
    number: str  # "2.3"
    title: str  # section title (sec/chapter)
    stem: str  # chapter it is in
    caption: str = ""


def _numbered_chapters() -> dict[str, int]:
    """Chapter numbers as Quarto gives them: book order, unnumbered documents skipped."""
    numbers, n = {}, 0
    for path in book_files():
        first = next((line for line in prose(path.read_text(encoding="utf-8")).splitlines() if line.startswith("# ")), "")
        if ".unnumbered" in first or re.search(r"\{[^}]*-\s*\}", first):
            continue
        n += 1
        numbers[path.stem] = n
    return numbers


def crossref_targets() -> dict[str, Target]:
    """Every label of the book with its number as Quarto prints it (chapters: true) and its title."""
    chapters = _numbered_chapters()
    targets: dict[str, Target] = {}
    for path in book_files():
        stem, chapter = path.stem, chapters.get(path.stem)
        text = path.read_text(encoding="utf-8")
        counters = {"fig": 0, "tbl": 0, "eq": 0}
        sections = [0] * 6
        for line in prose(text).splitlines():
            m = HEADING.match(line)
            if m:
                level, title, attrs = len(m.group(1)), m.group(2), m.group(3) or ""
                numbered = ".unnumbered" not in attrs and not re.search(r"(^|\s)-(\s|$)", attrs.strip("{}"))
                if level == 1:
                    sections = [0] * 6
                elif numbered:
                    sections[level - 2] += 1
                    sections[level - 1:] = [0] * (6 - level + 1)
                label = re.search(r"#(sec-[\w-]+)", attrs)
                if label:
                    number = ".".join(str(x) for x in ([chapter] if chapter else []) + sections[: level - 1])
                    kind = "chapter" if level == 1 else "sec"
                    targets[label.group(1)] = Target(kind, number if numbered else "", title, stem)
            for eq in re.findall(r"\$\$\s*\{#(eq-[\w-]+)\}", line):
                counters["eq"] += 1
                targets[eq] = Target("eq", f"{chapter}.{counters['eq']}" if chapter else str(counters["eq"]), "", stem)
        for cell in read_chapter(path):
            label = str(cell.options.get("label", ""))
            kind = label.split("-", 1)[0]
            if kind in ("fig", "tbl"):
                counters[kind] += 1
                number = f"{chapter}.{counters[kind]}" if chapter else str(counters[kind])
                caption = str(cell.options.get(f"{kind}-cap", ""))
                targets[label] = Target(kind, number, "", stem, caption)
    return targets


PREFIX = {"fig": "Figure", "tbl": "Table", "eq": "Equation", "sec": "Section", "chapter": "Chapter"}


def _chapter_titles() -> dict[str, str]:
    titles = {}
    for path in book_files():
        for line in prose(path.read_text(encoding="utf-8")).splitlines():
            m = HEADING.match(line)
            if m and len(m.group(1)) == 1:
                titles[path.stem] = m.group(2)
                break
    return titles


def readable_crossrefs(text: str, stem: str, targets: dict[str, Target], titles: dict[str, str]) -> str:
    """`@fig-x`, `@tbl-x`, `@eq-x`, `@sec-x` as the words a reader of the notebook can follow:
    "Figure 2.3", "the section “Perplexity”", "the chapter “Evaluation”"."""
    def words(m: re.Match) -> str:
        suppress, label = m.group(1) == "-", m.group(2)
        target = targets.get(label)
        if target is None:
            return m.group(0)
        if target.kind == "chapter":
            phrase = target.number if suppress else f"the chapter “{target.title}”"
        elif target.kind == "sec":
            phrase = target.number if suppress else f"the section “{target.title}”"
        else:
            phrase = target.number if suppress else f"{PREFIX[target.kind]} {target.number}"
        if target.stem != stem and target.kind != "chapter" and not suppress:
            phrase += f" of the chapter “{titles.get(target.stem, target.stem)}”"
        before = text[: m.start()].rstrip()
        if phrase.startswith("the") and (not before or before.endswith((".", "!", "?", ":"))):
            phrase = phrase[0].upper() + phrase[1:]
        return phrase

    return re.sub(r"(?<![\w@])(-?)@((?:fig|tbl|sec|eq)-[\w-]*\w)", words, text)


CITE_GROUP = re.compile(r"\[(?:[^\[\]]*?)-?@[^\[\]]+\]|(?<![\w@.`])@([A-Za-z0-9_][\w:.#$%&+?<>~/-]*\w)")


def render_citations(texts: list[str]) -> tuple[list[str], list[str]]:
    """Citations `[@key]`/`@key` in each text as author-year words (pandoc citeproc, the book's
    bibliography), and the reference list of everything cited."""
    groups: list[str] = []
    for text in texts:
        for m in CITE_GROUP.finditer(prose(text)):
            if not re.search(r"@(fig|tbl|sec|eq)-", m.group(0)) and m.group(0) not in groups:
                groups.append(m.group(0))
    if not groups:
        return texts, []
    doc = "\n\n".join(f"CITE{i}: {g}" for i, g in enumerate(groups)) + "\n\n::: {#refs}\n:::\n"
    out, _ = run_pandoc(["--citeproc", f"--bibliography={ROOT / 'references.bib'}", "-f", "markdown",
                         "-t", "commonmark-raw_html", "--wrap=none"], doc)
    paragraphs = [p.strip() for p in out.split("\n\n") if p.strip()]
    rendered = {}
    for p in paragraphs:
        m = re.match(r"CITE(\d+): (.*)$", p, re.S)
        if m:
            rendered[groups[int(m.group(1))]] = m.group(2)
    references = [p for p in paragraphs if not p.startswith("CITE")]

    def replace(text: str) -> str:
        def one(m: re.Match) -> str:
            return rendered.get(m.group(0), m.group(0))
        out, pos = [], 0
        for code in CODE.finditer(text):  # leave fenced and inline code alone
            out += [CITE_GROUP.sub(one, text[pos:code.start()]), code.group(0)]
            pos = code.end()
        return "".join(out) + CITE_GROUP.sub(one, text[pos:])

    return [replace(t) for t in texts], references


def notebook_markdown(text: str, stem: str, targets: dict[str, Target], titles: dict[str, str]) -> str:
    """A chapter's Markdown as Jupyter shows it: heading attributes and div fences that Jupyter would
    print verbatim removed (a callout keeps its title in bold), equations numbered with `\\tag`,
    cross-references in words. Inline `{python}` expressions stay until the notebook is executed."""
    out: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            out.append(line)
            continue
        if in_fence:
            out.append(line)
            continue
        div = FENCED_DIV.match(line)
        if div:
            attrs = div.group(2) or ""
            title = re.search(r'title="([^"]*)"', attrs)
            callout = re.search(r"\.callout-(\w+)", attrs)
            if title or callout:
                out.append(f"**{title.group(1) if title else callout.group(1).capitalize()}**")
            continue
        heading = HEADING.match(line)
        if heading and heading.group(3):
            line = f"{heading.group(1)} {heading.group(2)}"
        line = re.sub(r"\$\$\s*\{#(eq-[\w-]+)\}",
                      lambda m: (f"\\tag{{{targets[m.group(1)].number}}}$$" if m.group(1) in targets else "$$"), line)
        out.append(line)
    return readable_crossrefs("\n".join(out).strip("\n"), stem, targets, titles)


def _colab_cells(stem: str) -> list[nbformat.NotebookNode]:
    url, branch = repo_url(), repo_branch()
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(stem)})\n\n"
             f"Companion notebook of the chapter `chapters/{stem}.qmd`, generated from it by "
             f"`scripts/booktools.py`; edit the chapter, not this file.")
    install = (
        "# On Colab: fetch the book (configs, data registry, results) and install its package with exactly\n"
        "# what the notebooks import, the `notebook` extra (does nothing elsewhere).\n"
        "import os, sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    !git clone --depth 1 --branch {branch} {url}.git llmbook-repo\n"
        "    %cd llmbook-repo\n"
        "    %pip install -q -e \".[notebook]\"\n"
        "    sys.path.insert(0, os.path.abspath(\"code\"))  # an editable install is seen by new kernels only\n"
    )
    return [nbformat.v4.new_markdown_cell(badge), nbformat.v4.new_code_cell(install)]


def make_notebook(path: Path) -> nbformat.NotebookNode:
    """The companion notebook of a chapter (BOOK_DESIGN section 3), without outputs: inline `{python}`
    expressions are still in its Markdown (executing it fills them in), cross-references and
    citations are in words, figures and tables get their numbered captions, references come last."""
    stem = path.stem
    targets, titles = crossref_targets(), _chapter_titles()
    nb = nbformat.v4.new_notebook()
    nb.cells = _colab_cells(stem)
    for cell in read_chapter(path):
        if cell.kind == "markdown":
            text = notebook_markdown(cell.source, stem, targets, titles)
            if text.strip():
                nb.cells.append(nbformat.v4.new_markdown_cell(text))
            continue
        code = cell.source.strip("\n")
        if cell.options.get("eval", True) is False:
            code = "# NBVAL_SKIP\n# Not run when the book is built (GPU-only or long); run it yourself.\n" + code
        elif cell.options.get("nbval") == "ignore":
            code = "# NBVAL_IGNORE_OUTPUT\n" + code
        nb.cells.append(nbformat.v4.new_code_cell(code))
        label = str(cell.options.get("label", ""))
        if label in targets and targets[label].kind in ("fig", "tbl") and cell.options.get("include", True) is not False:
            target = targets[label]
            caption = notebook_markdown(target.caption, stem, targets, titles)
            nb.cells.append(nbformat.v4.new_markdown_cell(f"**{PREFIX[target.kind]} {target.number}:** {caption}"))
    markdown = [c for c in nb.cells[1:] if c.cell_type == "markdown"]
    texts, references = render_citations([c.source for c in markdown])
    for c, text in zip(markdown, texts):
        c.source = text
    if references:
        nb.cells.append(nbformat.v4.new_markdown_cell("## References\n\n" + "\n\n".join(references)))
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.metadata["accelerator"] = "GPU"
    return nb


NOTEBOOK_FORMAT = OutputFormat("notebook", "ipynb", "figure-ipynb", "image/png")
NBVAL_IGNORE_OUTPUT = "nbval-ignore-output"  # nbval's cell tag: run the cell, do not compare its output
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


def strip_progress(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop tqdm widget outputs (GitHub and a re-opened notebook show them at "0%" forever) and stderr
    progress bars, and the widget state."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs
                        if not any(m in o.get("data", {}) for m in WIDGET_MIMES)
                        and not (o.get("output_type") == "stream" and o.get("name") == "stderr"
                                 and PROGRESS_BAR.search(o.get("text", "")))]
    nb.metadata.pop("widgets", None)
    return nb


def execute_notebook(nb: nbformat.NotebookNode, cwd: Path, name: str, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Execute a companion notebook in order and write each Markdown cell's inline `{python}` values into
    its text (evaluated in the kernel at that point, as Quarto does), so the notebook reads like the book."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}})
    with client.setup_kernel(env=kernel_env(), cwd=str(cwd)):
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                try:
                    client.execute_cell(cell, index)
                except Exception as err:
                    raise ExecutionFailed(f"{name}: notebook cell {index} failed:\n{err}") from None
                cell.metadata.pop("execution", None)
            elif cell.cell_type == "markdown" and INLINE_EXPR.search(cell.source):
                request = {str(i): e for i, e in enumerate(INLINE_EXPR.findall(cell.source))}
                reply = client.wait_for_reply(client.kc.execute("", user_expressions=request))
                results = reply["content"].get("user_expressions", {})
                qcell = QCell("markdown", cell.source)
                for key, expr in request.items():
                    if results.get(key, {}).get("status") != "ok":
                        raise ExecutionFailed(f"{name}: inline expression `{{python}} {expr}` failed")
                    qcell.user_expressions[expr.strip()] = results[key]
                cell.source = substitute_inline(qcell, NOTEBOOK_FORMAT)
    return strip_progress(nb)


def readable_outputs(nb: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """Cross-references and citations in Markdown outputs (tables that cite their sources) in words too.

    A cell whose output this rewrites no longer prints what it stores, so it is tagged for nbval to run it
    without comparing its output (strict nbval would otherwise fail on it in every fresh run)."""
    targets, titles = crossref_targets(), _chapter_titles()
    outputs = [(c, o) for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "text/markdown" in o.get("data", {})]
    texts = [readable_crossrefs(_text(o["data"]["text/markdown"]), stem, targets, titles) for _, o in outputs]
    texts, _ = render_citations(texts)
    for (cell, output), text in zip(outputs, texts):
        if text != _text(output["data"]["text/markdown"]):
            tags = cell.metadata.setdefault("tags", [])
            if NBVAL_IGNORE_OUTPUT not in tags:
                tags.append(NBVAL_IGNORE_OUTPUT)
        output["data"]["text/markdown"] = text
    return nb


def notebook_signature(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """What must match between a committed notebook and its chapter: cell types and sources."""
    return [(c.cell_type, c.source if isinstance(c.source, str) else "".join(c.source)) for c in nb.cells]


def notebook_differences(committed: nbformat.NotebookNode, expected: nbformat.NotebookNode) -> list[str]:
    """Cells of a committed notebook that differ from the chapter's: sources must be equal, except that
    each inline `{python}` expression of the chapter stands for any value."""
    got, want = notebook_signature(committed), notebook_signature(expected)
    problems = []
    if len(got) != len(want):
        problems.append(f"{len(got)} cells, the chapter makes {len(want)}")
    for i, ((kind, source), (want_kind, want_source)) in enumerate(zip(got, want)):
        pattern = "".join(re.escape(part) if j % 2 == 0 else ".+?"
                          for j, part in enumerate(INLINE_EXPR.split(want_source)))
        if kind != want_kind or not re.fullmatch(pattern, source, re.S):
            problems.append(f"cell {i} differs: {want_source[:60]!r}")
            break
    return problems


TIMINGS = ROOT / "bench" / "results" / "chapters-cpu.json"


def record_timing(stem: str, seconds: float) -> None:
    """Store how long a chapter's notebook took to execute here; the preface's table reads this file."""
    data = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {"chapters": {}}
    data["machine"] = f"{os.cpu_count()}-core {platform.machine()} CPU, Python {platform.python_version()}"
    data["chapters"][stem] = round(seconds, 1)
    _write_bytes(TIMINGS, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def build_notebooks(stems: list[str], execute_them: bool = True) -> None:
    """Regenerate (and execute, on this CPU) the notebooks of the given chapters."""
    NOTEBOOKS.mkdir(exist_ok=True)
    for stem in stems:
        start = time.time()
        nb = make_notebook(ROOT / "chapters" / f"{stem}.qmd")
        if execute_them:
            execute_notebook(nb, NOTEBOOKS, stem)
            record_timing(stem, time.time() - start)
            readable_outputs(nb, stem)
        out = NOTEBOOKS / f"{stem}.ipynb"
        _write_bytes(out, nbformat.writes(nb).encode("utf-8"))
        print(f"{out.relative_to(ROOT)}: {len(nb.cells)} cells, {time.time() - start:.0f} s")


def build_freeze(stems: list[str] | None = None) -> None:
    """Execute each document once and write its `_freeze/` results for HTML, LaTeX and Typst."""
    for path in executable_documents():
        if stems and path.stem not in stems:
            continue
        start = time.time()
        cells = run_document(path, ROOT)
        folder = write_freeze(path, cells)
        print(f"{folder.relative_to(ROOT)}: {time.time() - start:.0f} s")


# ---------------------------------------------------------------------------------------------- code width
def fit_code(path: Path, width: int | None = None) -> int:
    """Reformat each top-level statement of a chapter's code cells that has a line longer than the page
    (`PAGE_WIDTH`) with `llmbook.book`'s formatter (black, comments and docstrings re-wrapped); other
    lines stay as written. Returns how many statements or comments changed."""
    import ast
    import textwrap

    from llmbook.book import PAGE_WIDTH, _fit

    width = width or PAGE_WIDTH
    text = path.read_text(encoding="utf-8")
    changed = 0

    def fit_cell(m: re.Match) -> str:
        nonlocal changed
        head, body, tail = m.group(1), m.group(2), m.group(3)
        lines = body.split("\n")
        options = [line for line in lines if OPTION_LINE.match(line)]
        code_lines = lines[len(options):]
        if not any(len(line) > width for line in code_lines):
            return m.group(0)
        try:
            tree = ast.parse("\n".join(code_lines))
        except SyntaxError:
            return m.group(0)

        def loose(chunk: list[str]) -> list[str]:  # comment lines between statements
            nonlocal changed
            out = []
            for line in chunk:
                stripped = line.lstrip()
                if len(line) > width and stripped.startswith("#"):
                    indent = line[: len(line) - len(stripped)]
                    out.extend(textwrap.wrap(stripped.lstrip("#").strip(), width, initial_indent=indent + "# ",
                                             subsequent_indent=indent + "# ", break_on_hyphens=False))
                    changed += 1
                else:
                    out.append(line)
            return out

        out, pos = [], 0
        for i, stmt in enumerate(tree.body):
            start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])]) - 1
            if start < pos:  # a statement sharing lines with the one before (`a(); b()`): already written
                continue
            end = stmt.end_lineno
            for later in tree.body[i + 1:]:  # statements that start on this statement's last line
                if later.lineno > end:
                    break
                end = max(end, later.end_lineno)
            out.extend(loose(code_lines[pos:start]))
            chunk = code_lines[start:end]
            if any(len(line) > width for line in chunk):
                formatted = _fit("\n".join(chunk) + "\n", width).split("\n")
                changed += formatted != chunk
                chunk = formatted
            out.extend(chunk)
            pos = end
        out.extend(loose(code_lines[pos:]))
        return head + "\n".join(options + out) + tail

    new = re.sub(r"(```\{python\}[^\n]*\n)(.*?)(\n```)", fit_cell, text, flags=re.S)
    if new != text:
        _write_bytes(path, new.encode("utf-8"))
    return changed


# ---------------------------------------------------------------------------------------------- references
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
CODE = re.compile(f"{FENCE.pattern}|{INLINE_CODE.pattern}", re.S | re.M)
HEADING_ID = re.compile(r"\{#((?:sec|fig|tbl|eq|lst)-[\w-]+)[^}]*\}")
REFERENCE = re.compile(r"(?<![\w@])-?@((?:fig|tbl|sec|eq|lst)-[\w-]*\w)")
CITATION = re.compile(r"(?<![\w@.])-?@([A-Za-z0-9_][\w:.#$%&+?<>~/-]*\w|[A-Za-z0-9_])")
BIB_KEY = re.compile(r"@\w+\s*\{\s*([^,\s]+)\s*,")


def prose(text: str) -> str:
    """Markdown with fenced code and inline code removed (references inside code do not count)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def labels_defined(files: list[Path]) -> dict[str, Path]:
    """Every cross-reference label defined in the book, with the file that defines it."""
    found: dict[str, Path] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for label in HEADING_ID.findall(FENCE.sub("", text)):
            found[label] = path
        for cell in read_chapter(path):
            if cell.kind == "code" and "label" in cell.options:
                found[str(cell.options["label"])] = path
    return found


def references_used(path: Path) -> list[str]:
    return REFERENCE.findall(prose(path.read_text(encoding="utf-8")))


def citations_used(path: Path) -> list[str]:
    keys = CITATION.findall(prose(path.read_text(encoding="utf-8")))
    return [k for k in keys if not k.startswith(tuple(f"{p}-" for p in CROSSREF_PREFIXES))]


def bib_keys() -> set[str]:
    return set(BIB_KEY.findall((ROOT / "references.bib").read_text(encoding="utf-8")))


def check_references(files: list[Path] | None = None) -> list[str]:
    """Problems with cross-references, citations and figure captions; empty when the book is consistent."""
    files = files or book_files()
    problems = []
    labels, keys = labels_defined(files), bib_keys()
    for path in files:
        rel = path.relative_to(ROOT)
        for ref in references_used(path):
            if ref not in labels:
                problems.append(f"{rel}: @{ref} refers to no label in the book")
        for key in citations_used(path):
            if key not in keys:
                problems.append(f"{rel}: citation @{key} is not in references.bib")
        for cell in read_chapter(path):
            label = str(cell.options.get("label", ""))
            if label.startswith("fig-"):
                for option in ("fig-cap", "fig-alt"):
                    if not cell.options.get(option):
                        problems.append(f"{rel}: figure {label} has no {option}")
            if label.startswith("tbl-") and not cell.options.get("tbl-cap"):
                problems.append(f"{rel}: table {label} has no tbl-cap")
    return problems


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    nbp = sub.add_parser("notebooks", help="regenerate and execute companion notebooks")
    nbp.add_argument("stems", nargs="*", help="chapter stems (default: all)")
    nbp.add_argument("--no-execute", action="store_true")
    frp = sub.add_parser("freeze", help="execute documents once and write Quarto's _freeze/ for every format")
    frp.add_argument("stems", nargs="*", help="document stems (default: all with code)")
    sub.add_parser("check", help="check cross-references, citations, the bibliography and _freeze/")
    fit = sub.add_parser("fit-code", help="reformat code lines longer than the page in chapters (black)")
    fit.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.cmd == "notebooks":
        build_notebooks(args.stems or chapter_stems(), execute_them=not args.no_execute)
        return 0
    if args.cmd == "freeze":
        build_freeze(args.stems or None)
        return 0
    if args.cmd == "fit-code":
        for path in args.paths:
            print(f"{path}: {fit_code(path.resolve())} statements reformatted")
        return 0
    problems = check_references() + check_bibliography() + check_freeze()
    print("\n".join(problems) or "all references resolve; the bibliography and _freeze/ are in order")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
