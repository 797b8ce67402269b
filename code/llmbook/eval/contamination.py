"""Benchmark contamination: word n-gram overlap between a training corpus and evaluation items (@sec-evaluation-contamination)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from llmbook.progress import progress_bar

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # scripts written without spaces
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def normalize_words(text: str) -> list[str]:
    """NFKC, case-fold and keep word runs (any script; one CJK character per word), so punctuation,
    case and spacing differences do not hide overlap."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def read_documents(lines: Iterable[str]) -> Iterator[str]:
    """Stream blank-line-separated documents from lines, so n-grams that cross line breaks are still seen."""
    buf: list[str] = []
    for line in lines:
        if line.strip():
            buf.append(line)
        elif buf:
            yield "".join(buf)
            buf = []
    if buf:
        yield "".join(buf)


def ngrams(words: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    """All word n-grams of a token list, in order."""
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass
class TaskReport:
    """Per-task contamination: which items share at least `min_hits` n-grams with the corpus."""

    task: str
    n_items: int
    contaminated: list[int] = field(default_factory=list)
    overlap: dict[int, float] = field(default_factory=dict)
    unscorable: list[int] = field(default_factory=list)  # no words at all (or short and skipped): not "clean"

    @property
    def fraction(self) -> float:
        return len(self.contaminated) / self.n_items if self.n_items else 0.0

    def to_dict(self) -> dict:
        return {"task": self.task, "n_items": self.n_items, "n_contaminated": len(self.contaminated),
                "fraction": self.fraction, "contaminated": self.contaminated,
                "n_unscorable": len(self.unscorable), "unscorable": self.unscorable}


class ContaminationIndex:
    """Index the evaluation items' n-grams, then stream a training corpus through it (GPT-3, Brown et al. 2020).

    The eval side is small, so it goes in memory; the corpus is streamed once, whatever its size.
    """

    def __init__(self, tasks: Mapping[str, Sequence[str]], n: int = 13, min_hits: int = 1, short_items: str = "whole"):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if short_items not in ("whole", "skip"):
            raise ValueError(f"short_items must be 'whole' or 'skip', got {short_items!r}")
        self.n, self.min_hits = n, min_hits
        self.tasks = {name: list(items) for name, items in tasks.items()}
        self._owners: dict[tuple[str, ...], set[tuple[str, int]]] = {}
        self._total: dict[tuple[str, int], int] = {}
        self._short: dict[tuple[str, ...], set[tuple[str, int]]] = {}  # items shorter than n, matched whole
        for name, items in self.tasks.items():
            for i, text in enumerate(items):
                words = normalize_words(text)
                if len(words) < n:
                    if short_items == "whole" and words:
                        self._short.setdefault(tuple(words), set()).add((name, i))
                        self._total[(name, i)] = 1
                    continue
                grams = set(ngrams(words, n))
                self._total[(name, i)] = len(grams)
                for g in grams:
                    self._owners.setdefault(g, set()).add((name, i))
        self._hits: dict[tuple[str, int], set] = {}

    def scan(self, documents: Iterable[str]) -> ContaminationIndex:
        """Stream training documents and record which eval n-grams occur in them."""
        short_lens = sorted({len(k) for k in self._short})
        for doc in progress_bar(documents, desc="contamination scan", unit="doc"):
            words = normalize_words(doc)
            for g in ngrams(words, self.n):
                for owner in self._owners.get(g, ()):
                    self._hits.setdefault(owner, set()).add(g)
            for k in short_lens:
                for g in ngrams(words, k):
                    for owner in self._short.get(g, ()):
                        self._hits.setdefault(owner, set()).add(g)
        return self

    def report(self) -> dict[str, TaskReport]:
        """Per-task reports; an item is contaminated with at least `min_hits` n-grams (or all of them) in the corpus."""
        out = {}
        for name, items in self.tasks.items():
            rep = TaskReport(name, len(items))
            for i in range(len(items)):
                if (name, i) not in self._total:
                    rep.unscorable.append(i)
                    continue
                hits = len(self._hits.get((name, i), ()))
                if hits:
                    rep.overlap[i] = hits / self._total[(name, i)]
                if hits and hits >= min(self.min_hits, self._total[(name, i)]):
                    rep.contaminated.append(i)
            out[name] = rep
        return out


def drop_contaminated(items: Sequence, report: TaskReport) -> list:
    """The items of one task without the contaminated ones (to report a 'clean' score next to the full one)."""
    if len(items) != report.n_items:
        raise ValueError(f"task {report.task!r}: report covers {report.n_items} items, got {len(items)}")
    bad = set(report.contaminated)
    return [item for i, item in enumerate(items) if i not in bad]
