"""The `llmbook` command: one subcommand per chapter, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand name -> module that defines `add_parser(subparsers)`; the parser's `func(args)` returns an exit code.
COMMANDS: dict[str, str] = {
    "costs": "llmbook.costs.cli",
    "data": "llmbook.data.cli",
    "tokenizer": "llmbook.tokenizer.cli",
    "train": "llmbook.train.cli",
    "generate": "llmbook.train.generate",
    "export": "llmbook.train.export",
    "eval": "llmbook.eval.cli",
    "speedrun": "llmbook.speedrun.cli",
    "explore": "llmbook.explore.cli",
    "finetune": "llmbook.finetune.cli",
    "chat": "llmbook.finetune.interactive",
    "serve": "llmbook.serve.cli",
    "rag": "llmbook.apps.cli",
    "card": "llmbook.apps.card",
}


class CLIError(Exception):
    """A user-facing error: printed as one line and turned into exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmbook", description="Build a large language model from scratch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def error_line(err: BaseException) -> str:
    """One line for a user-facing error: an OS error names its file (`PATH: No space left on device`)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())  # never more than one line


def main(argv: list[str] | None = None) -> int:
    from llmbook.fileio import LockedError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError, LockedError) as err:  # bad input, a full disk, a busy folder: no traceback
        print(f"llmbook {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
