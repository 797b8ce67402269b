"""The book's structure: every chapter listed and present, every cross-reference and citation resolves."""

from __future__ import annotations

import re

import booktools
import pytest

from llmbook.book import inline


def test_every_listed_file_exists(root):
    missing = [str(p.relative_to(root)) for p in booktools.book_files() if not p.is_file()]
    assert not missing, f"_quarto.yml lists files that do not exist: {missing}"


def test_every_chapter_is_listed(root):
    listed = set(booktools.book_files())
    unlisted = [str(p.relative_to(root)) for p in sorted((root / "chapters").glob("*.qmd")) if p not in listed]
    assert not unlisted, f"chapters not listed in _quarto.yml: {unlisted}"


def test_quarto_config_is_a_book(root):
    config = booktools.quarto_config()
    assert config["project"]["type"] == "book"
    assert config["project"]["execute-dir"] == "project"
    assert set(config["project"]["render"]) == {"index.qmd", "chapters/*.qmd"}
    assert config["bibliography"] == "references.bib"
    assert booktools.book_files()[0].name == "index.qmd"


def test_cross_references_and_citations_resolve():
    problems = booktools.check_references()
    assert not problems, "\n".join(problems)


def test_reference_checker_catches_problems(tmp_path, monkeypatch):
    chapter = tmp_path / "bad.qmd"
    chapter.write_text(
        "# Bad {#sec-bad}\n\nSee @fig-missing and @sec-bad, cite [@no-such-key] and @kaplan2020scaling.\n"
        "Mail me at someone@example.com. `@fig-in-code` does not count.\n\n"
        "```{python}\n#| label: fig-nocap\nprint(1)\n```\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(booktools, "ROOT", tmp_path.parent)
    monkeypatch.setattr(booktools, "bib_keys", lambda: {"kaplan2020scaling"})
    problems = booktools.check_references([chapter])
    joined = "\n".join(problems)
    assert "@fig-missing" in joined
    assert "@no-such-key" in joined
    assert "fig-nocap has no fig-cap" in joined
    assert "@sec-bad" not in joined and "example.com" not in joined and "fig-in-code" not in joined
    assert len(problems) == 4  # fig-missing, no-such-key, fig-cap, fig-alt


def test_options_and_inline_expressions_are_parsed():
    options, code = booktools.parse_options("#| label: fig-x\n#| eval: false\nprint(1)")
    assert options == {"label": "fig-x", "eval": False} and code == "print(1)"
    code = booktools.inline_to_code("We need `{python} n` GPUs and `{python} f(2)` days.")
    assert "_inline(n)" in code and "_inline(f(2))" in code and "'We need '" in code


@pytest.mark.parametrize(
    "value, text",
    [(1234567, "1,234,567"), (0.4, "0.4"), (3.14159, "3.14"), (3.14e23, "3.14 × 10^23^"), ("x", "x"), (123.4, "123")],
)
def test_inline_formatting(value, text):
    assert inline(value) == text


def test_notebook_generation_marks_cells(tmp_path, monkeypatch):
    chapter = tmp_path / "chapters" / "demo.qmd"
    chapter.parent.mkdir()
    chapter.write_text(
        "---\ntitle: x\n---\n# Demo {#sec-demo}\n\n"
        "```{python}\n#| include: false\nn = 3\n```\n\nWe have `{python} n` things.\n\n"
        "```{python}\n#| eval: false\nimport gpu_only\n```\n\n"
        "```{python}\n#| nbval: ignore\nprint(time.time())\n```\n",
        encoding="utf-8",
    )
    nb = booktools.make_notebook(chapter)
    sources = [c.source for c in nb.cells]
    assert "colab.research.google.com" in sources[0] and "google.colab" in sources[1]
    assert not any("#|" in s for s in sources), "Quarto options must be stripped from notebooks"
    assert any(s.startswith("# NBVAL_SKIP") and "import gpu_only" in s for s in sources)
    assert any(s.startswith("# NBVAL_IGNORE_OUTPUT") and "time.time()" in s for s in sources)
    assert any("_inline(n)" in s for s in sources)
    executable, labels = booktools.executable(chapter)
    cells = [c.source for c in executable.cells]
    assert cells[0] == "n = 3" and "_inline(n)" in cells[1] and "time.time()" in cells[2]
    assert len(cells) == 3 and not any("gpu_only" in c for c in cells)  # the eval: false cell is left out
    assert labels[0] == "code cell 1" and labels[1].startswith("inline expressions")


def test_chapter_failure_names_chapter_and_cell(tmp_path):
    chapter = tmp_path / "broken.qmd"
    chapter.write_text("# Broken\n\n```{python}\nx = 1\n```\n\n```{python}\n#| label: fig-bad\n1 / 0\n```\n")
    nb, labels = booktools.executable(chapter)
    with pytest.raises(booktools.ExecutionFailed, match=r"broken\.qmd: code cell 2 \(fig-bad\) failed"):
        booktools.execute(nb, tmp_path, chapter.name, labels)


def test_setup_is_reproducible():
    import numpy as np
    import torch

    from llmbook.book import setup

    first = setup(seed=7, quiet=True)
    a = (torch.rand(3), np.random.rand(3))
    setup(seed=7, quiet=True)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert first.device in ("cpu", "cuda") and first.preset


def test_bibliography_entries_are_well_formed(root):
    """Each entry has balanced braces, a title and a year, and no key appears twice."""
    text = (root / "references.bib").read_text(encoding="utf-8")
    entries = [e for e in re.split(r"(?m)^(?=@)", text) if e.startswith("@")]
    keys = [booktools.BIB_KEY.match(e).group(1) for e in entries]
    assert len(keys) == len(set(keys)), f"duplicate keys: {sorted(k for k in keys if keys.count(k) > 1)}"
    for key, entry in zip(keys, entries):
        body = re.sub(r"(?m)^%.*$", "", entry)
        assert body.count("{") == body.count("}"), f"references.bib: entry {key} has unbalanced braces"
        assert re.search(r"\btitle\s*=", body) and re.search(r"\byear\s*=", body), f"{key}: needs title and year"


@pytest.mark.parametrize("hours, text", [(0.01, "36 s"), (0.5, "30 min"), (3.4, "3.4 h"), (47, "47 h"),
                                         (24 * 5.2, "5.2 days"), (24 * 400, "400 days"), (24 * 365 * 3, "3 years")])
def test_duration_picks_a_readable_unit(hours, text):
    from llmbook.book import duration

    assert duration(hours) == text


@pytest.mark.parametrize("value, unit, text", [(430, "g", "430 g"), (12_000, "g", "12 kg"), (3.4e6, "g", "3.4 t"),
                                               (2.5e9, "g", "2.5 kt"), (1.5e6, "Wh", "1.5 MWh"), (0.5, "Wh", "0.5 Wh")])
def test_si_prefixes(value, unit, text):
    from llmbook.book import si

    assert si(value, unit) == text
