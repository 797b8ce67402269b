"""Tiny randomly initialised `transformers` models and an offline BPE tokenizer, for tests, benches and the chapter."""

from __future__ import annotations

from collections.abc import Iterable

import torch

EOT = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE on `texts` (no download) and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=None)


def tiny_hf_model(kind: str = "gpt2", vocab_size: int = 512, n_positions: int = 128, n_embd: int = 64,
                  n_layer: int = 2, n_head: int = 4, seed: int = 0):
    """A small randomly initialised GPT-2 or Llama causal LM built from a config (nothing is downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        if kind == "gpt2":
            cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                             n_head=n_head, bos_token_id=0, eos_token_id=0,
                             activation_function="gelu_pytorch_tanh")  # GPT-2's tanh GELU, as one fused op
            return GPT2LMHeadModel(cfg).eval()
        if kind == "llama":
            cfg = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=n_positions, hidden_size=n_embd,
                              intermediate_size=4 * n_embd, num_hidden_layers=n_layer, num_attention_heads=n_head,
                              num_key_value_heads=max(1, n_head // 2), bos_token_id=0, eos_token_id=0)
            return LlamaForCausalLM(cfg).eval()
    raise ValueError(f"kind={kind!r} must be 'gpt2' or 'llama'")
