"""`llmbook chat`: talk to a fine-tuned checkpoint in the terminal, token by token, with its chat template
(@sec-finetune-chat).

Every turn is encoded with `ChatFormat.encode` (so typed special-token strings stay text), decoded with the KV
cache and printed as it is produced. `/reset` forgets the conversation, `/exit` (or end of input) quits. When the
conversation outgrows the model's context, the oldest turns are dropped (the system message is kept).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

import torch

from llmbook.finetune.chat import ChatFormat
from llmbook.model import KVCache, sample


@torch.no_grad()
def stream(model, ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int], temperature: float = 0.7,
           top_k: int | None = 50, generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield the continuation of `ids` one token at a time (KV cache), stopping before a stop id."""
    model.eval()
    device = next(model.parameters()).device
    cache = KVCache.empty(model.config.n_layer, 1, device)
    logits = model.forward_cached(torch.tensor([list(ids)], device=device), cache)[:, -1]
    room = model.config.block_size - len(ids) if model.config.pos_emb == "learned" else max_new_tokens
    for _ in range(min(max_new_tokens, room)):
        token = int(sample(logits, temperature, top_k, None, generator)[0])
        if token in stop_ids:
            return
        yield token
        logits = model.forward_cached(torch.tensor([[token]], device=device), cache)[:, -1]


def fit_context(fmt: ChatFormat, tokenizer: Any, messages: list[dict[str, str]], budget: int) -> list[int]:
    """Prompt ids of the conversation, dropping the oldest non-system turns until it fits in `budget` tokens."""
    messages = list(messages)
    while True:
        ids, _ = fmt.encode(tokenizer, messages, add_generation_prompt=True)
        if len(ids) <= budget:
            return ids
        drop = next((i for i, m in enumerate(messages[:-1]) if m["role"] != "system"), None)
        if drop is None:
            return ids[-budget:]  # a single message longer than the context: keep its end
        del messages[drop]


def decode_text(tokenizer: Any, ids: list[int]) -> str:
    """Text of ids; a trailing partial UTF-8 character shows as U+FFFD until its next byte arrives."""
    if hasattr(tokenizer, "get_added_tokens_decoder"):
        return tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.decode(ids)


def chat_loop(model, tokenizer: Any, fmt: ChatFormat, inp: IO[str], out: IO[str], system: str = "",
              max_new_tokens: int = 64, temperature: float = 0.7, top_k: int | None = 50, seed: int = 0,
              prompt: str = "") -> list[dict[str, str]]:
    """Read user turns from `inp`, stream answers to `out`; returns the conversation."""
    stop = fmt.stop_ids(tokenizer)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    budget = max(1, model.config.block_size - max_new_tokens)
    while True:
        if prompt:
            out.write(prompt)
            out.flush()
        line = inp.readline()
        if not line or line.strip() == "/exit":
            return messages
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(base)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        ids = fit_context(fmt, tokenizer, messages, budget)
        answer: list[int] = []
        shown = ""
        for token in stream(model, ids, max_new_tokens, stop, temperature, top_k, generator):
            answer.append(token)
            now = decode_text(tokenizer, answer)
            if not now.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                out.write(now[len(shown):])
                out.flush()
                shown = now
        final = decode_text(tokenizer, answer)
        out.write(final[len(shown):] + "\n")
        out.flush()
        messages.append({"role": "assistant", "content": final})


def run_chat(args: argparse.Namespace) -> int:
    from llmbook.cli import CLIError
    from llmbook.finetune.base import load_finetuned, load_with_adapter
    from llmbook.finetune.config import BaseConfig
    from llmbook.train.checkpoint import CheckpointError

    try:
        if args.adapter:
            model, tokenizer, fmt = load_with_adapter(BaseConfig(run=args.checkpoint), args.adapter, merge=args.merge,
                                                      log=lambda msg: None)
        else:
            loaded = load_finetuned(args.checkpoint, merge=args.merge)
            model, tokenizer, fmt = loaded.model, loaded.tokenizer, loaded.chat
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message; /reset starts over, /exit quits.", file=sys.stderr)
    chat_loop(model, tokenizer, fmt, sys.stdin, sys.stdout, system=args.system, max_new_tokens=args.max_new_tokens,
              temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
              prompt="you> " if interactive else "")
    return 0


def add_parser(subparsers) -> None:
    """Register `llmbook chat`."""
    parser = subparsers.add_parser("chat", help="chat with a fine-tuned checkpoint in the terminal (streaming)")
    parser.add_argument("--checkpoint", required=True,
                        help="a fine-tuned run or checkpoint; with --adapter, the base run the adapter was trained on")
    parser.add_argument("--adapter", help="a LoRA adapter folder (adapter_model.safetensors + adapter_config.json)")
    parser.add_argument("--merge", action="store_true", help="fold LoRA adapters into the weights before chatting")
    parser.add_argument("--system", default="", help="a system message to start every conversation with")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=50, help="0 disables top-k truncation")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_chat)
