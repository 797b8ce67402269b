"""Corpus sources: stream documents as records `{"id", "text", "source", ...}` from files or datasets (@sec-data-sources).

Everything here is a generator, so a corpus larger than memory streams through. Readers that meet a bad record
either raise ValueError naming the file and line, or, when given a `skips` Counter, count the reason and go on:
a record is never dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import lzma
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llmbook.data import convert, registry

Record = dict[str, Any]

# How a plain-text file is cut into documents.
SEPARATORS = ("line", "paragraph", "story", "wikitext", "file")

# Named corpora of the data registry: the file and the separator rule that cuts it into documents.
NAMED: dict[str, tuple[str, str]] = {
    "tinyshakespeare": ("tinyshakespeare/input.txt", "paragraph"),
    "tinystories": ("tinystories/tinystories_train_sample.txt", "story"),
    "tinystories-valid": ("tinystories/tinystories_valid_sample.txt", "paragraph"),
    "wikitext2": ("wikitext-2/valid.txt", "wikitext"),
    "gutenberg": ("gutenberg/gutenberg_en.txt.xz", "manifest"),
}

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def _open_text(path: Path) -> io.TextIOBase:
    """Open a (possibly .gz/.xz compressed) file as text, keeping undecodable bytes as surrogate escapes."""
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")


def _record(source: str, index: int, text: str, **extra: Any) -> Record:
    """A record; `encoding_errors` counts bytes that were not valid UTF-8 (kept as escapes for filters to repair)."""
    bad = sum(1 for ch in text if "\udc80" <= ch <= "\udcff")
    rec = {"id": f"{source}:{index}", "text": text, "source": source, **extra}
    if bad:
        rec["encoding_errors"] = bad
    return rec


def utf8_text(text: str) -> str:
    """`text` with every byte that was not valid UTF-8 (a surrogate escape of the readers, or a lone surrogate
    from JSON) replaced by U+FFFD, so tokenizers that only take valid Unicode can encode it."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def _named_errors(path: Path, records: Iterator[Record]) -> Iterator[Record]:
    """Re-raise a reader's failure on a damaged file (bad gzip, xz or Parquet data) as a ValueError naming it."""
    try:
        yield from records
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
        if str(path) in str(err):  # our readers' own errors already name the file and line
            raise
        detail = " ".join(str(err).split())[:160] or type(err).__name__
        raise ValueError(f"{path}: cannot read it as {''.join(path.suffixes[-2:]) or 'text'} data ({detail})") from None


def split_documents(lines: Iterable[str], separator: str) -> Iterator[str]:
    """Group lines (with their newlines) into documents by a separator rule.

    `line`: every non-blank line. `paragraph`: blocks separated by blank lines. `story`: paragraphs are separated
    by a blank line and documents by a bare line break (TinyStories train). `wikitext`: a line ` = Title = `
    starts an article. `file`: the whole input. Leading and trailing blank lines of a document are dropped.
    """
    if separator not in SEPARATORS:
        raise ValueError(f"separator must be one of {SEPARATORS}, got {separator!r}")
    doc: list[str] = []
    prev_blank = True

    def flush() -> Iterator[str]:
        text = "".join(doc).rstrip()
        doc.clear()
        if text.strip():
            yield text

    for line in lines:
        blank = not line.strip()
        if separator == "line":
            if not blank:
                yield line.rstrip("\r\n")
            continue
        if separator == "paragraph" and blank:
            yield from flush()
        elif separator == "story" and not blank and not prev_blank and doc:
            yield from flush()
        elif separator == "wikitext" and _WIKITEXT_TITLE.match(line.rstrip("\r\n")):
            yield from flush()
        if not (blank and not doc):
            doc.append(line)
        prev_blank = blank
    yield from flush()


def read_text(path: str | Path, separator: str = "paragraph", source: str | None = None) -> Iterator[Record]:
    """Stream documents from a plain-text file (optionally .gz/.xz) cut by `separator` (@sec-data-sources)."""
    path = _existing(path)
    source = source or path.name.split(".")[0]
    with _open_text(path) as f:
        for i, text in enumerate(split_documents(f, separator)):
            yield _record(source, i, text)


def _skip(skips: Counter | None, reason: str, where: str) -> None:
    """Count a bad record under `reason`, or raise when the caller gave no counter."""
    if skips is None:
        raise ValueError(f"{where}: {reason.replace('_', ' ')}")
    skips[reason] += 1


