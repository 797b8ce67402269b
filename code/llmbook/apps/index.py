"""Vector search: exact inner-product search from scratch and FAISS flat, HNSW and IVF indexes
(@sec-applications-index).

Tie rule, everywhere in `llmbook.apps`: results are ordered by score, highest first, and equal scores by the
lower id. FAISS's flat index computes the same inner products (up to float rounding in its matrix
multiply), so on vectors without exact ties it returns the same top-k as `ExactIndex`.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores: highest first, equal scores by lower index (a stable, total order)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = scores.shape[0]
    k = min(k, n)
    if k == n:
        cand = np.arange(n)
    else:
        kth = np.partition(scores, n - k)[n - k]  # the k-th largest value: keep every score >= it (ties included)
        cand = np.flatnonzero(scores >= kth)
    order = np.lexsort((cand, -scores[cand]))  # last key first: score descending, then index ascending
    return cand[order[:k]]


class ExactIndex:
    """Brute-force maximum inner product search: one matrix product and a top-k per query.

    With unit-length vectors the inner product is the cosine similarity.
    """

    def __init__(self, vectors: np.ndarray):
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (n, d), got shape {vectors.shape}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of shape (n_queries, k), in FAISS's order of return values."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.vectors.shape[1]}")
        k = min(k, len(self.vectors))
        ids = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        for a in range(0, len(queries), batch):  # bounded memory: batch x n scores at a time
            sims = queries[a : a + batch] @ self.vectors.T
            for r, row in enumerate(sims):
                ids[a + r] = top_k(row, k)
                scores[a + r] = row[ids[a + r]]
        return scores, ids


def faiss_index(vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32, ef_construction: int = 40,
                ef_search: int = 64, nlist: int = 256, nprobe: int = 8, seed: int = 0):
    """A FAISS inner-product index over `vectors`: 'flat' (exact), 'hnsw' (graph) or 'ivf' (clustered).

    HNSW [@malkov2020hnsw] links each vector to `hnsw_m` neighbours per layer and searches the graph greedily,
    keeping `ef_search` candidates; IVF assigns vectors to `nlist` k-means cells and scans `nprobe` of them.
    Both trade recall for speed; `flat` is the exact reference.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = nprobe
    else:
        raise ValueError(f"kind={kind!r} must be 'flat', 'hnsw' or 'ivf'")
    index.add(x)
    return index


def same_up_to_ties(ids_a: np.ndarray, scores_a: np.ndarray, ids_b: np.ndarray, scores_b: np.ndarray,
                    atol: float = 1e-5) -> np.ndarray:
    """Per query row: do two top-k results agree? The scores must match rank by rank (within `atol`), and the ids
    must match as sets within every group of tied scores (scores within `atol`), except the group cut by k, where
    each side may keep a different subset of the tied items. Duplicate documents make such ties."""
    out = np.zeros(len(ids_a), dtype=bool)
    for r, (ia, sa, ib, sb) in enumerate(zip(ids_a, scores_a, ids_b, scores_b)):
        if len(ia) != len(ib) or not np.allclose(sa, sb, atol=atol):
            continue
        starts = [0, *(i for i in range(1, len(sa)) if abs(sa[i - 1] - sa[i]) > atol), len(sa)]
        groups = list(zip(starts, starts[1:]))
        out[r] = all(set(ia[a:b]) == set(ib[a:b]) for a, b in groups[:-1])
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k (rows of `truth`) that an approximate search (rows of `found`) returned."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))
