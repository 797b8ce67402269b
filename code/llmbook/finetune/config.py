"""Fine-tuning configuration: one TOML preset for every stage, `--section.field=value` overrides as in
`llmbook train`, and the trainer's `RunConfig` of each stage (@sec-finetune-sft).

Sections: `[base]` (which pretrained model), `[run]` (device, precision, seed), `[data]` (instruction, synthetic and
preference data), `[lora]` (adapters; r = 0 is full fine-tuning), and one per stage: `[sft]`, `[reward]`, `[dpo]`,
`[grpo]`, each with its own steps, batch size and learning rate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbook.finetune.lora import LoRAConfig
from llmbook.finetune.synthetic import FAMILIES
from llmbook.train.config import RunConfig, apply_overrides, check_table, config_path, read_toml

# The evaluation chapter's shortened cpu-tiny run (@sec-evaluation-checkpoints): the same settings share its cache.
EVAL_BASE_OVERRIDES = ["train.steps=80", "train.eval_every=20", "train.log_every=10", "checkpoint.every=20",
                       "checkpoint.keep=8"]


def _check(section: str, obj: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    for names, ok, kind in ((positive, lambda v: v > 0, "positive"), (non_negative, lambda v: v >= 0, "non-negative")):
        for name in names:
            value = getattr(obj, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
                raise ValueError(f"[{section}] {name} must be {kind}, got {value!r}")


@dataclass
class BaseConfig:
    """The pretrained model: a run or checkpoint directory, a `transformers` model, or the book's cached run."""

    run: str = ""  # a training run or checkpoint directory
    hf_model: str = ""  # a transformers model name or folder, loaded with llmbook.model.from_hf
    preset: str = "cpu-tiny"  # otherwise: this preset with `overrides`, trained once and cached
    overrides: list[str] = field(default_factory=lambda: list(EVAL_BASE_OVERRIDES))

    def __post_init__(self) -> None:
        if self.run and self.hf_model:
            raise ValueError("[base] set either run or hf_model, not both")


@dataclass
class RunSettings:
    """Where and how every stage runs."""

    device: str = "auto"
    precision: str = "fp32"
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"[run] device={self.device!r} is not one of ('auto', 'cpu', 'cuda')")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"[run] precision={self.precision!r} is not one of ('fp32', 'bf16', 'fp16')")


@dataclass
class DataSettings:
    """The data of every stage: names are data-registry paths (or files), sizes are numbers of examples."""

    n_synthetic: int = 2000  # synthetic training items (llmbook.finetune.synthetic)
    n_test: int = 240  # held-out synthetic items
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    instructions: list[str] = field(default_factory=lambda: ["alpaca/llamafactory_alpaca_en_demo.json",
                                                             "alpaca/stanford_alpaca_seed_tasks.jsonl"])
    n_instructions: int = 400  # how many of them join the synthetic items (0: none)
    max_len: int = 128  # SFT examples are cut to this many tokens
    preferences: str = "hh-rlhf/harmless-base_test.jsonl.gz"
    held_out_fraction: float = 0.2  # of the preference pairs, held out (a seeded shuffle)
    max_prompt: int = 64  # preference pairs keep the last tokens of the prompt...
    max_response: int = 48  # ...and the first tokens of each response

    def __post_init__(self) -> None:
        _check("data", self, positive=("max_len", "max_prompt", "max_response"),
               non_negative=("n_synthetic", "n_test", "n_instructions"))
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"[data] families {unknown or self.families} must be a non-empty subset of "
                             f"{sorted(FAMILIES)}")
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"[data] held_out_fraction must be in (0, 1), got {self.held_out_fraction!r}")


