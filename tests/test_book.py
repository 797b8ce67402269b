"""The book's structure: every chapter listed and present, every cross-reference and citation resolves."""

from __future__ import annotations

import json
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


def test_options_are_parsed():
    options, code = booktools.parse_options("#| label: fig-x\n#| eval: false\nprint(1)")
    assert options == {"label": "fig-x", "eval": False} and code == "print(1)"


@pytest.mark.parametrize(
    "value, text",
    [(1234567, "1,234,567"), (0.4, "0.4"), (3.14159, "3.14"), (3.14e23, "3.14 × 10^23^"), ("x", "x"), (123.4, "123")],
)
def test_inline_formatting(value, text):
    assert inline(value) == text


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


def test_bibliography_passes_pandoc():
    """pandoc reads references.bib as Quarto does (biblatex), keeps every entry and formats all of them."""
    problems = booktools.check_bibliography()
    assert not problems, "\n".join(problems)


def test_bibliography_check_catches_what_pandoc_rejects(tmp_path):
    bib = tmp_path / "bad.bib"
    bib.write_text(
        "@inproceedings{pascanu2013difficulty,\n  title = {On the Difficulty of Training Recurrent Neural Networks},\n"
        "  year = {2013},\n  url = {https://arxiv.org/abs/1211.5063}\n  year    = {2020}\n}\n",
        encoding="utf-8",
    )
    problems = booktools.check_bibliography(bib)
    assert problems and "bad.bib" in problems[0] and "pandoc cannot read it" in problems[0]


# ---------------------------------------------------------------------------------------------- source and text
def _fenced_code(markdown: str) -> str:
    lines = markdown.splitlines()
    assert lines[0] in ("```python", "````python") and lines[-1] in ("```", "````")
    return "\n".join(lines[1:-1])


def test_show_source_fits_the_page_and_is_python():
    import ast

    from llmbook.book import PAGE_WIDTH, show_source
    from llmbook.eval import bleu
    from llmbook.train.trainer import Trainer

    for obj in (bleu.bleu_from_statistics, Trainer.train_step):
        code = _fenced_code(show_source(obj).data)
        assert code.splitlines()[0] in ("# llmbook/eval/bleu.py", "# llmbook/train/trainer.py")
        assert max(len(line) for line in code.splitlines()) <= PAGE_WIDTH
        ast.parse(code)


def test_show_source_excerpts_keep_context_and_stay_valid():
    import ast

    from llmbook.book import show_source
    from llmbook.train.trainer import Trainer

    whole = _fenced_code(show_source(Trainer.train_step).data)
    part = _fenced_code(show_source(Trainer.train_step, lines=(r"for micro in", r"loss_t = ")).data)
    block = _fenced_code(show_source(Trainer.train_step, lines=r"if reason:").data)
    for code in (part, block):
        ast.parse(code)
        assert "def train_step(self)" in code and "    ..." in code
        assert len(code.splitlines()) < len(whole.splitlines())
    assert "for micro in range(accum):" in part and "loss_t = all_reduce_mean" in part
    assert "self.scaler.step" not in part  # after the excerpt
    assert "if reason:" in block and "raise TrainingDiverged(" in block
    with pytest.raises(ValueError, match="no line of Trainer.train_step matches 'no such line'"):
        show_source(Trainer.train_step, lines="no such line")
    with pytest.raises(ValueError, match="outside"):
        show_source(Trainer.train_step, lines=(5, 10_000))


def test_show_source_wraps_long_comments_and_docstrings():
    from llmbook.book import _fit

    code = ("def f(x):\n    \"\"\"" + "word " * 30 + "\"\"\"\n    y = x + 1  # " + "because " * 15 + "\n"
            + "    # " + "note " * 25 + "\n    return y\n")
    fitted = _fit(code, 60)
    assert max(len(line) for line in fitted.splitlines()) <= 60
    compile(fitted, "f", "exec")
    assert fitted.count("word") == 30 and fitted.count("because") == 15 and fitted.count("note") == 25


def test_printable_escapes_what_fonts_cannot_show():
    from llmbook.book import printable

    assert printable("ok\tline\nnext") == "ok\tline\nnext"
    assert printable("bad \ufffd\x00\x1b[0m\u200b") == "bad \\ufffd\\x00\\x1b[0m\\u200b"
    assert printable("東京 🙂 café") == "東京 🙂 café"


def test_md_code_is_literal_for_pandoc():
    from llmbook.book import md_code

    cell = md_code(repr("Question: What is 2 + 2?\nAnswer:"))
    assert cell == "`'Question: What is 2 + 2?\\nAnswer:'`"
    out, _ = booktools.run_pandoc(["-f", "markdown", "-t", "json"], cell)
    inline = json.loads(out)["blocks"][0]["c"]
    assert [i["t"] for i in inline] == ["Code"] and inline[0]["c"][1] == "'Question: What is 2 + 2?\\nAnswer:'"
    raw, _ = booktools.run_pandoc(["-f", "markdown", "-t", "json"], "'Question?\\nAnswer:'")
    assert "RawInline" in raw  # what md_code prevents
    assert md_code("a `tick`") == "``a `tick```" or md_code("a `tick`") == "`` a `tick` ``"


def test_md_table_fits_the_text_width():
    from llmbook.book import TABLE_WIDTH, md_table

    narrow = md_table([["a", 1]], ["name", "n"]).data
    wide = md_table([["x" * 40, "a | b", "y" * 40]], ["first", "second", "third"]).data
    assert narrow.splitlines()[1] == "|:--|--:|"
    assert len(wide.splitlines()[1]) > 72  # pandoc then uses relative widths
    for table, relative in ((narrow, False), (wide, True)):
        out, _ = booktools.run_pandoc(["-f", "markdown", "-t", "json"], table)
        block = json.loads(out)["blocks"][0]
        assert block["t"] == "Table"
        widths = [spec[1] for spec in block["c"][2]]
        assert all(w["t"] == ("ColWidth" if relative else "ColWidthDefault") for w in widths)
        if relative:
            assert sum(w["c"] for w in widths) <= 1.0 + 1e-9
            assert len(block["c"][4][0][3][0][1]) == 3  # the escaped | did not split a cell
    assert TABLE_WIDTH < 88
    with pytest.raises(ValueError, match="align"):
        md_table([[1, 2]], ["a", "b"], align="lx")

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
