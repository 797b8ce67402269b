"""From a pretrained model to a chat model and back from disk: the base model, the chat tokens added to its
vocabulary, and loading fine-tuned checkpoints, with or without LoRA adapters (@sec-finetune-chat).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from llmbook.finetune.chat import CHAT_TOKENS, TEMPLATE_FILE, ChatFormat, add_chat_tokens, special_tokens
from llmbook.finetune.config import BaseConfig
from llmbook.finetune.lora import LoRAConfig, apply_lora, load_adapter, merge_lora
from llmbook.model import GPT

FINETUNE_FILE = "finetune.json"  # the fine-tuning config and lineage, written into every checkpoint


def base_run(cfg: BaseConfig, log: Callable[[str], None] = print) -> Path | None:
    """The run directory of the base model (the book's cached run when `cfg.run` is empty); None for `hf_model`."""
    if cfg.hf_model:
        return None
    if cfg.run:
        return Path(cfg.run)
    from llmbook.eval.checkpoints import cached_run
    from llmbook.train import load_config

    return cached_run(load_config(cfg.preset, cfg.overrides), log=log)


def load_base(cfg: BaseConfig, device: str = "cpu", log: Callable[[str], None] = print) -> tuple[GPT, Any]:
    """The pretrained `GPT` and its `tokenizers.Tokenizer` (a book run, or a `transformers` model via `from_hf`)."""
    if cfg.hf_model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmbook.model import from_hf

        model = from_hf(AutoModelForCausalLM.from_pretrained(cfg.hf_model))
        return model.to(device), AutoTokenizer.from_pretrained(cfg.hf_model).backend_tokenizer
    from llmbook.train.generate import load_model

    model, tokenizer, _ = load_model(base_run(cfg, log), device=device)
    return model, tokenizer


@torch.no_grad()
def resize_vocab(model: GPT, vocab_size: int, seed: int = 0) -> GPT:
    """A copy of `model` with `vocab_size` token rows: old rows kept, new rows at the mean embedding plus a little
    seeded noise (so new tokens start as 'an average token' and differ from each other) [@hewitt2021initializing]."""
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"resize_vocab only grows the vocabulary ({old} -> {vocab_size})")
    cfg = copy.deepcopy(model.config)
    cfg.vocab_size = vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = GPT(cfg).to(model.wte.weight.device, model.wte.weight.dtype)
        state = {k: v for k, v in model.state_dict().items() if k not in ("wte.weight", "lm_head.weight")}
        new.load_state_dict(state, strict=False)
        for name in ("wte", "lm_head") if not cfg.tie_weights else ("wte",):
            src, dst = getattr(model, name).weight, getattr(new, name).weight
            dst[:old] = src
            noise = torch.randn(vocab_size - old, src.shape[1], device=src.device, dtype=src.dtype)
            dst[old:] = src.mean(0) + 0.1 * src.std(0) * noise
    return new.train(model.training)


def chat_model(model: GPT, tokenizer: Any, seed: int = 0) -> tuple[GPT, Any, list[int]]:
    """Copies of the model and tokenizer with the chat tokens added to the vocabulary, and the tokens' ids
    (@sec-finetune-chat)."""
    tokenizer = add_chat_tokens(tokenizer)
    ids = [special_tokens(tokenizer)[t] for t in CHAT_TOKENS]
    vocab = max(model.config.vocab_size, max(ids) + 1)
    model = resize_vocab(model, vocab, seed) if vocab > model.config.vocab_size else copy.deepcopy(model)
    return model, tokenizer, ids


