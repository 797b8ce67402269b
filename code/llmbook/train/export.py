"""`llmbook export`: consolidate a (possibly sharded) checkpoint and write a Hugging Face model folder (@sec-scale-checkpoint)."""

from __future__ import annotations

import argparse

from llmbook.train.generate import load_model


def export(checkpoint: str, out_dir: str) -> str:
    """Write `config.json`, `model.safetensors` and the tokenizer, loadable by `AutoModelForCausalLM`."""
    from transformers import PreTrainedTokenizerFast

    from llmbook.model import to_hf

    model, tokenizer, meta = load_model(checkpoint)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                     bos_token="<|endoftext|>", unk_token=None)
    to_hf(model, out_dir, tokenizer=hf_tok)
    return f"exported {meta.path.name} (step {meta.step}) to {out_dir}"


def run_export(args: argparse.Namespace) -> int:
    print(export(args.checkpoint, args.out))
    return 0


def add_parser(subparsers) -> None:
    """Register `llmbook export`."""
    parser = subparsers.add_parser("export", help="export a checkpoint as a Hugging Face model folder")
    parser.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ folder, or one checkpoint")
    parser.add_argument("--out", required=True, help="output folder for config.json, model.safetensors, tokenizer")
    parser.set_defaults(func=run_export)
