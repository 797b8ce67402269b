"""Cleaning and heuristic quality filters in the style of Gopher, C4 and FineWeb (@sec-data-filters).

`clean_text` repairs and normalises text and never raises. Each quality filter is a small named function
`(doc, config) -> bool` (True = keep) whose threshold lives in `FilterConfig`; `QualityFilter` applies them
in order and counts, per filter, the documents and characters it removed (a document is charged to the
first filter it fails).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any

import regex

# ----------------------------------------------------------------------------------------------- cleaning

_ESCAPED_OR_SURROGATE = regex.compile(r"[\ud800-\udfff]")
# Characters cp1252 shows for the bytes 0x80-0xBF (UTF-8 continuation bytes); its five undefined bytes pass
# through as the C1 controls of the same value.
_CONT = (
    "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
)
# Characteristic mojibake: one whole UTF-8 sequence decoded as cp1252 whose lead byte is one that real text
# almost never puts before such a character: Â/Ã (U+0080-U+00FF: accented Latin letters, NBSP, « »),
# Ä/Å (Latin Extended-A), Ð/Ñ (Cyrillic), or â€/â„ (general punctuation: quotes, dashes, ellipsis, ™).
# Other lead bytes (ß, é, ...) are common letters before « » or NBSP in correct text, so they are repaired
# only when the whole text decodes (below).
_MOJIBAKE = regex.compile(f"[\u00c2-\u00c5\u00d0\u00d1][{_CONT}]|\u00e2[\u20ac\u201e][{_CONT}]")
# The closing quote ” is E2 80 9D; 0x9D is undefined in cp1252 and often lost, leaving â€ then a space/end.
_TRUNCATED_QUOTE = regex.compile(f"\u00e2\u20ac(?![{_CONT}])(?=\\s|\\p{{P}}|$)")
_LEAD_ANY = regex.compile(f"[\u00c2-\u00f4][{_CONT}]")
_NON_ASCII = regex.compile(r"[^\x00-\x7f]")
# Scripts a repair may produce; a "repair" into, say, N'Ko (groß“ -> groߓ) is a coincidence, not a fix.
_USUAL_SCRIPT = regex.compile(
    r"[\p{Latin}\p{Common}\p{Inherited}\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Cyrillic}\p{Greek}"
    r"\p{Arabic}\p{Hebrew}\p{Devanagari}\p{Thai}]"
)
_CONTROL = regex.compile(r"[\p{Cc}\ufeff\u200b--[\n\t]]", flags=regex.V1)
_TRAILING_SPACE = regex.compile(r"[ \t]+\n")
_BLANK_RUNS = regex.compile(r"\n{3,}")


def _cp1252_bytes(text: str) -> bytes:
    """The bytes cp1252 decodes to `text`; the five bytes cp1252 leaves undefined pass through as latin-1."""
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            if ord(ch) > 0xFF:
                raise ValueError(f"{ch!r} has no cp1252 byte") from None
            out.append(ord(ch))
    return bytes(out)


def _plausible(text: str) -> bool:
    """A repair may not create controls, private-use or unassigned characters (ftfy's "less weird" test)."""
    return not any(unicodedata.category(ch) in ("Cc", "Co", "Cn", "Cs") and ch not in "\n\t\r" for ch in text)


def _fix_mojibake(match: regex.Match) -> str:
    try:
        fixed = _cp1252_bytes(match.group()).decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return match.group()
    return fixed if _plausible(fixed) else match.group()


def _repair_encoding(text: str) -> str:
    """Undo UTF-8 read as cp1252, conservatively (@sec-data-filters).

    The whole text is re-decoded when every one of its (at least four) non-ASCII characters belongs to a valid
    UTF-8 sequence and the result is in a common script (`ä¸­æ–‡` -> `中文`); otherwise only characteristic
    sequences are (Ã©, Â», â€œ, and a â€ that lost its last byte), so correct text is left alone.
    """
    if len(_NON_ASCII.findall(text)) >= 4 and _LEAD_ANY.search(text):
        try:
            whole = _cp1252_bytes(text).decode("utf-8")
        except (UnicodeDecodeError, ValueError):
            pass
        else:  # every non-ASCII character took part in a valid UTF-8 sequence: mojibake from end to end
            if _plausible(whole) and all(_USUAL_SCRIPT.match(ch) for ch in _NON_ASCII.findall(whole)):
                return whole
    text = _MOJIBAKE.sub(_fix_mojibake, text)
    return _TRUNCATED_QUOTE.sub("\u201d", text)


def clean_text(text: str) -> str:
    """Repair and normalise text (@sec-data-filters); never raises, whatever the input.

    1. undecodable bytes (surrogate escapes) and lone surrogates become U+FFFD;
    2. mojibake (UTF-8 that was decoded as cp1252, e.g. `cafÃ©`) is decoded again (`café`), but only where
       it is characteristic (`_repair_encoding`), so correct accented text (`groß“`, `sécurité »`) is kept;
    3. Unicode NFC; line breaks become `\\n`; control characters other than newline and tab, the BOM and
       zero-width spaces are removed; trailing spaces are dropped and runs of blank lines collapse to one.

    The steps repeat until nothing changes (at most four rounds), so cleaning twice equals cleaning once.
    """
    for _ in range(4):  # each step can expose work for another (a removed control joins mojibake): iterate
        new = _ESCAPED_OR_SURROGATE.sub("\ufffd", text)
        new = _repair_encoding(new)
        new = unicodedata.normalize("NFC", new)
        new = new.replace("\r\n", "\n").replace("\r", "\n")
        new = _CONTROL.sub("", new)
        new = _TRAILING_SPACE.sub("\n", new)
        new = _BLANK_RUNS.sub("\n\n", new).strip()
        if new == text:
            break
        text = new
    return text


# ----------------------------------------------------------------------------------------------- language ID

_STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the and of to is in that it was for with as his he on be at by i you this are not but have from they "
        "she her had which or we an were been has their there would what will so if when who them said".split()
    ),
    "de": frozenset(
        "der die und den von zu das mit sich des auf für ist im dem nicht ein eine als auch es werden aus er hat "
        "dass sie nach wird bei einer um am sind noch wie einem über einen zum war haben nur oder aber vor zur "
        "bis mehr durch man sein wurde".split()
    ),
    "fr": frozenset(
        "le la les de des et en un une du est que qui dans pour pas au sur par ne se plus il elle sont avec ce "
        "cette ont aux son sa ses mais ou été être nous vous leur".split()
    ),
    "es": frozenset(
        "el la los las de del y en un una que es por con para se no al lo como más su sus pero le ha este esta "
        "fue son entre también cuando muy sin sobre ya hasta desde donde".split()
    ),
}
_SCRIPTS = {
    "zh": regex.compile(r"\p{Han}"),
    "ja": regex.compile(r"[\p{Hiragana}\p{Katakana}]"),
    "ko": regex.compile(r"\p{Hangul}"),
    "ru": regex.compile(r"\p{Cyrillic}"),
    "ar": regex.compile(r"\p{Arabic}"),
    "el": regex.compile(r"\p{Greek}"),
    "hi": regex.compile(r"\p{Devanagari}"),
}
_LATIN = regex.compile(r"\p{Latin}")
LANGUAGES = (*_STOP_WORDS, *_SCRIPTS)  # every code `detect_language` can return
_WORD = regex.compile(r"\p{L}+")


