"""`python -m llmbook.train` and `torchrun ... -m llmbook.train`: the training entry point (@sec-scale-parallel)."""

import argparse
import sys

from llmbook.cli import CLIError, error_line
from llmbook.fileio import LockedError
from llmbook.train.cli import add_arguments, run_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmbook.train", description="Train a model from a TOML preset.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except (CLIError, ValueError, OSError, LockedError) as err:
        print(f"llmbook.train: error: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
