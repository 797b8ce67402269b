"""The book's structure: every chapter listed and present, every cross-reference and citation resolves."""

from __future__ import annotations

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
