"""LoRA from scratch: outputs and merged weights equal PEFT's on the exported `transformers` model (fp32, 1e-5),
merge/unmerge round trip, adapter-only files, hostile adapter folders, and the QLoRA layer.

The models are tiny and randomly initialised; nothing is downloaded.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bitsandbytes (imported by peft) may look for hub kernels

from llmbook.finetune.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRAConfig, LoRALinear, apply_lora,  # noqa: E402
                                   base_fingerprint, load_adapter, lora_layers, merge_lora, save_adapter,
                                   trainable_fraction)
from llmbook.model import GPT, GPTConfig  # noqa: E402

GPT2 = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
LLAMA = dict(GPT2, mlp="swiglu", norm="rmsnorm", pos_emb="rope", bias=False, tie_weights=False)
# our module name -> the transformers name (GPT-2 keeps nanoGPT's names; Llama's fused q/k/v has no PEFT twin)
NAMES = {"gpt2": ({"attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "mlp.c_fc": "mlp.c_fc",
                   "mlp.c_proj": "mlp.c_proj"}, "base_model.model.transformer.h", ["c_attn", "c_proj", "c_fc"]),
         "llama": ({"attn.c_proj": "self_attn.o_proj", "mlp.w1": "mlp.gate_proj", "mlp.w3": "mlp.up_proj",
                    "mlp.w2": "mlp.down_proj"}, "base_model.model.model.layers",
                   ["o_proj", "gate_proj", "up_proj", "down_proj"])}
IDX = torch.randint(0, 64, (3, 13), generator=torch.Generator().manual_seed(0))


def tiny(shape: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**(GPT2 if shape == "gpt2" else LLAMA))).eval()


def randomize_adapters(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=gen))


def peft_twin(model: GPT, shape: str, r: int, alpha: float, tmp_path):
    """The model exported with `to_hf`, wrapped by PEFT with the same adapters copied in."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from llmbook.model import to_hf

    ours, prefix, targets = NAMES[shape]
    plain = GPT(model.config)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k})
    to_hf(plain, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    twin = peft.get_peft_model(hf, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                   fan_in_fan_out=shape == "gpt2", lora_dropout=0.0))
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            _, i, *rest = name.split(".")
            module = twin.get_submodule(f"{prefix}.{i}.{ours['.'.join(rest)]}")
            module.lora_A["default"].weight.copy_(layer.lora_A)
            module.lora_B["default"].weight.copy_(layer.lora_B)
    return twin.eval()


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_outputs_equal_peft(shape, tmp_path):
    model = tiny(shape)
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=list(NAMES[shape][0])))
    randomize_adapters(model)
    twin = peft_twin(model, shape, 4, 8, tmp_path)
    with torch.no_grad():
        ours, theirs = model(IDX)[0], twin(IDX).logits
        assert (ours - tiny(shape)(IDX)[0]).abs().max() > 1e-3  # the adapters change the output
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_merged_weights_equal_peft_merge_and_unload(shape, tmp_path):
    from llmbook.model.hf import _hf_state_dict

    model = tiny(shape)
    apply_lora(model, LoRAConfig(r=4, alpha=16, targets=list(NAMES[shape][0])))
    randomize_adapters(model)
    twin = peft_twin(model, shape, 4, 16, tmp_path)
    merged_theirs = twin.merge_and_unload().state_dict()
    merged_ours = _hf_state_dict(merge_lora(model))
    assert not lora_layers(model)
    for name, tensor in merged_ours.items():
        torch.testing.assert_close(tensor, merged_theirs[name], atol=1e-5, rtol=0, msg=name)


def test_new_adapter_is_a_no_op_and_merge_unmerge_round_trip():
    model = tiny("gpt2")
    before = model(IDX)[0]
    apply_lora(model, LoRAConfig(r=2, alpha=4))
    torch.testing.assert_close(model(IDX)[0], before)  # B starts at zero
    randomize_adapters(model)
    with torch.no_grad():
        adapted = model(IDX)[0]
        layer = next(iter(lora_layers(model).values()))
        weight = layer.weight.clone()
        for m in lora_layers(model).values():
            m.merge()
        torch.testing.assert_close(model(IDX)[0], adapted, atol=1e-5, rtol=0)
        for m in lora_layers(model).values():
            m.unmerge()
        torch.testing.assert_close(layer.weight, weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(IDX)[0], adapted, atol=1e-5, rtol=0)


