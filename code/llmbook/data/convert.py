"""Rebuild the book's converted data files from their pinned upstream files (@sec-data-sources).

Most data files are public files byte for byte, or their first N lines. The rest were converted once from
an upstream schema; these functions redo each conversion from the upstream bytes so that the registry can
rebuild the file anywhere and check it against its recorded sha256. Each takes the upstream files' bytes
(in the order the registry lists them) and returns the file's bytes.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

Converter = Callable[..., bytes]


def _lines(data: bytes) -> list[bytes]:
    """Lines of a file, each ending in exactly one newline (a missing final newline is added)."""
    return [line if line.endswith(b"\n") else line + b"\n" for line in data.splitlines(keepends=True)]


def head(inputs: Sequence[bytes], n: int) -> bytes:
    """The first `n` lines of the single input, byte for byte (a held-out split keeps the rest)."""
    (data,) = inputs
    lines = _lines(data)
    if len(lines) < n:
        raise ValueError(f"upstream file has {len(lines)} lines, fewer than the {n} to keep")
    return b"".join(lines[:n])


def gunzip_head(inputs: Sequence[bytes], n: int) -> bytes:
    """The first `n` lines of a gzip-compressed input (HumanEval ships as .jsonl.gz)."""
    return head([gzip.decompress(inputs[0])], n)


def jsonl_id_range(inputs: Sequence[bytes], field: str, lo: int, hi: int) -> bytes:
    """The JSON Lines records whose integer `field` lies in [lo, hi], lines byte for byte (MBPP's splits by task_id)."""
    (data,) = inputs
    out = []
    for lineno, line in enumerate(_lines(data), start=1):
        if line.strip():
            value = json.loads(line).get(field)
            if not isinstance(value, int):
                raise ValueError(f"upstream line {lineno}: field {field!r} is {value!r}, not an integer")
            if lo <= value <= hi:
                out.append(line)
    return b"".join(out)


def _dumps(obj: object) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def hellaswag_klosax(inputs: Sequence[bytes], n_items: int = 500) -> bytes:
    """HellaSwag validation from klosax's text dump (bz2, six lines per item: `label: context`, gold, four
    endings) to JSON Lines `{idx, activity_label, query, endings, label}`, keeping `n_items` evenly spaced items
    (idx = floor(i * total / n_items))."""
    lines = bz2.decompress(inputs[0]).decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"HellaSwag text dump has {len(lines)} lines, not a multiple of 6")
    total = len(lines) // 6
    out = []
    for i in range(n_items):
        idx = i * total // n_items
        query, label, *endings = lines[6 * idx : 6 * idx + 6]
        activity, sep, _ = query.partition(": ")
        if not sep or not label.isdigit() or int(label) > 3:
            raise ValueError(f"HellaSwag item {idx}: malformed (query {query[:40]!r}, label {label!r})")
        out.append(_dumps({"idx": idx, "activity_label": activity, "query": query, "endings": endings,
                           "label": int(label)}))
    return b"".join(out)


def piqa_merge(inputs: Sequence[bytes], n: int) -> bytes:
    """PIQA: the first `n` records of `valid.jsonl` with their labels from `valid-labels.lst`, as
    `{idx, goal, sol1, sol2, label}`."""
    records = inputs[0].decode("utf-8").splitlines()
    labels = inputs[1].decode("utf-8").split()
    if len(records) != len(labels):
        raise ValueError(f"PIQA: {len(records)} records but {len(labels)} labels")
    return b"".join(_dumps({"idx": i, **json.loads(records[i]), "label": int(labels[i])}) for i in range(n))


MMLU_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def mmlu_merge(inputs: Sequence[bytes], subjects: Sequence[str]) -> bytes:
    """MMLU dev: one CSV per subject (`question, choice0..3, answer`) merged into one with a leading `subject`
    column, in the order given; line breaks inside fields become '\\n', rows end in '\\r\\n' (the csv default)."""
    if len(inputs) != len(subjects):
        raise ValueError(f"MMLU: {len(inputs)} files for {len(subjects)} subjects")
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["subject", *MMLU_COLUMNS])
    for subject, data in zip(subjects, inputs):
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline=None)))
        if not rows or rows[0] != MMLU_COLUMNS:
            raise ValueError(f"MMLU {subject}: header {rows[0] if rows else None}, expected {MMLU_COLUMNS}")
        writer.writerows([subject, *row] for row in rows[1:])
    return buf.getvalue().encode("utf-8")


def arc_strip_para(inputs: Sequence[bytes]) -> bytes:
    """ARC in the official JSON Lines schema from a copy that added a retrieved `para` to every choice."""
    out = []
    for line in inputs[0].decode("utf-8").splitlines():
        if line.strip():
            doc = json.loads(line)
            for choice in doc["question"]["choices"]:
                choice.pop("para", None)
            out.append(_dumps(doc))
    return b"".join(out)


