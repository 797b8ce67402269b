"""Plots from a run's `metrics.jsonl`: loss curves, learning rate and gradient norm (@sec-scale-trainer)."""

from __future__ import annotations

from pathlib import Path

from llmbook.train.trainer import read_metrics


def plot_metrics(run_dir: str | Path, baselines: dict[str, float] | None = None):
    """A three-panel figure: train/validation loss (with optional horizontal baselines), learning rate, grad norm."""
    import matplotlib.pyplot as plt

    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax, lx, gx) = plt.subplots(1, 3, figsize=(10, 3.2), gridspec_kw={"width_ratios": [2, 1, 1]})
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o", label="validation")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, color="gray", ls=(":", "--", "-.")[i % 3], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    lx.plot([r["step"] for r in train], [r["lr"] for r in train])
    lx.set_xlabel("step")
    lx.set_ylabel("learning rate")
    gx.plot([r["step"] for r in train], [r["grad_norm"] for r in train])
    gx.set_xlabel("step")
    gx.set_ylabel("gradient norm (before clipping)")
    fig.tight_layout()
    return fig
