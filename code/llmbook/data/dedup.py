"""Exact and near-duplicate removal: normalised-text hashing and MinHash with LSH banding (@sec-data-dedup).

MinHash (Broder 1997) summarises the set of word n-gram shingles of a document by `num_perm` minima of
random hash permutations; two signatures agree in a position with probability equal to the Jaccard
similarity of the sets. LSH banding cuts signatures into `bands` bands of `rows` rows: documents sharing any
whole band become candidate pairs, which happens with probability `1 - (1 - J^rows)^bands`, an S-curve around
the threshold. Candidates are verified on the signatures, joined into clusters with union-find, and the
first document (lowest index) of each cluster is kept.

Hashing is bit-compatible with `datasketch` (SHA-1 32-bit shingle hash, "affine32" permutations drawn from
`numpy.random.RandomState(seed)`), so signatures can be checked against it exactly; the difference is that
signatures of many documents are computed in one vectorised numpy pass.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import regex
from llmbook.progress import progress_bar

_PUNCT = regex.compile(r"[\p{P}\p{S}]+")
_FMIX = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def normalize_for_dedup(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed: the text that duplicates share."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def exact_hash(text: str) -> bytes:
    """16-byte BLAKE2b digest of the normalised text (@sec-data-dedup)."""
    return hashlib.blake2b(normalize_for_dedup(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_duplicates(texts: Iterable[str]) -> np.ndarray:
    """Boolean mask of documents to keep: the first of each group with the same normalised text."""
    seen: set[bytes] = set()
    keep = []
    for text in texts:
        h = exact_hash(text)
        keep.append(h not in seen)
        seen.add(h)
    return np.array(keep, dtype=bool)


def shingles(text: str, ngram: int = 5) -> set[str]:
    """Set of word n-grams of the normalised text; a shorter non-empty text is one shingle."""
    words = normalize_for_dedup(text).split()
    if len(words) < ngram:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _false_positive(threshold: float, b: int, r: int, grid: int = 1000) -> float:
    s = np.linspace(0.0, threshold, grid)
    return float(np.trapezoid(1 - (1 - s**r) ** b, s))


def _false_negative(threshold: float, b: int, r: int, grid: int = 1000) -> float:
    s = np.linspace(threshold, 1.0, grid)
    return float(np.trapezoid((1 - s**r) ** b, s))


def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                  false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted areas of false positives and false negatives around `threshold`,
    as `datasketch` does; a larger false-negative weight moves the S-curve left (more recall, more candidates)."""
    best, params = float("inf"), (1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = (false_positive_weight * _false_positive(threshold, b, r)
                   + false_negative_weight * _false_negative(threshold, b, r))
            if err < best:
                best, params = err, (b, r)
    return params


@dataclass(frozen=True)
class MinHashConfig:
    """MinHash-LSH settings; `bands`/`rows` default to the optimum for `threshold` (@sec-data-dedup)."""

    num_perm: int = 128
    ngram: int = 5
    threshold: float = 0.8
    bands: int | None = None
    rows: int | None = None
    seed: int = 1
    verify: bool = True
    max_bucket: int = 100
    false_positive_weight: float = 0.5  # weights of the two error areas when bands/rows are chosen
    false_negative_weight: float = 0.5
    batch_shingles: int = 4096  # shingles per vectorised block: (4096 x num_perm) uint32 stays in cache

    def __post_init__(self) -> None:
        if self.num_perm <= 0:
            raise ValueError(f"MinHashConfig.num_perm must be positive, got {self.num_perm}")
        if self.ngram <= 0:
            raise ValueError(f"MinHashConfig.ngram must be positive, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"MinHashConfig.threshold must be in (0, 1], got {self.threshold}")
        if min(self.false_positive_weight, self.false_negative_weight) < 0 or (
                self.false_positive_weight + self.false_negative_weight <= 0):
            raise ValueError("MinHashConfig.false_positive_weight and false_negative_weight must be non-negative "
                             f"with a positive sum, got {self.false_positive_weight}, {self.false_negative_weight}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("MinHashConfig.bands and rows must be given together (or both left to the optimiser)")
        if self.bands is None:
            b, r = optimal_bands(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)
            object.__setattr__(self, "bands", b)
            object.__setattr__(self, "rows", r)
        if self.bands <= 0 or self.rows <= 0 or self.bands * self.rows > self.num_perm:
            raise ValueError(f"MinHashConfig bands*rows must be in [1, num_perm={self.num_perm}], got {self.bands}x{self.rows}")

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """Odd multipliers `a` and offsets `b` of the affine permutations h -> a*h + b mod 2^32."""
        gen = np.random.RandomState(self.seed)
        a = gen.randint(0, 1 << 31, self.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, self.num_perm, dtype=np.uint32)
        return a, b


def shingle_hashes(shingle_set: Iterable[str]) -> np.ndarray:
    """32-bit hashes of shingles: the first 4 bytes of SHA-1, little-endian (datasketch's `sha1_hash32`)."""
    digests = b"".join(hashlib.sha1(s.encode("utf-8", "surrogatepass")).digest()[:4] for s in shingle_set)
    return np.frombuffer(digests, dtype="<u4").astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def minhash_signatures(texts: Iterable[str], config: MinHashConfig | None = None, progress: bool = False) -> np.ndarray:
    """MinHash signatures, shape (n_docs, num_perm) uint32; a document without shingles gets all 2^32-1.

    Shingle hashes of many documents are concatenated, permuted in one (shingles x num_perm) numpy
    operation and reduced per document with `np.minimum.reduceat`.
    """
    cfg = config or MinHashConfig()
    a, b = cfg.permutations()
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        lengths = np.array([len(h) for h in batch])
        sig = np.full((len(batch), cfg.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        nonempty = lengths > 0
        if nonempty.any():
            hv = _fmix32(np.concatenate(batch))
            phv = np.multiply(hv[:, None], a[None, :])  # uint32 arithmetic wraps: this is the mod 2^32
            phv += b[None, :]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
            sig[nonempty] = np.minimum.reduceat(phv, starts, axis=0)
        out.append(sig)
        batch.clear()
        pending = 0

    with np.errstate(over="ignore"):
        for text in progress_bar(texts, desc="minhash", unit="doc", progress=progress):
            h = shingle_hashes(shingles(text, cfg.ngram))
            batch.append(h)
            pending += len(h)
            if pending >= cfg.batch_shingles:
                flush()
        if batch:
            flush()
    return np.concatenate(out) if out else np.zeros((0, cfg.num_perm), dtype=np.uint32)


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, rows: int, max_bucket: int = 100) -> np.ndarray:
    """Pairs (i < j) that share at least one whole band of their signatures, shape (n_pairs, 2), sorted.

    A bucket larger than `max_bucket` (a big cluster of copies) is linked as a star around its first member
    instead of all k(k-1)/2 pairs, so the pair list stays linear in k. Without verification the clusters are
    the same as with all pairs; with verification they can be smaller, because a member whose similarity to
    the hub is below the threshold is not joined even if it is a near-copy of another member.
    """
    n = len(signatures)
    found = []
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        multi = counts[inverse] > 1
        if not multi.any():
            continue
        idx = np.nonzero(multi)[0]
        order = idx[np.argsort(inverse[idx], kind="stable")]
        groups = np.split(order, np.nonzero(np.diff(inverse[order]))[0] + 1)
        for g in groups:
            if len(g) <= max_bucket:
                i, j = np.triu_indices(len(g), 1)
                found.append(np.stack([g[i], g[j]], axis=1))
            else:
                found.append(np.stack([np.full(len(g) - 1, g[0]), g[1:]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)
    return pairs


def estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """MinHash estimate of the Jaccard similarity of each pair: the fraction of agreeing signature positions."""
    if len(pairs) == 0:
        return np.zeros(0)
    return (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1)


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph (union-find); label = smallest document index in the cluster."""
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for i, j in pairs.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


@dataclass
class DedupResult:
    """Outcome of near-duplicate detection: which documents to keep, clusters, and the evidence."""

    keep: np.ndarray
    labels: np.ndarray
    candidate_pairs: np.ndarray
    pairs: np.ndarray
    similarities: np.ndarray

    def report(self) -> dict[str, Any]:
        """Counts for the pipeline report: pairs found, clusters with duplicates, documents removed."""
        sizes = np.bincount(self.labels, minlength=len(self.labels)) if len(self.labels) else np.zeros(0, int)
        return {
            "documents": int(len(self.keep)),
            "candidate_pairs": int(len(self.candidate_pairs)),
            "pairs": int(len(self.pairs)),
            "clusters": int((sizes > 1).sum()),
            "removed": int((~self.keep).sum()),
        }


def near_duplicates(
    texts: Sequence[str] | None = None,
    config: MinHashConfig | None = None,
    signatures: np.ndarray | None = None,
    progress: bool = False,
) -> DedupResult:
    """MinHash-LSH near-duplicate detection with clusters resolved to one kept document each (@sec-data-dedup)."""
    cfg = config or MinHashConfig()
    if signatures is None:
        if texts is None:
            raise ValueError("pass texts or precomputed signatures")
        signatures = minhash_signatures(texts, cfg, progress=progress)
    candidates = lsh_candidate_pairs(signatures, cfg.bands, cfg.rows, cfg.max_bucket)
    sims = estimated_jaccard(signatures, candidates)
    good = sims >= cfg.threshold if cfg.verify else np.ones(len(candidates), dtype=bool)
    labels = clusters(len(signatures), candidates[good])
    keep = labels == np.arange(len(signatures))
    return DedupResult(keep=keep, labels=labels, candidate_pairs=candidates, pairs=candidates[good], similarities=sims[good])
