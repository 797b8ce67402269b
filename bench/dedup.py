"""MinHash-LSH near-duplicate detection throughput: llmbook.data.dedup vs datasketch (MinHash + MinHashLSH).

Documents: paragraphs of the Gutenberg corpus plus planted near-duplicates (word edits, insertions, deletions,
sentence swaps). Both sides use the same shingles (word 5-grams), the same 128 permutations (bit-identical
signatures), the same bands x rows, and include shingling in their time. Recall is measured on planted pairs
whose exact Jaccard is at least the threshold. Prints one JSON record and writes bench/results/dedup-cpu.json.
"""

from __future__ import annotations

import argparse
import itertools
import lzma
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import record  # noqa: E402
from datasketch import MinHash, MinHashLSH  # noqa: E402

from llmbook.data.registry import fetch  # noqa: E402
from llmbook.data.dedup import MinHashConfig, jaccard, minhash_signatures, near_duplicates, shingles  # noqa: E402
from llmbook.data.planted import EDIT_KINDS, near_copy  # noqa: E402


def plant(docs: list[str], n: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """Near-copies (`llmbook.data.planted`) of `n` random documents: (index of the original, copy)."""
    out = []
    for k, i in enumerate(rng.choice(len(docs), size=n, replace=False)):
        kind = EDIT_KINDS[k % len(EDIT_KINDS)]
        out.append((int(i), near_copy(docs[i], rng, kind, float(rng.choice([0.01, 0.02, 0.05, 0.1])))[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--planted", type=int, default=1_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    args = ap.parse_args(argv)
    data = fetch("gutenberg/gutenberg_en.txt.xz")
    with lzma.open(data, "rt", encoding="utf-8") as f:
        paragraphs = (" ".join(p.split()) for p in f.read(40_000_000).split("\n\n"))
        base = list(itertools.islice((p for p in paragraphs if len(p.split()) >= 50), args.docs))
    rng = np.random.default_rng(0)
    planted = plant(base, args.planted, rng)
    docs = base + [text for _, text in planted]
    truth = [(i, len(base) + k) for k, (i, _) in enumerate(planted)
             if jaccard(shingles(base[i]), shingles(planted[k][1])) >= args.threshold]
    cfg = MinHashConfig(num_perm=args.num_perm, threshold=args.threshold, verify=False)

    # Same algorithm as the peer (LSH candidates are the answer), then with llmbook's signature verification.
    t0 = time.perf_counter()
    result = near_duplicates(docs, cfg)
    t_ours = time.perf_counter() - t0
    ours_pairs = {tuple(p) for p in result.pairs.tolist()}
    verified = near_duplicates(config=replace(cfg, verify=True), signatures=minhash_signatures(docs, cfg))
    verified_pairs = {tuple(p) for p in verified.pairs.tolist()}

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm, params=(cfg.bands, cfg.rows))
    theirs_pairs = set()
    for i, doc in enumerate(docs):
        m = MinHash(num_perm=args.num_perm)
        m.update_batch([s.encode("utf-8") for s in shingles(doc, cfg.ngram)])
        theirs_pairs.update((j, i) for j in lsh.query(m))
        lsh.insert(i, m)
    t_theirs = time.perf_counter() - t0

    t0 = time.perf_counter()
    minhash_signatures(docs, cfg)
    t_sig = time.perf_counter() - t0
    sets = {}

    def precision(pairs: set) -> float:
        """Share of reported pairs whose exact Jaccard reaches the threshold."""
        for p in pairs:
            for i in p:
                sets.setdefault(i, shingles(docs[i], cfg.ngram))
        return round(sum(jaccard(sets[i], sets[j]) >= args.threshold for i, j in pairs) / max(len(pairs), 1), 4)

    figures = {
        "docs_per_s": {"llmbook": round(len(docs) / t_ours), "datasketch": round(len(docs) / t_theirs)},
        "ratio_llmbook_over_datasketch": round(t_theirs / t_ours, 2),
        "seconds": {"llmbook": round(t_ours, 2), "llmbook_signatures_only": round(t_sig, 2), "datasketch": round(t_theirs, 2)},
        "planted_pairs_above_threshold": len(truth),
        "recall_planted": {"llmbook": round(sum(p in ours_pairs for p in truth) / len(truth), 4),
                           "datasketch": round(sum(p in theirs_pairs for p in truth) / len(truth), 4),
                           "llmbook_verified": round(sum(p in verified_pairs for p in truth) / len(truth), 4)},
        "precision_all_pairs": {"llmbook": precision(ours_pairs), "datasketch": precision(theirs_pairs),
                                "llmbook_verified": precision(verified_pairs)},
        "pairs_reported": {"llmbook": len(ours_pairs), "datasketch": len(theirs_pairs),
                           "llmbook_verified": len(verified_pairs)},
        "same_pairs_as_datasketch": ours_pairs == theirs_pairs,
        "llmbook_report": result.report(),
    }
    record("dedup", figures, {"docs": len(docs), "planted": args.planted, "threshold": args.threshold,
                              "num_perm": args.num_perm, "bands": cfg.bands, "rows": cfg.rows, "ngram": cfg.ngram,
                              "corpus": "gutenberg paragraphs >= 50 words"}, ["datasketch", "numpy"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