def read_jsonl(
    path: str | Path, text_field: str = "text", source: str | None = None, skips: Counter | None = None
) -> Iterator[Record]:
    """Stream records from JSON Lines; other fields are kept. Bad lines raise, or are counted in `skips`."""
    path = _existing(path)
    source = source or path.name.split(".")[0]
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            reason = None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj, reason = None, "invalid_json"
            if reason is None and not isinstance(obj, dict):
                reason = "not_an_object"
            elif reason is None and not isinstance(obj.get(text_field), str):
                reason = f"no_{text_field}_string"
            if reason:
                if skips is None:
                    raise ValueError(f"{path}:{lineno}: {reason.replace('_', ' ')} (field {text_field!r})")
                skips[reason] += 1
                continue
            extra = {k: v for k, v in obj.items() if k not in ("text", text_field, "source")}
            extra.pop("id", None)
            rec = _record(str(obj.get("source", source)), lineno - 1, obj[text_field], **extra)
            if "id" in obj:
                rec["id"] = str(obj["id"])
            yield rec


def read_parquet(path: str | Path, text_field: str = "text", source: str | None = None, batch_size: int = 1024,
                 skips: Counter | None = None) -> Iterator[Record]:
    """Stream records from a Parquet file batch by batch (only the row groups being read are in memory).

    A row whose text is not a string (null) raises, or is counted in `skips` as `no_<field>_string`."""
    import pyarrow.parquet as pq

    path = _existing(path)
    source = source or path.name.split(".")[0]
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names})")
    index = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            text = row.pop(text_field)
            if isinstance(text, str):
                yield _record(source, index, text, **{k: v for k, v in row.items() if k not in ("id", "source")})
            else:
                _skip(skips, f"no_{text_field}_string", f"{path}: row {index}")
            index += 1


def read_gutenberg(corpus: str | Path, manifest: str | Path) -> Iterator[Record]:
    """Stream the Gutenberg books one by one from the xz corpus, cut exactly at the byte offsets of `manifest`."""
    with open(_existing(manifest), encoding="utf-8", newline="") as f:
        books = list(csv.DictReader(f, delimiter="\t"))
    with lzma.open(_existing(corpus), "rb") as f:
        position = 0
        for book in books:
            offset, length = int(book["byte_offset"]), int(book["byte_length"])
            f.read(offset - position)
            text = f.read(length).decode("utf-8", "surrogateescape")
            position = offset + length
            yield _record("gutenberg", int(book["pg_id"]), text, title=book["title"], author=book["author"])


def gutenberg(max_docs: int | None = None) -> Iterator[Record]:
    """The Gutenberg corpus through the registry, limited to its first `max_docs` books if given.

    When the whole corpus is local (or a mirror serves it) it is read from there; otherwise each book is
    downloaded from its pinned source only when the reader gets to it, cleaned and checked against its
    sha256, so a caller that stops early (a sample) downloads only the books it read (@sec-data-sources).
    """
    name = NAMED["gutenberg"][0]
    if registry.local(name) is not None or registry.mirror_url() is not None:
        records = read_gutenberg(registry.fetch(name), registry.fetch("gutenberg/manifest.tsv"))
        yield from itertools.islice(records, max_docs)
        return
    remotes = registry.registry().files[name].inputs
    for book, remote in itertools.islice(zip(convert.gutenberg_books(), remotes), max_docs):
        text = convert.gutenberg_clean(registry.upstream(remote).read_bytes())
        registry.verify(text.encode("utf-8"), book.sha256_text, f"Gutenberg book {book.pg_id} (cleaned)")
        yield _record("gutenberg", book.pg_id, text, title=book.title, author=book.author)


def read_hf(
    path: str, name: str | None = None, split: str = "train", text_field: str = "text", source: str | None = None,
    data_files: str | list[str] | None = None, skips: Counter | None = None, revision: str | None = None,
    max_docs: int | None = None,
) -> Iterator[Record]:
    """Stream a Hugging Face `datasets` dataset: a hub name (needs network) or a builder such as "json" or
    "parquet" with local `data_files`, up to `max_docs` rows. A row without a string text raises, or is
    counted in `skips`."""
    import datasets

    ds = datasets.load_dataset(path, name, split=split, streaming=True, data_files=data_files, revision=revision)
    source = source or path.split("/")[-1].lower()
    for i, row in enumerate(itertools.islice(ds, max_docs)):
        text = row.get(text_field)
        if isinstance(text, str):
            yield _record(source, i, text)
        else:
            _skip(skips, f"no_{text_field}_string", f"{path}: row {i}")


