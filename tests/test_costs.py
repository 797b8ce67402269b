"""llmbook.costs: parameter counts against transformers, FLOPs, memory and scaling laws against published figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llmbook.cli import main
from llmbook.costs import (
    GPUS,
    PRECISIONS,
    PUBLISHED_RUNS,
    activation_bytes,
    chinchilla_optimal,
    count_params,
    decode_step,
    estimate_training,
    flops_per_token,
    isoflop_curve,
    kaplan_optimal,
    kv_cache_bytes,
    layer_activation_bytes,
    mfu,
    train_flops,
    train_flops_for,
    training_memory,
)
from llmbook.costs.published import CHINCHILLA_PARAMS, CHINCHILLA_TOKENS, GOPHER_FLOPS
from llmbook.model import PRESETS, GPTConfig

TINY_GPT2 = GPTConfig(vocab_size=97, block_size=32, n_layer=3, n_head=4, n_embd=64)
TINY_LLAMA = GPTConfig(vocab_size=97, block_size=32, n_layer=3, n_head=4, n_kv_head=2, n_embd=64, mlp="swiglu",
                       mlp_hidden=176, norm="rmsnorm", pos_emb="rope", bias=False, tie_weights=False)


def hf_gpt2(cfg: GPTConfig, **kw) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                      vocab_size=cfg.vocab_size, n_positions=cfg.block_size,
                                      bos_token_id=0, eos_token_id=0, **kw))


def hf_llama(cfg: GPTConfig, **kw) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                                        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
                                        intermediate_size=cfg.ffn_dim, vocab_size=cfg.vocab_size,
                                        max_position_embeddings=cfg.block_size,
                                        tie_word_embeddings=cfg.tie_weights, **kw))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("preset", ["gpt2-124m", "gpt2-350m"])
def test_param_count_matches_transformers_gpt2(preset):
    cfg = GPTConfig.from_preset(preset)
    with torch.device("meta"):
        model = hf_gpt2(cfg)
    assert count_params(cfg).total == n_params(model)


@pytest.mark.parametrize("preset", ["llama-7b", "llama2-70b", "llama3-8b", "llama-1b"])
def test_param_count_matches_transformers_llama(preset):
    cfg = GPTConfig.from_preset(preset)
    with torch.device("meta"):
        model = hf_llama(cfg)
    assert count_params(cfg).total == n_params(model)


def test_param_count_tiny_models_and_split():
    assert count_params(TINY_GPT2).total == n_params(hf_gpt2(TINY_GPT2))
    assert count_params(TINY_LLAMA).total == n_params(hf_llama(TINY_LLAMA))
    p = count_params(GPTConfig.from_preset("gpt2-124m"))
    assert p.total == 124_439_808  # nanoGPT's GPT-2 small, position table included
    assert p.head == 0 and p.embedding == 50257 * 768 and p.position == 1024 * 768
    assert p.non_embedding == p.total - p.embedding - p.position


def test_swiglu_hidden_size_follows_llama_rule():
    assert GPTConfig.from_preset("llama-7b").ffn_dim == 11008  # 8/3 * 4096 rounded up to a multiple of 256
    assert GPTConfig.from_preset("llama-13b").ffn_dim == 13824
    assert GPTConfig.from_preset("gpt2-124m").ffn_dim == 4 * 768


# ------------------------------------------------------------------------------------------ FLOPs
def test_gpt3_training_flops_match_paper():
    """Brown et al. report 3.14e23 training FLOPs for GPT-3 175B on 300B tokens."""
    run = next(r for r in PUBLISHED_RUNS if r.preset == "gpt3-175b")
    n = count_params(GPTConfig.from_preset("gpt3-175b")).total
    assert train_flops(n, run.tokens) == pytest.approx(run.train_flops, rel=0.01)
    assert train_flops(175e9, 300e9) == pytest.approx(3.15e23)


def test_attention_term_follows_palm():
    cfg = GPTConfig.from_preset("gpt2-124m")
    n = count_params(cfg).attention + count_params(cfg).mlp + cfg.vocab_size * cfg.n_embd
    assert flops_per_token(cfg, 1024) == 6 * n + 12 * 12 * 1024 * 768
    assert flops_per_token(cfg, 1024, training=False) == 2 * n + 4 * 12 * 1024 * 768
    assert flops_per_token(cfg, 2048) > flops_per_token(cfg, 1024)
    assert train_flops_for(cfg, 1e9) == pytest.approx(1e9 * flops_per_token(cfg))


@pytest.mark.parametrize("run", [r for r in PUBLISHED_RUNS if r.gpu_hours], ids=lambda r: r.name)
def test_llama_gpu_hours_within_band(run):
    """At 48% MFU the estimate lies within 15% of the GPU-hours the LLaMA / Llama 2 papers report.

    Equivalently, the reported hours imply an MFU between 40% and 60% on A100-80GB, the range
    large dense-model runs achieve in practice.
    """
    cfg = GPTConfig.from_preset(run.preset)
    flops = train_flops_for(cfg, run.tokens)
    estimate = estimate_training(flops, run.gpu, mfu=0.48)
    assert estimate.gpu_hours == pytest.approx(run.gpu_hours, rel=0.15)
    implied = flops / (GPUS[run.gpu].peak_bf16 * run.gpu_hours * 3600)
    assert 0.40 < implied < 0.60


def test_mfu_round_trip():
    cfg = GPTConfig.from_preset("gpt2-124m")
    peak = GPUS["h100-sxm"].peak_bf16
    tokens_per_s = 0.45 * peak / flops_per_token(cfg, 1024)
    assert mfu(tokens_per_s, cfg, 1024, peak) == pytest.approx(0.45)


# ------------------------------------------------------------------------------------------ budget
def test_estimate_training_arithmetic():
    est = estimate_training(1e21, "a100-80gb", mfu=0.5, n_gpus=8, price_per_gpu_hour=2.0, pue=1.2,
                            grid_kg_per_kwh=0.5)
    hours = 1e21 / (312e12 * 0.5) / 3600
    assert est.gpu_hours == pytest.approx(hours)
    assert est.wall_clock_hours == pytest.approx(hours / 8)
    assert est.cost_usd == pytest.approx(2.0 * hours)
    assert est.energy_kwh == pytest.approx(hours * 0.4 * 1.2)
    assert est.co2e_kg == pytest.approx(hours * 0.4 * 1.2 * 0.5)


def test_estimate_without_power_or_price_reports_none():
    est = estimate_training(1e21, "tpu-v5e", mfu=0.5)
    assert est.cost_usd is None and est.energy_kwh is None and est.co2e_kg is None
    assert estimate_training(1e21, "tpu-v5e", mfu=0.5, power_w=200).energy_kwh > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_flops=-1.0, gpu="h100-sxm", mfu=0.4), "train_flops"),
    (dict(train_flops=1e20, gpu="h100-sxm", mfu=1.5), "mfu"),
    (dict(train_flops=1e20, gpu="h100-sxm", mfu=0.0), "mfu"),
    (dict(train_flops=1e20, gpu="b300", mfu=0.4), "unknown GPU 'b300'"),
    (dict(train_flops=1e20, gpu="h100-sxm", mfu=0.4, n_gpus=0), "n_gpus"),
    (dict(train_flops=1e20, gpu="h100-sxm", mfu=0.4, price_per_gpu_hour=-2.0), "price"),
])
def test_estimate_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_training(**kwargs)


def test_gpu_table_is_sane_and_cited():
    for gpu in GPUS.values():
        assert 10e12 < gpu.peak_bf16 < 2e15 and 8 <= gpu.memory_gb <= 200 and gpu.cite
        assert gpu.ridge_point > 50  # every modern accelerator needs > 50 FLOPs/byte to be compute-bound


# ------------------------------------------------------------------------------------------ memory
def test_mixed_precision_is_16_bytes_per_param_under_ddp():
    cfg = GPTConfig.from_preset("llama2-7b")
    n = count_params(cfg).total
    mem = training_memory(cfg, world_size=8, zero_stage=0, precision="mixed")
    assert mem.weights + mem.gradients + mem.optimizer == 16 * n


@pytest.mark.parametrize("stage, expected", [(0, 2 + 2 + 12), (1, 2 + 2 + 12 / 8), (2, 2 + (2 + 12) / 8), (3, 16 / 8)])
def test_zero_stages_shard_as_in_the_paper(stage, expected):
    cfg = GPTConfig.from_preset("llama2-7b")
    n = count_params(cfg).total
    mem = training_memory(cfg, world_size=8, zero_stage=stage, precision="mixed")
    assert (mem.weights + mem.gradients + mem.optimizer) / n == pytest.approx(expected)
    assert mem.activations == training_memory(cfg, world_size=1, zero_stage=0).activations


@pytest.mark.parametrize("stage, expected", [(0, 4 + 4 + 8), (1, 4 + 4 + 8 / 8), (2, 4 + (4 + 8) / 8), (3, 16 / 8)])
def test_autocast_layout_shards_like_zero(stage, expected):
    """llmbook.train's layout: fp32 weights (4), fp32 grads (4) and two fp32 moments (8), sharded by stage."""
    cfg = GPTConfig.from_preset("llama2-7b")
    n = count_params(cfg).total
    mem = training_memory(cfg, world_size=8, zero_stage=stage, precision="amp")
    assert (mem.weights + mem.gradients + mem.optimizer) / n == pytest.approx(expected)
    d, f, L, V = cfg.n_embd, cfg.ffn_dim, cfg.n_layer, cfg.vocab_size
    matrices = L * (4 * d * d + 3 * d * f) + V * d
    if stage < 3:  # autocast's bf16 copy of every weight matrix (MHA: 4 d x d, SwiGLU: 3 d x f, the head)
        assert mem.working_weights == 2 * matrices
    else:  # FSDP2: two gathered bf16 blocks and the embedding/head
        assert mem.working_weights == 2 * (2 * (matrices - V * d) / L + V * d)


