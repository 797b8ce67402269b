"""The on-disk index of `llmbook rag`: chunks of a folder of text or Markdown files with their BM25 postings,
in one safetensors file (@sec-applications-assistant).

safetensors holds only arrays and a JSON header of strings, so loading a file, even a hostile one, never runs
code (unlike pickle). Everything read back is checked before use: a malformed index fails with one line that
names the file and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmbook.apps.bm25 import BM25, BM25Config, analyze
from llmbook.apps.chunking import chunk_by_paragraph, chunk_by_tokens
from llmbook.fileio import atomic_write

FORMAT = "llmbook-rag-index"
VERSION = "1"
TEXT_SUFFIXES = (".md", ".qmd", ".markdown", ".txt", ".rst")
MAX_INDEX_BYTES = 2 << 30  # refuse to read an index file larger than 2 GiB


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk of a file: its path relative to the indexed folder, lines [first, last] (1-based) and text."""

    path: str
    first_line: int
    last_line: int
    text: str

    @property
    def source(self) -> str:
        return f"{self.path}:{self.first_line}-{self.last_line}"


@dataclass
class RagIndex:
    """Chunks, their BM25 index (one BM25 'document' per chunk) and the settings that made them."""

    chunks: list[IndexedChunk]
    bm25: BM25
    settings: dict

    def search(self, question: str, k: int = 3) -> list[tuple[IndexedChunk, float]]:
        """The k best chunks for a question with their BM25 scores (ties: earlier chunk first)."""
        ids, scores = self.bm25.search(analyze(question), k)
        return [(self.chunks[i], float(s)) for i, s in zip(ids, scores) if s > 0]


def read_folder(root: str | Path, suffixes: Sequence[str] = TEXT_SUFFIXES) -> list[tuple[str, str]]:
    """(relative path, text) of every text file under `root` with one of `suffixes`, sorted by path;
    hidden folders and files (names starting with '.') are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--input {root}: not a folder")
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); convert it or move it out of the folder") from None
        if text.strip():
            out.append((rel.as_posix(), text))
    if not out:
        raise ValueError(f"--input {root}: no non-empty {', '.join(suffixes)} files")
    return out


_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)


def mask_code_blocks(text: str) -> str:
    """Fenced code blocks of Markdown replaced by spaces (newlines kept), so that prose is indexed and every
    character keeps its offset and line number."""
    return _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def build_index(files: Sequence[tuple[str, str]], by: str = "tokens", size: int = 120, overlap: int = 30,
                max_chars: int = 1500, config: BM25Config = BM25Config()) -> RagIndex:
    """Chunk every file (by word windows with overlap, or by paragraphs) and index the chunks with BM25.

    In Markdown files (.md, .qmd, .markdown) fenced code blocks are left out: the assistant answers from prose."""
    if by not in ("tokens", "paragraph"):
        raise ValueError(f"chunking {by!r} must be 'tokens' or 'paragraph'")
    chunks = []
    for path, text in files:
        if path.endswith((".md", ".qmd", ".markdown")):
            text = mask_code_blocks(text)
        pieces = (chunk_by_tokens(text, size, overlap, doc=path) if by == "tokens"
                  else chunk_by_paragraph(text, max_chars, doc=path))
        for c in pieces:
            first = text.count("\n", 0, c.start) + 1
            tidy = re.sub(r"\n(?:[ \t]*\n)+", "\n\n", c.text)  # masked code leaves blank lines behind
            chunks.append(IndexedChunk(path, first, first + c.text.count("\n"), tidy))
    settings = {"by": by, "size": size, "overlap": overlap, "max_chars": max_chars, "files": len(files)}
    return RagIndex(chunks, BM25.fit([analyze(c.text) for c in chunks], config), settings)


def save_index(index: RagIndex, path: str | Path) -> Path:
    """Write the index as one safetensors file, atomically (temp file, fsync, rename)."""
    from safetensors.numpy import save

    bm = index.bm25
    vocab = sorted(bm.vocab, key=bm.vocab.get)
    meta = {
        "format": FORMAT, "version": VERSION,
        "settings": json.dumps(index.settings),
        "bm25": json.dumps({"k1": bm.config.k1, "b": bm.config.b, "n_docs": bm.n_docs}),
        "vocab": json.dumps(vocab, ensure_ascii=False),
        "chunks": json.dumps([[c.path, c.first_line, c.last_line, c.text] for c in index.chunks], ensure_ascii=False),
    }
    tensors = {"indptr": bm.indptr.astype(np.int64), "doc_ids": bm.doc_ids.astype(np.int32),
               "weights": bm.weights.astype(np.float32)}
    data = save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data), mode="wb")


def _field(meta: dict, name: str, path: Path, kind: type):
    if name not in meta:
        raise ValueError(f"{path}: not an llmbook rag index (header field {name!r} missing)")
    try:
        value = json.loads(meta[name])
    except json.JSONDecodeError:
        raise ValueError(f"{path}: header field {name!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path}: header field {name!r} must be a JSON {kind.__name__}")
    return value


def load_index(path: str | Path) -> RagIndex:
    """Read and validate an index written by `save_index`; any inconsistency is a one-line ValueError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--index {path}: no such file (build one with `llmbook rag index`)")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes is larger than an index may be ({MAX_INDEX_BYTES:,})")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a safetensors file ({str(err).splitlines()[0] if str(err) else 'bad header'})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: header field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: index version {meta.get('version')!r} is not supported (expected {VERSION})")
    settings = _field(meta, "settings", path, dict)
    params = _field(meta, "bm25", path, dict)
    vocab_list = _field(meta, "vocab", path, list)
    rows = _field(meta, "chunks", path, list)
    chunks = []
    for i, row in enumerate(rows):
        ok = (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and isinstance(row[3], str)
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in row[1:3]))
        if not ok:
            raise ValueError(f"{path}: chunks[{i}] must be [path, first_line, last_line, text]")
        chunks.append(IndexedChunk(*row))
    if not all(isinstance(t, str) for t in vocab_list) or len(set(vocab_list)) != len(vocab_list):
        raise ValueError(f"{path}: vocab must be a list of distinct strings")
    for name, dtype in (("indptr", np.int64), ("doc_ids", np.int32), ("weights", np.float32)):
        if name not in tensors or tensors[name].dtype != dtype or tensors[name].ndim != 1:
            raise ValueError(f"{path}: tensor {name!r} missing or not a 1-d {np.dtype(dtype).name} array")
    indptr, doc_ids, weights = tensors["indptr"], tensors["doc_ids"], tensors["weights"]
    n = params.get("n_docs")
    if not isinstance(n, int) or n != len(chunks) or n < 1:
        raise ValueError(f"{path}: bm25.n_docs={n!r} does not match the {len(chunks)} chunks")
    if (len(indptr) != len(vocab_list) + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
            or indptr[-1] != len(doc_ids) or len(weights) != len(doc_ids)):
        raise ValueError(f"{path}: postings are inconsistent (indptr, doc_ids and weights do not fit the vocabulary)")
    if len(doc_ids) and (doc_ids.min() < 0 or doc_ids.max() >= n):
        raise ValueError(f"{path}: doc_ids point outside the {n} chunks")
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"{path}: weights hold non-finite values")
    try:
        config = BM25Config(float(params.get("k1", -1)), float(params.get("b", -1)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: bm25 parameters: {err}") from None
    bm25 = BM25({t: i for i, t in enumerate(vocab_list)}, indptr, doc_ids, weights, n, config)
    return RagIndex(chunks, bm25, settings)
