"""Trainer overhead and activation-checkpointing cost on CPU (@sec-scale-trainer, @sec-scale-memory).

Times optimizer steps of the cpu-tiny model shape on random tokens, side by side in one process:
the peer is a bare loop (forward, backward, AdamW step, zero_grad); then `Trainer.train_step` (clipping,
guard, schedule, loss all-reduce bookkeeping); then `Trainer.train_step` with activation checkpointing.
Prints one JSON record and writes bench/results/train-cpu.json.

    python bench/train.py --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from llmbook.model import GPT  # noqa: E402
from llmbook.train.config import load_config  # noqa: E402
from llmbook.train.trainer import Trainer  # noqa: E402


class RandomTokens:
    """Seeded random (x, y) batches with the loader interface the trainer expects."""

    def __init__(self, batch: int, block: int, vocab: int, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.batch, self.block, self.vocab, self.step = batch, block, vocab, 0

    def next_batch(self):
        self.step += 1
        data = torch.randint(0, self.vocab, (self.batch, self.block + 1), generator=self.gen)
        return data[:, :-1], data[:, 1:]

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def time_steps(step, n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("cpu-tiny", ["train.eval_every=0"])
    mcfg = cfg.model_config()
    b, t = cfg.data.batch_size, cfg.data.block_size
    loaders = lambda split, rank, world, seed: RandomTokens(b, t, mcfg.vocab_size, seed)  # noqa: E731

    torch.manual_seed(0)
    model = GPT(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = RandomTokens(b, t, mcfg.vocab_size, 0)

    def bare():
        x, y = data.next_batch()
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with tempfile.TemporaryDirectory() as tmp:
        plain = Trainer(cfg, Path(tmp) / "plain", loaders=loaders, log=lambda m: None)
        ac_cfg = load_config("cpu-tiny", ["train.eval_every=0", "train.activation_checkpointing=true"])
        ac = Trainer(ac_cfg, Path(tmp) / "ac", loaders=loaders, log=lambda m: None)
        t_bare = time_steps(bare, args.steps)
        t_trainer = time_steps(plain.train_step, args.steps)
        t_ac = time_steps(ac.train_step, args.steps)
    tokens = b * t
    figures = {
        "tokens_per_step": tokens,
        "bare_loop_tokens_per_s": tokens / t_bare,
        "trainer_tokens_per_s": tokens / t_trainer,
        "trainer_with_activation_checkpointing_tokens_per_s": tokens / t_ac,
        "trainer_vs_bare_loop": t_bare / t_trainer,
        "activation_checkpointing_vs_trainer": t_trainer / t_ac,
    }
    settings = {"preset": "cpu-tiny", "batch": b, "block": t, "params": sum(p.numel() for p in model.parameters()),
                "steps_timed": args.steps, "statistic": "median step time", "threads": args.threads}
    record("train", figures, settings, ["torch"])


if __name__ == "__main__":
    main()
