"""A byte-level BPE tokenizer written from scratch: training, encoding, decoding, saving (@sec-data-bpe).

Ids 0-255 are the raw bytes, ids 256.. are the tokens created by merges in the order they were learned, and
special tokens come last. Rarely, two different pairs concatenate to the same bytes (e.g. `x`+`abc` and
`xa`+`bc`); the later merge then reuses the existing id, exactly as the Hugging Face BPE model does.

Strings and bytes. Text is encoded to UTF-8 with Python's `surrogatepass` error handler, so a string holding a
lone surrogate (legal in a Python `str`, but not a Unicode scalar value) is encoded as its three-byte sequence
and decodes back to the same string: `decode(encode(s)) == s` for every Python string. Decoding ids whose bytes
are not valid UTF-8 (a model can emit half a character) gives U+FFFD for the bad bytes, never an exception.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import regex

from llmbook.fileio import atomic_write
from llmbook.progress import progress_bar
from llmbook.tokenizer.pretokenize import compiled, resolve_pattern

Pair = tuple[int, int]
FORMAT = "llmbook-bpe-v1"
_CACHE_LIMIT = 200_000


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of `text`, lone surrogates passed through as 3-byte sequences (see the module docstring)."""
    return text.encode("utf-8", "surrogatepass")


def from_bytes(data: bytes) -> str:
    """Inverse of `to_bytes`; bytes that are not valid UTF-8 become U+FFFD."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def merge_word(symbols: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `symbols`, left to right, by `new_id`."""
    out, i, n = [], 0, len(symbols)
    a, b = pair
    while i < n:
        if i + 1 < n and symbols[i] == a and symbols[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _pairs(symbols: list[int]) -> Counter:
    return Counter(zip(symbols, symbols[1:]))


class BPETokenizer:
    """Byte-level BPE with regex pre-tokenisation, incremental training and special tokens (@sec-data-bpe)."""

    def __init__(self, merges: Sequence[Pair] = (), special_tokens: Sequence[str] = (), pattern: str = "gpt4"):
        self.pattern = resolve_pattern(pattern)
        self.merges: list[Pair] = []
        self.merge_counts: list[int] = []  # pair frequency at the time of each merge (filled by `train`)
        self.special_tokens: dict[str, int] = {}
        self._set(list(merges), list(special_tokens))

    def _set(self, merges: list[Pair], special_tokens: list[str]) -> None:
        self.merges = [tuple(m) for m in merges]
        self.ranks: dict[Pair, int] = {pair: i for i, pair in enumerate(self.merges)}
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        ids = {v: i for i, v in self.vocab.items()}
        self.merge_ids: list[int] = []
        for i, (a, b) in enumerate(self.merges):
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge {i} ({a}, {b}) refers to a token that does not exist yet")
            data = self.vocab[a] + self.vocab[b]
            if data not in ids:
                ids[data] = len(self.vocab)
                self.vocab[ids[data]] = data
            self.merge_ids.append(ids[data])
        self.n_regular = len(self.vocab)
        if len(set(special_tokens)) != len(special_tokens) or any(not s for s in special_tokens):
            raise ValueError(f"special_tokens must be distinct non-empty strings, got {special_tokens}")
        self.special_tokens = {s: self.n_regular + i for i, s in enumerate(special_tokens)}
        for s, i in self.special_tokens.items():
            self.vocab[i] = to_bytes(s)
        self._special_re = (
            regex.compile("(" + "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)) + ")")
            if special_tokens
            else None
        )
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + tokens made by merges + special tokens."""
        return self.n_regular + len(self.special_tokens)

    @property
    def eos_id(self) -> int:
        """Id of the first special token (by convention the end-of-text token); ValueError if there is none."""
        if not self.special_tokens:
            raise ValueError("this tokenizer has no special tokens, so no EOS id")
        return next(iter(self.special_tokens.values()))

    # ------------------------------------------------------------------ training
    def train(
        self,
        texts: str | Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        progress: bool = True,
    ) -> BPETokenizer:
        """Learn merges from `texts` until the vocabulary has `vocab_size` ids; returns self (@sec-data-bpe).

        Pair counts are kept up to date incrementally: a merge only revisits the words that contain the merged
        pair (found through an index `pair -> words`), and the most frequent pair comes from a heap with lazy
        deletion, so no merge recounts the corpus. Ties go to the smallest pair of ids, so training is
        deterministic.
        """
        n_new = vocab_size - 256 - len(special_tokens)
        if n_new < 0:
            raise ValueError(f"vocab_size must be at least 256 + {len(special_tokens)} special tokens, got {vocab_size}")
        word_counts = self._count_words([texts] if isinstance(texts, str) else texts, special_tokens)
        words = [list(to_bytes(w)) for w in word_counts]
        counts = list(word_counts.values())
        pair_counts: Counter = Counter()
        where: dict[Pair, set[int]] = {}
        for w, (symbols, c) in enumerate(zip(words, counts)):
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] += c
                where.setdefault(pair, set()).add(w)
        heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
        heapq.heapify(heap)
        merges, merge_counts = [], []
        vocab = {i: bytes([i]) for i in range(256)}
        ids = {v: i for i, v in vocab.items()}
        bar = progress_bar(None, total=n_new, desc="bpe merges", progress=progress)
        while len(vocab) < 256 + n_new and heap:
            neg, a, b = heapq.heappop(heap)
            pair = (a, b)
            if pair_counts.get(pair, 0) != -neg or neg == 0:
                continue  # stale heap entry: the count changed after it was pushed
            data = vocab[a] + vocab[b]
            if data not in ids:
                ids[data] = len(vocab)
                vocab[ids[data]] = data
                bar.update(1)
            new_id = ids[data]
            merges.append(pair)
            merge_counts.append(-neg)
            changed: set[Pair] = set()
            for w in where.pop(pair, ()):
                old = words[w]
                new = merge_word(old, pair, new_id)
                c = counts[w]
                old_pairs, new_pairs = _pairs(old), _pairs(new)
                for p, k in old_pairs.items():
                    pair_counts[p] -= k * c
                    changed.add(p)
                    if p not in new_pairs and p != pair:
                        where[p].discard(w)
                for p, k in new_pairs.items():
                    pair_counts[p] += k * c
                    changed.add(p)
                    where.setdefault(p, set()).add(w)
                words[w] = new
            del pair_counts[pair]
            changed.discard(pair)
            for p in changed:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p[0], p[1]))
                else:
                    del pair_counts[p]
                    where.pop(p, None)
        bar.close()
        self._set(merges, list(special_tokens))
        self.merge_counts = merge_counts
        return self

    def _count_words(self, texts: Iterable[str], special_tokens: Sequence[str]) -> Counter:
        """Frequency of every pre-tokenised chunk; special tokens are cut out so no merge crosses them."""
        split = regex.compile("|".join(regex.escape(s) for s in special_tokens)) if special_tokens else None
        findall = compiled(self.pattern).findall
        counts: Counter = Counter()
        for text in texts:
            for part in split.split(text) if split else (text,):
                counts.update(findall(part))
        return counts

    # ------------------------------------------------------------------ encoding
    def _encode_chunk(self, chunk: str) -> list[int]:
        """BPE on one pre-token: repeatedly merge the adjacent pair with the lowest merge rank."""
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        symbols = list(to_bytes(chunk))
        ranks = self.ranks
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, 1 << 62))
            rank = ranks.get(best)
            if rank is None:
                break
            symbols = merge_word(symbols, best, self.merge_ids[rank])
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = symbols
        return symbols

    def encode(self, text: str, allowed_special: Literal["all", "none"] | set[str] = "none") -> list[int]:
        """Token ids of `text`. Special-token strings become their ids only when allowed, else they are plain text."""
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special == "none":
            allowed = set()
        else:
            allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names tokens this tokenizer does not have: {sorted(unknown)}")
        findall = compiled(self.pattern).findall
        parts = self._special_re.split(text) if (allowed and self._special_re) else [text]
        ids: list[int] = []
        for part in parts:
            if part in allowed:
                ids.append(self.special_tokens[part])
                continue
            for chunk in findall(part):
                ids.extend(self._encode_chunk(chunk))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of the tokens; an unknown id raises ValueError."""
        try:
            return b"".join(self.vocab[int(i)] for i in ids)
        except KeyError as err:
            raise ValueError(f"token id {err.args[0]} is not in the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the tokens (lone surrogates round-trip; invalid UTF-8 becomes U+FFFD)."""
        return from_bytes(self.decode_bytes(ids))

    def truncated(self, n_merges: int) -> BPETokenizer:
        """The tokenizer with only the first `n_merges` merges: exactly what training to that size would give."""
        if not 0 <= n_merges <= len(self.merges):
            raise ValueError(f"n_merges must be in [0, {len(self.merges)}], got {n_merges}")
        tok = BPETokenizer(self.merges[:n_merges], list(self.special_tokens), self.pattern)
        tok.merge_counts = self.merge_counts[:n_merges]
        return tok

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write merges, special tokens and the pattern as JSON (atomically)."""
        state = {
            "format": FORMAT,
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
            "merges": [list(m) for m in self.merges],
            "merge_counts": self.merge_counts,
        }
        return atomic_write(path, lambda f: json.dump(state, f))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a {FORMAT} file ({' '.join(str(err).split())[:120]})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{path} is not a {FORMAT} file (format={found!r}); for a tokenizer.json use load_hf_tokenizer")
        try:
            tok = cls([tuple(m) for m in state["merges"]], state["special_tokens"], state["pattern"])
        except (KeyError, TypeError, ValueError, regex.error) as err:
            raise ValueError(f"{path}: malformed {FORMAT} file ({type(err).__name__}: {err})") from None
        tok.merge_counts = state.get("merge_counts", [])
        return tok

    def to_hf_json(self, path: str | Path) -> Path:
        """Export as a Hugging Face `tokenizer.json` that encodes text to exactly the same ids (@sec-data-bpe)."""
        from llmbook.tokenizer.hf import export_bpe

        return export_bpe(self, path)