def test_state_bytes_match_a_real_adamw_step():
    """Weights, gradients and AdamW moments of an fp32 model after one step, counted byte for byte."""
    torch.manual_seed(0)
    model = hf_llama(TINY_LLAMA)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, TINY_LLAMA.vocab_size, (2, 16))
    model(idx, labels=idx).loss.backward()
    opt.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    moments = sum(s[k].numel() * s[k].element_size() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    mem = training_memory(TINY_LLAMA, precision="fp32")
    assert (mem.weights, mem.gradients, mem.optimizer) == (weights, grads, moments)


def saved_activation_bytes(model: torch.nn.Module, idx: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for backward during one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, labels=idx)
    return sum(saved.values())


def test_activation_formula_matches_saved_tensors():
    """The formula predicts what autograd really keeps for an eager GPT-2 (exact GELU, no dropout) within 5%."""
    torch.manual_seed(0)
    model = hf_gpt2(TINY_GPT2, activation_function="gelu", attn_implementation="eager").eval()
    idx = torch.randint(0, TINY_GPT2.vocab_size, (2, TINY_GPT2.block_size))
    measured = saved_activation_bytes(model, idx)
    predicted = activation_bytes(TINY_GPT2, 2, TINY_GPT2.block_size, bytes_per_value=4, flash_attention=False)
    assert measured == pytest.approx(predicted, rel=0.05)


def test_activation_formula_reduces_to_korthikanti():
    """MHA + GELU + 4d MLP + dropout without FlashAttention: s·b·h·(34 + 5·a·s/h) bytes per layer."""
    cfg = GPTConfig(vocab_size=1000, block_size=2048, n_layer=1, n_head=32, n_embd=4096)
    s, b, h, a = 2048, 4, 4096, 32
    got = layer_activation_bytes(cfg, b, s, bytes_per_value=2, flash_attention=False, dropout=True)
    assert got == s * b * h * (34 + 5 * a * s / h)


def test_checkpointing_and_flash_reduce_activation_memory():
    cfg = GPTConfig.from_preset("gpt2-124m")
    full = activation_bytes(cfg, 8, 1024, flash_attention=False)
    flash = activation_bytes(cfg, 8, 1024, flash_attention=True)
    ckpt = activation_bytes(cfg, 8, 1024, checkpointing=True)
    assert ckpt < flash < full


def test_kv_cache_matches_transformers_cache():
    torch.manual_seed(0)
    model = hf_llama(TINY_LLAMA).eval()
    idx = torch.randint(0, TINY_LLAMA.vocab_size, (3, 20))
    with torch.no_grad():
        cache = model(idx, use_cache=True).past_key_values
    measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert measured == kv_cache_bytes(TINY_LLAMA, batch=3, seq_len=20, bytes_per_value=4)
    mha = GPTConfig.from_preset("llama2-7b")
    gqa = GPTConfig.from_preset("llama2-70b")
    assert kv_cache_bytes(gqa, 1, 4096) / gqa.n_layer < kv_cache_bytes(mha, 1, 4096) / mha.n_layer


def test_decode_step_reads_every_weight_once_per_step():
    cfg = GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp="swiglu",
                    norm="rmsnorm", pos_emb="rope", bias=False, tie_weights=False)
    p = count_params(cfg)
    matmul = p.attention + p.mlp + 100 * 32
    step = decode_step(cfg, batch=3, context=40)
    assert step.flops == 3 * (2 * matmul + 4 * 2 * 40 * 32)
    assert step.weight_bytes == 2 * (matmul + p.norm)  # the embedding table is only looked up, not read whole
    assert step.kv_bytes == kv_cache_bytes(cfg, 3, 40) == 2 * 2 * 3 * 40 * 2 * 8 * 2
    assert step.kv_share == step.kv_bytes / (step.kv_bytes + step.weight_bytes)
    # batch 1, short context: about one FLOP per byte (2 FLOPs per 2-byte weight), far below any ridge point
    big = decode_step(GPTConfig.from_preset("llama2-7b"), batch=1, context=16)
    assert big.intensity == pytest.approx(1.0, rel=0.01) and big.kv_share < 0.01
    with pytest.raises(ValueError, match="batch must be a positive number"):
        decode_step(cfg, batch=0, context=4)


