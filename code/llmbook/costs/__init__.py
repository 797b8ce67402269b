"""The economics of training an LLM: parameters, FLOPs, memory, time, money, energy, scaling laws (@sec-costs)."""

from llmbook.costs.budget import DEFAULT_GRID_KG_PER_KWH, DEFAULT_PUE, TrainingEstimate, estimate_training
from llmbook.costs.flops import (
    DecodeStep,
    decode_step,
    flops_per_token,
    matmul_params,
    mfu,
    train_flops,
    train_flops_for,
)
from llmbook.costs.hardware import GPU, GPUS, get_gpu
from llmbook.costs.memory import (
    PRECISIONS,
    MemoryBreakdown,
    activation_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    training_memory,
)
from llmbook.costs.params import ParamCount, count_params
from llmbook.costs.published import PUBLISHED_RUNS, PublishedRun
from llmbook.costs.scaling import (
    CHINCHILLA,
    KAPLAN,
    TOKENS_PER_PARAM,
    Allocation,
    chinchilla_optimal,
    isoflop_curve,
    kaplan_optimal,
)

__all__ = [
    "CHINCHILLA", "DEFAULT_GRID_KG_PER_KWH", "DEFAULT_PUE", "GPU", "GPUS", "KAPLAN", "PRECISIONS",
    "PUBLISHED_RUNS", "TOKENS_PER_PARAM", "Allocation", "DecodeStep", "MemoryBreakdown", "ParamCount", "PublishedRun",
    "TrainingEstimate", "activation_bytes", "chinchilla_optimal", "count_params", "decode_step", "estimate_training",
    "flops_per_token", "get_gpu", "isoflop_curve", "kaplan_optimal", "kv_cache_bytes", "layer_activation_bytes",
    "matmul_params", "mfu", "train_flops", "train_flops_for", "training_memory",
]