def test_only_adapters_train_and_fraction_is_reported():
    model = tiny("gpt2").train()
    names = apply_lora(model, LoRAConfig(r=2, alpha=4, targets=["attn.c_attn"], train_tokens=[60, 61]))
    assert names == ["blocks.0.attn.c_attn", "blocks.1.attn.c_attn"]
    trainable, total = trainable_fraction(model)
    assert trainable == 2 * 2 * (32 + 96) + 2 * 32
    assert total == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    wte = model.wte.weight.detach().clone()
    from llmbook.train.config import OptimConfig
    from llmbook.train.optim import build_optimizer

    opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1))  # embeddings are never decayed
    _, loss = model(IDX, IDX)
    loss.backward()
    opt.step()
    changed = (model.wte.weight - wte).abs().sum(1) > 0
    assert changed.nonzero().flatten().tolist() == [60, 61]  # only the trainable token rows moved
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n and n != "wte.weight")


def test_adapter_files_hold_only_adapters_and_refuse_another_base(tmp_path):
    from safetensors.torch import load_file

    model = tiny("gpt2")
    fingerprint = base_fingerprint(model, skip_tokens=[63])
    cfg = LoRAConfig(r=2, alpha=4, train_tokens=[63])
    apply_lora(model, cfg)
    randomize_adapters(model)
    with torch.no_grad():
        model.wte.weight[63] += 1.0
    save_adapter(model, cfg, tmp_path / "adapter", fingerprint)
    tensors = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert all(k.endswith(("lora_A", "lora_B")) for k in tensors if k != "wte.train_tokens")
    assert tensors["wte.train_tokens"].shape == (1, 32)

    fresh = tiny("gpt2")
    load_adapter(fresh, tmp_path / "adapter", base_fingerprint(fresh, skip_tokens=[63]))
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDX)[0], model(IDX)[0])
    other = tiny("gpt2", seed=5)
    with pytest.raises(ValueError, match=r"adapter_config.json: field 'base_sha256'.*another model"):
        load_adapter(other, tmp_path / "adapter")


