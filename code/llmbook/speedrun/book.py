"""The book's model for the chapters: the speedrun's when it exists, else the quick `cpu-tiny` run (@sec-speedrun-book).

Chapters call `book_model()` and print its `label`, so a reader always sees which model a figure shows.
Where it comes from, in order:

1. the folder named by the setting `LLMBOOK_MODEL`: a speedrun folder (`llmbook speedrun --out DIR`) or a
   training run (`llmbook train --out DIR`);
2. the speedrun of the `cpu` preset in the cache, `$LLMBOOK_CACHE/speedrun/cpu` (where `llmbook speedrun
   --preset cpu` writes by default), once its pretraining stage is complete;
3. otherwise a short run of the `cpu-tiny` preset, trained once in about a minute and cached
   (`llmbook.eval.checkpoints.BOOK_RUN`, trained by `cached_run`): what CI and a fresh checkout render.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_SETTING = "LLMBOOK_MODEL"  # the one documented setting naming the reader's own model folder
DEFAULT_PRESET = "cpu"


def speedrun_dir(preset: str = DEFAULT_PRESET) -> Path:
    """Where `llmbook speedrun --preset NAME` writes when no --out is given: `$LLMBOOK_CACHE/speedrun/NAME`."""
    from llmbook.train.data import cache_root
    from llmbook.train.config import DataConfig

    return cache_root(DataConfig()) / "speedrun" / preset


@dataclass(frozen=True)
class BookModel:
    """A trained model for the chapters: its training run folder, its config, and where it came from."""

    source: str  # "speedrun", "run" (a training run named by LLMBOOK_MODEL) or "cpu-tiny"
    run_dir: Path  # a training run: checkpoints/step_*/ and metrics.jsonl
    config: Any  # the run's llmbook.train.RunConfig
    label: str  # one line saying which model a chapter shows
    speedrun: Path | None = None  # the speedrun folder, when there is one
    report: dict[str, Any] = field(default_factory=dict, repr=False)  # its report card (report.json)

    @property
    def steps(self) -> int:
        return self.config.train.steps

    @property
    def train_tokens(self) -> int:
        """Tokens in the training split of the model's token shards (one epoch)."""
        if self.speedrun is not None:
            from llmbook.speedrun.runner import read_record

            return int(read_record(self.speedrun / "tokenizer")["summary"]["train_tokens"])
        from llmbook.data.pack import read_manifest
        from llmbook.train.data import shard_dir_for

        return int(read_manifest(shard_dir_for(self.config.data))["splits"]["train"]["tokens"])

    def training_documents(self) -> list[str]:
        """The texts of the trainer's training split, in the trainer's order (what the model learned from)."""
        from llmbook.data.pack import is_val_document

        if self.speedrun is not None:
            from llmbook.speedrun.stages import read_jsonl

            texts = [r["text"] for r in read_jsonl(self.speedrun / "data" / "train.jsonl")]
        else:
            from llmbook.train.data import documents

            texts = [r["text"] for r in documents(self.config.data) if r["text"]]
        return [t for i, t in enumerate(texts) if not is_val_document(i, self.config.data.val_fraction)]

    def held_out(self, max_docs: int = 40, max_chars: int = 2000) -> list[str]:
        """Up to `max_docs` documents of held-out text the model never trained on: pieces of at most `max_chars`
        characters cut from the speedrun's held-out books (one from each book in turn), or the validation
        stories of the `cpu-tiny` run, whole."""
        if self.speedrun is not None:
            from llmbook.speedrun.stages import chunk_document, read_jsonl

            books = read_jsonl(self.speedrun / "data" / "heldout.jsonl")
            pieces = [[p["text"][:max_chars] for p in chunk_document(b, max_chars)] for b in books]
            longest = max((len(x) for x in pieces), default=0)
            return [x[i] for i in range(longest) for x in pieces if i < len(x)][:max_docs]
        from llmbook.eval.checkpoints import held_out_documents

        return held_out_documents(self.config.data)[:max_docs]


def _run_config(run_dir: Path):
    from llmbook.train import checkpoint as ckpt
    from llmbook.train.config import RunConfig

    found = ckpt.info(run_dir)
    return RunConfig.from_dict(found.config, source=str(found.path / "config.json"))


def _speedrun_model(folder: Path, source_note: str) -> BookModel | None:
    """The model of a speedrun folder whose pretraining stage is done, or None."""
    from llmbook.speedrun.runner import read_record
    from llmbook.train import checkpoint as ckpt

    record = read_record(folder / "pretrain")
    if record is None or record.get("status") != "done":
        return None
    if ckpt.latest_valid(folder / "pretrain" / "checkpoints", log=lambda msg: None) is None:
        return None
    cfg = _run_config(folder / "pretrain")
    report = {}
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    summary = record.get("summary", {})
    corpus = (read_record(folder / "data") or {}).get("summary", {}).get("corpus", "its corpus")
    preset = report.get("preset") or folder.name
    label = (f"the book's model: speedrun preset `{preset}` ({source_note}), {summary.get('params', 0) / 1e6:.1f}M "
             f"parameters trained on {summary.get('tokens', 0) / 1e6:.1f}M tokens of {corpus}")
    return BookModel("speedrun", folder / "pretrain", cfg, label, speedrun=folder, report=report)


def book_model(preset: str = DEFAULT_PRESET, log: Callable[[str], None] = lambda msg: None) -> BookModel:
    """The model the chapters show: `LLMBOOK_MODEL`, else the cached speedrun of `preset`, else the quick run.

    A folder named by `LLMBOOK_MODEL` that holds neither a finished speedrun nor a training run is an error
    naming the setting (a typo must not silently fall back to the small model).
    """
    from llmbook.eval.checkpoints import BOOK_RUN, cached_run, is_training_run

    chosen = os.environ.get(MODEL_SETTING, "")
    if chosen:
        folder = Path(chosen).expanduser()
        model = _speedrun_model(folder, f"from {MODEL_SETTING}") if folder.is_dir() else None
        if model is not None:
            return model
        if folder.is_dir() and is_training_run(folder):
            cfg = _run_config(folder)
            return BookModel("run", folder, cfg, f"the reader's model from {MODEL_SETTING}: the training run "
                             f"{folder.name} ({cfg.train.steps} steps)")
        raise ValueError(f"{MODEL_SETTING}={chosen}: neither a finished speedrun (pretrain/stage.json) nor a "
                         "training run (checkpoints/step_*)")
    model = _speedrun_model(speedrun_dir(preset), "from the cache")
    if model is not None:
        return model
    from llmbook.train import load_config

    name, overrides = BOOK_RUN
    cfg = load_config(name, list(overrides))
    run = cached_run(cfg, log=log)
    return BookModel("cpu-tiny", run, cfg,
                     f"the quick `{name}` run ({cfg.train.steps} steps on {' + '.join(cfg.data.datasets)}): no "
                     f"speedrun model found; `llmbook speedrun --preset {preset}` trains the book's model")
