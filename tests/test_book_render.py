"""Rendering the book: the Markdown Quarto's Jupyter engine makes of an executed chapter, Quarto's freezer,
and the pandoc checks that keep what would break or spoil the PDF out of the chapters."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import booktools
import pytest

DEMO = '''# Demo {#sec-demo}

```{python}
#| include: false
from llmbook.book import md_table, setup
setup()
n = 3
```

We have `{python} n` things and `{python} "a.b"` and `{python} 2 ** 40` bytes.

```{python}
print("hello")
```

```{python}
#| label: fig-demo
#| fig-cap: "A line."
#| fig-alt: "A rising line from 1 to 2."
import matplotlib.pyplot as plt
plt.plot([1, 2])
plt.show()
```

```{python}
#| label: tbl-demo
#| tbl-cap: "A table."
#| nbval: ignore
md_table([["a", 1]], ["name", "n"])
```

```{python}
#| eval: false
import gpu_only
```
'''


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("book") / "chapters"
    folder.mkdir()
    path = folder / "demo.qmd"
    path.write_text(DEMO, encoding="utf-8")
    return path, booktools.run_document(path)


def test_quarto_cells_split_the_chapter_as_quarto_does(demo):
    path, _ = demo
    cells = booktools.quarto_cells(path)
    assert [c.cell_type for c in cells] == ["markdown", "code", "markdown", "code", "code", "code", "code"]
    assert cells[1].options == {"include": False} and cells[1].source.startswith("from llmbook.book")
    assert cells[5].options == {"label": "tbl-demo", "tbl-cap": "A table."} and cells[5].metadata == {"nbval": "ignore"}
    assert [c.index for c in cells if c.cell_type == "code"] == [1, 2, 3, 4, 5]


def test_unmodelled_options_are_refused(tmp_path):
    path = tmp_path / "x.qmd"
    path.write_text("```{python}\n#| layout-ncol: 2\n1\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"layout-ncol.*not modelled"):
        booktools.quarto_cells(path)


def test_markdown_has_quarto_cell_structure(demo):
    path, cells = demo
    formats = booktools.output_formats()
    html, html_files = booktools.quarto_markdown(cells, "demo", formats["html"])
    latex, latex_files = booktools.quarto_markdown(cells, "demo", formats["latex"])
    typst, typst_files = booktools.quarto_markdown(cells, "demo", formats["typst"])
    # inline values: int as text/plain, a str unquoted and escaped, as Quarto's asEscapedMarkdown does
    assert "We have 3 things and a\\.b and 1099511627776 bytes." in html
    assert "`{python}" not in html + latex + typst
    # the include: false cell leaves nothing; a cell with stdout
    assert "from llmbook.book import md_table" not in html
    assert "``` {.python .cell-code}\nprint(\"hello\")\n```\n\n::: {.cell-output .cell-output-stdout}\n```\nhello\n```\n:::" in html
    # the figure: one output, so the label and options go on the image; LaTeX pins it with fig-pos
    assert ("![A line.](demo_files/figure-html/fig-demo-output-1.svg){#fig-demo fig-alt='A rising line from 1 to 2.'}"
            in html)
    assert "(demo_files/figure-pdf/fig-demo-output-1.pdf){#fig-demo fig-alt='A rising line from 1 to 2.' fig-pos='H'}" in latex
    assert "(demo_files/figure-typst/fig-demo-output-1.png){#fig-demo" in typst
    assert list(html_files) == ["figure-html/fig-demo-output-1.svg"] and html_files["figure-html/fig-demo-output-1.svg"].startswith(b"<")
    assert latex_files["figure-pdf/fig-demo-output-1.pdf"].startswith(b"%PDF")
    assert typst_files["figure-typst/fig-demo-output-1.png"].startswith(b"\x89PNG")
    assert "::: {#cell-fig-demo .cell execution_count=" in html and "::: {.cell execution_count=" in latex
    # the table: label on the cell div, the caption forwarded as an attribute, the Markdown output inline
    assert "::: {#tbl-demo .cell nbval='ignore' tbl-cap='A table.' execution_count=" in latex
    assert re.search(r"::: \{\.cell-output \.cell-output-display \.cell-output-markdown execution_count=\d+\}\n"
                     r"\| name \| n \|\n\|:--\|--:\|\n\| a \| 1 \|\n:::", latex)
    # eval: false: the code is shown, nothing ran
    assert "import gpu_only\n```\n:::" in latex
    assert booktools.check_markdown(latex, "demo", cells) == []


def test_html_outputs_are_raw_html_blocks_in_html_only():
    """A `text/html` display (an embedded page) becomes a raw HTML block in HTML, as Quarto's mdHtmlOutput
    makes it; the PDF formats show its text/plain form."""
    cell = booktools.QCell("code", "page", index=1, outputs=[{"output_type": "display_data", "metadata": {}, "data": {
        "text/html": '<iframe srcdoc="x"></iframe>', "text/plain": "an interactive page"}}])
    formats = booktools.output_formats()
    html, _ = booktools.code_cell_markdown(cell, formats["html"], "demo")
    assert '```{=html}\n<iframe srcdoc="x"></iframe>\n```' in html
    for name in ("latex", "typst"):
        markdown, _ = booktools.code_cell_markdown(cell, formats[name], "demo")
        assert "```\nan interactive page\n```" in markdown and "iframe" not in markdown


def test_freezer_has_quartos_layout(demo, root, monkeypatch):
    path, cells = demo
    for name in ("_quarto.yml", "_quarto-latex.yml"):
        shutil.copy(root / name, path.parent.parent / name)
    monkeypatch.setattr(booktools, "ROOT", path.parent.parent)
    monkeypatch.setattr(booktools, "FREEZE", path.parent.parent / "_freeze")
    monkeypatch.setattr(booktools, "executable_documents", lambda: [path])
    folder = booktools.write_freeze(path, cells)
    assert folder == path.parent.parent / "_freeze" / "chapters" / "demo"
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert names == ["execute-results/html.json", "execute-results/tex.json", "execute-results/typ.json",
                     "figure-html/fig-demo-output-1.svg", "figure-pdf/fig-demo-output-1.pdf",
                     "figure-typst/fig-demo-output-1.png"]
    record = json.loads((folder / "execute-results" / "html.json").read_text(encoding="utf-8"))
    assert record["hash"] == hashlib.md5(DEMO.encode()).hexdigest()
    assert record["result"]["engine"] == "jupyter" and record["result"]["supporting"] == ["demo_files"]
    assert record["result"]["includes"] == {} and "fig-demo-output-1.svg" in record["result"]["markdown"]
    assert booktools.check_freeze([path]) == []
    path.write_text(DEMO + "\nMore prose.\n", encoding="utf-8")
    try:
        problems = booktools.check_freeze([path])
        assert len(problems) == 3 and all("is stale" in p for p in problems)
        (folder / "figure-pdf" / "fig-demo-output-1.pdf").unlink()
        assert any("figure-pdf/fig-demo-output-1.pdf" in p for p in booktools.check_freeze([path]))
    finally:
        path.write_text(DEMO, encoding="utf-8")


@pytest.mark.parametrize(
    "markdown, expected",
    [
        ("| q | a |\n|--|--|\n| 'What?\\nAnswer:' | 4 |\n", "raw TeX '\\\\nAnswer'"),
        ("::: {.cell}\n::: {.cell-output .cell-output-stdout}\n```\nbad \ufffd byte\n```\n:::\n:::\n",
         "U+FFFD REPLACEMENT CHARACTER (replacement character"),
        ("A bell \x07 rings.\n", "U+0007"),
        ("Thai ก is not in the fonts.\n", "U+0E01 THAI CHARACTER KO KAI (no glyph"),
        ("::: {.cell}\n::: {.cell-output .cell-output-stdout}\n```\n" + "x" * 89 + "\n```\n:::\n:::\n",
         "output line of 89 characters"),
        ("```python\n" + "y = 1" + " " * 90 + "# long\n```\n", "code line of 101 characters"),
        ("```\ntrain:  40%|####      | 4/10\n```\n", "a progress bar"),
        ("See [@no-such-key].\n", "no-such-key not found"),
    ],
)
def test_checker_catches_what_spoils_the_pdf(markdown, expected):
    problems = booktools.check_markdown(markdown, "demo")
    assert any(expected in p for p in problems), problems


def test_checker_measures_tables_at_their_natural_width():
    table = "| model | tokens |\n|:--|--:|\n| Llama [@touvron2023llama] | 1.4T |\n"
    assert booktools.check_markdown(table, "demo", table_width=60) == []
    problems = booktools.check_markdown(table, "demo", table_width=30)  # the citation renders to author-year
    assert any("characters wide at its natural width" in p for p in problems), problems
    relative = "| model | tokens |\n|:" + "-" * 80 + "|--:|\n| x | 1 |\n"
    assert booktools.check_markdown(relative, "demo", table_width=10) == []


def test_checker_accepts_what_the_fonts_cover():
    text = ("東京 🙂 café ⏎ ␣ · “quotes” — € → ∑ █ and a cross-reference @fig-x [@vaswani2017attention].\n\n"
            "| a | b |\n|:--|--:|\n| `'\\nAnswer'` | 1 |\n")
    assert booktools.check_markdown(text, "demo") == []
    assert booktools.typesettable("東") and booktools.typesettable("🙂") and not booktools.typesettable("\ufffd")


def test_book_formats_and_fonts_are_configured():
    """The formats the freezer writes, and the font fallbacks the checker's coverage assumes."""
    formats = booktools.output_formats()
    assert {f.image_mime for f in formats.values()} == {"image/svg+xml", "application/pdf", "image/png"}
    assert booktools.quarto_config()["execute"]["freeze"] == "auto"
    typst_header = booktools.quarto_config()["format"]["typst"]["include-in-header"]["text"]
    assert "DejaVu Sans Mono" in typst_header and "CJK" in typst_header and "Emoji" in typst_header
    pdf = booktools.quarto_config("latex")["format"]["pdf"]
    assert pdf["pdf-engine"] == "lualatex" and pdf["monofont"] == "DejaVu Sans Mono"
    assert any("DejaVu Sans Mono" in f for f in pdf["mainfontfallback"])
    assert any("HaranoAji" in f for f in pdf["monofontfallback"]) and any("Twemoji" in f for f in pdf["monofontfallback"])
    assert "breaklines" in pdf["include-in-header"]["text"]


