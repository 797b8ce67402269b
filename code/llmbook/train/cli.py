"""`llmbook train`: run the trainer from a TOML preset with `--section.field=value` overrides (@sec-scale-trainer).

The same arguments work as `python -m llmbook.train ...` and `torchrun --nproc_per_node=N -m llmbook.train ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from llmbook.train.config import SECTIONS


def _model_fields() -> list[str]:
    from llmbook.model.config import GPTConfig

    return [f.name for f in dataclasses.fields(GPTConfig) if f.name != "extra"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train flags, plus one `--section.field` override flag per config field."""
    parser.add_argument("--config", required=True, help="TOML preset: a path or a name in configs/ (e.g. cpu-tiny)")
    parser.add_argument("--out", required=True, help="run directory: metrics.jsonl and checkpoints/ go here")
    parser.add_argument("--parallel", choices=("none", "ddp", "fsdp"), help="data parallelism (default: the preset's)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    parser.add_argument("--trust-sharded", action="store_true",
                        help="allow resuming an FSDP2 run from its DCP shards, whose metadata is a pickle (only for "
                             "checkpoints you wrote yourself)")
    groups = {"model": _model_fields(), **{name: [f.name for f in dataclasses.fields(k)] for name, k in SECTIONS.items()}}
    for section, names in groups.items():
        group = parser.add_argument_group(f"[{section}] overrides")
        for name in names:
            group.add_argument(f"--{section}.{name}", dest=f"override:{section}.{name}", metavar="VALUE")


def overrides_from(args: argparse.Namespace) -> list[str]:
    """Collect the given `--section.field` flags as `section.field=value` strings."""
    items = [f"{key.split(':', 1)[1]}={value}" for key, value in vars(args).items()
             if key.startswith("override:") and value is not None]
    if args.parallel:
        items.append(f"parallel.mode={args.parallel}")
    return items


def run_train(args: argparse.Namespace) -> int:
    """Load the config, train, and report where the results are."""
    from llmbook.cli import CLIError
    from llmbook.train.checkpoint import CheckpointError
    from llmbook.train.config import load_config
    from llmbook.train.trainer import TrainingDiverged, run

    cfg = load_config(args.config, overrides_from(args))
    cfg.model_config()  # a bad [model] field fails here, before the run folder is made
    try:
        records = run(cfg, args.out, resume=args.resume, trust_sharded=args.trust_sharded)
    except (CheckpointError, TrainingDiverged) as err:  # a user-facing condition, not a bug: one line, exit 2
        raise CLIError(str(err)) from None
    losses = [r["loss"] for r in records if "loss" in r]
    if losses and int(os.environ.get("RANK", "0")) == 0:
        print(f"final train loss {losses[-1]:.4f}; metrics in {args.out}/metrics.jsonl")
    return 0


def add_parser(subparsers) -> None:
    """Register `llmbook train`."""
    parser = subparsers.add_parser("train", help="train a model from a TOML preset (single process or torchrun)")
    add_arguments(parser)
    parser.set_defaults(func=run_train)
