"""The explorer's two main views as a static figure, for the PDF book and for print (@sec-architecture-explorer)."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_attention_and_lens(data: dict[str, Any], prompt: int, layer: int, head: int):
    """One prompt of the explorer's data (`explorer_data`): the attention map of one head, and the logit lens
    (top token and its probability after each block, at every position). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    entry = data["prompts"][prompt]
    pieces = [data["vocab"][str(i)][0] for i in entry["ids"]]
    t, n_layer = len(pieces), data["model"]["n_layer"]
    attn = np.full((t, t), np.nan)
    for q, row in enumerate(entry["attn"][layer][head]):
        attn[q, : len(row)] = np.asarray(row) / data["attn_scale"]
    lens_p = np.array([[cell[0] for cell in per_layer] for per_layer in entry["lens"]["p"]])  # (n_layer + 1, T)
    lens_ids = [[cell[0] for cell in per_layer] for per_layer in entry["lens"]["ids"]]

    fig, (a, b) = plt.subplots(1, 2, figsize=(7.2, 4.2), gridspec_kw={"width_ratios": [1, 1.45]})
    image = a.imshow(attn, cmap="Blues", vmin=0, vmax=1)
    a.set_title(f"attention, block {layer + 1}, head {head + 1}", fontsize=8)
    a.set_xlabel("key", fontsize=7)
    a.set_ylabel("query", fontsize=7)
    for axis in (a.xaxis, a.yaxis):
        axis.set_ticks(range(t))
    a.set_xticklabels(pieces, rotation=90, fontsize=5)
    a.set_yticklabels(pieces, fontsize=5)
    a.grid(False)
    fig.colorbar(image, ax=a, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)

    b.imshow(lens_p, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    b.set_title("logit lens: top token and its probability", fontsize=8)
    for layer_i in range(n_layer + 1):
        for pos in range(t):
            p = lens_p[layer_i, pos]
            b.text(pos, layer_i, data["vocab"][str(lens_ids[layer_i][pos])][0], ha="center", va="center",
                   fontsize=4.5, rotation=90, color="white" if p > 0.55 else "black")
    b.set_xticks(range(t))
    b.set_xticklabels(pieces, rotation=90, fontsize=5)
    b.set_xlabel("input token at the position", fontsize=7)
    b.set_yticks(range(n_layer + 1))
    b.set_yticklabels(["embeddings"] + [f"block {i}" for i in range(1, n_layer + 1)], fontsize=6)
    b.grid(False)
    fig.tight_layout()
    return fig
