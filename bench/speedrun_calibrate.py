"""Short calibration runs behind the speedrun's cpu preset: the same data and budget, one setting changed.

Each variant trains the cpu preset's model on the token shards of a finished speedrun (its data and tokenizer
stages), for the given number of steps, then scores the first bytes of every held-out book (bf16 autocast, half-
context stride). Prints one JSON record and writes bench/results/speedrun-calibration-cpu.json: per variant the
CPU time of training (user + system, so the figure survives a machine shared with other jobs), tokens per
CPU-second and held-out bits per byte. The peer of each variant is the first one (the ratio of bits per byte).

Example (AdamW against Muon at 540 steps of 4,096 tokens):

    python bench/speedrun_calibrate.py --steps 540 --variant adamw optim.name=adamw --variant muon optim.name=muon
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from llmbook.eval.checkpoints import checkpoint_lm
from llmbook.speedrun import load_preset
from llmbook.speedrun.book import speedrun_dir
from llmbook.speedrun.runner import read_record
from llmbook.speedrun.stages import head_bytes, heldout_bits_per_byte, read_jsonl
from llmbook.train import Trainer


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def calibrate(run: Path, steps: int, overrides: list[str], heldout_bytes: int, work: Path) -> dict:
    """Train one variant on the run's shards and score the held-out books; returns its figures."""
    cfg = load_preset("cpu", [f"train.steps={steps}", "train.eval_every=0", "checkpoint.every=0",
                              "checkpoint.keep=1", *overrides]).train
    tok = read_record(run / "tokenizer")
    if tok is None or tok.get("status") != "done":
        raise SystemExit(f"{run} has no finished tokenizer stage: run `llmbook speedrun --stages data,tokenizer`")
    cfg.data.shard_dir = str(run / "tokenizer" / "shards")
    cfg.data.tokenizer_vocab = tok["summary"]["vocab_size"]
    cfg.train.precision = "bf16"
    start = cpu_seconds()
    trainer = Trainer(cfg, work, log=lambda msg: None)
    trainer.fit()
    train_cpu = cpu_seconds() - start
    books = [{**b, "text": head_bytes(b["text"], heldout_bytes)} for b in read_jsonl(run / "data" / "heldout.jsonl")]
    lm = checkpoint_lm(work, batch_size=16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        held = heldout_bits_per_byte(lm, books, 0)
    return {"overrides": overrides, "steps": steps, "params": trainer.model.num_params(),
            "tokens": trainer.tokens_seen, "train_cpu_s": train_cpu, "tokens_per_cpu_s": trainer.tokens_seen / train_cpu,
            "bits_per_byte": held["bits_per_byte"], "ci95": [held["ci_low"], held["ci_high"]],
            "heldout_bytes": held["bytes"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="speedrun folder with data and tokenizer stages done")
    ap.add_argument("--steps", type=int, default=540)
    ap.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "OVERRIDE"), required=True,
                    help="a name and its TABLE.FIELD=VALUE overrides of the cpu preset; repeat per variant")
    ap.add_argument("--heldout-bytes", type=int, default=40_000, help="bytes scored from each held-out book")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args(argv)
    run = args.run or speedrun_dir("cpu")
    variants = {}
    for name, *overrides in args.variant:
        work = Path(tempfile.mkdtemp(prefix=f"calibrate-{name}-"))
        try:
            variants[name] = calibrate(run, args.steps, overrides, args.heldout_bytes, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    first = next(iter(variants.values()))["bits_per_byte"]
    for v in variants.values():
        v["bits_per_byte_ratio_to_first"] = v["bits_per_byte"] / first
    record("speedrun-calibration", {"variants": variants, "threads": torch.get_num_threads()},
           {"steps": args.steps, "heldout_bytes": args.heldout_bytes, "run": run.name}, ["torch"], out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
