"""Training run configuration: TOML presets plus `--section.field=value` overrides (@sec-scale-trainer)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "wsd", "constant")
OPTIMIZERS = ("adamw", "muon")
PARALLEL_MODES = ("none", "ddp", "fsdp")
ON_BAD_STEP = ("skip", "stop")


def _typed(section: str, obj: Any) -> None:
    """Check every scalar field against its annotation: an integer is whole (1.5 is not a step count), a float
    is finite, a bool is true or false (not the string 'maybe'); integral floats such as 1e3 become ints."""
    wants = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), f.type
        if kind not in wants:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "int" and isinstance(value, float) and value.is_integer():
            setattr(obj, f.name, value := int(value))
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": number and math.isfinite(value),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
        if not ok:
            raise ValueError(f"[{section}] {f.name} must be {wants[kind]}, got {value!r}")


def _positive(section: str, obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
        if not ok:
            kind = "non-negative" if allow_zero else "positive"
            raise ValueError(f"[{section}] {name} must be {kind}, got {value!r}")


def _choice(section: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"[{section}] {name}={value!r} is not one of {allowed}")


@dataclass
class DataConfig:
    """Where the token stream comes from and how it is cut into batches."""

    datasets: list[str] = field(default_factory=lambda: ["tinystories"])  # corpus names for llmbook.data.sources
    shard_dir: str = ""  # use these packed shards (with tokenizer.json) instead of preparing `dataset`
    tokenizer_vocab: int = 1024  # vocabulary of the byte-level BPE trained on the corpus
    max_chars: int = 0  # 0: whole corpus; otherwise only the first max_chars characters are used
    val_fraction: float = 0.02
    batch_size: int = 8  # micro-batch per rank
    block_size: int = 128
    cache_dir: str = ""  # "" -> $LLMBOOK_CACHE or ~/.cache/llmbook

    def __post_init__(self) -> None:
        _typed("data", self)
        _positive("data", self, "tokenizer_vocab", "batch_size", "block_size")
        _positive("data", self, "max_chars", allow_zero=True)
        if not self.datasets or not all(isinstance(d, str) and d for d in self.datasets):
            raise ValueError(f"[data] datasets must be a non-empty list of corpus names, got {self.datasets!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"[data] val_fraction must be in (0, 1), got {self.val_fraction!r}")


@dataclass
class OptimConfig:
    """AdamW (or Muon) hyper-parameters and the learning-rate schedule (@sec-scale-stability)."""

    name: str = "adamw"  # "muon": Muon for the blocks' weight matrices, AdamW for the rest (llmbook.train.optim)
    muon_momentum: float = 0.95
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # WSD: fraction of the run spent in the final decay
    grad_clip: float = 1.0  # 0 disables clipping

    def __post_init__(self) -> None:
        _typed("optim", self)
        _positive("optim", self, "lr", "eps")
        _positive("optim", self, "min_lr", "weight_decay", "warmup_steps", "grad_clip", allow_zero=True)
        _choice("optim", "schedule", self.schedule, SCHEDULES)
        _choice("optim", "name", self.name, OPTIMIZERS)
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"[optim] muon_momentum must be in [0, 1), got {self.muon_momentum!r}")
        if self.min_lr > self.lr:
            raise ValueError(f"[optim] min_lr={self.min_lr} must not exceed lr={self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"[optim] {name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"[optim] decay_fraction must be in (0, 1], got {self.decay_fraction!r}")


@dataclass
class TrainConfig:
    """The loop: length, accumulation, precision, evaluation, logging and the divergence guard."""

    steps: int = 1000
    grad_accum: int = 1
    seed: int = 1234
    device: str = "auto"  # "auto", "cpu", "cuda"
    precision: str = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    eval_every: int = 100  # 0 disables evaluation
    eval_batches: int = 10
    log_every: int = 10
    gpu: str = ""  # name in llmbook.costs.GPUS for MFU; "" -> no MFU
    on_bad_step: str = "skip"  # NaN/Inf or spiking loss: skip the update, or stop
    spike_factor: float = 0.0  # skip when loss > spike_factor * running mean; 0 disables
    max_bad_steps: int = 5  # stop after this many consecutive skipped steps
    z_loss: float = 0.0  # coefficient of the PaLM z-loss, mean (log Z)^2 of the output softmax; 0 disables

    def __post_init__(self) -> None:
        _typed("train", self)
        _positive("train", self, "steps", "grad_accum", "log_every", "eval_batches", "max_bad_steps")
        _positive("train", self, "eval_every", "spike_factor", "z_loss", allow_zero=True)
        _choice("train", "precision", self.precision, PRECISIONS)
        _choice("train", "device", self.device, ("auto", "cpu", "cuda"))
        _choice("train", "on_bad_step", self.on_bad_step, ON_BAD_STEP)
        if 0 < self.spike_factor <= 1:
            raise ValueError(f"[train] spike_factor must be 0 (off) or > 1, got {self.spike_factor!r}")


@dataclass
class CheckpointConfig:
    """How often to write checkpoints and how many to keep (@sec-scale-checkpoint)."""

    every: int = 100  # 0: only at the end
    keep: int = 3

    def __post_init__(self) -> None:
        _typed("checkpoint", self)
        _positive("checkpoint", self, "every", allow_zero=True)
        _positive("checkpoint", self, "keep")


@dataclass
class ParallelConfig:
    """Data parallelism: none, DDP, or FSDP2 with its mixed-precision policy (@sec-scale-parallel)."""

    mode: str = "none"
    reshard_after_forward: bool = True  # FSDP2: ZeRO-3 (True) or ZeRO-2-like (False)
    reduce_dtype: str = "fp32"  # FSDP2 MixedPrecisionPolicy: dtype of the gradient reduce-scatter
    # FSDP2 + grad_accum: skip the reduce-scatter on all but the last micro-batch. Off by default (as in
    # torchtitan): it keeps every block's unsharded gradients alive and saves no all-gathers.
    fsdp_no_sync: bool = False

    def __post_init__(self) -> None:
        _typed("parallel", self)
        _choice("parallel", "mode", self.mode, PARALLEL_MODES)
        _choice("parallel", "reduce_dtype", self.reduce_dtype, PRECISIONS)


def check_table(klass: type, table: Any, label: str, source: str) -> dict[str, Any]:
    """`table` if it is a mapping of fields that dataclass `klass` has; otherwise a ValueError naming `source`
    and the table `[label]` (shared by every TOML config of the package)."""
    if not isinstance(table, dict):
        raise ValueError(f"{source}: [{label}] must be a table")
    known = {f.name for f in dataclasses.fields(klass)}
    bad = sorted(set(table) - known)
    if bad:
        raise ValueError(f"{source}: unknown field(s) {bad} in [{label}]; known: {sorted(known)}")
    return table


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig,
            "checkpoint": CheckpointConfig, "parallel": ParallelConfig}


# Preset keys read by other chapters (llmbook.book.preset() returns the whole file); the trainer ignores them.
OTHER_KEYS = ("description", "eval", "finetune", "serve", "bench")


@dataclass
class RunConfig:
    """A whole run: the model shape (GPTConfig fields) plus one dataclass per TOML table."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "RunConfig":
        """Build and validate a run config, naming the table and field when something is wrong."""
        unknown = sorted(set(data) - {"model", *SECTIONS, *OTHER_KEYS})
        if unknown:
            raise ValueError(f"{source}: unknown table(s) {unknown}; known: ['model', {', '.join(map(repr, SECTIONS))}]")
        kwargs: dict[str, Any] = {"model": dict(data.get("model", {}))}
        for name, klass in SECTIONS.items():
            kwargs[name] = klass(**check_table(klass, data.get(name, {}), name, source))
        if kwargs["optim"].name == "muon" and kwargs["parallel"].mode == "fsdp":
            raise ValueError(f"{source}: [optim] name='muon' needs whole weight matrices; use [parallel] mode "
                             "'none' or 'ddp'")
        return cls(**kwargs)

    def model_config(self):
        """The GPTConfig of this run (block_size defaults to the data block size)."""
        from llmbook.model.config import GPTConfig

        fields = {"block_size": self.data.block_size, "vocab_size": self.data.tokenizer_vocab, **self.model}
        cfg = GPTConfig.from_dict(fields, source="[model]")
        if cfg.block_size < self.data.block_size:
            raise ValueError(f"[model] block_size={cfg.block_size} is shorter than [data] block_size={self.data.block_size}")
        return cfg


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML literal (numbers, booleans, quoted strings), else keep the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.field=value` overrides (a leading `--` is allowed) to a nested config mapping."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        body = item[2:] if item.startswith("--") else item
        key, sep, value = body.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"override {item!r} must look like --section.field=value (e.g. --optim.lr=3e-4)")
        out.setdefault(section, {})[name] = parse_value(value)
    return out


def config_path(path: str | Path) -> Path:
    """A preset file: `path` itself, or `configs/NAME.toml` in the project for a bare name; an error if missing."""
    path = Path(path)
    if not path.suffix and not path.exists():
        from llmbook.book import project_root

        path = project_root() / "configs" / f"{path}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} " + ("is a directory, not a TOML file" if path.is_dir() else
                                                            "does not exist"))
    return path


def read_toml(path: Path) -> dict[str, Any]:
    """The tables of a TOML file, with an error naming the file for malformed TOML or text that is not UTF-8."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: malformed TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#x} at offset {err.start}); "
                         "TOML files are UTF-8") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a TOML preset (a path, or a name in the project's configs/ folder) and apply overrides."""
    path = config_path(path)
    return RunConfig.from_dict(apply_overrides(read_toml(path), list(overrides)), source=str(path))