def detect_language(text: str, sample_chars: int = 4000) -> tuple[str, float]:
    """A tiny language identifier: dominant script, then stop-word hits for Latin-script languages.

    Returns `(code, score)`: score is the share of letters in the script for non-Latin languages, and the
    share of words that are stop words of the winner for en/de/fr/es; `("unknown", 0.0)` when unsure. Real
    pipelines use fastText's lid.176 model (@sec-data-filters); this one needs no download.
    """
    sample = text[:sample_chars]
    latin = len(_LATIN.findall(sample))
    scripts = {code: len(rx.findall(sample)) for code, rx in _SCRIPTS.items()}
    letters = latin + sum(scripts.values())
    if scripts["ja"]:  # Japanese mixes kana with Han characters
        scripts["ja"] += scripts["zh"]
    code, count = max(scripts.items(), key=lambda kv: kv[1])
    if count > latin:
        return code, count / max(letters, 1)
    words = [w.lower() for w in _WORD.findall(sample)]
    if not words:
        return "unknown", 0.0
    hits = {lang: sum(w in stops for w in words) for lang, stops in _STOP_WORDS.items()}
    lang, best = max(hits.items(), key=lambda kv: kv[1])
    return (lang, best / len(words)) if best else ("unknown", 0.0)


# ----------------------------------------------------------------------------------------------- quality filters

_GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_BULLETS = ("•", "-", "*", "‣", "◦", "·", "–", "—")
END_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "»", ":", ";", ")")


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the quality filters; defaults follow Gopher (Rae et al. 2021), C4 and FineWeb."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_to_word_ratio: float = 0.1
    max_bullet_lines_fraction: float = 0.9
    max_ellipsis_lines_fraction: float = 0.3
    min_alpha_words_fraction: float = 0.8
    min_stop_words: int = 2
    min_punctuation_lines_fraction: float = 0.12
    max_duplicate_lines_fraction: float = 0.3
    max_duplicate_line_chars_fraction: float = 0.2
    max_top_ngram_chars_fraction: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    max_duplicate_ngram_chars_fraction: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )
    boilerplate_phrases: tuple[str, ...] = ("lorem ipsum", "enable javascript", "javascript is disabled",
                                            "use of cookies", "terms of use", "all rights reserved")
    languages: tuple[str, ...] = ("en",)
    min_language_score: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"FilterConfig.{f.name} must be non-negative, got {value}")
            if f.name.endswith("fraction") and isinstance(value, float) and value > 1:
                raise ValueError(f"FilterConfig.{f.name} is a fraction in [0, 1], got {value}")
        if self.min_words > self.max_words:
            raise ValueError(f"FilterConfig.min_words ({self.min_words}) exceeds max_words ({self.max_words})")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("FilterConfig.min_mean_word_length exceeds max_mean_word_length")


class Doc:
    """A document with the views the filters share (words, lines), computed lazily once."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.split("\n") if line.strip()]


def _ngram_chars(words: list[str], n: int) -> tuple[Counter, int]:
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return grams, sum(len(w) for w in words)


def word_count(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: keep documents with a number of words in [min_words, max_words]."""
    return cfg.min_words <= len(doc.words) <= cfg.max_words


