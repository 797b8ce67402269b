"""`llmbook export`: consolidate a (possibly sharded) checkpoint and write a Hugging Face model folder (@sec-scale-checkpoint)."""

from __future__ import annotations

import argparse

from llmbook.train import checkpoint as ckpt
from llmbook.train.data import EOS
from llmbook.train.generate import add_trust_flag, load_model


def export(checkpoint: str, out_dir: str, trust_sharded: bool = False) -> str:
    """Write `config.json`, `model.safetensors` and the tokenizer (with the chat template of a fine-tuned
    checkpoint, @sec-finetune-chat), loadable by `AutoModelForCausalLM` and `AutoTokenizer`."""
    from transformers import PreTrainedTokenizerFast

    from llmbook.model import to_hf

    model, tokenizer, meta = load_model(checkpoint, trust_sharded=trust_sharded)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=None)
    template = meta.path / "chat_template.jinja"
    if template.is_file():
        hf_tok.chat_template = template.read_text(encoding="utf-8")
    to_hf(model, out_dir, tokenizer=hf_tok)
    return f"exported {meta.path.name} (step {meta.step}) to {out_dir}"


def run_export(args: argparse.Namespace) -> int:
    from llmbook.cli import CLIError

    try:
        print(export(args.checkpoint, args.out, trust_sharded=args.trust_sharded))
        return 0
    except ckpt.CheckpointError as err:  # e.g. a sharded checkpoint without --trust-sharded: one line, exit 2
        raise CLIError(str(err)) from None


def add_parser(subparsers) -> None:
    """Register `llmbook export`."""
    parser = subparsers.add_parser("export", help="export a checkpoint as a Hugging Face model folder")
    parser.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ folder, or one checkpoint")
    parser.add_argument("--out", required=True, help="output folder for config.json, model.safetensors, tokenizer")
    add_trust_flag(parser)
    parser.set_defaults(func=run_export)
