"""The fine-tuning stages end to end, each a run of the book's trainer: SFT (optionally LoRA/QLoRA), a reward model,
DPO/IPO and GRPO, plus a cache that trains each configuration once (@sec-finetune).

Every stage writes a run directory like `llmbook train` does (`metrics.jsonl`, `checkpoints/step_.../` with the
model, the chat tokenizer, `chat_template.jinja` and `finetune.json`, the stage's config and lineage), so it
resumes, and `llmbook chat`, `generate` and `export` read it. A LoRA run also writes `adapter/` with the adapter
weights alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from llmbook.fileio import atomic_write
from llmbook.finetune import synthetic
from llmbook.finetune.base import (FINETUNE_FILE, chat_model, disable_dropout, load_base, load_finetuned,
                                   model_dict)
from llmbook.finetune.chat import END, ChatFormat, special_tokens
from llmbook.finetune.config import FinetuneConfig
from llmbook.finetune.data import (BatchLoader, EncodedPair, Example, encode_chats, encode_pairs, load_hh_pairs,
                                   load_instructions, sft_loaders, split_held_out)
from llmbook.finetune.lora import apply_lora, base_fingerprint, save_adapter

Log = Callable[[str], None]


def resolve_data(name: str) -> Path:
    """A data file: an existing path as given, otherwise a name in the data registry (`llmbook.data.registry`)."""
    path = Path(name)
    if path.is_file():
        return path
    from llmbook.data.registry import fetch

    return fetch(name)


def _device(cfg: FinetuneConfig) -> str:
    from llmbook.train.trainer import resolve_device

    return resolve_device(cfg.run.device)


def check_out_dir(out_dir: Path, resume: bool) -> Path:
    """Refuse to start a new run over one that has checkpoints (before anything in it is rewritten)."""
    from llmbook.train import checkpoint as ckpt

    out_dir = Path(out_dir)
    if not resume and ckpt.list_checkpoints(out_dir / "checkpoints"):
        raise ValueError(f"{out_dir / 'checkpoints'} already holds checkpoints; resume (--resume), or choose a new "
                         "output directory")
    return out_dir


def _stage_files(out_dir: Path, tokenizer: Any, fmt: ChatFormat, meta: dict[str, Any]) -> list[Path]:
    """Write the chat tokenizer, template and lineage once into `out_dir/chat/`; the trainer copies them into
    every checkpoint."""
    folder = out_dir / "chat"
    text = tokenizer.to_str()
    atomic_write(folder / "tokenizer.json", lambda f: f.write(text))
    fmt.save(folder)
    atomic_write(folder / FINETUNE_FILE, lambda f: json.dump(meta, f, indent=2))
    return [folder / "tokenizer.json", folder / "chat_template.jinja", folder / FINETUNE_FILE]


# ------------------------------------------------------------------------------------------------------ SFT data
@dataclass
class SFTData:
    """Encoded SFT examples, the held-out synthetic items and how the mixture was made."""

    train: list[Example]
    val: list[Example]
    test_items: list[synthetic.Item]
    n_synthetic: int
    n_instructions: int
    dropped: int


def sft_data(cfg: FinetuneConfig, fmt: ChatFormat, tokenizer: Any, max_len: int) -> SFTData:
    """Synthetic training items plus a seeded sample of the instruction files, shuffled and encoded; validation is
    the held-out synthetic items with their reference answers (@sec-finetune-data)."""
    d = cfg.data
    train_items, test_items = synthetic.split(d.n_synthetic, d.n_test, seed=cfg.run.seed, families=d.families)
    instructions = [chat for name in d.instructions for chat in load_instructions(resolve_data(name))]
    rng = random.Random(cfg.run.seed)
    rng.shuffle(instructions)
    instructions = instructions[:d.n_instructions]
    chats = [i.messages() for i in train_items] + instructions
    rng.shuffle(chats)
    train, dropped = encode_chats(fmt, tokenizer, chats, max_len)
    val, _ = encode_chats(fmt, tokenizer, [i.messages() for i in test_items], max_len)
    return SFTData(train, val, test_items, len(train_items), len(instructions), dropped)


def test_items(cfg: FinetuneConfig) -> list[synthetic.Item]:
    """The held-out synthetic items of this configuration (the same ones `sft_data` holds out)."""
    return synthetic.split(cfg.data.n_synthetic, cfg.data.n_test, seed=cfg.run.seed, families=cfg.data.families)[1]


# ------------------------------------------------------------------------------------------------------ stages
def run_sft(cfg: FinetuneConfig, out_dir: str | Path, resume: bool = False, log: Log = print) -> Path:
    """Supervised fine-tuning of the base model on chats, with the trainer (@sec-finetune-sft).

    With `[lora] r > 0` only adapters (and the new chat tokens' embedding rows) train, and `out_dir/adapter/`
    receives them alone; with `quantize = "nf4"` the frozen base is stored in 4 bits (QLoRA).
    """
    from llmbook.train import Trainer

    out_dir = check_out_dir(out_dir, resume)
    device = _device(cfg)
    model, tokenizer = load_base(cfg.base, device, log)
    model, tokenizer, new_ids = chat_model(model, tokenizer, seed=cfg.run.seed)
    fmt = ChatFormat()
    max_len = min(cfg.data.max_len, model.config.block_size)
    data = sft_data(cfg, fmt, tokenizer, max_len)
    lora = replace(cfg.lora, train_tokens=new_ids) if cfg.lora.r > 0 else None
    fingerprint = base_fingerprint(model, skip_tokens=new_ids) if lora else None
    if lora:
        apply_lora(model, lora)
    meta = {"stage": "sft", "config": cfg.to_dict(), "init": str(cfg.base.hf_model or cfg.base.run or "cached base"),
            "chat_tokens": new_ids, "base_sha256": fingerprint,
            "data": {"train_examples": len(data.train), "synthetic": data.n_synthetic,
                     "instructions": data.n_instructions, "dropped_too_long": data.dropped}}
    files = _stage_files(out_dir, tokenizer, fmt, meta)
    run_cfg = cfg.sft.run_config(model_dict(model, lora), cfg.run, max_len)
    pad = special_tokens(tokenizer)[END]
    loaders = sft_loaders(data.train, data.val, cfg.sft.batch_size, pad, pack=cfg.sft.pack, row_len=max_len)
    trainer = Trainer(run_cfg, out_dir, model=model, loaders=loaders, resume=resume, log=log, extra_files=files)
    trainer.fit()
    if lora:
        save_adapter(model, lora, out_dir / "adapter", fingerprint, extra={"chat_tokens": new_ids})
        fmt.save(out_dir / "adapter")
    return out_dir


def preference_pairs(cfg: FinetuneConfig, fmt: ChatFormat, tokenizer: Any
                     ) -> tuple[list[EncodedPair], list[EncodedPair]]:
    """The HH-RLHF pairs, encoded and split deterministically into (train, held-out) (@sec-finetune-reward).

    The shared data hold only the harmless-base *test* split, so both parts come from it: a seeded shuffle holds
    out `held_out_fraction` of the pairs before encoding.
    """
    d = cfg.data
    train, held = split_held_out(load_hh_pairs(resolve_data(d.preferences)), d.held_out_fraction, seed=cfg.run.seed)
    return (encode_pairs(fmt, tokenizer, train, d.max_prompt, d.max_response),
            encode_pairs(fmt, tokenizer, held, d.max_prompt, d.max_response))


def _pair_loaders(train: list, held: list, batch_size: int, collate: Callable[[list], Any]):
    def make(split: str, rank: int, world_size: int, seed: int) -> BatchLoader:
        items = train if split == "train" else held
        return BatchLoader(items, batch_size, collate, seed=seed, rank=rank, world_size=world_size)
    return make


def run_reward(cfg: FinetuneConfig, out_dir: str | Path, init: str | Path, resume: bool = False, log: Log = print
               ) -> Path:
    """A Bradley-Terry reward model initialised from the SFT model `init` (@sec-finetune-reward)."""
    from llmbook.finetune.reward import RewardModel, RewardObjective, pair_batch
    from llmbook.train import Trainer

    out_dir = check_out_dir(out_dir, resume)
    loaded = load_finetuned(init, device=_device(cfg), merge=True)
    train, held = preference_pairs(cfg, loaded.chat, loaded.tokenizer)
    pad = special_tokens(loaded.tokenizer)[END]
    meta = {"stage": "reward", "config": cfg.to_dict(), "init": str(loaded.path),
            "data": {"train_pairs": len(train), "held_out_pairs": len(held)}}
    files = _stage_files(out_dir, loaded.tokenizer, loaded.chat, meta)
    run_cfg = cfg.reward.run_config(model_dict(loaded.model), cfg.run, loaded.model.config.block_size)
    loaders = _pair_loaders(train, held, cfg.reward.batch_size, lambda batch: pair_batch(batch, pad))
    Trainer(run_cfg, out_dir, model=RewardModel(loaded.model), loaders=loaders, resume=resume, log=log,
            objective=RewardObjective(), extra_files=files).fit()
    return out_dir


def load_reward_model(path: str | Path, device: str = "cpu"):
    """A trained reward model and its tokenizer and chat format, from its run or checkpoint."""
    import warnings

    from tokenizers import Tokenizer

    from llmbook.finetune.reward import RewardModel
    from llmbook.model import GPT
    from llmbook.train import checkpoint as ckpt
    from llmbook.train.config import RunConfig

    info = ckpt.info(path)
    gpt = GPT(RunConfig.from_dict(info.config, source=str(info.path / "config.json")).model_config())
    model = RewardModel(gpt)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        ckpt.load_checkpoint(info.path, model, None, sharded=False)
    return model.to(device).eval(), Tokenizer.from_file(str(info.path / "tokenizer.json")), ChatFormat.load(info.path)


def run_dpo(cfg: FinetuneConfig, out_dir: str | Path, init: str | Path, resume: bool = False, log: Log = print) -> Path:
    """DPO (or IPO, `[dpo] loss`) from the SFT model `init`, which is also the frozen reference (@sec-finetune-dpo).

    Reference log-probabilities are computed once for the pairs the run will see (steps x batch size of them) and
    for the held-out pairs used for validation.
    """
    from llmbook.finetune.dpo import DPOObjective, collate, reference_logps
    from llmbook.train import Trainer

    out_dir = check_out_dir(out_dir, resume)
    loaded = load_finetuned(init, device=_device(cfg), merge=True)
    disable_dropout(loaded.model)  # the policy must equal the reference at step 0, as in TRL
    train, held = preference_pairs(cfg, loaded.chat, loaded.tokenizer)
    train = train[:cfg.dpo.steps * cfg.dpo.batch_size]
    held = held[:cfg.dpo.eval_batches * cfg.dpo.batch_size]
    pad = special_tokens(loaded.tokenizer)[END]
    ref_train = reference_logps(loaded.model, train, pad, precision=cfg.run.precision)
    ref_held = reference_logps(loaded.model, held, pad, precision=cfg.run.precision)
    meta = {"stage": "dpo", "config": cfg.to_dict(), "init": str(loaded.path),
            "data": {"train_pairs": len(train), "held_out_pairs": len(held)}}
    files = _stage_files(out_dir, loaded.tokenizer, loaded.chat, meta)
    run_cfg = cfg.dpo.run_config(model_dict(loaded.model), cfg.run, loaded.model.config.block_size)
    loaders = _pair_loaders(list(zip(train, ref_train)), list(zip(held, ref_held)), cfg.dpo.batch_size,
                            lambda batch: collate(batch, pad))
    Trainer(run_cfg, out_dir, model=loaded.model, loaders=loaders, resume=resume, log=log,
            objective=DPOObjective(cfg.dpo.beta, cfg.dpo.loss), extra_files=files).fit()
    return out_dir


def run_grpo(cfg: FinetuneConfig, out_dir: str | Path, init: str | Path, resume: bool = False, log: Log = print
             ) -> Path:
    """GRPO with verifiable rewards on synthetic prompts, from the SFT model `init` (@sec-finetune-grpo).

    The prompts are a fixed set of `n_prompts` distinct items of `[grpo] families` (practised over and over, as RL
    on a problem set), none of them a held-out test prompt: `grpo_prompts` returns them.
    """
    from llmbook.finetune.grpo import GRPOObjective, RolloutLoader
    from llmbook.train import Trainer

    out_dir = check_out_dir(out_dir, resume)
    g = cfg.grpo
    loaded = load_finetuned(init, device=_device(cfg), merge=True)
    disable_dropout(loaded.model)  # sampling and old log-probs run without dropout: so must the policy's loss
    reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    items = grpo_prompts(cfg)
    pad = special_tokens(loaded.tokenizer)[END]
    meta = {"stage": "grpo", "config": cfg.to_dict(), "init": str(loaded.path), "data": {"prompts": len(items)}}
    files = _stage_files(out_dir, loaded.tokenizer, loaded.chat, meta)
    run_cfg = cfg.grpo.run_config(model_dict(loaded.model), cfg.run, loaded.model.config.block_size)
    run_cfg.train.eval_every = 0

    def loaders(split: str, rank: int, world_size: int, seed: int) -> RolloutLoader:
        return RolloutLoader(loaded.model, reference, loaded.chat, loaded.tokenizer, items, g, pad, seed=seed + rank,
                             precision=cfg.run.precision)

    Trainer(run_cfg, out_dir, model=loaded.model, loaders=loaders, resume=resume, log=log,
            objective=GRPOObjective(g.clip, g.kl, g.temperature), extra_files=files).fit()
    return out_dir


def grpo_prompts(cfg: FinetuneConfig) -> list[synthetic.Item]:
    """The problem set GRPO practises on: distinct prompts of `[grpo] families`, disjoint from the test items."""
    g = cfg.grpo
    return synthetic.generate(g.n_prompts, seed=cfg.run.seed + 2, families=g.families, exclude=test_items(cfg),
                              unique=True)


STAGES = {"sft": run_sft, "reward": run_reward, "dpo": run_dpo, "grpo": run_grpo}


# ------------------------------------------------------------------------------------------------------ cache
def cached_stage(stage: str, cfg: FinetuneConfig, init: str | Path | None = None, log: Log = lambda msg: None) -> Path:
    """Run `stage` once for this configuration (and `init`) and return its run directory; later calls reuse it.

    Runs live under `$LLMBOOK_CACHE/finetune/`, named by a hash of the settings the stage reads (`[base]`, `[run]`,
    `[data]`, `[lora]` and its own table) and the init path, trained in a temporary folder and renamed into place
    when complete (`llmbook.eval.checkpoints.train_once`, as for `cached_run`).
    """
    from llmbook.eval.checkpoints import train_once
    from llmbook.train.config import DataConfig
    from llmbook.train.data import cache_root

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {sorted(STAGES)}")
    settings = {k: v for k, v in cfg.to_dict().items() if k in ("base", "run", "data", "lora", stage)}
    key = hashlib.sha256(json.dumps([stage, settings, str(init)], sort_keys=True).encode()).hexdigest()[:12]
    out = cache_root(DataConfig()) / "finetune" / f"{stage}-{key}"

    def train(folder: Path) -> None:
        with torch.random.fork_rng(devices=[]):
            if stage == "sft":
                run_sft(cfg, folder, log=log)
            else:
                STAGES[stage](cfg, folder, init, log=log)

    return train_once(out, getattr(cfg, stage).steps, train)
