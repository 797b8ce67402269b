"""Weight conversion to and from Hugging Face `transformers` GPT-2, Llama and Mistral models (@sec-architecture-hf).

Loading a `GPT2LMHeadModel`, `LlamaForCausalLM` or `MistralForCausalLM` (Llama with a sliding window) gives a
`GPT` with the same logits; exporting writes a
directory that `AutoModelForCausalLM.from_pretrained` reads, which is what lets a model trained with the book
be evaluated or served by tools built on `transformers`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmbook.model.config import GPTConfig
from llmbook.model.model import GPT


def _gpt2_config(c: Any) -> GPTConfig:
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation_function={c.activation_function!r} is not the tanh GELU this model uses")
    if c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn or not c.scale_attn_weights:
        raise ValueError("GPT-2 attention scaling options other than the default 1/sqrt(head_dim) are not supported")
    return GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                     n_embd=c.n_embd, mlp="gelu", mlp_hidden=c.n_inner, norm="layernorm", pos_emb="learned",
                     bias=True, tie_weights=bool(c.tie_word_embeddings), norm_eps=c.layer_norm_epsilon)


def _llama_config(c: Any) -> GPTConfig:
    """Llama and Mistral (the same layout; Mistral adds `sliding_window` and has no biases)."""
    # transformers 5 keeps RoPE settings in `rope_parameters`; 4.x in `rope_theta` and `rope_scaling`
    rope = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(c, "rope_theta", 10000.0))
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"Llama rope_type={rope.get('rope_type')!r} (RoPE scaling) is not supported, only 'default'")
    if c.hidden_act != "silu":
        raise ValueError(f"Llama hidden_act={c.hidden_act!r} is not supported, only 'silu' (SwiGLU)")
    bias = bool(getattr(c, "attention_bias", False))
    if bias != bool(getattr(c, "mlp_bias", False)):
        raise ValueError("Llama attention_bias and mlp_bias must agree: this model has a single `bias` switch")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise ValueError(f"Llama head_dim={head_dim} x heads={c.num_attention_heads} != hidden_size={c.hidden_size}")
    return GPTConfig(vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
                     n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads or c.num_attention_heads,
                     n_embd=c.hidden_size, mlp="swiglu", mlp_hidden=c.intermediate_size, norm="rmsnorm",
                     pos_emb="rope", bias=bias, tie_weights=bool(c.tie_word_embeddings),
                     norm_eps=c.rms_norm_eps, rope_base=float(rope.get("rope_theta", 10000.0)),
                     sliding_window=getattr(c, "sliding_window", None) if c.model_type == "mistral" else None)


def _gpt2_pairs(cfg: GPTConfig) -> list[tuple[str, str, bool]]:
    """(our name, Hugging Face name, transpose?) for every GPT-2 tensor; HF GPT-2 stores Linear weights as (in, out)."""
    pairs = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False),
             ("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias", "transformer.ln_f.bias", False),
             ("lm_head.weight", "lm_head.weight", False)]
    for i in range(cfg.n_layer):
        for ours, theirs in (("ln_1", "ln_1"), ("attn.c_attn", "attn.c_attn"), ("attn.c_proj", "attn.c_proj"),
                             ("ln_2", "ln_2"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
            linear = not ours.startswith("ln")
            pairs.append((f"blocks.{i}.{ours}.weight", f"transformer.h.{i}.{theirs}.weight", linear))
            pairs.append((f"blocks.{i}.{ours}.bias", f"transformer.h.{i}.{theirs}.bias", False))
    return pairs


def _llama_pairs(cfg: GPTConfig) -> list[tuple[str, str]]:
    """(our name, Hugging Face name) for every Llama tensor except the fused q/k/v projection."""
    pairs = [("wte.weight", "model.embed_tokens.weight"), ("ln_f.weight", "model.norm.weight"),
             ("lm_head.weight", "lm_head.weight")]
    kinds = ["weight", "bias"] if cfg.bias else ["weight"]
    for i in range(cfg.n_layer):
        pairs += [(f"blocks.{i}.ln_1.weight", f"model.layers.{i}.input_layernorm.weight"),
                  (f"blocks.{i}.ln_2.weight", f"model.layers.{i}.post_attention_layernorm.weight")]
        for ours, theirs in (("attn.c_proj", "self_attn.o_proj"), ("mlp.w1", "mlp.gate_proj"),
                             ("mlp.w3", "mlp.up_proj"), ("mlp.w2", "mlp.down_proj")):
            pairs += [(f"blocks.{i}.{ours}.{kind}", f"model.layers.{i}.{theirs}.{kind}") for kind in kinds]
    return pairs


def from_hf(hf_model: Any, dtype: torch.dtype | None = torch.float32) -> GPT:
    """A `GPT` with the weights of a transformers GPT-2, Llama or Mistral causal LM (@sec-architecture-hf).

    The weights are mapped in float32 and the model is returned in `dtype` (None: the Hugging Face model's).
    """
    if dtype is None:
        dtype = next(hf_model.parameters()).dtype
    model_type = getattr(hf_model.config, "model_type", None)
    sd = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    if model_type == "gpt2":
        cfg = _gpt2_config(hf_model.config)
        ours = {o: (sd[t].t() if tr else sd[t]) for o, t, tr in _gpt2_pairs(cfg) if t in sd}
    elif model_type in ("llama", "mistral"):
        cfg = _llama_config(hf_model.config)
        ours = {o: sd[t] for o, t in _llama_pairs(cfg) if t in sd}
        kinds = ["weight", "bias"] if cfg.bias else ["weight"]
        for i in range(cfg.n_layer):
            for kind in kinds:
                ours[f"blocks.{i}.attn.c_attn.{kind}"] = torch.cat(
                    [sd[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
    else:
        raise ValueError(f"from_hf supports model_type 'gpt2', 'llama' and 'mistral', got {model_type!r}")
    if cfg.tie_weights:
        ours.pop("lm_head.weight", None)
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [m for m in missing if not (cfg.tie_weights and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval()


def hf_config(cfg: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None,
              pad_token_id: int | None = None) -> Any:
    """The transformers config (GPT-2, Llama, or Mistral for a sliding window) of the same architecture, or a ValueError.

    The special-token ids are the model's own tokenizer's (None when unknown), never the defaults of the
    transformers classes (GPT-2's 50256, Llama's 1 and 2), which name other tokens or none of this vocabulary.
    """
    from transformers import GPT2Config, LlamaConfig, MistralConfig

    tokens = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    for name, value in tokens.items():
        if value is not None and not 0 <= value < cfg.vocab_size:
            raise ValueError(f"{name}={value} is outside the vocabulary of {cfg.vocab_size} tokens")

    problems = []
    if not cfg.causal:
        problems.append("causal=False")
    if cfg.norm_position != "pre":
        problems.append(f"norm_position={cfg.norm_position!r}")
    gpt2 = cfg.pos_emb == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.bias and \
        cfg.n_kv_head == cfg.n_head and cfg.sliding_window is None
    llama = cfg.pos_emb == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu"
    if llama and cfg.sliding_window is not None and cfg.bias:
        problems.append(f"sliding_window={cfg.sliding_window} exports as Mistral, which has no biases: set bias=False")
    if problems or not (gpt2 or llama):
        why = ", ".join(problems) or (f"pos_emb={cfg.pos_emb!r}, norm={cfg.norm!r}, mlp={cfg.mlp!r}, bias={cfg.bias}, "
                                      f"n_kv_head={cfg.n_kv_head}, sliding_window={cfg.sliding_window}")
        raise ValueError(f"no transformers architecture matches this config ({why}); exportable layouts are GPT-2 "
                         f"(learned, layernorm, gelu, bias, MHA) and Llama/Mistral (rope, rmsnorm, swiglu), "
                         f"pre-norm, causal")
    if gpt2:
        return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.ffn_dim, activation_function="gelu_new",
                          layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_weights,
                          resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=0.0,
                          architectures=["GPT2LMHeadModel"], **tokens)
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_dim,
                  num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
                  head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                  rope_theta=cfg.rope_base,  # read by transformers 4.x and 5.x alike
                  tie_word_embeddings=cfg.tie_weights, **tokens)
    if cfg.sliding_window is not None:
        return MistralConfig(**common, sliding_window=cfg.sliding_window, architectures=["MistralForCausalLM"])
    return LlamaConfig(**common, attention_bias=cfg.bias, mlp_bias=cfg.bias, architectures=["LlamaForCausalLM"])


def _hf_state_dict(model: GPT) -> dict[str, Tensor]:
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if cfg.pos_emb == "learned":
        out = {t: (sd[o].t() if tr else sd[o]).contiguous() for o, t, tr in _gpt2_pairs(cfg)}
    else:
        out = {t: sd[o] for o, t in _llama_pairs(cfg)}
        sizes = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
        for i in range(cfg.n_layer):
            for kind in (["weight", "bias"] if cfg.bias else ["weight"]):
                for p, part in zip("qkv", sd[f"blocks.{i}.attn.c_attn.{kind}"].split(sizes, dim=0)):
                    out[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] = part.contiguous()
    return out


def to_hf(model: GPT, out_dir: str | os.PathLike, tokenizer: Any = None, dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors (and the tokenizer, if given) loadable by AutoModelForCausalLM (@sec-architecture-hf).

    The weights are saved in `dtype` (None: the model's own parameter dtype), recorded in config.json.
    `tokenizer` is anything with `save_pretrained(dir)`, e.g. a transformers PreTrainedTokenizerFast; its
    bos/eos/pad ids go into config.json and generation_config.json, so `generate` stops where the book's
    model stops. Each file is written to a temporary directory beside `out_dir` and moved into place with
    os.replace.
    """
    from transformers import AutoModelForCausalLM

    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(f"tokenizer must have save_pretrained(dir) (e.g. PreTrainedTokenizerFast), "
                         f"got {type(tokenizer).__name__}")
    tokens = {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    hf = AutoModelForCausalLM.from_config(hf_config(model.config, **tokens))
    for name, value in tokens.items():
        setattr(hf.generation_config, name, value)
    if tokens["pad_token_id"] is None and tokens["eos_token_id"] is not None:  # pad batches with EOS, as GPT-2 does
        hf.generation_config.pad_token_id = tokens["eos_token_id"]
    missing, unexpected = hf.load_state_dict(_hf_state_dict(model), strict=False)
    missing = [m for m in missing if not (model.config.tie_weights and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"export mapping incomplete: missing {missing}, unexpected {unexpected}")
    if model.config.tie_weights:
        hf.tie_weights()
    hf = hf.to(next(model.parameters()).dtype if dtype is None else dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp") as tmp:
        try:
            hf.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        except Exception as err:  # a full disk: safetensors reports it as "I/O error: ... (os error 28)"
            match = re.search(r"os error (\d+)", str(err))
            code = err.errno if isinstance(err, OSError) else int(match.group(1)) if match else None
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(out)) from None
        for f in Path(tmp).iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(f, out / f.name)
    return out
