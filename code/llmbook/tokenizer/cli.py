"""`llmbook tokenizer train`: train a byte-level BPE (from scratch or with `tokenizers`) and write tokenizer.json (@sec-data-bpe)."""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections import Counter
from pathlib import Path

from llmbook.data.sources import SEPARATORS, load_inputs, utf8_text
from llmbook.fileio import output_dir, run_lock
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.tokenizer.hf import save_hf_tokenizer, train_hf_tokenizer
from llmbook.tokenizer.pretokenize import PATTERNS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train byte-level BPE tokenizers",
                              description="Train a byte-level BPE tokenizer and write DIR/tokenizer.json.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="{train}", required=True)
    t = sub.add_parser("train", help="train on corpora and write DIR/tokenizer.json")
    t.add_argument("--input", action="append", required=True, help="corpus name or file; repeatable")
    t.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the text")
    t.add_argument("--separator", choices=SEPARATORS, help="how plain text splits into documents")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size including special tokens")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--impl", choices=("scratch", "hf"), default="hf", help="from-scratch trainer or `tokenizers`")
    t.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4", help="pre-tokenisation regex")
    t.add_argument("--special", action="append", help="special token (repeatable; default <|endoftext|>)")
    t.add_argument("--max-chars", type=int, help="train on at most this many characters")
    t.set_defaults(func=run_train)


def _texts(args: argparse.Namespace, skipped: Counter, repaired: Counter):
    def texts_of(records):
        for r in records:
            text = utf8_text(r["text"])  # tokenizers take valid Unicode only: bad bytes become U+FFFD, counted
            if text is not r["text"]:
                repaired[r.get("source", "unknown")] += 1
            yield text

    texts = texts_of(load_inputs(args.input, args.separator, args.text_field, skipped))
    if args.max_chars is None:
        return texts
    budget = args.max_chars

    def take():
        nonlocal budget
        for text in texts:
            if budget <= 0:
                return
            yield text[:budget]
            budget -= len(text)

    return take()


MAX_VOCAB = 1 << 24


def run_train(args: argparse.Namespace) -> int:
    specials = args.special or ["<|endoftext|>"]
    if args.vocab_size < 256 + len(specials):
        raise ValueError(f"--vocab-size must be at least {256 + len(specials)} (256 bytes + special tokens)")
    if args.vocab_size > MAX_VOCAB:  # the trainers allocate for the whole vocabulary up front: a typo aborts them
        raise ValueError(f"--vocab-size must be at most {MAX_VOCAB:,} (far above any tokenizer in use), "
                         f"got {args.vocab_size:,}")
    out = output_dir(args.out)
    with run_lock(out):
        return _train(args, specials, out)


def _train(args: argparse.Namespace, specials: list[str], out: Path) -> int:
    skipped, repaired = Counter(), Counter()
    texts = _texts(args, skipped, repaired)
    first = next(texts, None)
    if first is None:
        raise ValueError("the input holds no documents (empty corpus)")
    texts = itertools.chain([first], texts)
    start = time.perf_counter()
    if args.impl == "scratch":
        tok = BPETokenizer(pattern=args.pattern).train(texts, args.vocab_size, special_tokens=specials)
        tok.save(out / "bpe.json")
        tok.to_hf_json(out / "tokenizer.json")
        size = tok.vocab_size
    else:
        hf = train_hf_tokenizer(texts, args.vocab_size, special_tokens=specials, pattern=args.pattern,
                                progress=not os.environ.get("TQDM_DISABLE"))
        save_hf_tokenizer(hf, out / "tokenizer.json")
        size = hf.get_vocab_size()
    note = f"; skipped {sum(skipped.values())} unreadable records {dict(skipped)}" if skipped else ""
    if repaired:
        note += f"; replaced bytes that are not UTF-8 by U+FFFD in {sum(repaired.values())} documents {dict(repaired)}"
    print(f"trained {args.impl} BPE with {size} tokens in {time.perf_counter() - start:.1f} s -> {out / 'tokenizer.json'}{note}")
    return 0
