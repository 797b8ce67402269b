"""Export to GGUF, the single-file format of llama.cpp, with the `gguf` package (@sec-inference-export).

A GGUF file holds key-value metadata (architecture, shapes, the tokenizer's vocabulary and merges) and the
tensors, each in its own type: F32, F16, or a block-quantized type such as Q8_0 (blocks of 32 weights with
one fp16 scale each, 8.5 bits per weight). GPT-2-shaped models map onto llama.cpp's `gpt2` architecture and
Llama-shaped ones onto `llama`, whose rotary embedding pairs dimensions (i, i+1) where ours (and Hugging
Face's) pairs (i, i + d/2): the query and key rows are permuted on the way out, exactly as llama.cpp's own
converter does for Hugging Face checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmbook.eval.models import CausalLM
from llmbook.fileio import atomic_write
from llmbook.model import GPT
from llmbook.serve.quant import QuantLinear

DTYPES = ("f32", "f16", "q8_0")


def architecture(model: GPT) -> str:
    """'gpt2' or 'llama'; raises ValueError for shapes llama.cpp has no matching architecture for here."""
    c = model.config
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("export the unquantized model to GGUF and choose --dtype q8_0 there; "
                         "llmbook's quantized layers have no GGUF equivalent")
    if c.norm_position != "pre" or not c.causal or c.sliding_window is not None:
        raise ValueError("GGUF export supports causal pre-norm models without a sliding window")
    if (c.pos_emb, c.norm, c.mlp) == ("learned", "layernorm", "gelu") and c.bias:
        return "gpt2"
    if (c.pos_emb, c.norm, c.mlp) == ("rope", "rmsnorm", "swiglu") and not c.bias:
        return "llama"
    raise ValueError(f"GGUF export supports GPT-2 shapes (learned positions, LayerNorm, GELU, biases) and Llama "
                     f"shapes (RoPE, RMSNorm, SwiGLU, no biases); got pos_emb={c.pos_emb!r}, norm={c.norm!r}, "
                     f"mlp={c.mlp!r}, bias={c.bias}")


def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q or k projection from the rotate-half RoPE layout to llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """Every tensor under its GGUF name, float32, in PyTorch's (out, in) layout."""
    c, arch = model.config, architecture(model)
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    # a tied head is written out as its own copy, as llama.cpp's converter does for GPT-2: llama.cpp may store the
    # output matrix in a repacked layout for fast matrix products, which the embedding lookup cannot read
    out = {"token_embd.weight": sd["wte.weight"], "output_norm.weight": sd["ln_f.weight"],
           "output.weight": sd["lm_head.weight"]}
    kinds = ("weight", "bias") if c.bias else ("weight",)
    if arch == "gpt2":
        out["position_embd.weight"] = sd["wpe.weight"]
        out["output_norm.bias"] = sd["ln_f.bias"]
        names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
                 "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    else:
        names = {"ln_1": "attn_norm", "attn.c_proj": "attn_output", "ln_2": "ffn_norm", "mlp.w1": "ffn_gate",
                 "mlp.w3": "ffn_up", "mlp.w2": "ffn_down"}
    for i in range(c.n_layer):
        for ours, theirs in names.items():
            for kind in kinds if not ours.startswith("ln") or c.bias else ("weight",):
                out[f"blk.{i}.{theirs}.{kind}"] = sd[f"blocks.{i}.{ours}.{kind}"]
        if arch == "llama":
            q, k, v = np.split(sd[f"blocks.{i}.attn.c_attn.weight"],
                               [c.n_head * c.head_dim, (c.n_head + c.n_kv_head) * c.head_dim])
            out[f"blk.{i}.attn_q.weight"] = _permute_rope(q, c.n_head)
            out[f"blk.{i}.attn_k.weight"] = _permute_rope(k, c.n_kv_head)
            out[f"blk.{i}.attn_v.weight"] = v
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _tokenizer_fields(tokenizer: Any, vocab_size: int, eos_token: str) -> dict[str, Any]:
    """Tokens, types and merges of a byte-level BPE `tokenizers.Tokenizer`, padded to the model's vocab_size."""
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF export needs a byte-level BPE tokenizer, got {model.get('type')!r}")
    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ValueError(f"the tokenizer has ids beyond the model's vocab_size={vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [5] * vocab_size  # UNUSED until filled
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    for text, idx in vocab.items():
        tokens[idx], types[idx] = text, 3 if text in special else 1  # CONTROL or NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    eos = vocab.get(eos_token)
    if eos is None:
        raise ValueError(f"the tokenizer has no {eos_token!r} token")
    return {"tokens": tokens, "types": types, "merges": merges, "eos": eos}


def export_gguf(model: GPT, tokenizer: Any, out_file: str | os.PathLike, dtype: str = "f32",
                eos_token: str = "<|endoftext|>", name: str = "llmbook") -> Path:
    """Write `model` and its tokenizer as one GGUF file (f32, f16 or q8_0 weights), atomically."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"GGUF dtype {dtype!r} is not one of {DTYPES}")
    c, arch = model.config, architecture(model)
    tensors = gguf_tensors(model)
    tok = _tokenizer_fields(tokenizer, c.vocab_size, eos_token)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(name)
        writer.add_context_length(c.block_size)
        writer.add_embedding_length(c.n_embd)
        writer.add_feed_forward_length(c.ffn_dim)
        writer.add_block_count(c.n_layer)
        writer.add_head_count(c.n_head)
        writer.add_head_count_kv(c.n_kv_head)
        if arch == "gpt2":
            writer.add_layer_norm_eps(c.norm_eps)
        else:
            writer.add_layer_norm_rms_eps(c.norm_eps)
            writer.add_rope_freq_base(c.rope_base)
            writer.add_rope_dimension_count(c.head_dim)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("llama-bpe")  # llama.cpp's GPT-4-style split regex, the one the book's BPE uses
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        writer.add_token_merges(tok["merges"])
        writer.add_bos_token_id(tok["eos"])
        writer.add_eos_token_id(tok["eos"])
        writer.add_add_bos_token(False)
        for tname, data in tensors.items():
            matrix = data.ndim == 2 and tname != "position_embd.weight"
            if dtype == "q8_0" and matrix and data.shape[1] % 32 == 0:
                q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(tname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            elif dtype in ("f16", "q8_0") and matrix:
                writer.add_tensor(tname, data.astype(np.float16))
            else:
                writer.add_tensor(tname, data.astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    try:
        atomic_write(out, lambda f: f.write(tmp.read_bytes()), mode="wb")
    finally:
        tmp.unlink(missing_ok=True)
    return out


def llama_cpp_greedy(path: str | os.PathLike, prompt: list[int], max_tokens: int, n_ctx: int) -> list[int]:
    """Greedy continuation of `prompt` token ids by llama.cpp (llama-cpp-python) on a GGUF file."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=max(1, torch.get_num_threads()), verbose=False,
                logits_all=True)
    try:
        llm.eval(prompt)
        out = []
        for _ in range(max_tokens):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
            llm.eval([nxt])
        return out
    finally:
        llm.close()



class LlamaCppLM(CausalLM):
    """A GGUF file run by llama.cpp as an evaluation model, so its perplexity is computed with exactly the windows and
    the tokenizer used for our own models (@sec-inference-export). Rows are scored one at a time (no padding)."""

    def __init__(self, path: str | os.PathLike, tokenizer: Any, eot_id: int, max_length: int) -> None:
        from llama_cpp import Llama

        super().__init__(lambda s: tokenizer.encode(s, add_special_tokens=False).ids, tokenizer.decode, eot_id,
                         max_length, batch_size=1)
        self.llm = Llama(model_path=str(path), n_ctx=max_length, logits_all=True, verbose=False,
                         n_threads=max(1, torch.get_num_threads()))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in ids.tolist():
            self.llm.reset()
            self.llm.eval(row)
            rows.append(torch.from_numpy(np.array(self.llm.scores[: len(row)], dtype=np.float32)))
        return torch.stack(rows)

    def close(self) -> None:
        self.llm.close()