def model_dict(model: GPT, lora: LoRAConfig | None = None) -> dict[str, Any]:
    """The `[model]` table of a fine-tuned run: the architecture, plus the LoRA config under `extra`."""
    fields = model.config.to_dict()
    extra = dict(fields.pop("extra", {}) or {})
    extra.pop("lora", None)
    if lora is not None and lora.r > 0:
        extra["lora"] = lora.to_dict()
    return {**fields, "extra": extra}


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability of `model` to zero, in place (@sec-finetune-dpo).

    Preference and RL objectives compare the policy's log-probabilities with ones computed without dropout (the
    reference's, the sampling policy's); dropout in the policy's forward would make them differ at step 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def autocast(device_type: str, precision: str):
    """The trainer's autocast for `precision` (fp32: none), so log-probabilities computed outside the trainer
    (reference, sampling policy) use the same arithmetic as the policy's inside it."""
    import contextlib

    from llmbook.train.parallel import DTYPES

    return contextlib.nullcontext() if precision == "fp32" else torch.autocast(device_type, dtype=DTYPES[precision])


@dataclass
class Loaded:
    """A fine-tuned model read back from a checkpoint, with what it needs to chat."""

    model: GPT
    tokenizer: Any
    chat: ChatFormat
    path: Path
    step: int
    meta: dict[str, Any]  # the run's finetune.json (stage, configs, lineage)


def load_finetuned(path: str | Path, device: str = "cpu", merge: bool = False) -> Loaded:
    """A fine-tuning run or checkpoint as a model (LoRA adapters re-injected, or merged with `merge`), its
    tokenizer, chat format and lineage (@sec-finetune-lora)."""
    from tokenizers import Tokenizer

    from llmbook.train import checkpoint as ckpt
    from llmbook.train.config import RunConfig

    info = ckpt.info(path)
    cfg = RunConfig.from_dict(info.config, source=str(info.path / "config.json")).model_config()
    lora = cfg.extra.get("lora")
    try:
        lora = LoRAConfig(**lora) if lora else None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{info.path / 'config.json'}: field 'model.extra.lora': {err}") from None
    with torch.random.fork_rng(devices=[]):  # building the model draws weights: leave the caller's generator alone
        model = GPT(cfg)
        if lora:
            apply_lora(model, lora)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        ckpt.load_checkpoint(info.path, model, None, sharded=False)
    if lora and merge:
        merge_lora(model)
    for name in ("tokenizer.json", TEMPLATE_FILE):
        if not (info.path / name).is_file():
            raise FileNotFoundError(f"{info.path} has no {name}: not a fine-tuned chat checkpoint")
    meta_file = info.path / FINETUNE_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return Loaded(model.to(device).eval(), Tokenizer.from_file(str(info.path / "tokenizer.json")),
                  ChatFormat.load(info.path), info.path, info.step, meta)


def load_with_adapter(base: BaseConfig, adapter_dir: str | Path, device: str = "cpu", merge: bool = False,
                      log: Callable[[str], None] = print) -> tuple[GPT, Any, ChatFormat]:
    """The base model made a chat model and given the LoRA adapter saved in `adapter_dir` (@sec-finetune-lora).

    The adapter records the fingerprint of the base it was trained on; a different base is refused.
    """
    model, tokenizer = load_base(base, device, log)
    model, tokenizer, _ = chat_model(model, tokenizer)
    load_adapter(model, adapter_dir)
    if merge:
        merge_lora(model)
    fmt = ChatFormat.load(adapter_dir) if (Path(adapter_dir) / TEMPLATE_FILE).is_file() else ChatFormat()
    return model.eval(), tokenizer, fmt


def save_checkpoint_dir(model: nn.Module, run_cfg, out_dir: str | Path, extra_files: list[Path], step: int = 0) -> Path:
    """Write `model` as a complete checkpoint run (`out_dir/checkpoints/step_...`) that generate, export and chat
    read like any trained run (no optimizer state worth resuming)."""
    from llmbook.train import checkpoint as ckpt

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] or [nn.Parameter(torch.zeros(1))])
    state = {"step": step, "tokens_seen": 0, "rng": ckpt.rng_state(), "loader": {}, "scaler": {}, "guard": {},
             "world_size": 1}
    return ckpt.save_checkpoint(Path(out_dir) / "checkpoints", step, model, optimizer, state, run_cfg.to_dict(),
                                sharded=False, keep=1, extra_files=extra_files)
