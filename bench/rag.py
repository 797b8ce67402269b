"""Retrieval throughput: llmbook.apps BM25 vs bm25s, and exact vector search vs FAISS flat and HNSW (@sec-applications).

BM25: paragraphs of the Gutenberg corpus, tokenised once by `llmbook.apps.bm25.analyze`; both libraries index
the same token lists (Lucene BM25, k1 = 1.5, b = 0.75) and answer the same queries (the first words of random
paragraphs) for the top 10; the scores and the top-10 sets are compared. Vectors: random unit vectors (the hardest
case for approximate search: no cluster structure) and unit vectors scattered around 1,000 random centres (a crude
model of real embeddings), inner-product search for the top 10; exact search from
scratch (one matrix product per query batch and `top_k`) against FAISS `IndexFlatIP` (must return the same
top 10) and `IndexHNSWFlat` (recall@10 against exact, and its speed-up). One thread on every side.
Prints one JSON record and writes bench/results/rag-cpu.json.
"""

from __future__ import annotations

import argparse
import lzma
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import record  # noqa: E402

from llmbook.apps.bm25 import BM25, analyze  # noqa: E402
from llmbook.apps.index import ExactIndex, faiss_index, recall_at_k  # noqa: E402
from llmbook.data import registry  # noqa: E402


def paragraphs(n: int) -> list[str]:
    out, buf = [], []
    with lzma.open(registry.fetch("gutenberg/gutenberg_en.txt.xz"), "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                buf.append(line.strip())
            elif buf:
                text = " ".join(buf)
                buf = []
                if len(text.split()) >= 20:
                    out.append(text)
                    if len(out) == n:
                        break
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_bm25(n_docs: int, n_queries: int, seed: int) -> dict:
    import bm25s

    docs = paragraphs(n_docs)
    corpus = [analyze(d) for d in docs]
    rng = np.random.default_rng(seed)
    queries = [analyze(" ".join(docs[i].split()[:12])) for i in rng.choice(len(docs), n_queries, replace=False)]
    queries = [q for q in queries if q]
    ours, t_ours = timed(lambda: BM25.fit(corpus))
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    _, t_ref = timed(lambda: ref.index(corpus, show_progress=False))
    found, q_ours = timed(lambda: [ours.search(q, 10)[0] for q in queries])
    (ref_ids, ref_scores), q_ref = timed(lambda: ref.retrieve(queries, k=10, show_progress=False, n_threads=1))
    max_diff = max(float(np.abs(ours.scores(q) - ref.get_scores(q)).max()) for q in queries[:100])
    same = float(np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(found, ref_ids)]))
    # where the sets differ, the documents at the cut have equal scores (ties broken differently)
    same_scores = float(np.mean([np.allclose(np.sort(ours.scores(q)[a]), np.sort(s), atol=1e-5)
                                 for q, a, s in zip(queries, found, ref_scores)]))
    return {"documents": len(docs), "tokens": sum(map(len, corpus)), "queries": len(queries),
            "index_s": {"llmbook": t_ours, "bm25s": t_ref}, "index_speed_ratio": t_ref / t_ours,
            "queries_per_s": {"llmbook": len(queries) / q_ours, "bm25s": len(queries) / q_ref},
            "query_speed_ratio": q_ref / q_ours, "max_abs_score_diff_first_100": max_diff,
            "same_top10_set_fraction": same, "same_top10_scores_fraction": same_scores}


def unit_vectors(n: int, d: int, rng: np.random.Generator, clusters: int = 0, spread: float = 0.5) -> np.ndarray:
    """n random unit vectors; with `clusters`, drawn around that many random centres (noise `spread` per
    coordinate relative to the centres' scale), a crude model of the cluster structure of real embeddings."""
    if clusters:
        centres = rng.normal(size=(clusters, d))
        x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d))
    else:
        x = rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_vectors(n: int, d: int, n_queries: int, seed: int, ef_search: list[int], clusters: int = 0) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    both = unit_vectors(n + n_queries, d, rng, clusters)  # queries from the same distribution as the data
    x, q = both[:n], both[n:]
    exact = ExactIndex(x)
    (e_scores, e_ids), t_exact = timed(lambda: exact.search(q, 10))
    flat, t_flat_build = timed(lambda: faiss_index(x, "flat"))
    (f_scores, f_ids), t_flat = timed(lambda: flat.search(q, 10))
    hnsw, t_hnsw_build = timed(lambda: faiss_index(x, "hnsw", hnsw_m=32, ef_construction=40))
    sweep = []
    for ef in ef_search:
        hnsw.hnsw.efSearch = ef
        (_, h_ids), t_h = timed(lambda: hnsw.search(q, 10))
        sweep.append({"ef_search": ef, "recall@10": recall_at_k(h_ids, e_ids), "queries_per_s": n_queries / t_h,
                      "speedup_vs_exact": t_exact / t_h, "speedup_vs_faiss_flat": t_flat / t_h})
    return {"vectors": n, "dim": d, "queries": n_queries, "clusters": clusters,
            "queries_per_s": {"exact_llmbook": n_queries / t_exact, "faiss_flat": n_queries / t_flat},
            "flat_speed_ratio": t_exact / t_flat,
            "flat_same_top10_ids": bool((f_ids == e_ids).all()),
            "flat_same_top10_fraction": float((f_ids == e_ids).all(axis=1).mean()),
            "flat_max_abs_score_diff": float(np.abs(f_scores - e_scores).max()),
            "hnsw": {"M": 32, "ef_construction": 40, "build_s": t_hnsw_build, "sweep": sweep}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--vector-queries", type=int, default=1_000)
    ap.add_argument("--ef-search", default="16,64,256,1024")
    ap.add_argument("--clusters", type=int, default=1_000, help="centres of the clustered vector set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.vectors < 100_000:
        print("note: the recorded figures use at least 100,000 vectors", file=sys.stderr)
    ef = [int(e) for e in args.ef_search.split(",")]
    figures = {"bm25": bench_bm25(args.docs, args.queries, args.seed),
               "vectors": bench_vectors(args.vectors, args.dim, args.vector_queries, args.seed, ef),
               "clustered_vectors": bench_vectors(args.vectors, args.dim, args.vector_queries, args.seed, ef,
                                                  clusters=args.clusters)}
    record("rag", figures, vars(args), ["numpy", "bm25s", "faiss-cpu"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
