"""`llmbook speedrun`: the whole pipeline in one command, resumable stage by stage (@sec-speedrun)."""

from __future__ import annotations

import argparse
import os


def run_speedrun(args: argparse.Namespace) -> int:
    """Run the preset's stages, print where the report card is; user-facing failures become one line."""
    from llmbook.cli import CLIError
    from llmbook.data.registry import DataUnavailable
    from llmbook.speedrun import STAGES, available_presets, load_preset, run_stages
    from llmbook.speedrun.book import speedrun_dir
    from llmbook.speedrun.report import pretraining_estimate
    from llmbook.speedrun.runner import StageError
    from llmbook.train.checkpoint import CheckpointError
    from llmbook.train.trainer import TrainingDiverged

    if args.list:
        print("presets: " + ", ".join(available_presets()))
        print("stages:  " + " -> ".join(s.name for s in STAGES))
        return 0
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # the trainer's and the evaluator's progress bars too
    cfg = load_preset(args.preset, args.set or [])
    if args.estimate:
        from llmbook.book import duration
        from llmbook.speedrun.machine import matmul_peak, resolve_precision

        peak = None
        if not cfg.machine.gpu:
            peak = matmul_peak(resolve_precision(cfg.machine.precision, "cpu"))
        est = pretraining_estimate(cfg, peak)
        print(f"{cfg.name}: {est['tokens']:,} tokens, {est['train_flops']:.3g} FLOPs; at {est['mfu']:.0%} MFU of the "
              f"{est['peak_source']} ({est['peak_flops'] / 1e12:.3g} TFLOP/s) pretraining takes about "
              f"{duration(est['seconds'] / 3600)} (an estimate; data preparation, evaluation and the other stages "
              "come on top)")
        return 0
    out = args.out or speedrun_dir(cfg.name)
    only = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    try:
        records = run_stages(cfg, out, STAGES, only=only, resume=args.resume, progress=not args.quiet)
    except (StageError, CheckpointError, TrainingDiverged, DataUnavailable) as err:
        raise CLIError(str(err)) from None
    if "report" in records and records["report"].get("status") == "done":
        print(f"report card: {out}/report.md")
    return 0


def add_parser(subparsers) -> None:
    """Register `llmbook speedrun`."""
    parser = subparsers.add_parser("speedrun", help="train the book's model end to end and write a report card")
    parser.add_argument("--preset", default="cpu", help="ci, cpu, colab-t4, h100, or a TOML file (default: cpu)")
    parser.add_argument("--out", help="run folder (default: $LLMBOOK_CACHE/speedrun/PRESET, where the chapters "
                                      "look for the book's model)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run in --out: stages whose outputs verify are skipped")
    parser.add_argument("--stages", help="comma-separated stages to run (default: all); earlier stages must be done")
    parser.add_argument("--set", action="append", metavar="TABLE.FIELD=VALUE",
                        help="override a preset field, e.g. --set train.steps=100 --set speedrun.eval.limit=50")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="list the presets and stages, then exit")
    parser.add_argument("--estimate", action="store_true",
                        help="print the preset's estimated pretraining time (llmbook.costs), then exit")
    parser.set_defaults(func=run_speedrun)
