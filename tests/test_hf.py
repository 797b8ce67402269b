"""Hugging Face parity: GPT-2 and Llama weights load with identical logits, and exports load back.

Models are randomly initialised from tiny configs: nothing is downloaded. Tolerance: 1e-5 absolute in float32.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,  # noqa: E402
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM)

from llmbook.model import GPT, GPTConfig, from_hf, to_hf  # noqa: E402

IDX = torch.randint(0, 96, (2, 19), generator=torch.Generator().manual_seed(0))


def hf_gpt2(**kw):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4, **kw)).eval()


def hf_llama(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    return LlamaForCausalLM(LlamaConfig(**{**base, **kw})).eval()


def hf_mistral(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, max_position_embeddings=64, sliding_window=5)
    return MistralForCausalLM(MistralConfig(**{**base, **kw})).eval()


CASES = {
    "gpt2": hf_gpt2,
    "gpt2-untied": lambda: hf_gpt2(tie_word_embeddings=False),
    "llama-gqa": hf_llama,
    "llama-mha-tied-bias": lambda: hf_llama(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True,
                                            mlp_bias=True),
    "mistral-window-mqa": hf_mistral,  # sequences of 19 tokens: the window of 5 matters
}


@pytest.mark.parametrize("name", CASES)
def test_from_hf_same_logits(name):
    hf = CASES[name]()
    with torch.no_grad():  # perturb every tensor so a mapping error cannot hide behind zero biases or unit norms
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = from_hf(hf)
    with torch.no_grad():
        torch.testing.assert_close(model(IDX)[0], hf(IDX).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_to_hf_round_trip(name, tmp_path):
    model = from_hf(CASES[name]())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = to_hf(model, tmp_path / "export")
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary directory left behind
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDX).logits, model(IDX)[0], atol=1e-5, rtol=0)
    assert json.loads((out / "config.json").read_text())["model_type"] == name.split("-")[0]


def test_to_hf_book_model_and_tokenizer(tmp_path):
    """A model built with the book (not loaded from HF) exports, with a tokenizer saved beside it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_kv_head=1, n_embd=32,
                          mlp="swiglu", norm="rmsnorm", pos_emb="rope", bias=False, tie_weights=False)).eval()
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    out = to_hf(model, tmp_path / "m", tokenizer=tok)
    assert (out / "tokenizer.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDX).logits, model(IDX)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw,match", [
    (dict(pos_emb="alibi"), "no transformers architecture"),
    (dict(norm_position="post"), "norm_position='post'"),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", sliding_window=8), "sliding_window=8 exports as Mistral"),
    (dict(sliding_window=8), "no transformers architecture"),
])
def test_to_hf_rejects_unexportable(kw, match, tmp_path):
    model = GPT(GPTConfig(vocab_size=96, block_size=32, n_layer=1, n_head=4, n_embd=32, **kw))
    with pytest.raises(ValueError, match=match):
        to_hf(model, tmp_path / "x")


def test_from_hf_rejects_unsupported():
    with pytest.raises(ValueError, match="rope_type"):
        from_hf(hf_llama(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}))
    with pytest.raises(ValueError, match="tanh GELU"):
        from_hf(hf_gpt2(activation_function="relu"))


def test_dtype_is_kept_through_import_and_export(tmp_path):
    """from_hf returns float32 by default or the HF model's dtype with dtype=None; to_hf saves the model's dtype."""
    hf = hf_llama().to(torch.bfloat16)
    assert next(from_hf(hf).parameters()).dtype == torch.float32
    model = from_hf(hf, dtype=None)
    assert next(model.parameters()).dtype == torch.bfloat16
    out = to_hf(model, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text()).get("dtype", json.loads(
        (out / "config.json").read_text()).get("torch_dtype")) == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert next(AutoModelForCausalLM.from_pretrained(to_hf(model, tmp_path / "f32", dtype=torch.float32),
                                                     dtype="auto").parameters()).dtype == torch.float32