@dataclass
class StageConfig:
    """Optimisation settings shared by every stage (AdamW, warmup + cosine, as in pre-training)."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 0  # 0: only at the end
    keep: int = 1

    def __post_init__(self) -> None:
        _check(self.section, self, positive=("steps", "batch_size", "lr", "log_every", "eval_batches", "keep"),
               non_negative=("min_lr", "warmup_steps", "weight_decay", "grad_clip", "eval_every", "checkpoint_every"))

    @property
    def section(self) -> str:
        return type(self).__name__.removesuffix("Config").lower()

    def run_config(self, model: dict[str, Any], run: RunSettings, block_size: int) -> RunConfig:
        """The trainer's RunConfig for this stage: the model's fields, this stage's optimisation and loop."""
        return RunConfig.from_dict({
            "model": model,
            "data": {"batch_size": self.batch_size, "block_size": block_size, "tokenizer_vocab": model["vocab_size"]},
            "optim": {"lr": self.lr, "min_lr": min(self.min_lr, self.lr), "warmup_steps": self.warmup_steps,
                      "weight_decay": self.weight_decay, "grad_clip": self.grad_clip},
            "train": {"steps": self.steps, "seed": run.seed, "device": run.device, "precision": run.precision,
                      "log_every": self.log_every, "eval_every": self.eval_every, "eval_batches": self.eval_batches},
            "checkpoint": {"every": self.checkpoint_every, "keep": self.keep},
        }, source=f"[{self.section}]")


@dataclass
class SFTConfig(StageConfig):
    """Supervised fine-tuning on chats; `pack` concatenates examples into full rows instead of padding."""

    pack: bool = False


@dataclass
class RewardConfig(StageConfig):
    """A Bradley-Terry reward model on the preference pairs."""

    lr: float = 3e-4


@dataclass
class DPOConfig(StageConfig):
    """Direct preference optimisation: `loss` 'dpo' (sigmoid) or 'ipo' (squared); `beta` the KL strength."""

    lr: float = 1e-4
    beta: float = 0.1
    loss: str = "dpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("dpo", self, positive=("beta",))
        if self.loss not in ("dpo", "ipo"):
            raise ValueError(f"[dpo] loss={self.loss!r} is not one of ('dpo', 'ipo')")


@dataclass
class GRPOConfig(StageConfig):
    """Group relative policy optimisation with verifiable rewards (`batch_size` prompts x `group_size` samples)."""

    batch_size: int = 8
    lr: float = 2e-4
    group_size: int = 8
    iterations: int = 1  # optimizer steps per batch of rollouts (ratios differ from 1 from the second on)
    clip: float = 0.2
    kl: float = 0.04
    temperature: float = 1.0
    max_new_tokens: int = 8
    n_prompts: int = 1000
    families: list[str] = field(default_factory=lambda: ["add", "sub", "add2"])

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("grpo", self, non_negative=("kl",),
               positive=("group_size", "iterations", "clip", "temperature", "max_new_tokens", "n_prompts"))
        if self.group_size < 2:
            raise ValueError(f"[grpo] group_size must be at least 2 (advantages are relative to the group), "
                             f"got {self.group_size}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"[grpo] families {unknown or self.families} must be a non-empty subset of "
                             f"{sorted(FAMILIES)}")


SECTIONS = {"base": BaseConfig, "run": RunSettings, "data": DataSettings, "lora": LoRAConfig, "sft": SFTConfig,
            "reward": RewardConfig, "dpo": DPOConfig, "grpo": GRPOConfig}


@dataclass
class FinetuneConfig:
    """Every fine-tuning setting, one dataclass per TOML table."""

    base: BaseConfig = field(default_factory=BaseConfig)
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> FinetuneConfig:
        """Build and validate, naming the table and field when something is wrong."""
        unknown = sorted(set(data) - set(SECTIONS) - {"description"})
        if unknown:
            raise ValueError(f"{source}: unknown table(s) {unknown}; known: {sorted(SECTIONS)}")
        kwargs = {}
        for name, klass in SECTIONS.items():
            table = check_table(klass, data.get(name, {}), name, source)
            try:
                kwargs[name] = klass(**table)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{source}: {err}") from None
        return cls(**kwargs)


def load_finetune_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Load a TOML preset (a path, or a name in the project's configs/ folder) and apply `section.field=value`."""
    path = config_path(path)
    return FinetuneConfig.from_dict(apply_overrides(read_toml(path), list(overrides)), source=str(path))
