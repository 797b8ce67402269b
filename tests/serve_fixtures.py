"""Shared fixtures for the serving tests: a tiny GPT trained for a few seconds on synthetic stories, its BPE
tokenizer, and servable folders of it (base and chat), built once per test session (imported by test_serve_*.py)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from train_fixtures import synthetic_texts

from llmbook.model import GPT, GPTConfig

BLOCK = 64


@functools.lru_cache(maxsize=None)
def _trained(chat: bool, kind: str = "gpt2"):
    """(model, tokenizer): a 2-layer, 32-wide GPT trained for 120 steps on synthetic text (a few seconds)."""
    from llmbook.finetune.chat import add_chat_tokens
    from llmbook.serve.distill import DistillConfig, token_batches, train_student
    from llmbook.tokenizer import train_hf_tokenizer

    texts = synthetic_texts(400, seed=1)
    tok = train_hf_tokenizer(texts, 320)
    if chat:
        tok = add_chat_tokens(tok)
    shape = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=1, tie_weights=False) \
        if kind == "llama" else {}
    config = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT(config)
        ids = [i for t in texts for i in tok.encode(t + "<|endoftext|>").ids]
        train_student(model, token_batches(ids, 8, 32, seed=0), DistillConfig(steps=120, lr=1e-2, warmup_steps=10))
    return model.eval(), tok


def trained(chat: bool = False, kind: str = "gpt2"):
    """A fresh copy of the cached trained model (tests may modify it) and its tokenizer."""
    import copy

    model, tok = _trained(chat, kind)
    return copy.deepcopy(model), tok


@functools.lru_cache(maxsize=None)
def servable_folder(chat: bool = False, kind: str = "gpt2") -> Path:
    """A servable folder (model.safetensors, model.json, tokenizer.json; chat_template.jinja for chat)."""
    from llmbook.finetune.chat import ChatFormat
    from llmbook.serve.modelio import save_model

    model, tok = trained(chat, kind)
    root = Path(tempfile.mkdtemp(prefix="llmbook-serve-test-"))
    atexit.register(shutil.rmtree, root, True)
    return save_model(model, tok, root / ("tiny-chat" if chat else f"tiny-{kind}"), chat=ChatFormat() if chat else None)


@pytest.fixture(scope="session")
def tiny_folder() -> Path:
    return servable_folder(False)


@pytest.fixture(scope="session")
def chat_folder() -> Path:
    return servable_folder(True)
