"""Book tooling: read chapters, build companion notebooks, execute cells, collect labels and references.

Used by the tests (tests/test_book.py, tests/test_chapters.py, tests/test_notebooks.py) and from the
command line:

    python scripts/booktools.py notebooks            # regenerate notebooks/ from chapters/ and execute them
    python scripts/booktools.py notebooks costs      # only one chapter
    python scripts/booktools.py check                # cross-references and citations
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT = 900

OPTION_LINE = re.compile(r"^#\|\s?(.*)$")
INLINE_EXPR = re.compile(r"`\{python\}\s+([^`]+)`")
CROSSREF_PREFIXES = ("fig", "tbl", "sec", "eq", "lst", "thm", "lem", "def", "exm", "exr", "cor", "prp", "cnj", "rem", "sol", "nte", "tip", "wrn", "imp", "cau")


# ---------------------------------------------------------------------------------------------- project
def quarto_config() -> dict:
    """The parsed `_quarto.yml`."""
    return yaml.safe_load((ROOT / "_quarto.yml").read_text(encoding="utf-8"))


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


def repo_slug() -> str:
    """`owner/name` from `book.repo-url`, the one place the repository address is written."""
    url = quarto_config()["book"]["repo-url"].rstrip("/")
    return "/".join(url.split("/")[-2:])


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


def inline_to_code(text: str) -> str:
    """Python that renders a markdown paragraph with its `{python} expr` pieces evaluated."""
    parts, pos = [], 0
    for m in INLINE_EXPR.finditer(text):
        parts.append(repr(text[pos:m.start()]))
        parts.append(f"_inline({m.group(1).strip()})")
        pos = m.end()
    parts.append(repr(text[pos:]))
    return "from IPython.display import Markdown\nfrom llmbook.book import inline as _inline\nMarkdown(" + " + ".join(parts) + ")"


# ---------------------------------------------------------------------------------------------- execution
def executable(path: Path) -> tuple[nbformat.NotebookNode, list[str]]:
    """A notebook of what Quarto would run for a chapter, and a label for each cell (for error messages).

    Code cells with `eval: false` are left out; markdown with inline expressions becomes a cell that
    evaluates them, in document order, as Quarto does.
    """
    nb = nbformat.v4.new_notebook()
    labels = []
    for cell in read_chapter(path):
        if cell.kind == "code" and cell.options.get("eval", True) is not False:
            nb.cells.append(nbformat.v4.new_code_cell(cell.source))
            labels.append(f"code cell {cell.index}" + (f" ({cell.options['label']})" if "label" in cell.options else ""))
        elif cell.kind == "markdown" and INLINE_EXPR.search(cell.source):
            nb.cells.append(nbformat.v4.new_code_cell(inline_to_code(cell.source)))
            labels.append("inline expressions in: " + cell.source.strip().splitlines()[0][:60])
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    return nb, labels


class ExecutionFailed(RuntimeError):
    pass


def execute(nb: nbformat.NotebookNode, cwd: Path, name: str, labels: list[str] | None = None,
            timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every code cell in a fresh kernel; on error raise with the chapter, cell and traceback."""
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


# ---------------------------------------------------------------------------------------------- notebooks
def _colab_cells(stem: str) -> list[nbformat.NotebookNode]:
    slug = repo_slug()
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{slug}/blob/main/notebooks/{stem}.ipynb)\n\n"
             f"Companion notebook of the chapter `chapters/{stem}.qmd`, generated from it by "
             f"`scripts/booktools.py`; edit the chapter, not this file.")
    install = (
        "# On Colab: fetch the book and install its package (does nothing elsewhere).\n"
        "import sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    !git clone --depth 1 https://github.com/{slug}.git llmbook-repo\n"
        "    %cd llmbook-repo\n"
        "    %pip install -q -e .\n"
    )
    return [nbformat.v4.new_markdown_cell(badge), nbformat.v4.new_code_cell(install)]


def make_notebook(path: Path) -> nbformat.NotebookNode:
    """The companion notebook of a chapter (BOOK_DESIGN section 3), without outputs."""
    nb = nbformat.v4.new_notebook()
    nb.cells = _colab_cells(path.stem)
    for cell in read_chapter(path):
        if cell.kind == "markdown":
            text = cell.source.strip()
            if text:
                nb.cells.append(nbformat.v4.new_markdown_cell(text))
                if INLINE_EXPR.search(text):
                    nb.cells.append(nbformat.v4.new_code_cell(
                        "# NBVAL_IGNORE_OUTPUT\n# The paragraph above with its computed numbers filled in.\n"
                        + inline_to_code(text)))
            continue
        code = cell.source.strip("\n")
        if cell.options.get("eval", True) is False:
            code = "# NBVAL_SKIP\n# Not run when the book is built (GPU-only or long); run it yourself.\n" + code
        elif cell.options.get("nbval") == "ignore":
            code = "# NBVAL_IGNORE_OUTPUT\n" + code
        nb.cells.append(nbformat.v4.new_code_cell(code))
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.metadata["accelerator"] = "GPU"
    return nb


def notebook_signature(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """What must match between a committed notebook and its chapter: cell types and sources."""
    return [(c.cell_type, c.source if isinstance(c.source, str) else "".join(c.source)) for c in nb.cells]


TIMINGS = ROOT / "bench" / "results" / "chapters-cpu.json"


def record_timing(stem: str, seconds: float) -> None:
    """Store how long a chapter's notebook took to execute here; the preface's table reads this file."""
    data = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {"chapters": {}}
    data["machine"] = f"{os.cpu_count()}-core {platform.machine()} CPU, Python {platform.python_version()}"
    data["chapters"][stem] = round(seconds, 1)
    tmp = TIMINGS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, TIMINGS)


def build_notebooks(stems: list[str], execute_them: bool = True) -> None:
    """Regenerate (and execute, on this CPU) the notebooks of the given chapters."""
    NOTEBOOKS.mkdir(exist_ok=True)
    for stem in stems:
        start = time.time()
        nb = make_notebook(ROOT / "chapters" / f"{stem}.qmd")
        if execute_them:
            execute(nb, NOTEBOOKS, stem)
            record_timing(stem, time.time() - start)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.metadata.pop("execution", None)
        out = NOTEBOOKS / f"{stem}.ipynb"
        tmp = out.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, out)
        print(f"{out.relative_to(ROOT)}: {len(nb.cells)} cells, {time.time() - start:.0f} s")


# ---------------------------------------------------------------------------------------------- references
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
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
    sub.add_parser("check", help="check cross-references and citations")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.cmd == "notebooks":
        build_notebooks(args.stems or chapter_stems(), execute_them=not args.no_execute)
        return 0
    problems = check_references()
    print("\n".join(problems) or "all references resolve")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
