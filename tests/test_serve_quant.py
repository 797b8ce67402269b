"""Weight-only quantization: the quantizers' error bounds, int4 packing, the QuantLinear layer, GPTQ beating round to
nearest on the layer outputs it optimises, the servable folder format (round trip and hostile files), and parity of
int8 weight-only perplexity with torchao's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from serve_fixtures import servable_folder, trained
from train_fixtures import synthetic_texts

from llmbook.serve.modelio import load_folder, load_servable, save_model
from llmbook.serve.quant import (QuantConfig, QuantLinear, absmax_quantize, gptq_quantize, pack_int4, quantize_model,
                                 unpack_int4, weight_bytes, zeropoint_quantize)


def test_absmax_int8_error_is_at_most_half_a_step():
    w = torch.randn(16, 64)
    q, scale = absmax_quantize(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("bits,group", [(8, None), (4, 16), (4, 64)])
def test_zeropoint_error_is_at_most_half_a_step_and_zero_is_exact(bits, group):
    w = torch.randn(8, 64) + 0.5  # rows not centred on zero
    w[0, 3] = 0.0
    q, scale, zero = zeropoint_quantize(w, bits, group)
    assert q.min() >= 0 and q.max() <= 2**bits - 1
    g = 64 if group is None else group
    deq = ((q.float().reshape(8, -1, g) - zero[..., None]) * scale[..., None]).reshape(8, 64)
    step = scale.repeat_interleave(g, dim=1)
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()
    assert deq[0, 3] == 0.0  # zero is on the grid: padding and pruned weights stay exactly zero


def test_int4_pack_round_trip():
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (5, 6) and torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("method", ["int8", "int8-zp", "int4"])
def test_quant_linear_forward_equals_its_dequantized_weight(method):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    layer = QuantLinear.from_linear(lin, QuantConfig(method, 16))
    for rows in (1, 40):  # the fused int8 kernel (few rows) and the dequantize path
        x = torch.randn(rows, 64)
        torch.testing.assert_close(layer(x), x @ layer.dequantize().T + lin.bias, atol=1e-4, rtol=1e-4)
    assert (layer.dequantize() - lin.weight).abs().max() < 0.1 * lin.weight.abs().max()


def test_gptq_output_error_is_below_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated inputs: where GPTQ's compensation pays
    q, scale, zero = gptq_quantize(w, x.T @ x, bits=4, group_size=16)
    gptq = ((q.float().reshape(32, -1, 16) - zero[..., None]) * scale[..., None]).reshape(32, 64)
    rq, rs, rz = zeropoint_quantize(w, 4, 16)
    rtn = ((rq.float().reshape(32, -1, 16) - rz[..., None]) * rs[..., None]).reshape(32, 64)
    err_gptq, err_rtn = ((x @ (w - gptq).T) ** 2).sum(), ((x @ (w - rtn).T) ** 2).sum()
    assert err_gptq < 0.7 * err_rtn
    assert q.max() <= 15 and torch.isfinite(scale).all()


def test_quantize_model_replaces_linears_but_not_the_tied_head():
    model, _ = trained()
    before = weight_bytes(model)
    quantize_model(model, QuantConfig("int4", 16))
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.startswith("blocks.") and "." in n[7:]}
    assert "Linear" not in kinds and "QuantLinear" in kinds
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.wte.weight
    assert weight_bytes(model) < before


def test_gptq_needs_calibration():
    model, _ = trained()
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(model, QuantConfig("gptq", 16))


@pytest.mark.parametrize("method,bits", [("int8", 4), ("int8-zp", 4), ("int4", 4), ("gptq", 4), ("int4", 2),
                                         ("gptq", 3)])
def test_quantized_folder_round_trip_gives_identical_logits(method, bits, tmp_path):
    model, tok = trained()
    calibration = torch.randint(0, tok.get_vocab_size(), (4, 32))
    config = QuantConfig(method, 16, bits)
    quantize_model(model, config, calibration)
    save_model(model, tok, tmp_path / "q", quant=config)
    loaded = load_folder(tmp_path / "q")
    x = torch.randint(0, tok.get_vocab_size(), (2, 20))
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded.model(x)[0])
    assert loaded.info["quantization"]["method"] == method and loaded.info["quantization"]["bits"] == config.bits


@pytest.mark.parametrize("bad", ["int3", "int8-zz", ""])
def test_quant_config_rejects_unknown_methods(bad):
    with pytest.raises(ValueError, match="not one of"):
        QuantConfig(bad)
    for bits in (1, 5, 8):
        with pytest.raises(ValueError, match="weight_bits"):
            QuantConfig("int4", weight_bits=bits)
    with pytest.raises(ValueError, match="weight_bits"):
        QuantConfig("int8", weight_bits=2)


def test_fewer_bits_give_larger_errors_and_gptq_helps_most_at_two_bits():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = torch.randn(512, 64) @ torch.randn(64, 64)
    errors = {}
    for bits in (4, 3, 2):
        q, scale, zero = gptq_quantize(w, x.T @ x, bits=bits, group_size=16)
        assert q.max() <= 2**bits - 1
        gptq = ((q.float().reshape(32, -1, 16) - zero[..., None]) * scale[..., None]).reshape(32, 64)
        rq, rs, rz = zeropoint_quantize(w, bits, 16)
        rtn = ((rq.float().reshape(32, -1, 16) - rz[..., None]) * rs[..., None]).reshape(32, 64)
        errors[bits] = (((x @ (w - gptq).T) ** 2).sum().item(), ((x @ (w - rtn).T) ** 2).sum().item())
    assert errors[2][1] > errors[3][1] > errors[4][1]
    assert all(g < r for g, r in errors.values())


# ---------------------------------------------------------------------------------------- hostile folders
@pytest.fixture
def qfolder(tmp_path):
    model, tok = trained()
    config = QuantConfig("int4", 16)
    quantize_model(model, config)
    return save_model(model, tok, tmp_path / "q", quant=config)


def _edit_spec(folder, **changes):
    spec = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        target = spec
        *path, last = key.split("__")
        for p in path:
            target = target[p]
        target[last] = value
    (folder / "model.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("change,message", [
    (dict(format="other"), "field 'format'"),
    (dict(version=99), "field 'version'"),
    (dict(model__n_embd="wide"), "n_embd"),
    (dict(model__unknown=1), "unknown GPTConfig field"),
    (dict(quantization__method="int3"), "quantization.method"),
    (dict(quantization__group_size=-4), "quantization.group_size"),
    (dict(quantization__bits=8), "quantization.bits"),
    (dict(quantization__bits="4"), "quantization.bits"),
    (dict(quantization__layers="all"), "quantization.layers"),
    (dict(quantization__layers=["blocks.0.nothing"]), "not a linear layer"),
    (dict(weights__file="../model.safetensors"), "weights.file"),
    (dict(weights__sha256="0" * 64), "sha256"),
    (dict(weights__bytes=1), "bytes"),
    (dict(tokenizer="/etc/passwd"), "field 'tokenizer'"),
    (dict(eos_token="<|nothing|>"), "eos_token"),
    (dict(model__vocab_size=2**40), "parameters, more than"),  # an absurd allocation, refused before it is tried
])
def test_bad_spec_fields_give_one_line_errors(qfolder, change, message):
    _edit_spec(qfolder, **change)
    with pytest.raises(ValueError, match=message) as err:
        load_folder(qfolder)
    assert "\n" not in str(err.value) and "model.json" in str(err.value)


def test_a_spec_describing_more_parameters_than_its_weights_hold_is_refused_before_allocating(qfolder, monkeypatch):
    import llmbook.serve.modelio as modelio

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the spec was checked against the weights")

    _edit_spec(qfolder, model__n_layer=24, model__n_embd=1024, model__n_head=8)  # ~300M parameters, 1.2 GB
    monkeypatch.setattr(modelio, "GPT", never)
    with pytest.raises(ValueError, match="parameters, more than model.safetensors") as err:
        load_folder(qfolder)
    assert "\n" not in str(err.value) and "model.json" in str(err.value)


def test_malformed_spec_json(qfolder):
    (qfolder / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_folder(qfolder)
    (qfolder / "model.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_folder(qfolder)


def test_tampered_weights_fail_the_checksum(qfolder):
    data = bytearray((qfolder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (qfolder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_folder(qfolder)


def _rewrite_tensors(folder, edit):
    """Change tensors and update the checksum, as an attacker who controls the whole folder would."""
    from safetensors.torch import load_file, save_file

    from llmbook.fileio import file_sha256

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))
    _edit_spec(folder, weights__sha256=file_sha256(folder / "model.safetensors"),
               weights__bytes=(folder / "model.safetensors").stat().st_size)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("blocks.0.attn.c_attn.scale"), "missing"),
    (lambda s: s.update({"extra.weight": torch.zeros(2)}), "unexpected"),
    (lambda s: s.update({"blocks.0.attn.c_attn.qweight": torch.zeros(3, 3, dtype=torch.uint8)}), "expected"),
    (lambda s: s.update({"blocks.0.attn.c_attn.qweight": s["blocks.0.attn.c_attn.qweight"].float()}), "expected"),
    (lambda s: s["blocks.0.attn.c_attn.scale"].mul_(-1), "non-positive"),
    (lambda s: s["blocks.1.mlp.c_fc.scale"].fill_(float("nan")), "non-finite"),
    (lambda s: s["blocks.0.mlp.c_proj.zero"].fill_(99), "outside the integers"),
])
def test_tampered_tensors_are_refused_even_with_a_matching_checksum(qfolder, edit, message):
    _rewrite_tensors(qfolder, edit)
    with pytest.raises(ValueError, match=message):
        load_folder(qfolder)


def test_unreadable_tokenizer(qfolder):
    (qfolder / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer"):
        load_folder(qfolder)


def test_load_servable_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_servable(tmp_path / "missing")
    folder = shutil.copytree(servable_folder(), tmp_path / "m")
    with pytest.raises(ValueError, match="GPTQ"):
        load_servable(folder, quantize="gptq")
    assert load_servable(folder, quantize="int8").info["quantization"]["method"] == "int8"


# ------------------------------------------------------------------------------------------------- torchao
def _bits_per_byte(model, tok, texts):
    from llmbook.eval.models import LLMBookLM
    from llmbook.eval.perplexity import perplexity

    return perplexity(LLMBookLM(model, tok, eot_id=tok.token_to_id("<|endoftext|>"), batch_size=8), texts).bits_per_byte


def test_int8_weight_only_perplexity_matches_torchao():
    torchao = pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao: the test extra)")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    texts = synthetic_texts(30, seed=5)
    model, tok = trained()
    fp32 = _bits_per_byte(model, tok, texts)
    ours = quantize_model(trained()[0], QuantConfig("int8"))
    peer = trained()[0]
    quantize_(peer, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    ours_bpb, peer_bpb = _bits_per_byte(ours, tok, texts), _bits_per_byte(peer, tok, texts)
    assert abs(ours_bpb - peer_bpb) <= 1e-3 * peer_bpb, (ours_bpb, peer_bpb, torchao.__version__)
    assert abs(ours_bpb - fp32) <= 1e-2 * fp32