def test_memory_rejects_bad_input():
    cfg = GPTConfig.from_preset("gpt2-124m")
    with pytest.raises(ValueError, match="zero_stage"):
        training_memory(cfg, zero_stage=4)
    with pytest.raises(ValueError, match="world_size"):
        training_memory(cfg, world_size=0)
    with pytest.raises(ValueError, match="precision"):
        training_memory(cfg, precision="fp8")
    assert set(PRECISIONS) == {"fp32", "amp", "mixed"}


# ------------------------------------------------------------------------------------------ scaling laws
def test_chinchilla_allocation_at_gopher_budget():
    """Hoffmann et al. trained Chinchilla (70B parameters, 1.4T tokens) with Gopher's 5.76e23 FLOPs."""
    alloc = chinchilla_optimal(GOPHER_FLOPS)
    assert alloc.params == pytest.approx(CHINCHILLA_PARAMS, rel=0.03)
    assert alloc.tokens == pytest.approx(CHINCHILLA_TOKENS, rel=0.03)
    assert alloc.tokens_per_param == pytest.approx(20)


def test_fitted_optimum_is_the_minimum_of_the_isoflop_curve():
    budget = 1e22
    alloc = chinchilla_optimal(budget, method="fit")
    grid = np.logspace(8, 12, 4001)
    best = grid[np.argmin(isoflop_curve(budget, grid))]
    assert best == pytest.approx(alloc.params, rel=0.01)
    assert 6 * alloc.params * alloc.tokens == pytest.approx(budget)