def mean_word_length(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: mean word length in characters within bounds (catches tables of numbers and long URLs)."""
    mean = sum(len(w) for w in doc.words) / max(len(doc.words), 1)
    return cfg.min_mean_word_length <= mean <= cfg.max_mean_word_length


def symbol_to_word_ratio(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: hash signs and ellipses per word at most the threshold (catches tag clouds and teasers)."""
    symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
    return symbols / max(len(doc.words), 1) <= cfg.max_symbol_to_word_ratio


def bullet_lines(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: at most this fraction of lines start with a bullet (catches navigation menus)."""
    bullets = sum(line.startswith(_BULLETS) for line in doc.lines)
    return bullets / max(len(doc.lines), 1) <= cfg.max_bullet_lines_fraction


def ellipsis_lines(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: at most this fraction of lines end with an ellipsis (catches truncated snippets)."""
    ellipses = sum(line.endswith(("...", "…")) for line in doc.lines)
    return ellipses / max(len(doc.lines), 1) <= cfg.max_ellipsis_lines_fraction


def alpha_words(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: at least this fraction of words contain a letter."""
    alpha = sum(any(c.isalpha() for c in w) for w in doc.words)
    return alpha / max(len(doc.words), 1) >= cfg.min_alpha_words_fraction


def stop_words(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: at least `min_stop_words` of the/be/to/of/and/that/have/with (English prose has them)."""
    return sum(w.lower() in _GOPHER_STOP_WORDS for w in doc.words) >= cfg.min_stop_words


def punctuation_lines(doc: Doc, cfg: FilterConfig) -> bool:
    """C4/FineWeb: at least this fraction of lines end in terminal punctuation."""
    ending = sum(line.endswith(END_PUNCTUATION) for line in doc.lines)
    return ending / max(len(doc.lines), 1) >= cfg.min_punctuation_lines_fraction


def duplicate_lines(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: limit the fraction of repeated lines and of characters in repeated lines."""
    counts = Counter(doc.lines)
    dup_lines = sum(c - 1 for c in counts.values() if c > 1)
    dup_chars = sum(len(line) * (c - 1) for line, c in counts.items() if c > 1)
    total_chars = sum(len(line) for line in doc.lines)
    return (
        dup_lines / max(len(doc.lines), 1) <= cfg.max_duplicate_lines_fraction
        and dup_chars / max(total_chars, 1) <= cfg.max_duplicate_line_chars_fraction
    )


def top_ngrams(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: the most frequent word n-gram (n=2..4) may cover at most a fraction of the characters."""
    for n, limit in cfg.max_top_ngram_chars_fraction:
        grams, total = _ngram_chars(doc.words, n)
        if not grams or total == 0:
            continue
        gram, count = grams.most_common(1)[0]
        if count > 1 and sum(len(w) for w in gram) * count / total > limit:
            return False
    return True


def duplicate_ngrams(doc: Doc, cfg: FilterConfig) -> bool:
    """Gopher: characters inside repeated word n-grams (n=5..10) may be at most a fraction of all characters."""
    words = doc.words
    for n, limit in cfg.max_duplicate_ngram_chars_fraction:
        grams, total = _ngram_chars(words, n)
        if not grams or total == 0:
            continue
        covered = [False] * len(words)
        for i in range(len(words) - n + 1):
            if grams[tuple(words[i : i + n])] > 1:
                covered[i : i + n] = [True] * n
        if sum(len(w) for w, c in zip(words, covered) if c) / total > limit:
            return False
    return True


def boilerplate(doc: Doc, cfg: FilterConfig) -> bool:
    """C4: drop documents with placeholder or web boilerplate phrases ("lorem ipsum", "enable JavaScript")."""
    lower = doc.text.lower()
    return not any(p in lower for p in cfg.boilerplate_phrases)


def language(doc: Doc, cfg: FilterConfig) -> bool:
    """Keep documents identified as one of `languages` with at least `min_language_score`."""
    lang, score = detect_language(doc.text)
    return lang in cfg.languages and score >= cfg.min_language_score


# Name -> filter, in the order they are applied (cheap ones first).
FILTERS: dict[str, Callable[[Doc, FilterConfig], bool]] = {
    f.__name__: f
    for f in (
        word_count, mean_word_length, symbol_to_word_ratio, bullet_lines, ellipsis_lines, alpha_words,
        stop_words, punctuation_lines, boilerplate, language, duplicate_lines, top_ngrams, duplicate_ngrams,
    )
}


@dataclass
class FilterStats:
    """What one filter removed."""

    documents: int = 0
    characters: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)


class QualityFilter:
    """Clean records, apply the named filters in order and count what each removed (@sec-data-filters)."""

    def __init__(self, config: FilterConfig | None = None, filters: Iterable[str] | None = None, clean: bool = True,
                 n_examples: int = 3, scrub: Callable[[str], str] | None = None):
        self.config = config or FilterConfig()
        names = list(FILTERS) if filters is None else list(filters)
        unknown = [n for n in names if n not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filters {unknown}; choose from {list(FILTERS)}")
        self.filters = {n: FILTERS[n] for n in names}
        self.clean = clean
        self.n_examples = n_examples
        self.scrub = scrub  # applied to a removed document's whole text before its example is cut (PII redaction)
        self.stats = {n: FilterStats() for n in names}
        self.input_documents = self.kept_documents = 0
        self.input_characters = self.kept_characters = self.cleaning_characters = 0

    def first_failure(self, text: str) -> str | None:
        """Name of the first filter the text fails, or None if it passes them all."""
        doc = Doc(text)
        for name, keep in self.filters.items():
            if not keep(doc, self.config):
                return name
        return None

    def __call__(self, records: Iterable[dict[str, Any]], removed: list | None = None) -> Iterator[dict[str, Any]]:
        """Yield the cleaned records that pass; append `(record, filter_name)` of the others to `removed`."""
        for rec in records:
            text = clean_text(rec["text"]) if self.clean else rec["text"]
            self.input_documents += 1
            self.input_characters += len(rec["text"])
            self.cleaning_characters += len(rec["text"]) - len(text)
            reason = self.first_failure(text)
            if reason is None:
                self.kept_documents += 1
                self.kept_characters += len(text)
                yield {**rec, "text": text}
                continue
            stats = self.stats[reason]
            stats.documents += 1
            stats.characters += len(text)
            if len(stats.examples) < self.n_examples:
                example = self.scrub(text) if self.scrub else text  # whole text first: a cut may split an e-mail
                stats.examples.append({"id": str(rec.get("id", "")), "text": example[:160]})
            if removed is not None:
                removed.append((rec, reason))

    def report(self) -> dict[str, Any]:
        """Counts per filter plus totals: documents, input = kept + removed; characters, input = kept + removed
        by the filters + removed by cleaning (whitespace, controls, repairs; negative in the rare case where
        NFC lengthens text)."""
        return {
            "input_documents": self.input_documents,
            "kept_documents": self.kept_documents,
            "removed_documents": sum(s.documents for s in self.stats.values()),
            "input_characters": self.input_characters,
            "kept_characters": self.kept_characters,
            "removed_characters": sum(s.characters for s in self.stats.values()),
            "cleaning_removed_characters": self.cleaning_characters,
            "filters": {n: asdict(s) for n, s in self.stats.items()},
            "config": asdict(self.config),
        }
