"""`llmbook explore`: write the model explorer page for a trained checkpoint (@sec-architecture-explorer)."""

from __future__ import annotations

import argparse
from pathlib import Path

MAX_PROMPTS_FILE_BYTES = 1 << 20


def read_prompts(path: str | Path) -> tuple[list[str], list[str]]:
    """Prompts from a UTF-8 text file, one per non-blank line, with "FILE line N" for each (for error messages)."""
    from llmbook.explore.page import MAX_PROMPTS

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} does not exist")
    if p.stat().st_size > MAX_PROMPTS_FILE_BYTES:
        raise ValueError(f"prompts file {p} has {p.stat().st_size:,} bytes; the explorer reads at most "
                         f"{MAX_PROMPTS_FILE_BYTES:,} (at most {MAX_PROMPTS} short prompts)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start:err.start + 1]
        raise ValueError(f"prompts file {p}: not UTF-8 text (byte {err.start}: {bad!r})") from None
    prompts, where = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            prompts.append(line)
            where.append(f"prompts file {p} line {number}")
    if not prompts:
        raise ValueError(f"prompts file {p} has no prompts (write one prompt per line)")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"prompts file {p} has {len(prompts)} prompts; the explorer holds at most {MAX_PROMPTS}")
    return prompts, where


def run_name(checkpoint: Path) -> str:
    """A run's name for the page: the run directory's name and the checkpoint's (`RUN/checkpoints/step_N`)."""
    if checkpoint.parent.name == "checkpoints":
        return f"{checkpoint.parent.parent.name} {checkpoint.name}"
    return checkpoint.name


def run_explore(args: argparse.Namespace) -> int:
    from llmbook.cli import CLIError
    from llmbook.explore.page import DEFAULT_PROMPTS, MAX_TOP_K, explorer_data, write_explorer
    from llmbook.train.generate import load_model

    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out {out} is a directory; name the HTML file to write, such as {out / 'explorer.html'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise CLIError(f"--out {out}: {out.parent} is not a directory")
    if not 1 <= args.top_k <= MAX_TOP_K:
        raise CLIError(f"--top-k must be between 1 and {MAX_TOP_K}, got {args.top_k}")
    prompts, where = read_prompts(args.prompts) if args.prompts else (list(DEFAULT_PROMPTS), None)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    try:
        model, tokenizer, meta = load_model(checkpoint, trust_sharded=args.trust_sharded)
    except (RuntimeError, ValueError, KeyError, OSError) as err:  # CheckpointError is a RuntimeError
        raise CLIError(f"checkpoint {checkpoint}: {err}") from None
    if args.top_k > model.config.vocab_size:
        raise CLIError(f"--top-k {args.top_k} is larger than the model's vocabulary ({model.config.vocab_size})")
    data = explorer_data(model, tokenizer, prompts, top_k=args.top_k, name=run_name(meta.path), step=meta.step,
                         where=where)
    try:
        write_explorer(out, data)
    except OSError as err:
        raise CLIError(f"cannot write {out}: {err.strerror or err}") from None
    print(f"wrote {out} ({len(prompts)} prompts, {out.stat().st_size / 1024:,.0f} KiB) for {meta.path.name} "
          f"(step {meta.step})")
    return 0


def add_parser(subparsers) -> None:
    """Register `llmbook explore`."""
    from llmbook.train.generate import add_trust_flag

    parser = subparsers.add_parser(
        "explore", help="write a self-contained HTML page showing a checkpoint's tokens, predictions, attention "
                        "and logit lens")
    parser.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ folder, or one checkpoint")
    parser.add_argument("--out", required=True, help="HTML file to write (one file: no network, no server)")
    parser.add_argument("--prompts", help="UTF-8 text file with one prompt per line (default: a few short stories)")
    parser.add_argument("--top-k", type=int, default=10, help="next tokens listed at each position (default 10)")
    add_trust_flag(parser)
    parser.set_defaults(func=run_explore)
