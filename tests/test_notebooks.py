"""Companion notebooks exist for every chapter and match it; nbval (run by `make test`) executes them.

A notebook reads like the book: inline `{python}` values are written into its text, cross-references
and citations are words, figures and tables carry their numbered captions, and no progress widget is
left frozen at "0%". Its setup cell installs, on Colab, exactly what the notebooks import.
"""

from __future__ import annotations

import re
import subprocess
import sys

import booktools
import nbformat
import pytest

STEMS = booktools.chapter_stems()

DEMO = '''# Demo {#sec-demo}

```{python}
#| include: false
from llmbook.book import setup
setup()
n = 1234
```

## Counting {#sec-demo-count}

We count `{python} n` things [@vaswani2017attention], as @kaplan2020scaling did; see @fig-demo and
@sec-demo-count. @sec-demo-count has more.

$$
a = b
$$ {#eq-demo}

::: {.callout-note title="Try it"}
Change `n`.
:::

From the shell:

```bash
llmbook data download --list
```

Byte-pair encoding [@gage1994bpe;
@sennrich2016bpe] merges pairs.

```{python}
#| label: fig-demo
#| fig-cap: "A line (@eq-demo)."
#| fig-alt: "A line."
import matplotlib.pyplot as plt
plt.plot([1, 2])
plt.show()
```

```{python}
from tqdm.auto import tqdm
for _ in tqdm(range(3)):
    pass
```
'''


@pytest.fixture(scope="module")
def demo_notebook(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    (root / "chapters").mkdir()
    path = root / "chapters" / "demo.qmd"
    path.write_text(DEMO, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:  # the demo is the whole book only while its notebook is made
        mp.setattr(booktools, "book_files", lambda: [path])
        return path, booktools.make_notebook(path)


def test_notebook_words_for_references_and_citations(demo_notebook):
    _, nb = demo_notebook
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    text = "\n\n".join(markdown)
    assert "## Counting\n" in text and "{#sec" not in text
    assert "see Figure 1.1 and\nthe section “Counting”. The section “Counting” has more." in text
    assert "(Vaswani et al. 2017)" in text and "as Kaplan et al. (2020) did" in text
    assert "\\tag{1.1}$$" in text and "{#eq-demo}" not in text
    assert "**Try it**" in text and ":::" not in text
    assert "Byte-pair encoding (Gage 1994; Sennrich et al. 2016) merges pairs." in text  # after a fenced block
    assert "**Figure 1.1:** A line (Equation 1.1)." in markdown
    assert markdown[-1].startswith("## References") and "Attention Is All You Need" in markdown[-1]
    assert "We count `{python} n` things" in text  # filled in when the notebook is executed
    assert not re.search(r"(?<![\w`])@[\w-]+", text.replace("@sec-demo", "")), "references left unresolved"


def test_notebook_execution_writes_values_and_drops_widgets(demo_notebook, tmp_path):
    _, nb = demo_notebook
    executed = booktools.execute_notebook(nbformat.from_dict(nb), tmp_path, "demo")
    text = "\n".join(c.source for c in executed.cells if c.cell_type == "markdown")
    assert "We count 1234 things" in text and "{python}" not in text
    assert booktools.notebook_differences(executed, nb) == []
    edited = nbformat.from_dict(executed)
    next(c for c in edited.cells if "We count" in c.source).source = "We count many things."
    assert booktools.notebook_differences(edited, nb)
    widget = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "  0%|          | 0/3"})
    bar = nbformat.v4.new_output("stream", name="stderr", text="100%|##########| 3/3 [00:00<00:00]\n")
    cell = executed.cells[-2]
    assert not [o for o in cell.outputs if "TqdmWarning" in o.get("text", "")], "tqdm.auto without ipywidgets"
    cell.outputs = [widget, bar]
    executed.metadata["widgets"] = {"state": {}}
    booktools.strip_progress(executed)
    assert cell.outputs == [] and "widgets" not in executed.metadata