def test_colab_links_come_from_the_one_place(root):
    config = booktools.quarto_config()["book"]
    url = booktools.colab_url("costs")
    assert url.endswith(f"/blob/{config['repo-branch']}/notebooks/costs.ipynb") and booktools.repo_slug() in url
    lua = (root / "chapters" / "assets" / "colab-link.lua").read_text(encoding="utf-8")
    assert 'book["repo-branch"]' in lua and "/blob/main/" not in lua


def test_fit_code_reformats_only_long_statements(tmp_path):
    import ast

    chapter = tmp_path / "c.qmd"
    long_call = "result = some_function(" + ", ".join(f"argument_{i}" for i in range(12)) + ")"
    chapter.write_text("# C\n\n```{python}\n#| label: tbl-x\nshort = [1,2]\n" + long_call + "\n"
                       "# " + "a long comment " * 8 + "\n```\n\nProse.\n", encoding="utf-8")
    before = booktools.quarto_cells(chapter)[1].source
    assert booktools.fit_code(chapter) == 2
    after = booktools.quarto_cells(chapter)[1]
    assert after.options == {"label": "tbl-x"} and after.source.startswith("short = [1,2]\n")  # untouched
    assert max(len(line) for line in after.source.splitlines()) <= 88
    assert ast.dump(ast.parse(after.source)) == ast.dump(ast.parse(before))
    assert chapter.read_text(encoding="utf-8").endswith("```\n\nProse.\n")


def test_fit_code_writes_statements_that_share_a_line_once(tmp_path):
    import ast

    chapter = tmp_path / "c.qmd"
    calls = "; ".join(f"first_function_name_{i}(argument_one, argument_two)" for i in range(3))
    chapter.write_text("# C\n\n```{python}\n" + calls + "\nafter = 1\n```\n", encoding="utf-8")
    before = booktools.quarto_cells(chapter)[1].source
    booktools.fit_code(chapter)
    after = booktools.quarto_cells(chapter)[1].source
    assert ast.dump(ast.parse(after)) == ast.dump(ast.parse(before))  # each call once, in order
    assert max(len(line) for line in after.splitlines()) <= 88 and after.endswith("after = 1")
