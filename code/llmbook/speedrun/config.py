"""Speedrun presets: one TOML file per machine class, read into validated dataclasses (@sec-speedrun).

A preset `configs/speedrun/<name>.toml` holds the trainer's own tables (`[model]`, `[data]`, `[optim]`,
`[train]`, `[checkpoint]`, read by `llmbook.train.RunConfig`) and one table per pipeline stage under
`[speedrun]`: `[speedrun.data]`, `[speedrun.tokenizer]`, `[speedrun.eval]`, `[speedrun.sft]`,
`[speedrun.dpo]`, `[speedrun.quantize]` and `[speedrun.machine]`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbook.train.config import RunConfig, apply_overrides, check_table, read_toml

PRESET_FOLDER = "speedrun"  # under the project's configs/
TRAINER_TABLES = ("model", "data", "optim", "train", "checkpoint")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _check(section: str, obj: Any) -> None:
    """Type-check every field of a stage table against its default: ints are whole, floats finite, lists lists."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(obj, f.name, value := float(value))
            ok = isinstance(value, float) and value == value and abs(value) != float("inf")
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, list):
            ok = isinstance(value, list)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"[speedrun.{section}] {f.name} must be {type(default).__name__}, got {value!r}")


def _non_negative(section: str, obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ValueError(f"[speedrun.{section}] {name} must be >= 0, got {getattr(obj, name)!r}")


@dataclass
class DataStage:
    """Which books, which are held out, and the curation pipeline's settings (@sec-data-pipeline)."""

    corpus: str = "gutenberg"
    max_docs: int = 0  # 0: every book of the corpus
    max_doc_chars: int = 0  # keep only the first characters of each book (0: all; small presets for tests)
    heldout_every: int = 16  # books 0, k, 2k, ... (manifest order) are held out of tokenizer and model training
    chunk_chars: int = 20_000  # books are cut at paragraph breaks into documents of about this many characters
    filters: str = "default"  # llmbook.data.pipeline.resolve_filters spec: default, none, or names
    filter_config: dict = field(default_factory=dict)  # FilterConfig fields that differ from the defaults
    dedup: list = field(default_factory=lambda: ["exact", "minhash"])
    pii: bool = True
    val_fraction: float = 0.01  # share of training documents kept aside for the trainer's validation loss

    def __post_init__(self) -> None:
        _check("data", self)
        _non_negative("data", self, "max_docs", "max_doc_chars")
        if self.heldout_every < 2:
            raise ValueError(f"[speedrun.data] heldout_every must be >= 2, got {self.heldout_every}")
        if self.chunk_chars < 1000:
            raise ValueError(f"[speedrun.data] chunk_chars must be >= 1000, got {self.chunk_chars}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"[speedrun.data] val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class TokenizerStage:
    """The byte-level BPE trained on the curated training text only (@sec-data-bpe-fast)."""

    vocab_size: int = 4096

    def __post_init__(self) -> None:
        _check("tokenizer", self)
        if self.vocab_size < 257:
            raise ValueError(f"[speedrun.tokenizer] vocab_size must be > 256, got {self.vocab_size}")


@dataclass
class EvalStage:
    """Held-out bits per byte next to general-purpose compressors, benchmarks with intervals, samples."""

    heldout_bytes: int = 0  # score at most this many bytes of each held-out book (0: all of it)
    stride: int = 0  # sliding-window stride in tokens (0: half the context)
    batch_size: int = 16
    tasks: list = field(default_factory=lambda: ["lambada", "hellaswag", "arc_easy", "piqa", "winogrande"])
    limit: int = 200  # items per task
    prompts: list = field(default_factory=lambda: ["It was a dark and stormy night", "The old man said"])
    sample_tokens: int = 80
    temperature: float = 0.8
    top_k: int = 50

    def __post_init__(self) -> None:
        _check("eval", self)
        _non_negative("eval", self, "heldout_bytes", "stride", "limit", "sample_tokens", "temperature", "top_k")
        if self.batch_size < 1:
            raise ValueError(f"[speedrun.eval] batch_size must be >= 1, got {self.batch_size}")


@dataclass
class FinetuneStage:
    """A `llmbook.finetune` preset and overrides for supervised fine-tuning or preference tuning (@sec-finetune);
    the base model is always the speedrun's, and device and precision are the speedrun's."""

    preset: str = "finetune-cpu-tiny"  # a fine-tuning preset in configs/
    overrides: list = field(default_factory=list)  # its `section.field=value` overrides, e.g. "sft.steps=200"
    eval_bytes: int = 20_000  # bytes of each held-out book scored before and after (what tuning costs on books)
    held_out_pairs: int = 200  # DPO: held-out preference pairs for the implicit-reward accuracy
    prompts: list = field(default_factory=lambda: ["Give me three tips for a long walk.", "What is 17 + 25?"])

    def __post_init__(self) -> None:
        _check("finetune", self)
        _non_negative("finetune", self, "eval_bytes", "held_out_pairs")
        if not all(isinstance(o, str) for o in self.overrides):
            raise ValueError(f"[speedrun.finetune] overrides must be strings, got {self.overrides!r}")


@dataclass
class QuantizeStage:
    """Weight-only quantization settings handed to `llmbook.serve` (@sec-inference)."""

    bits: list = field(default_factory=lambda: [8, 4])
    group_size: int = 64
    heldout_bytes: int = 200_000  # bytes of each held-out book scored before and after quantization

    def __post_init__(self) -> None:
        _check("quantize", self)
        _non_negative("quantize", self, "heldout_bytes")
        if self.group_size < 1:
            raise ValueError(f"[speedrun.quantize] group_size must be >= 1, got {self.group_size}")
        if not self.bits or any(b not in (2, 3, 4, 8) for b in self.bits):
            raise ValueError(f"[speedrun.quantize] bits must list values from 2, 3, 4, 8, got {self.bits!r}")


@dataclass
class MachineStage:
    """What the preset assumes about the machine, used for estimates in the report card (@sec-costs-budget)."""

    precision: str = "auto"  # auto: bf16 where the CPU or GPU computes it natively, else fp32
    gpu: str = ""  # llmbook.costs GPU name for time and cost estimates ("" on a CPU)
    mfu: float = 0.3  # assumed model FLOPs utilisation for the estimate before a measurement exists
    price_per_hour: float = 0.0  # what an hour of the machine costs, in US dollars (0: free, e.g. a laptop)
    budget_minutes: float = 0.0  # the wall-clock target of the preset (0: none)

    def __post_init__(self) -> None:
        _check("machine", self)
        if self.precision not in PRECISIONS:
            raise ValueError(f"[speedrun.machine] precision={self.precision!r} is not one of {PRECISIONS}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"[speedrun.machine] mfu must be in (0, 1], got {self.mfu}")
        _non_negative("machine", self, "price_per_hour", "budget_minutes")


STAGE_TABLES = {"data": DataStage, "tokenizer": TokenizerStage, "eval": EvalStage, "sft": FinetuneStage,
                "dpo": FinetuneStage, "quantize": QuantizeStage, "machine": MachineStage}


@dataclass
class SpeedrunConfig:
    """A whole speedrun: the trainer's run config (`train`) plus one settings object per stage."""

    name: str
    description: str
    train: RunConfig
    data: DataStage
    tokenizer: TokenizerStage
    eval: EvalStage
    sft: FinetuneStage
    dpo: FinetuneStage
    quantize: QuantizeStage
    machine: MachineStage
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # the preset as read (after overrides)

    def section_hash(self, *names: str) -> str:
        """A short hash of the named parts of the preset (a trainer table such as `data`, a stage table such as
        `speedrun.data`, or one field such as `speedrun.machine.precision`), so a stage reruns when they change."""
        picked = {}
        for name in names:
            node: Any = self.raw
            for part in name.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            picked[name] = node
        return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def preset_path(name_or_path: str | Path) -> Path:
    """`cpu` -> configs/speedrun/cpu.toml in the project; a path to a TOML file is used as it is."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    from llmbook.book import project_root

    return project_root() / "configs" / PRESET_FOLDER / f"{name_or_path}.toml"


def available_presets() -> list[str]:
    """Names of the speedrun presets in the project's configs/speedrun/ folder."""
    from llmbook.book import project_root

    return sorted(p.stem for p in (project_root() / "configs" / PRESET_FOLDER).glob("*.toml"))


def from_dict(data: dict[str, Any], name: str, source: str = "preset") -> SpeedrunConfig:
    """Validate a preset mapping, naming the file, table and field when something is wrong."""
    known = {"description", "speedrun", *TRAINER_TABLES}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown table(s) {unknown}; known: {sorted(known)}")
    stages = data.get("speedrun", {})
    if not isinstance(stages, dict):
        raise ValueError(f"{source}: [speedrun] must be a table")
    bad = sorted(set(stages) - set(STAGE_TABLES))
    if bad:
        raise ValueError(f"{source}: unknown table(s) {[f'speedrun.{b}' for b in bad]}; known: "
                         f"{[f'speedrun.{k}' for k in STAGE_TABLES]}")
    objects = {}
    for key, klass in STAGE_TABLES.items():
        table = check_table(klass, stages.get(key, {}), f"speedrun.{key}", source)
        try:
            objects[key] = klass(**table)
        except ValueError as err:  # the two tuning stages share one settings class: name the table used
            raise ValueError(f"{source}: {str(err).replace('[speedrun.finetune]', f'[speedrun.{key}]')}") from None
    trainer = {k: data[k] for k in TRAINER_TABLES if k in data}
    trainer["data"] = {**trainer.get("data", {}), "tokenizer_vocab": objects["tokenizer"].vocab_size,
                       "val_fraction": objects["data"].val_fraction}
    train = RunConfig.from_dict(trainer, source=source)
    train.model_config()  # the model shape is checked now, not after data preparation
    machine = objects["machine"]
    if machine.gpu and train.train.gpu and machine.gpu != train.train.gpu:
        raise ValueError(f"{source}: [speedrun.machine] gpu={machine.gpu!r} and [train] gpu={train.train.gpu!r} "
                         "must name the same GPU")
    from llmbook.finetune.config import load_finetune_config

    for key in ("sft", "dpo"):  # the tuning presets are checked now, not after hours of pretraining
        try:
            load_finetune_config(objects[key].preset, list(objects[key].overrides))
        except (OSError, ValueError) as err:
            raise ValueError(f"{source}: [speedrun.{key}] {err}") from None
    return SpeedrunConfig(name=name, description=str(data.get("description", "")), train=train, raw=data, **objects)


def load_preset(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SpeedrunConfig:
    """Read a speedrun preset by name (`ci`, `cpu`, `colab-t4`, `h100`) or path, with `table.field=value`
    overrides (`speedrun.eval.limit=50`, `train.steps=10`)."""
    path = preset_path(name_or_path)
    if not path.is_file():
        names = ", ".join(available_presets())
        raise FileNotFoundError(f"speedrun preset {str(name_or_path)!r} not found ({path}); presets: {names}")
    data = _apply_overrides(read_toml(path), list(overrides))
    return from_dict(data, path.stem, source=str(path))


def _apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`speedrun.TABLE.field=value` goes to the stage tables, `TABLE.field=value` to the trainer's."""
    stage_items = [o for o in overrides if o.lstrip("-").startswith("speedrun.")]
    trainer_items = [o for o in overrides if o not in stage_items]
    out = apply_overrides(data, trainer_items)
    stages = {k: dict(v) for k, v in out.get("speedrun", {}).items()}
    nested = apply_overrides(stages, [o.lstrip("-")[len("speedrun."):] for o in stage_items])
    if nested:
        out["speedrun"] = nested
    return out
