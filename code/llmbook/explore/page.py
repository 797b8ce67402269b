"""The explorer page: the data the model produces for a set of prompts, written into one self-contained HTML
file with inline CSS, JavaScript and JSON (no network, no server) (@sec-architecture-explorer)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmbook.explore.tokens import token_bytes, token_piece
from llmbook.explore.trace import trace
from llmbook.fileio import atomic_write
from llmbook.model import GPT

MAX_PROMPTS = 32  # bounds the page's size: attention grows with prompts x layers x heads x tokens^2
MAX_TOKENS = 64
MAX_TOP_K = 50
LENS_K = 5  # tokens listed per logit-lens cell
ATTN_SCALE = 1000  # attention weights are stored as integers in thousandths
FORMAT = 1  # version of the page's data layout

# Prompts for a model trained on TinyStories [@eldan2023tinystories]: names and objects that recur, so a
# reader can look for heads that attend back to an earlier mention.
DEFAULT_PROMPTS = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "Tom had a big red ball. He threw the ball to his dog, and the dog ran after the",
    "The sun was hot, so Sara and her mom went to the park. Sara said, \"Mom, can we",
    "One day, a cat saw a fish in the pond. The cat wanted to eat the fish, but the",
    "Ben and Mia found a box. Ben said, \"Let's open the box!\" Mia opened the",
)


def encode_prompts(tokenizer, prompts: Sequence[str], context: int,
                   where: Sequence[str] | None = None) -> list[list[int]]:
    """Token ids of each prompt, refusing an empty prompt or one longer than MAX_TOKENS or the model's context.

    `where` names each prompt in error messages (for example "prompts.txt line 3")."""
    if not prompts:
        raise ValueError("no prompts given")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"{len(prompts)} prompts; the explorer holds at most {MAX_PROMPTS}")
    where = list(where) if where is not None else [f"prompt {i + 1}" for i in range(len(prompts))]
    limit = min(MAX_TOKENS, context)
    out = []
    for name, prompt in zip(where, prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{name}: empty prompt")
        ids = tokenizer.encode(prompt).ids
        if not ids:
            raise ValueError(f"{name}: the tokenizer makes no tokens of {prompt[:40]!r}")
        if len(ids) > limit:
            raise ValueError(f"{name}: {len(ids)} tokens; the explorer takes at most {limit} "
                             f"(MAX_TOKENS={MAX_TOKENS}, model context {context})")
        out.append(ids)
    return out


def _sig3(values: torch.Tensor) -> list:
    """Probabilities rounded to 3 significant digits (about float16's precision), as nested lists."""
    return np.vectorize(lambda x: float(f"{x:.3g}"), otypes=[float])(values.numpy()).tolist()


def prompt_data(model: GPT, ids: list[int], text: str, top_k: int) -> dict[str, Any]:
    """One prompt's entry: top-k next tokens and the next token's probability at every position, attention
    weights (lower triangles, in thousandths) and the logit lens (top LENS_K tokens per layer and position)."""
    t = trace(model, ids)
    probs = t.logits.softmax(-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    lens = t.lens_logits.softmax(-1).topk(min(LENS_K, probs.shape[-1]), dim=-1)
    actual = probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:], dtype=torch.long)]
    attn = np.rint(t.attention.numpy() * ATTN_SCALE).astype(int)  # (L, H, T, T)
    return {
        "text": text,
        "ids": ids,
        "next": {"ids": top.indices.tolist(), "p": _sig3(top.values)},
        "actual": _sig3(actual),
        "attn": [[[row[: q + 1].tolist() for q, row in enumerate(head)] for head in layer] for layer in attn],
        "lens": {"ids": lens.indices.tolist(), "p": _sig3(lens.values)},
    }


def explorer_data(model: GPT, tokenizer, prompts: Sequence[str], top_k: int = 10, name: str = "model",
                  step: int | None = None, where: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything the page shows for `prompts`, as one JSON-ready dict (numbers rounded for compactness)."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    cfg = model.config
    encoded = encode_prompts(tokenizer, prompts, cfg.block_size, where)
    entries = [prompt_data(model, ids, text, top_k) for ids, text in zip(encoded, prompts)]
    used = sorted({i for e in entries for i in e["ids"]} | {i for e in entries for row in e["next"]["ids"] for i in row}
                  | {i for e in entries for layer in e["lens"]["ids"] for row in layer for i in row})
    vocab = {}
    for i in used:
        data = token_bytes(tokenizer, i)
        vocab[str(i)] = [token_piece(tokenizer, i), None if data is None else data.hex(" ")]
    model_info = {"name": name, "step": step, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head,
                  "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size, "block_size": cfg.block_size,
                  "params": model.num_params(), "pos_emb": cfg.pos_emb, "norm": cfg.norm, "mlp": cfg.mlp}
    return {"format": FORMAT, "model": model_info, "top_k": top_k, "lens_k": LENS_K, "attn_scale": ATTN_SCALE,
            "vocab": vocab, "prompts": entries}


def _asset(name: str) -> str:
    return resources.files("llmbook.explore").joinpath(name).read_text(encoding="utf-8")


def render_html(data: dict[str, Any], title: str | None = None) -> str:
    """The page for `data`: the template with the CSS, the script and the data inlined.

    The JSON sits in a `<script type="application/json">` block with every `<` escaped, so no string in it
    (a prompt such as `</script>`) can end the block; the script inserts all text with `textContent`.
    """
    title = title or f"Inside {data['model']['name']}"
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    parts = {"TITLE": html.escape(title), "STYLE": _asset("explorer.css"), "SCRIPT": _asset("explorer.js"),
             "DATA": payload}
    return re.sub(r"\{\{(TITLE|STYLE|SCRIPT|DATA)\}\}", lambda m: parts[m.group(1)], _asset("explorer.html"))


def write_explorer(path: str | Path, data: dict[str, Any], title: str | None = None) -> Path:
    """Write the page atomically (temp file, fsync, rename) and return its path."""
    text = render_html(data, title)
    return atomic_write(path, lambda f: f.write(text))


def iframe(page: str, title: str, height: int = 820) -> str:
    """An iframe that holds `page` in its `srcdoc`, sandboxed: the page's scripts run in an opaque origin, apart
    from the document around it, and no file beside that document is needed."""
    return (f'<iframe title="{html.escape(title)}" sandbox="allow-scripts" loading="lazy" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #c8c8c8" '
            f'srcdoc="{html.escape(page, quote=True)}"></iframe>')


class Embedded:
    """The page shown inline by Jupyter and by Quarto's HTML output (as `text/html`), with a short text form."""

    def __init__(self, page: str, title: str, height: int = 820) -> None:
        self.page, self.title, self.height = page, title, height

    def _repr_html_(self) -> str:
        return iframe(self.page, self.title, self.height)

    def __repr__(self) -> str:
        return f"{self.title} (an interactive page, shown in HTML and in notebooks)"
