"""`llmbook export`: consolidate a (possibly sharded) checkpoint and write a Hugging Face model folder (@sec-scale-checkpoint),
or one GGUF file for llama.cpp (`--format gguf`, @sec-inference-export)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmbook.fileio import LOCK_NAME, output_dir, run_lock
from llmbook.train import checkpoint as ckpt
from llmbook.train.data import EOS
from llmbook.train.generate import add_trust_flag, load_model


def export(checkpoint: str, out_dir: str, trust_sharded: bool = False) -> str:
    """Write `config.json`, `generation_config.json`, `model.safetensors` and the tokenizer (with the chat template
    of a fine-tuned checkpoint, @sec-finetune-chat), loadable by `AutoModelForCausalLM` and `AutoTokenizer`, with
    the tokenizer's own end-of-text id as bos/eos (@sec-scale-checkpoint).

    `out_dir` must be new, empty or a model folder (its config.json names a model_type): other folders, an
    application's folder with its own config.json among them, are refused, so an export never overwrites or
    mixes its files into unrelated ones. The exported tokenizer, like the book's, encodes a literal
    `<|endoftext|>` in text as text (`split_special_tokens`), except for a chat model: transformers renders a
    chat template to text and must then read its role markers back as special tokens, so it cannot keep them
    out of message content the way `llmbook.finetune.chat` does (@sec-finetune-chat).
    """
    from transformers import PreTrainedTokenizerFast

    from llmbook.model import to_hf

    out = output_dir(out_dir)
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if others and not _is_model_folder(out):
        raise ValueError(f"--out {out}: holds {len(others)} other file(s) (e.g. {others[0]!r}) and is not a model "
                         "folder; refusing to write into it (choose a new or empty folder)")
    with run_lock(out):
        model, tokenizer, meta = load_model(checkpoint, trust_sharded=trust_sharded)
        if tokenizer.token_to_id(EOS) is None:
            raise ValueError(f"{meta.path / 'tokenizer.json'} has no {EOS} token to export as end-of-text")
        template = meta.path / "chat_template.jinja"
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=None,
                                         split_special_tokens=not template.is_file())
        if template.is_file():
            hf_tok.chat_template = template.read_text(encoding="utf-8")
        to_hf(model, out, tokenizer=hf_tok)
    return f"exported {meta.path.name} (step {meta.step}) to {out_dir}"


def _is_model_folder(folder: Path) -> bool:
    """Whether `folder` holds a Hugging Face model's config.json (a JSON object naming its model_type)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("model_type"), str)


def run_export(args: argparse.Namespace) -> int:
    from llmbook.cli import CLIError

    try:
        if args.format == "gguf":
            from llmbook.serve.cli import require_package

            require_package("gguf", "gguf-parity")
            from llmbook.serve.export_gguf import export_gguf
            from llmbook.serve.modelio import load_servable

            served = load_servable(args.checkpoint)
            out = export_gguf(served.model, served.tokenizer, args.out, dtype=args.dtype, name=served.name)
            print(f"exported {served.name} to {out} ({args.dtype})")
            return 0
        if args.dtype != "f32":
            raise CLIError("--dtype applies to --format gguf only (the Hugging Face export keeps the model's dtype)")
        print(export(args.checkpoint, args.out, trust_sharded=args.trust_sharded))
        return 0
    except ckpt.CheckpointError as err:  # e.g. a sharded checkpoint without --trust-sharded: one line, exit 2
        raise CLIError(str(err)) from None


def add_parser(subparsers) -> None:
    """Register `llmbook export`."""
    parser = subparsers.add_parser("export", help="export a checkpoint as a Hugging Face model folder or a GGUF file")
    parser.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ folder, or one checkpoint "
                        "(gguf: also a folder written by llmbook prune or distill)")
    parser.add_argument("--out", required=True, help="hf: output folder for config.json, model.safetensors, "
                        "tokenizer (loads with transformers, vLLM, TGI); gguf: the output .gguf file (llama.cpp)")
    parser.add_argument("--format", choices=["hf", "gguf"], default="hf", help="output format (default hf)")
    parser.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f32",
                        help="gguf weight type: f32, f16, or llama.cpp's 8-bit Q8_0 blocks (default f32)")
    add_trust_flag(parser)
    parser.set_defaults(func=run_export)
