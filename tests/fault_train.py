"""A test hook for tests/test_train_distributed.py: `python tests/fault_train.py ARGS` trains exactly like
`python -m llmbook.train ARGS`, except that rank 1 exits with status 1 right after writing the checkpoint of
step $LLMBOOK_TEST_FAIL_AFTER_STEP, once: it first creates the file $LLMBOOK_TEST_FAULT_MARKER, and does
nothing when that file exists (a node lost mid-run, which `torchrun --max-restarts` must recover from)."""

import os
import sys
from pathlib import Path

from llmbook.train.__main__ import main
from llmbook.train.trainer import Trainer

FAIL_AFTER = int(os.environ["LLMBOOK_TEST_FAIL_AFTER_STEP"])
MARKER = Path(os.environ["LLMBOOK_TEST_FAULT_MARKER"])
real_save = Trainer.save


def save(self: Trainer) -> Path:
    path = real_save(self)
    if self.step == FAIL_AFTER and self.dist.rank == 1 and not MARKER.exists():
        MARKER.touch()
        print(f"fault injected: rank 1 exits after saving step {self.step}", flush=True)
        os._exit(1)
    return path


Trainer.save = save
sys.exit(main())
