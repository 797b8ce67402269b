"""`llmbook generate`: load a trained checkpoint (any format, any world size) and sample text (@sec-scale-trainer)."""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch

from llmbook.train import checkpoint as ckpt
from llmbook.train.config import RunConfig
from llmbook.train.data import EOS


def load_model(path: str | Path, device: str = "cpu", trust_sharded: bool = False):
    """Return `(model, tokenizer, info)` from a run directory or checkpoint.

    An FSDP2 checkpoint is read from its consolidated `model.safetensors`; its DCP shards (pickled
    metadata) are gathered in one process only with `trust_sharded=True` (@sec-scale-checkpoint).
    """
    from llmbook.model import GPT
    from llmbook.tokenizer.hf import load_hf_tokenizer

    meta = ckpt.info(path)
    cfg = RunConfig.from_dict(meta.config, source=str(meta.path / "config.json")).model_config()
    if cfg.extra.get("lora"):  # a LoRA fine-tuning run (@sec-finetune-lora): fold its adapters into the weights
        from llmbook.finetune.base import load_finetuned

        loaded = load_finetuned(meta.path, device=device, merge=True)
        return loaded.model, loaded.tokenizer, meta
    model = GPT(cfg)
    with warnings.catch_warnings():  # DCP announces that it reads a sharded checkpoint in one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        ckpt.load_checkpoint(meta.path, model, None, sharded=False, trust_sharded=trust_sharded)
    tok_file = meta.path / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"{meta.path} has no tokenizer.json (the run used pre-tokenized shards without one)")
    return model.to(device).eval(), load_hf_tokenizer(tok_file), meta


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                  top_k: int | None = 50, seed: int = 0) -> str:
    """Continue `prompt` with the model, stopping at the end-of-text token; returns prompt + continuation."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt).ids or [tokenizer.token_to_id(EOS)]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    eos = tokenizer.token_to_id(EOS)
    gen = torch.Generator(device=device).manual_seed(seed)
    room = model.config.block_size - idx.shape[1]
    if room <= 0 and model.config.pos_emb == "learned":
        raise ValueError(f"the prompt has {idx.shape[1]} tokens; the model's context is {model.config.block_size}")
    steps = min(max_new_tokens, room) if model.config.pos_emb == "learned" else max_new_tokens
    with torch.no_grad():
        out = model.generate(idx, steps, temperature=temperature, top_k=top_k, stop=eos, generator=gen)
    new = [t for t in out[0, idx.shape[1]:].tolist() if t != eos]
    return prompt + tokenizer.decode(new)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, samples: int) -> None:
    """Reject sampling settings that cannot mean anything, naming the flag and the value."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: off), got {top_k}")
    if samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")


def run_generate(args: argparse.Namespace) -> int:
    from llmbook.cli import CLIError

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.samples)
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as err:  # bytes of another encoding on the command line arrive as lone surrogates
        raise ValueError(f"--prompt {args.prompt!r}: not UTF-8 text (position {err.start})") from None
    try:
        model, tokenizer, meta = load_model(args.checkpoint, trust_sharded=args.trust_sharded)
        print(f"# {meta.path.name} (step {meta.step})")
        for i in range(args.samples):
            print(generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature,
                                args.top_k or None, seed=args.seed + i))
        return 0
    except ckpt.CheckpointError as err:  # e.g. a sharded checkpoint without --trust-sharded: one line, exit 2
        raise CLIError(str(err)) from None


def add_trust_flag(parser) -> None:
    """`--trust-sharded`: allow reading a DCP checkpoint's pickled metadata (only for checkpoints you wrote)."""
    parser.add_argument("--trust-sharded", action="store_true",
                        help="read an FSDP2 (DCP) checkpoint without a consolidated model.safetensors; its "
                             "metadata is a pickle, so only use this on checkpoints you trust")


def add_parser(subparsers) -> None:
    """Register `llmbook generate`."""
    parser = subparsers.add_parser("generate", help="sample text from a trained checkpoint")
    parser.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ folder, or one checkpoint")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0 disables top-k truncation")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_trust_flag(parser)
    parser.set_defaults(func=run_generate)
