"""`llmbook speedrun`: the book's own model end to end, from raw books to a report card (@sec-speedrun).

data (filters, dedup, PII) -> tokenizer -> pretraining -> evaluation -> SFT -> preference tuning ->
quantization -> report card, each stage a small function over the package's public API, resumable stage
by stage. `book_model()` gives chapters the speedrun's model when it exists, else the quick `cpu-tiny` run.
"""

from llmbook.speedrun.book import BookModel, book_model
from llmbook.speedrun.config import SpeedrunConfig, available_presets, load_preset
from llmbook.speedrun.runner import StageError, run_stages
from llmbook.speedrun.stages import STAGES


def run(preset: str, out: str, resume: bool = False, stages: list[str] | None = None, overrides: list[str] = (),
        echo=print, progress: bool = True) -> dict:
    """Run the speedrun `preset` into folder `out` and return every stage's record (see `run_stages`)."""
    cfg = load_preset(preset, list(overrides))
    return run_stages(cfg, out, STAGES, only=stages, resume=resume, echo=echo, progress=progress)


__all__ = ["STAGES", "BookModel", "SpeedrunConfig", "StageError", "available_presets", "book_model", "load_preset",
           "run", "run_stages"]
