"""Training at scale: configs, optimizer and schedules, checkpoints, DDP/FSDP2 and the loop (@sec-scale)."""

from llmbook.train.config import RunConfig, load_config
from llmbook.train.trainer import Trainer, TrainingDiverged, read_metrics, run

__all__ = ["RunConfig", "Trainer", "TrainingDiverged", "load_config", "read_metrics", "run"]
