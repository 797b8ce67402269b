"""`llmbook finetune sft|reward|dpo|grpo|merge`: the fine-tuning stages from a TOML preset with `--section.field=value`
overrides, as `llmbook train` (@sec-finetune)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from llmbook.finetune.config import SECTIONS

STAGE_HELP = {
    "sft": "supervised fine-tuning on chats (full, LoRA with --lora.r, QLoRA with --lora.quantize=nf4)",
    "reward": "a Bradley-Terry reward model on preference pairs, from an SFT run (--init)",
    "dpo": "direct preference optimisation (or IPO with --dpo.loss=ipo) from an SFT run (--init)",
    "grpo": "RL with verifiable rewards (GRPO) on the synthetic tasks, from an SFT run (--init)",
}


def _overrides(args: argparse.Namespace) -> list[str]:
    return [f"{key.split(':', 1)[1]}={value}" for key, value in vars(args).items()
            if key.startswith("override:") and value is not None]


def run_stage(args: argparse.Namespace) -> int:
    """Load the config, run the stage, and say where the results are."""
    from llmbook.cli import CLIError
    from llmbook.finetune.config import load_finetune_config
    from llmbook.finetune.pipeline import STAGES
    from llmbook.train.checkpoint import CheckpointError
    from llmbook.train.trainer import TrainingDiverged

    cfg = load_finetune_config(args.config, _overrides(args))
    if args.stage != "sft" and not args.init:
        raise CLIError(f"{args.stage} starts from a fine-tuned chat model: pass --init RUN "
                       f"(e.g. the --out of llmbook finetune sft)")
    if args.init and not Path(args.init).exists():
        raise FileNotFoundError(f"--init {args.init} does not exist")
    try:
        if args.stage == "sft":
            out = STAGES["sft"](cfg, args.out, resume=args.resume)
        else:
            out = STAGES[args.stage](cfg, args.out, args.init, resume=args.resume)
    except (CheckpointError, TrainingDiverged) as err:
        raise CLIError(str(err)) from None
    adapter = " (adapter in adapter/)" if args.stage == "sft" and cfg.lora.r > 0 else ""
    print(f"{args.stage} finished: checkpoints and metrics.jsonl in {out}{adapter}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Write a LoRA run (or a base run plus an adapter) as one plain checkpoint with the adapters folded in."""
    from llmbook.cli import CLIError
    from llmbook.finetune.base import load_finetuned, load_with_adapter, model_dict, save_checkpoint_dir
    from llmbook.finetune.chat import TEMPLATE_FILE
    from llmbook.finetune.config import BaseConfig, StageConfig, RunSettings
    from llmbook.fileio import atomic_write
    from llmbook.train.checkpoint import CheckpointError

    from llmbook.finetune.pipeline import check_out_dir

    out = check_out_dir(Path(args.out), resume=False)  # never prune the checkpoints of an existing run
    try:
        if args.adapter:
            model, tokenizer, fmt = load_with_adapter(BaseConfig(run=args.checkpoint), args.adapter, merge=True,
                                                      log=lambda msg: None)
        else:
            loaded = load_finetuned(args.checkpoint, merge=True)
            if not loaded.model.config.extra.get("lora"):
                raise CLIError(f"{loaded.path} has no LoRA adapters to merge")
            model, tokenizer, fmt = loaded.model, loaded.tokenizer, loaded.chat
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    staging = out / "chat"
    text = tokenizer.to_str()
    atomic_write(staging / "tokenizer.json", lambda f: f.write(text))
    fmt.save(staging)
    run_cfg = StageConfig().run_config(model_dict(model), RunSettings(device="cpu"), model.config.block_size)
    path = save_checkpoint_dir(model, run_cfg, out, [staging / "tokenizer.json", staging / TEMPLATE_FILE])
    print(f"merged model written to {path}")
    return 0


def add_parser(subparsers) -> None:
    """Register `llmbook finetune` and its stages."""
    parser = subparsers.add_parser("finetune", help="fine-tune and align a model: sft, reward, dpo, grpo, merge")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, help_text in STAGE_HELP.items():
        p = stages.add_parser(stage, help=help_text)
        p.add_argument("--config", required=True,
                       help="TOML preset: a path or a name in configs/ (e.g. finetune-cpu-tiny)")
        p.add_argument("--out", required=True, help="run directory: metrics.jsonl and checkpoints/ go here")
        needed = " (required)" if stage != "sft" else " (unused: SFT starts from [base])"
        p.add_argument("--init", help="the fine-tuned (SFT) run to start from" + needed)
        p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
        for section, klass in SECTIONS.items():
            group = p.add_argument_group(f"[{section}] overrides")
            for f in dataclasses.fields(klass):
                group.add_argument(f"--{section}.{f.name}", dest=f"override:{section}.{f.name}", metavar="VALUE")
        p.set_defaults(func=run_stage)
    merge = stages.add_parser("merge", help="fold LoRA adapters into the weights and write a plain checkpoint")
    merge.add_argument("--checkpoint", required=True, help="a LoRA fine-tuned run, or with --adapter the base run")
    merge.add_argument("--adapter", help="an adapter folder (adapter_model.safetensors + adapter_config.json)")
    merge.add_argument("--out", required=True, help="output run directory")
    merge.set_defaults(func=run_merge)