def test_kaplan_prefers_bigger_models_than_chinchilla():
    for budget in (1e20, 1e22, 1e24):
        assert kaplan_optimal(budget).params > chinchilla_optimal(budget).params


def test_unknown_scaling_method():
    with pytest.raises(ValueError, match="method"):
        chinchilla_optimal(1e20, method="palm")


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=100, n_head=3), "not divisible by n_head"),
    (dict(n_head=12, n_kv_head=5), "not divisible by n_kv_head"),
    (dict(mlp="relu"), "mlp='relu'"),
    (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=-5), "vocab_size"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_config_load(tmp_path):
    good = tmp_path / "m.toml"
    good.write_text('[model]\nn_layer = 2\nn_head = 2\nn_embd = 32\nvocab_size = 100\nblock_size = 16\n')
    assert GPTConfig.load(str(good)).n_layer == 2
    assert GPTConfig.load("llama2-7b") == GPTConfig.from_preset("llama2-7b")
    bad = tmp_path / "bad.json"
    bad.write_text('{"n_layers": 2}')
    with pytest.raises(ValueError, match=r"bad\.json: unknown GPTConfig field\(s\) \['n_layers'\]"):
        GPTConfig.load(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{n_layer: 2")
    with pytest.raises(ValueError, match="broken.json: malformed JSON"):
        GPTConfig.load(str(broken))
    with pytest.raises(ValueError, match="neither a model preset"):
        GPTConfig.load("gpt5")
    assert all(GPTConfig.from_preset(name) for name in PRESETS)


# ------------------------------------------------------------------------------------------ CLI
def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_training_estimate(capsys):
    code, out, _ = run_cli(capsys, "costs", "--params", "175e9", "--tokens", "300e9", "--gpu", "a100-80gb",
                           "--mfu", "0.4", "--price", "2.0", "--json")
    result = json.loads(out)
    assert code == 0
    assert result["train_flops"] == pytest.approx(3.15e23)
    assert result["gpu_hours"] == pytest.approx(3.15e23 / (312e12 * 0.4) / 3600)
    assert result["cost_usd"] == pytest.approx(2.0 * result["gpu_hours"])
    assert result["energy_kwh"] > 0 and result["co2e_kg"] > 0


def test_cli_chinchilla_and_memory(capsys):
    code, out, _ = run_cli(capsys, "costs", "chinchilla", "--flops", "5.76e23", "--json")
    assert code == 0 and json.loads(out)["params"] == pytest.approx(70e9, rel=0.03)
    code, out, _ = run_cli(capsys, "costs", "memory", "--config", "llama2-7b", "--world-size", "8", "--zero", "3",
                           "--json")
    per_gpu = json.loads(out)["bytes_per_gpu"]
    assert code == 0 and set(per_gpu) == {"weights", "gradients", "optimizer", "activations", "working_weights", "total"}
    assert per_gpu["weights"] == pytest.approx(2 * count_params(GPTConfig.from_preset("llama2-7b")).total / 8)


def test_cli_human_readable(capsys):
    code, out, _ = run_cli(capsys, "costs", "--config", "gpt2-124m", "--tokens", "10e9", "--gpu", "h100-sxm")
    assert code == 0 and "GPU-hours" in out and "training FLOPs" in out


@pytest.mark.parametrize("argv, message", [
    (["costs", "--params", "-1", "--tokens", "1e9"], "params must be a positive number"),
    (["costs", "--params", "1e9", "--tokens", "0"], "tokens must be a positive number"),
    (["costs", "--params", "1e9", "--tokens", "1e9", "--gpu", "x100"], "unknown GPU 'x100'"),
    (["costs", "--params", "1e9", "--tokens", "1e9", "--mfu", "2"], "mfu must be in (0, 1]"),
    (["costs", "chinchilla", "--flops", "-5"], "flops must be a positive number"),
    (["costs", "memory", "--config", "no-such-model"], "neither a model preset"),
    (["costs", "memory", "--config", "gpt2-124m", "--zero", "5"], "zero_stage"),
])
def test_cli_bad_input_is_one_clear_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_every_cited_source_is_in_the_bibliography():
    import booktools

    keys = booktools.bib_keys()
    cited = {g.cite for g in GPUS.values()} | {r.cite for r in PUBLISHED_RUNS}
    assert cited <= keys, f"missing from references.bib: {sorted(cited - keys)}"
