"""Cleaning and quality filters: repair never crashes, each filter catches its target, the report adds up."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.data.filters import FILTERS, Doc, FilterConfig, QualityFilter, clean_text, detect_language

PROSE = (
    "The old lighthouse keeper climbed the stairs every evening. He lit the lamp and watched the ships pass "
    "in the dark. Some nights the wind howled, and the waves broke against the rocks below. He never missed a "
    "night, because he knew that the sailors trusted the light to bring them home safely. In the morning he "
    "wrote the weather in his book and made tea with the water he carried up from the well."
)


def test_clean_text_repairs():
    assert clean_text("cafÃ© â€œhiâ€\x9d") == "café “hi”"
    assert clean_text("e\u0301") == "\u00e9"  # NFC
    assert clean_text("a\r\nb\x00c\ufeff  \n\n\n\nd") == "a\nbc\n\nd"
    assert clean_text("bad \udcff byte \ud800") == "bad \ufffd byte \ufffd"
    assert clean_text("naïve Straße Ça va") == "naïve Straße Ça va"  # legitimate accents are untouched
    assert clean_text("ä¸­æ–‡ Ã¼ber") == "中文 über"  # whole-text mojibake, also outside Latin-1


def test_clean_text_keeps_correct_accented_text():
    # ß before “ and é before NBSP + » are valid UTF-8 byte patterns when read as cp1252: not mojibake.
    for text in ("„Er ist groß“", "er ist groß“ und Straße“", "la sécurité\xa0».", "le café\xa0» fin"):
        assert clean_text(text) == text


def test_clean_text_repairs_truncated_closing_quote():
    # ” is E2 80 9D; 0x9D has no cp1252 character and is often lost, leaving â€ before a space or the end.
    assert clean_text("He said â€œhiâ€ and left.") == "He said “hi” and left."
    assert clean_text("â€œhiâ€") == "“hi”"
    assert clean_text("â€œhiâ€.") == "“hi”."


@pytest.mark.parametrize("lang", ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "zho_Hans"])
def test_clean_text_leaves_flores_unchanged(data_file, lang):
    lines = data_file(f"flores200/{lang}.dev").read_text(encoding="utf-8").splitlines()
    nfc = [unicodedata.normalize("NFC", line) for line in lines]
    assert [line for line in nfc if clean_text(line) != line.strip()] == []  # only edge whitespace goes


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_clean_text_never_raises_and_is_idempotent(s):
    once = clean_text(s)
    assert clean_text(once) == once
    once.encode("utf-8")  # always valid UTF-8


def doc_fails(text: str, cfg: FilterConfig | None = None) -> str | None:
    return QualityFilter(cfg).first_failure(text)


def test_good_prose_passes_every_filter():
    assert doc_fails(PROSE) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Too short to be a document.", "word_count"),
        (" ".join(["supercalifragilisticexpialidocious"] * 60), "mean_word_length"),
        (PROSE + " #tag" * 20, "symbol_to_word_ratio"),
        ("\n".join(f"• navigation entry {i} about products and the services" for i in range(40)), "bullet_lines"),
        ("\n".join(f"the story of day {i} continues with the hero and the dragon and then..." for i in range(40)), "ellipsis_lines"),
        (PROSE + " " + " ".join(["123", "456", "7.8", "--", "|"] * 30), "alpha_words"),
        (" ".join(["cat dog bird fish horse cow"] * 12), "stop_words"),
        ("\n".join(f"the menu item {i} with a link and the text" for i in range(40)), "punctuation_lines"),
        (PROSE + " Lorem ipsum dolor sit amet.", "boilerplate"),
        ("Der alte Leuchtturmwärter stieg jeden Abend die Treppe hinauf, und er war mit dem Licht zufrieden. " * 6, "stop_words"),
        ((PROSE + "\n") * 3, "duplicate_lines"),
    ],
)
def test_each_filter_catches_its_target(text, expected):
    assert doc_fails(text) == expected


def test_language_filter_and_repetition_filters_alone():
    german = "Der alte Leuchtturmwärter stieg jeden Abend die Treppe hinauf und war mit dem Licht zufrieden. " * 6
    assert not FILTERS["language"](Doc(german), FilterConfig())
    assert FILTERS["language"](Doc(german), FilterConfig(languages=("de",)))
    spam = PROSE + " buy cheap pills now " * 20
    assert not FILTERS["top_ngrams"](Doc(spam), FilterConfig())
    repeated = PROSE + " " + " ".join(PROSE.split()[:30]) * 1
    assert not FILTERS["duplicate_ngrams"](Doc(repeated), FilterConfig())
    assert FILTERS["duplicate_ngrams"](Doc(PROSE), FilterConfig())


def test_language_id_on_flores(data_file):
    for lang, code in [("eng_Latn", "en"), ("deu_Latn", "de"), ("fra_Latn", "fr"), ("spa_Latn", "es"), ("zho_Hans", "zh")]:
        lines = data_file(f"flores200/{lang}.dev").read_text(encoding="utf-8").splitlines()
        accuracy = sum(detect_language(line)[0] == code for line in lines) / len(lines)
        assert accuracy >= 0.95, (lang, accuracy)


def test_language_id_scripts():
    assert detect_language("東京は日本の首都です。ひらがなとカタカナも使います。")[0] == "ja"
    assert detect_language("北京是中国的首都。")[0] == "zh"
    assert detect_language("Москва — столица России.")[0] == "ru"
    assert detect_language("12345 !!! ???") == ("unknown", 0.0)
    for text in ("東京は日本の首都です。", "abc 東京", "Москва и 東京"):
        assert 0.0 <= detect_language(text)[1] <= 1.0


def test_report_adds_up_and_keeps_examples():
    docs = [{"id": str(i), "text": t} for i, t in enumerate([PROSE, "short", PROSE + " lorem ipsum", PROSE.upper()])]
    q = QualityFilter(n_examples=1)
    removed = []
    kept = list(q(docs, removed=removed))
    report = q.report()
    assert report["input_documents"] == 4 == report["kept_documents"] + report["removed_documents"]
    assert len(kept) == report["kept_documents"] and len(removed) == report["removed_documents"]
    assert report["filters"]["word_count"]["documents"] == 1
    assert report["filters"]["word_count"]["examples"] == [{"id": "1", "text": "short"}]
    removed_chars = sum(f["characters"] for f in report["filters"].values())
    assert removed_chars == report["removed_characters"]
    assert report["input_characters"] == report["kept_characters"] + removed_chars + report["cleaning_removed_characters"]


def test_report_characters_add_up_with_cleaning():
    docs = [{"id": "a", "text": "  cafÃ© " + PROSE + "\r\n\n\n\n\x00"}, {"id": "b", "text": "short \x00\x01 text  "}]
    q = QualityFilter()
    list(q(docs))
    report = q.report()
    assert report["cleaning_removed_characters"] > 0
    assert report["input_characters"] == (report["kept_characters"] + report["removed_characters"]
                                          + report["cleaning_removed_characters"])


def test_config_and_names_are_validated():
    with pytest.raises(ValueError, match="min_words"):
        FilterConfig(min_words=-1)
    with pytest.raises(ValueError, match="fraction"):
        FilterConfig(max_bullet_lines_fraction=1.5)
    with pytest.raises(ValueError, match="unknown filters"):
        QualityFilter(filters=["nope"])
    assert QualityFilter(filters=["word_count"]).first_failure(PROSE) is None
