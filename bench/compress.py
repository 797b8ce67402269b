"""The book's model as a compressor: its bits per byte on the held-out Gutenberg books against xz -9e, bzip2 -9 and
gzip -9 on exactly the same bytes.

Prints one JSON record and writes bench/results/compress-<device>.json. The model is the base model of a speedrun
(default: the `cpu` preset's folder in the cache, where `llmbook speedrun --preset cpu` writes). The held-out books
are read again from the corpus through the data registry, with the speedrun's own rule (books 0, k, 2k, ... of
manifest.tsv), checked byte for byte against the books the speedrun held out, and scored whole: the model with
sliding windows (each token sees at least half a context of text before it), the compressors on the books
concatenated. The ratio is model bits per byte over xz's; the book's bar is 0.65 (xz at its strongest setting, -9e).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from llmbook.data import sources
from llmbook.eval.checkpoints import checkpoint_lm
from llmbook.speedrun.book import speedrun_dir
from llmbook.speedrun.compress import compressor_bits_per_byte
from llmbook.speedrun.runner import read_record
from llmbook.speedrun.stages import heldout_bits_per_byte, read_jsonl

BAR = 0.65  # the target: at most 0.65 x the bits per byte of xz -9e


def heldout_books(run: Path) -> list[dict]:
    """The held-out books read from the corpus with the run's data settings, checked against the run's copy."""
    settings = read_record(run / "data")
    if settings is None or settings.get("status") != "done":
        raise SystemExit(f"{run}/data has no finished data stage: run `llmbook speedrun` first")
    from llmbook.speedrun import load_preset

    report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    cfg = load_preset(report.get("preset", "cpu")).data
    books = list(sources.load_corpus(cfg.corpus, max_docs=cfg.max_docs or None))
    held = [b for i, b in enumerate(books) if i % cfg.heldout_every == 0]
    if cfg.max_doc_chars:
        held = [{**b, "text": b["text"][: cfg.max_doc_chars]} for b in held]
    saved = read_jsonl(run / "data" / "heldout.jsonl")
    if [b["text"] for b in held] != [b["text"] for b in saved]:
        raise SystemExit(f"the held-out books of {run} differ from the corpus's every-{cfg.heldout_every}th books")
    return [{"id": b["id"], "title": b.get("title", ""), "text": b["text"]} for b in held]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="speedrun folder (default: the cpu preset's in the cache)")
    ap.add_argument("--stride", type=int, default=0, help="window stride in tokens (0: half the context)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-bytes", type=int, default=0, help="score only the first bytes of each book (0: all)")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args(argv)
    run = args.run or speedrun_dir("cpu")
    books = heldout_books(run)
    if args.max_bytes:
        from llmbook.speedrun.stages import head_bytes

        books = [{**b, "text": head_bytes(b["text"], args.max_bytes)} for b in books]
    data = "".join(b["text"] for b in books).encode("utf-8")
    start = time.perf_counter()
    compressors = compressor_bits_per_byte(data)
    compress_s = time.perf_counter() - start
    lm = checkpoint_lm(run / "pretrain", batch_size=args.batch_size)
    start = time.perf_counter()
    with torch.inference_mode():  # fp32 throughout: the headline number is not rounded through bf16
        model = heldout_bits_per_byte(lm, books, args.stride)
    model_s = time.perf_counter() - start
    pre = read_record(run / "pretrain")["summary"]
    xz = compressors["xz -9e"]["bits_per_byte"]
    ratio = model["bits_per_byte"] / xz
    figures = {
        "bits_per_byte": {"model": model["bits_per_byte"], **{k: v["bits_per_byte"] for k, v in compressors.items()}},
        "model_ci95": [model["ci_low"], model["ci_high"]],
        "ratio_to_xz": ratio, "ratio_ci95": [model["ci_low"] / xz, model["ci_high"] / xz], "bar": BAR,
        "meets_bar": ratio <= BAR, "bytes": len(data), "books": [b["title"] for b in books],
        "per_book": [{"title": p["title"], "bytes": p["bytes"], "model": p["bits_per_byte"],
                      "xz -9e": compressor_bits_per_byte(b["text"].encode(), ("xz -9e",))["xz -9e"]["bits_per_byte"]}
                     for p, b in zip(model["per_book"], books)],
        "seconds": {"model": model_s, "compressors": compress_s},
        "model": {"params": pre["params"], "tokens": pre["tokens"], "steps": pre["steps"],
                  "context": model["context"], "stride": model["stride"], "scored_tokens": model["tokens"]},
    }
    settings = {"run": run.name, "stride": model["stride"], "max_bytes": args.max_bytes, "precision": "fp32"}
    record("compress", figures, settings, ["torch"], out_dir=args.out_dir)
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
