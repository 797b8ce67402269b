"""Cutting documents into passages for retrieval: fixed token windows with overlap, or paragraphs
(@sec-applications-chunking).

A chunk keeps the character span it came from, so an answer can cite the exact place in the source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\S+")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Chunk:
    """A passage of document `doc` (an index or name): its text and its character span [start, end)."""

    doc: int | str
    text: str
    start: int
    end: int


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of whitespace-separated words: the default 'tokens' of `chunk_by_tokens`."""
    return [m.span() for m in _WORD.finditer(text)]


def chunk_by_tokens(text: str, size: int, overlap: int = 0, doc: int | str = 0,
                    spans: Callable[[str], Sequence[tuple[int, int]]] = word_spans) -> list[Chunk]:
    """Windows of `size` tokens, each starting `size - overlap` tokens after the previous one.

    `spans(text)` gives the tokens' character spans: whitespace words by default, or a subword tokenizer's
    offsets (`lambda t: tokenizer.encode(t).offsets`). The last window ends at the text's last token; a text
    shorter than one window is one chunk. Overlap keeps a sentence cut at a boundary whole in one of the two
    neighbouring chunks.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1 token, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size={size}), got {overlap}")
    tokens = list(spans(text))
    if not tokens:
        return []
    stride = size - overlap
    starts = list(range(0, max(len(tokens) - overlap, 1), stride))
    chunks = []
    for s in starts:
        window = tokens[s : s + size]
        a, b = window[0][0], window[-1][1]
        chunks.append(Chunk(doc, text[a:b], a, b))
        if s + size >= len(tokens):
            break
    return chunks


def chunk_by_paragraph(text: str, max_chars: int = 2000, doc: int | str = 0) -> list[Chunk]:
    """Paragraphs (blocks separated by blank lines), short ones merged up to `max_chars`, long ones split at
    line breaks (or, for a single long line, at `max_chars`)."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    pieces: list[tuple[int, int]] = []
    pos = 0
    for m in [*_BLANK_LINES.finditer(text), None]:
        end = m.start() if m else len(text)
        pieces.extend(_split_long(text, pos, end, max_chars))
        pos = m.end() if m else len(text)
    chunks: list[Chunk] = []
    cur: tuple[int, int] | None = None
    for a, b in pieces:
        if cur is not None and b - cur[0] <= max_chars:
            cur = (cur[0], b)
            continue
        if cur is not None:
            chunks.append(Chunk(doc, text[cur[0] : cur[1]], *cur))
        cur = (a, b)
    if cur is not None:
        chunks.append(Chunk(doc, text[cur[0] : cur[1]], *cur))
    return chunks


def _split_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """The non-blank span [start, end) trimmed, cut at line breaks (then hard) into pieces of <= max_chars."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start >= end:
        return []
    if end - start <= max_chars:
        return [(start, end)]
    out: list[tuple[int, int]] = []
    a = start
    while a < end:
        b = min(a + max_chars, end)
        if b < end:
            cut = text.rfind("\n", a + 1, b)
            b = cut if cut > a else b
        out.extend(_split_long(text, a, b, max_chars))  # b - a <= max_chars: trimmed, never split again
        a = b
    return out
