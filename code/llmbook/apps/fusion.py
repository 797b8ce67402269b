"""Hybrid retrieval by reciprocal rank fusion (@sec-applications-hybrid).

RRF [@cormack2009rrf] scores each item by the sum over rankings of 1 / (k + rank), ranks counted from 1.
It needs no score calibration between retrievers (BM25 scores and cosine similarities live on different
scales), only their orderings; k = 60 damps the influence of the very top ranks, as in the paper.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: float = 60.0,
                           limit: int | None = None) -> list[Hashable]:
    """Fuse best-first rankings into one: by total 1 / (k + rank), equal totals by the smaller item."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    score: dict[Hashable, float] = {}
    for ranking in rankings:
        if len(set(ranking)) != len(ranking):
            raise ValueError("a ranking lists an item twice")
        for rank, item in enumerate(ranking, start=1):
            score[item] = score.get(item, 0.0) + 1.0 / (k + rank)
    fused = sorted(score, key=lambda item: (-score[item], item))
    return fused[:limit] if limit is not None else fused