# ------------------------------------------------------------------------------------------- Gutenberg
_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*?(\*\*\*|\n[^\n]*\*\*\*)", re.I | re.M)
_END = re.compile(r"^[ \t]*(\*\*\* ?END OF|End of (the )?Project Gutenberg)", re.I | re.M)
_CREDIT = re.compile(r"^\s*(Produced by|Transcribed from|E-text prepared by)", re.I)
_C1 = re.compile("[\x80-\x9f]")
BOOK_SEPARATOR = "\n\n\n"  # after each book's final newline: three blank lines between books
EDITOR_NOTE_SHARE = 0.02  # paragraphs that mention Gutenberg are dropped from this leading share of a book


def _cp1252(match: re.Match) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:  # the five C1 bytes cp1252 leaves undefined stay as they are
        return match.group()


def gutenberg_clean(raw: bytes) -> str:
    """One Project Gutenberg e-book without the licence header and footer, as the corpus keeps it.

    The text between the `*** START OF THE/THIS PROJECT GUTENBERG ...` line and the first `*** END OF ...` or
    `End of (the) Project Gutenberg ...` line; a leading "Produced by"/"Transcribed from"/"E-text prepared by"
    credit and paragraphs in the first 2% that mention Gutenberg (editor notes) are dropped; a BOM is removed,
    CRLF becomes LF and C1 control characters (cp1252 left-overs) become their cp1252 characters.
    """
    text = _C1.sub(_cp1252, raw.decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n"))
    start, end = _START.search(text), None
    if start is None:
        raise ValueError("no '*** START OF THE PROJECT GUTENBERG' line")
    text = text[start.end():]
    text = text[text.index("\n") + 1:] if "\n" in text else ""
    end = _END.search(text)
    if end is None:
        raise ValueError("no '*** END OF THE PROJECT GUTENBERG' line")
    paragraphs = text[: end.start()].strip().split("\n\n")
    if _CREDIT.match(paragraphs[0]):
        paragraphs = paragraphs[1:]
    text = "\n\n".join(paragraphs).strip()
    kept, pos, limit = [], 0, EDITOR_NOTE_SHARE * len(text)
    for paragraph in text.split("\n\n"):
        if not (pos < limit and "gutenberg" in paragraph.lower()):
            kept.append(paragraph)
        pos += len(paragraph) + 2
    return "\n\n".join(kept).strip() + "\n"


@dataclass(frozen=True)
class Book:
    """One book of the Gutenberg corpus: what it is, where its source is pinned, and its checksums."""

    pg_id: int
    title: str
    author: str
    byte_length: int
    sha256_text: str
    source_repo: str
    source_path: str
    source_commit: str
    source_git_blob: str
    source_sha256: str
    source_bytes: int


def gutenberg_books() -> list[Book]:
    """The corpus's books in order, read from the book list shipped with the package."""
    text = resources.files("llmbook.data").joinpath("gutenberg_books.tsv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"))
    ints = ("pg_id", "byte_length", "source_bytes")
    return [Book(**{k: int(v) if k in ints else v for k, v in row.items()}) for row in rows]


MANIFEST_COLUMNS = ["pg_id", "title", "author", "byte_offset", "byte_length", "sha256_text", "source_repo",
                    "source_path", "source_commit", "source_git_blob"]


def gutenberg_manifest(inputs: Sequence[bytes] = (), books: Sequence[Book] | None = None) -> bytes:
    """`manifest.tsv`: one row per book with its byte offset and length in the uncompressed corpus."""
    books = gutenberg_books() if books is None else books
    lines, offset = ["\t".join(MANIFEST_COLUMNS)], 0
    for b in books:
        values = {**b.__dict__, "byte_offset": offset}
        lines.append("\t".join(str(values[c]) for c in MANIFEST_COLUMNS))
        offset += b.byte_length + len(BOOK_SEPARATOR.encode())
    return ("\n".join(lines) + "\n").encode("utf-8")


def gutenberg_text(texts: Sequence[str]) -> bytes:
    """The uncompressed corpus: the cleaned books in order, separated by blank lines."""
    return BOOK_SEPARATOR.join(texts).encode("utf-8")


def gutenberg_corpus(inputs: Sequence[bytes], preset: int = 6) -> bytes:
    """`gutenberg_en.txt.xz` from the raw e-books (in the book list's order): cleaned, joined, xz-compressed.
    The compressed bytes depend on the xz settings; the registry checks the uncompressed text's sha256."""
    return lzma.compress(gutenberg_text([gutenberg_clean(raw) for raw in inputs]), preset=preset)


CONVERTERS: dict[str, Converter] = {
    "head": head,
    "gunzip_head": gunzip_head,
    "jsonl_id_range": jsonl_id_range,
    "hellaswag_klosax": hellaswag_klosax,
    "piqa_merge": piqa_merge,
    "mmlu_merge": mmlu_merge,
    "arc_strip_para": arc_strip_para,
    "gutenberg_manifest": gutenberg_manifest,
    "gutenberg_corpus": gutenberg_corpus,
}