def load_corpus(name_or_path: str | Path, separator: str | None = None, text_field: str = "text",
                skips: Counter | None = None, max_docs: int | None = None) -> Iterator[Record]:
    """Stream a corpus by registry name or by file path, at most `max_docs` documents (@sec-data-sources).

    Names: the corpora of `NAMED` (files of the data registry, fetched on first use) and the registry's hub
    corpora (streamed; `max_docs` is their sample size). Files are read by extension: `.jsonl`/`.json` (JSON
    Lines), `.parquet`, anything else as plain text (optionally `.gz`/`.xz` compressed) cut by `separator`
    (default `paragraph`).
    """
    key = str(name_or_path)
    hub = {n: d.hub for n, d in registry.registry().datasets.items() if d.hub is not None}
    if key in NAMED:
        rel, rule = NAMED[key]
        if rule == "manifest":
            return gutenberg(max_docs)
        return itertools.islice(read_text(registry.fetch(rel), separator or rule, source=key), max_docs)
    if key in hub:
        h = hub[key]
        if registry.offline():
            raise registry.DataUnavailable(f"{key} is streamed from the Hugging Face hub ({h.repo}), and "
                                           "LLMBOOK_OFFLINE forbids downloading it")
        return read_hf(h.repo, h.config, h.split, h.text_field, source=key, skips=skips, revision=h.revision,
                       max_docs=max_docs)
    path = Path(key)
    if not path.exists():
        raise FileNotFoundError(f"{key}: no such file, and not a corpus name ({', '.join(sorted(set(NAMED) | set(hub)))})")
    suffixes = "".join(path.suffixes[-2:])
    if path.suffix in (".jsonl", ".json") or suffixes in (".jsonl.gz", ".jsonl.xz"):
        records = _named_errors(path, read_jsonl(path, text_field, skips=skips))
    elif path.suffix == ".parquet":
        records = _named_errors(path, read_parquet(path, text_field, skips=skips))
    else:
        records = _named_errors(path, read_text(path, separator or "paragraph"))
    return itertools.islice(records, max_docs)


def load_inputs(inputs: Iterable[str | Path], separator: str | None = None, text_field: str = "text",
                skips: Counter | None = None, max_docs: int | None = None) -> Iterator[Record]:
    """Chain several corpora (names or paths), each cut at `max_docs` documents; every missing one fails
    before any is read."""
    inputs = list(inputs)
    if not inputs:
        raise ValueError("no input given")
    streams = [load_corpus(i, separator, text_field, skips, max_docs) for i in inputs]
    for stream in streams:
        yield from stream


def mixture(
    streams: Mapping[str, Iterable[Record] | Callable[[], Iterable[Record]]],
    weights: Mapping[str, float],
    seed: int = 0,
    max_docs: int | None = None,
    exhausted: str = "drop",
) -> Iterator[Record]:
    """Interleave sources at random in proportion to `weights`, deterministically for a seed (@sec-data-sources).

    A stream may be a callable returning a fresh iterable, which lets `exhausted="restart"` repeat (up-sample)
    a small source; with `"drop"` a finished source leaves the mixture and the others are renormalised.
    """
    if set(weights) != set(streams):
        raise ValueError(f"weights name {sorted(weights)} but streams are {sorted(streams)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {dict(weights)}")
    if exhausted not in ("drop", "restart"):
        raise ValueError(f"exhausted must be 'drop' or 'restart', got {exhausted!r}")
    names = [n for n in sorted(streams) if weights[n] > 0]
    factories = {n: streams[n] if callable(streams[n]) else (lambda s=streams[n]: s) for n in names}
    iters = {n: iter(factories[n]()) for n in names}
    rng = np.random.default_rng(seed)
    emitted = 0
    while names and (max_docs is None or emitted < max_docs):
        p = np.array([weights[n] for n in names], dtype=float)
        name = names[int(rng.choice(len(names), p=p / p.sum()))]
        try:
            rec = next(iters[name])
        except StopIteration:
            if exhausted == "restart" and callable(streams[name]):
                iters[name] = iter(factories[name]())
                rec = next(iters[name], None)
                if rec is None:
                    names.remove(name)
                    continue
            else:
                names.remove(name)
                continue
        emitted += 1
        yield rec


def document_weights(token_shares: Mapping[str, float], mean_tokens: Mapping[str, float]) -> dict[str, float]:
    """Per-document sampling weights for `mixture` that give each source the target share of *tokens* (@sec-data-sources).

    `mixture` draws documents, and a draw from a source whose documents are k times longer brings k times more
    tokens, so the document weight of source i is proportional to share_i / mean_tokens_i (then normalised).
    Any length unit works (tokens, bytes, words) as long as it is the same for every source.
    """
    if set(token_shares) != set(mean_tokens):
        raise ValueError(f"token_shares name {sorted(token_shares)} but mean_tokens names {sorted(mean_tokens)}")
    if any(s < 0 for s in token_shares.values()) or sum(token_shares.values()) <= 0:
        raise ValueError(f"token shares must be non-negative with a positive sum, got {dict(token_shares)}")
    bad = {n: m for n, m in mean_tokens.items() if not m > 0}
    if bad:
        raise ValueError(f"mean document lengths must be positive, got {bad}")
    raw = {n: token_shares[n] / mean_tokens[n] for n in token_shares}
    total = sum(raw.values())
    return {n: w / total for n, w in raw.items()}


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path
