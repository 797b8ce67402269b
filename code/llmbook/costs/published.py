"""Figures reported by the papers that trained well-known models, used to validate the estimates (@sec-costs-validation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedRun:
    """One training run as its paper reports it; `preset` names the shape in `llmbook.model.PRESETS`."""

    name: str
    preset: str
    tokens: float
    gpu: str
    gpu_hours: float | None
    cite: str
    train_flops: float | None = None


PUBLISHED_RUNS: tuple[PublishedRun, ...] = (
    PublishedRun("GPT-3 175B", "gpt3-175b", 300e9, "v100", None, "brown2020gpt3", train_flops=3.14e23),
    # A100-80GB GPU-hours: LLaMA Table 15 [@touvron2023llama]; Llama 2 Table 2 [@touvron2023llama2].
    PublishedRun("LLaMA 7B", "llama-7b", 1.0e12, "a100-80gb", 82_432, "touvron2023llama"),
    PublishedRun("LLaMA 13B", "llama-13b", 1.0e12, "a100-80gb", 135_168, "touvron2023llama"),
    PublishedRun("LLaMA 65B", "llama-65b", 1.4e12, "a100-80gb", 1_022_362, "touvron2023llama"),
    PublishedRun("Llama 2 7B", "llama2-7b", 2.0e12, "a100-80gb", 184_320, "touvron2023llama2"),
    PublishedRun("Llama 2 70B", "llama2-70b", 2.0e12, "a100-80gb", 1_720_320, "touvron2023llama2"),
)

# Chinchilla: Gopher's compute budget, and the model Hoffmann et al. trained with it [@hoffmann2022chinchilla].
GOPHER_FLOPS = 5.76e23
CHINCHILLA_PARAMS = 70e9
CHINCHILLA_TOKENS = 1.4e12