@pytest.mark.parametrize("breakage, match", [
    ("no_config", "adapter_config.json does not exist"),
    ("bad_json", "adapter_config.json: malformed JSON"),
    ("no_lora", "field 'lora' is missing"),
    ("bad_rank", r"\[lora\] r must be a non-negative integer"),
    ("unknown_field", "field 'lora'"),
    ("no_weights", "adapter_model.safetensors does not exist"),
    ("wrong_shape", "has shape"),
    ("nan_weights", "holds NaN or infinite values"),
    ("int_weights", "has dtype I64, expected a float type"),
    ("extra_tensor", r"do not match the targeted layers \(e.g. \['junk'\]\)"),
    ("not_safetensors", "not a readable safetensors file"),
    ("truncated", "not a readable safetensors file"),
    ("symlink_elsewhere", "not a readable safetensors file"),
    ("token_out_of_range", "field 'lora.train_tokens': token id 999 is outside this model's vocabulary of 64"),
    ("tokens_not_ids", r"\[lora\] train_tokens must be a list of token ids"),
    ("targets_a_string", r"\[lora\] targets must be a non-empty list"),
    ("odd_blocksize", r"\[lora\] blocksize must be a positive even integer"),
])
def test_hostile_adapter_folders(tmp_path, breakage, match):
    from safetensors.torch import load_file, save_file

    model = tiny("gpt2")
    fingerprint = base_fingerprint(model)
    cfg = LoRAConfig(r=2, alpha=4)
    apply_lora(model, cfg)
    folder = save_adapter(model, cfg, tmp_path / "a", fingerprint)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if breakage == "no_config":
        (folder / ADAPTER_CONFIG).unlink()
    elif breakage == "bad_json":
        (folder / ADAPTER_CONFIG).write_text("{not json")
    elif breakage == "no_lora":
        (folder / ADAPTER_CONFIG).write_text(json.dumps({"base_sha256": fingerprint}))
    elif breakage == "bad_rank":
        (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "lora": {**config["lora"], "r": -1}}))
    elif breakage == "unknown_field":
        (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "lora": {**config["lora"], "rank": 3}}))
    elif breakage == "no_weights":
        (folder / ADAPTER_WEIGHTS).unlink()
    elif breakage in ("wrong_shape", "nan_weights", "int_weights", "extra_tensor"):
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
        key = next(iter(tensors))
        if breakage == "wrong_shape":
            tensors[key] = torch.zeros(3, 3)
        elif breakage == "nan_weights":
            tensors[key][0, 0] = float("nan")
        elif breakage == "int_weights":
            tensors[key] = tensors[key].long()
        else:
            tensors["junk"] = torch.zeros(1 << 20)
        save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    elif breakage == "not_safetensors":
        (folder / ADAPTER_WEIGHTS).write_bytes(b"\xff" * 64)
    elif breakage == "truncated":
        data = (folder / ADAPTER_WEIGHTS).read_bytes()
        (folder / ADAPTER_WEIGHTS).write_bytes(data[:len(data) // 2])
    elif breakage == "symlink_elsewhere":
        (folder / ADAPTER_WEIGHTS).unlink()
        (folder / ADAPTER_WEIGHTS).symlink_to(folder / ADAPTER_CONFIG)
    else:
        lora = {"token_out_of_range": {"train_tokens": [999]}, "tokens_not_ids": {"train_tokens": ["<|end|>"]},
                "targets_a_string": {"targets": "attn.c_attn"}, "odd_blocksize": {"blocksize": 3}}[breakage]
        (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "lora": {**config["lora"], **lora}}))
    base = tiny("gpt2")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_adapter(base, folder, None if breakage == "token_out_of_range" else fingerprint)
    assert not lora_layers(base) and base.state_dict().keys() == before.keys()  # a refused adapter changes nothing
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def test_adapter_with_token_rows_loads_without_a_given_fingerprint(tmp_path):
    """The fingerprint `load_adapter` computes itself leaves out the token rows the adapter carries."""
    model = tiny("gpt2")
    fingerprint = base_fingerprint(model, skip_tokens=[62, 63])
    cfg = LoRAConfig(r=2, alpha=4, train_tokens=[62, 63])
    apply_lora(model, cfg)
    randomize_adapters(model)
    with torch.no_grad():
        model.wte.weight[62:] += 1.0
    save_adapter(model, cfg, tmp_path / "adapter", fingerprint)
    fresh = tiny("gpt2")
    assert load_adapter(fresh, tmp_path / "adapter") == cfg
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDX)[0], model(IDX)[0])


def test_bad_lora_configs():
    with pytest.raises(ValueError, match="match no linear layer"):
        apply_lora(tiny("gpt2"), LoRAConfig(r=2, targets=["nothing.here"]))
    with pytest.raises(ValueError, match="quantize='nf4' needs adapters"):
        LoRAConfig(r=0, quantize="nf4")
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(r=2, dropout=1.5)


def test_qlora_layer_trains_adapters_over_a_frozen_4bit_base():
    torch.manual_seed(0)
    base = torch.nn.Linear(128, 64)
    layer = LoRALinear(base, r=4, alpha=8, quantize="nf4")
    with torch.no_grad():
        layer.lora_B.normal_(std=0.1)
    x = torch.randn(5, 128, requires_grad=True)
    y = layer(x)
    w = layer.nf4.dequantize()
    torch.testing.assert_close(y, x @ (w + layer.delta()).t() + base.bias, atol=1e-5, rtol=0)
    y.sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None and x.grad is not None
    from llmbook.finetune.nf4 import NF4_CODE

    half_gap = (NF4_CODE[1:] - NF4_CODE[:-1]).max() / 2  # the worst rounding error, relative to the block's absmax
    assert (w - base.weight).abs().max() <= half_gap * base.weight.abs().max() * 1.01
    merged = layer.merged_linear()
    torch.testing.assert_close(merged(x), y, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="4-bit"):
        layer.merge()


def test_lora_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 8), r=2, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