def test_outputs_with_citations_in_words_still_pass_strict_nbval(tmp_path):
    """`readable_outputs` writes a Markdown output's citations in words, which the cell does not print when
    it runs again: the cell is tagged so that strict nbval (the fresh-runtime test) runs it without
    comparing that output, while the other cells are still compared."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": booktools.KERNEL, "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("from IPython.display import Markdown\n"
                                          "Markdown('| model | source |\\n|--|--|\\n| GPT | [@vaswani2017attention] |')"),
                nbformat.v4.new_code_cell("print(6 * 7)")]
    booktools.execute_notebook(nb, tmp_path, "cited")
    booktools.readable_outputs(nb, "cited")
    assert "(Vaswani et al. 2017)" in nb.cells[0].outputs[0]["data"]["text/markdown"]
    assert nb.cells[0].metadata["tags"] == ["nbval-ignore-output"] and "tags" not in nb.cells[1].metadata
    path = tmp_path / "cited.ipynb"
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", path.name],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    nb.cells[1].outputs[0]["text"] = "41\n"  # the uncited cell is still compared
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", path.name],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "Cell 1" in done.stdout


def test_colab_setup_cell_installs_the_notebook_extra(root):
    nb = booktools.make_notebook(root / "chapters" / f"{STEMS[0]}.qmd")
    setup = nb.cells[1].source
    assert 'if "google.colab" in sys.modules:' in setup
    assert '%pip install -q -e ".[notebook]"' in setup
    assert f"--branch {booktools.repo_branch()} {booktools.repo_url()}.git" in setup
    assert booktools.colab_url(STEMS[0]) in nb.cells[0].source


def test_every_reader_install_is_the_notebook_extra(root):
    """The README, the preface and environment.yml tell a reader to install what the Colab cell installs:
    the package with its `notebook` extra (a bare `pip install -e .` misses libraries the notebooks import)."""
    for name in ("README.md", "index.qmd", "environment.yml"):
        text = (root / name).read_text(encoding="utf-8")
        assert 'pip install -e ".[notebook]"' in text, f"{name}: no reader install of the notebook extra"
        assert not re.search(r"pip install (-e )?\.(?!\[)", text), f"{name}: an install without the notebook extra"


def test_colab_setup_cell_makes_the_package_importable_in_the_running_kernel(tmp_path):
    """On Colab the cell clones the book and installs it editable. An editable install reaches `sys.path`
    through a .pth file that only kernels started later read, so the cell must make the clone's package
    importable in the kernel that ran it. Here Colab is faked: `!git clone` makes a clone holding a probe
    package under code/, and `%pip` only records its arguments."""
    fake_colab = nbformat.v4.new_code_cell(
        "import pathlib, sys, types\n"
        "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
        "PIP = []\n"
        "def fake_system(cmd):\n"
        "    assert cmd.startswith('git clone') and cmd.endswith(' llmbook-repo'), cmd\n"
        "    probe = pathlib.Path('llmbook-repo/code/colab_probe')\n"
        "    probe.mkdir(parents=True)\n"
        "    (probe / '__init__.py').write_text('')\n"
        "get_ipython().system = fake_system\n"
        "get_ipython().register_magic_function(lambda line: PIP.append(line), 'line', 'pip')\n")
    check = nbformat.v4.new_code_cell(
        "import colab_probe\n"
        "assert pathlib.Path(colab_probe.__file__).parent.parent == pathlib.Path.cwd() / 'code'\n"
        "assert PIP == ['install -q -e \".[notebook]\"'], PIP")
    nb = nbformat.v4.new_notebook()
    nb.cells = [fake_colab, booktools._colab_cells("demo")[1], check]
    booktools.execute(nb, tmp_path, "colab-setup")


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_in_sync_with_chapter(stem, root):
    path = root / "notebooks" / f"{stem}.ipynb"
    assert path.is_file(), f"notebooks/{stem}.ipynb is missing: run `python scripts/booktools.py notebooks {stem}`"
    committed = nbformat.read(path, as_version=4)
    expected = booktools.make_notebook(root / "chapters" / f"{stem}.qmd")
    problems = booktools.notebook_differences(committed, expected)
    assert not problems, (f"notebooks/{stem}.ipynb is out of sync with chapters/{stem}.qmd ({problems[0]}): "
                          f"run `python scripts/booktools.py notebooks {stem}`")


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_reads_like_the_book(stem, root):
    nb = nbformat.read(root / "notebooks" / f"{stem}.ipynb", as_version=4)
    for cell in nb.cells:
        source = cell.source
        if cell.cell_type == "markdown":
            prose = booktools.prose(source)
            assert "{python}" not in prose, f"notebooks/{stem}.ipynb: an inline value was not filled in"
            assert not re.search(r"(?<![\w@.])-?@(fig|tbl|sec|eq)-|\[-?@\w", prose), \
                f"notebooks/{stem}.ipynb: a cross-reference or citation left as Quarto syntax: {prose[:80]!r}"
        else:
            assert "from llmbook.book import inline as _inline" not in source, "a Markdown(...) cell of inline values"
            kinds = {k for o in cell.get("outputs", []) for k in o.get("data", {})}
            assert not kinds & set(booktools.WIDGET_MIMES), f"notebooks/{stem}.ipynb: a progress widget output"
            assert not any("TqdmWarning" in o.get("text", "") for o in cell.get("outputs", [])), \
                f"notebooks/{stem}.ipynb: a TqdmWarning output (ipywidgets missing where it was executed)"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_committed_with_outputs(stem, root):
    nb = nbformat.read(root / "notebooks" / f"{stem}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.get("outputs") for c in code), f"notebooks/{stem}.ipynb has no outputs: execute it before committing"
    errors = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not errors, f"notebooks/{stem}.ipynb was committed with errors in code cells {errors}"


@pytest.mark.parametrize("stem", STEMS)
def test_figure_cells_have_images(stem, root):
    """Every figure of the chapter shows up as an image in the committed notebook (not '<Figure ...>')."""
    nb = nbformat.read(root / "notebooks" / f"{stem}.ipynb", as_version=4)
    figure_sources = [c.source for c in booktools.read_chapter(root / "chapters" / f"{stem}.qmd")
                      if c.kind == "code" and str(c.options.get("label", "")).startswith("fig-")
                      and c.options.get("eval", True) is not False]
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip() in {s.strip() for s in figure_sources}:
            kinds = {k for o in cell.get("outputs", []) for k in o.get("data", {})}
            assert kinds & {"image/png", "image/svg+xml"}, f"notebooks/{stem}.ipynb: a figure cell has no image"


def test_setup_shows_figures_inline_despite_agg(root, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os; os.environ['MPLBACKEND'] = 'Agg'\n"
                                          "from llmbook.book import setup; setup()\n"
                                          "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()")]
    booktools.execute(nb, tmp_path, "inline-figures")
    kinds = {k for o in nb.cells[0].outputs for k in o.get("data", {})}
    assert "image/png" in kinds
