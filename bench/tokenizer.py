"""BPE training and encoding speed: the from-scratch trainer vs Hugging Face `tokenizers`, same text, same vocab.

Trains both on the first 5 MB of the Gutenberg corpus to a 4,096-token vocabulary (same GPT-4 pre-tokenisation),
then encodes 1 MB of held-out text with each. Prints one JSON record and writes bench/results/tokenizer-cpu.json.
"""

from __future__ import annotations

import argparse
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import record  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from llmbook.data.registry import fetch  # noqa: E402
from llmbook.tokenizer import BPETokenizer, bytes_per_token, train_hf_tokenizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-bytes", type=int, default=5_000_000)
    ap.add_argument("--encode-bytes", type=int, default=1_000_000)
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args(argv)
    data = fetch("gutenberg/gutenberg_en.txt.xz")
    with lzma.open(data, "rb") as f:
        raw = f.read(args.train_bytes + args.encode_bytes)
    train = raw[: args.train_bytes].decode("utf-8", "ignore")
    held = raw[args.train_bytes :].decode("utf-8", "ignore")
    docs = [p for p in held.split("\n\n") if p.strip()]

    t0 = time.perf_counter()
    ours = BPETokenizer().train(train, args.vocab_size, progress=False)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = train_hf_tokenizer(train, args.vocab_size)
    t_hf = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        exported = Tokenizer.from_file(str(ours.to_hf_json(Path(tmp) / "tokenizer.json")))
    n_bytes = len(held.encode())
    t0 = time.perf_counter()
    ids_ours = [ours.encode(d) for d in docs]
    e_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids_exp = [exported.encode(d).ids for d in docs]
    e_exp = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = exported.encode_batch(docs)
    e_batch = time.perf_counter() - t0
    assert ids_ours == ids_exp == [b.ids for b in batch], "exported tokenizer.json disagrees with the from-scratch encoder"

    figures = {
        "train_seconds": {"scratch": round(t_ours, 2), "tokenizers": round(t_hf, 2)},
        "train_ratio_scratch_over_tokenizers": round(t_ours / t_hf, 2),
        "encode_mb_per_s": {
            "scratch": round(n_bytes / e_ours / 1e6, 2),
            "tokenizers_exported_encode": round(n_bytes / e_exp / 1e6, 2),
            "tokenizers_exported_encode_batch": round(n_bytes / e_batch / 1e6, 2),
        },
        "encode_ratio_tokenizers_over_scratch": round(e_ours / e_exp, 2),
        "bytes_per_token_heldout": {"scratch": round(bytes_per_token(ours, docs), 3),
                                    "tokenizers": round(bytes_per_token(hf, docs), 3)},
        "merges_identical_prefix": _common_prefix(ours.merges, _hf_merges(hf, ours)),
        "merges": len(ours.merges),
        "exported_ids_identical": True,
    }
    record("tokenizer", figures, {"train_bytes": args.train_bytes, "encode_bytes": n_bytes, "vocab_size": args.vocab_size,
                                  "pattern": "gpt4", "corpus": "gutenberg (first bytes)", "threads": os.cpu_count()},
           ["tokenizers", "regex", "numpy"])
    return 0


def _common_prefix(a: list, b: list) -> int:
    """Length of the common prefix: how many merges both trainers learned in the same order."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _hf_merges(hf: Tokenizer, ours: BPETokenizer) -> list[tuple[int, int]]:
    """The HF trainer's merges expressed as pairs of our ids (None where a token is not in our vocabulary)."""
    import json

    from llmbook.tokenizer.pretokenize import bytes_to_unicode

    u2b = {c: b for b, c in bytes_to_unicode().items()}
    ours_ids = {v: i for i, v in ours.vocab.items()}
    merges = json.loads(hf.to_str())["model"]["merges"]
    out = []
    for m in merges:
        a, b = m if isinstance(m, list) else m.split(" ")
        out.append((ours_ids.get(bytes(u2b[c] for c in a)), ours_ids.get(bytes(u2b[c] for c in b))))
    return out


if __name__ == "__main__":
    sys.exit(main())
