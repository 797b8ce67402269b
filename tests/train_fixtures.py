"""Shared fixtures for the trainer tests: tiny packed shards and a tiny run config (imported by test_train*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmbook.data.pack import write_shards

WORDS = ("the cat dog sat on a mat and ran to big red small house tree park ball saw with was happy sad "
         "little girl boy mom said one day time once upon there lived").split()


def synthetic_texts(n_docs: int = 300, seed: int = 0) -> list[str]:
    """Deterministic word salad with some structure (a first-order chain), byte-encoded by the tests."""
    rng = np.random.default_rng(seed)
    nxt = rng.integers(0, len(WORDS), size=(len(WORDS), 3))
    docs = []
    for _ in range(n_docs):
        w = int(rng.integers(len(WORDS)))
        out = []
        for _ in range(int(rng.integers(20, 60))):
            out.append(WORDS[w])
            w = int(nxt[w, rng.integers(3)])
        docs.append(" ".join(out) + ".")
    return docs


def make_shards(out_dir: Path) -> Path:
    """Byte-level shards (ids 0..255, EOS 256) of the synthetic corpus."""
    write_shards(synthetic_texts(), lambda t: list(t.encode("utf-8")), out_dir, eos_id=256, vocab_size=257,
                 val_fraction=0.1, shard_tokens=1 << 14, progress=False)
    return out_dir


def config_text(shard_dir: Path, **sections: dict) -> str:
    """A TOML config for a 2-layer, 32-wide GPT on the byte shards; `sections` override table entries."""
    tables = {
        "model": {"vocab_size": 257, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "data": {"shard_dir": str(shard_dir), "batch_size": 4, "block_size": 16},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "weight_decay": 0.1},
        "train": {"steps": 8, "log_every": 1, "eval_every": 4, "eval_batches": 2, "seed": 7},
        "checkpoint": {"every": 4, "keep": 2},
        "parallel": {"mode": "none"},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}".replace("'", '"').replace("True", "true").replace("False", "false"))
    return "\n".join(lines) + "\n"


def make_bpe_shards(out_dir: Path, vocab_size: int = 300) -> Path:
    """The synthetic corpus packed with a small byte-level BPE whose tokenizer.json travels into every checkpoint
    (what generate, export and eval need)."""
    from llmbook.tokenizer import train_hf_tokenizer

    texts = synthetic_texts()
    tok = train_hf_tokenizer(texts, vocab_size, special_tokens=("<|endoftext|>",))
    write_shards(texts, lambda t: tok.encode(t).ids, out_dir, eos_id=tok.token_to_id("<|endoftext|>"),
                 vocab_size=tok.get_vocab_size(), val_fraction=0.1, progress=False)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir
