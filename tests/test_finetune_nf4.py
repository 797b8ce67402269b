"""NF4 from scratch against bitsandbytes' CPU implementation: the 16-value codebook, bit-identical packed indices and
dequantized values without double quantization, and round-trip error within 2% of bitsandbytes' with it.
"""

from __future__ import annotations

import os

import pytest
import torch

from llmbook.finetune.nf4 import (NF4_CODE, NF4Weight, QuantizedScales, nf4_codebook, nf4_linear, pack,
                                  quantize_blocks, unpack)

# The 16 NF4 values as listed in the appendix of the QLoRA paper (Dettmers et al., 2023).
PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def bnb_functional():
    """bitsandbytes' functional API on CPU, or a skip that says why."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # its CPU backend may look for optional hub kernels
    try:
        import bitsandbytes.functional as F
    except Exception as err:  # noqa: BLE001 - any import failure means the peer is unavailable here
        pytest.skip(f"bitsandbytes is not importable on this machine ({type(err).__name__}: {err})")
    try:
        F.quantize_4bit(torch.randn(64), blocksize=64, quant_type="nf4")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"bitsandbytes has no working CPU NF4 kernel here ({type(err).__name__}: {err})")
    return F


def test_codebook_is_the_published_nf4():
    torch.testing.assert_close(NF4_CODE, torch.tensor(PUBLISHED), atol=2e-7, rtol=0)
    assert NF4_CODE[7] == 0 and NF4_CODE.min() == -1 and NF4_CODE.max() == 1
    assert len(NF4_CODE.unique()) == 16
    assert (nf4_codebook(0.99) != NF4_CODE).any()  # the offset matters


def test_codebook_equals_bitsandbytes():
    F = bnb_functional()
    torch.testing.assert_close(NF4_CODE, F.get_4bit_type("nf4", device="cpu").float(), atol=1e-6, rtol=0)


def test_nearest_level_and_pack_round_trip():
    x = torch.linspace(-1, 1, 1001)
    idx, absmax = quantize_blocks(x, blocksize=1001 + 1)  # one block (padded), absmax 1
    assert absmax.item() == 1
    brute = (x[:, None] - NF4_CODE[None]).abs().argmin(1)
    assert torch.equal(idx[:1001].long(), brute)
    assert torch.equal(unpack(pack(idx)), idx)


@pytest.mark.parametrize("shape", [(256, 128), (100, 37)])  # the second needs padding to whole blocks
def test_bit_identical_to_bitsandbytes_without_double_quant(shape):
    F = bnb_functional()
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.02
    q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = NF4Weight(w, blocksize=64, double_quant=False)
    n = q.numel()
    assert torch.equal(ours.packed[:n], q.flatten())
    torch.testing.assert_close(ours.absmax, state.absmax)
    torch.testing.assert_close(ours.dequantize(), F.dequantize_4bit(q, state), atol=1e-7, rtol=0)


def test_double_quant_round_trip_error_matches_bitsandbytes():
    F = bnb_functional()
    torch.manual_seed(0)
    w = torch.randn(512, 512) * 0.02
    q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    theirs = (F.dequantize_4bit(q, state) - w).abs().mean()
    ours = NF4Weight(w, blocksize=64, double_quant=True)
    mine = (ours.dequantize() - w).abs().mean()
    assert abs(mine / theirs - 1) < 0.02, (mine.item(), theirs.item())
    assert ours.nbytes() < NF4Weight(w, double_quant=False).nbytes() < w.numel() * 4 / 7


def test_double_quantized_scales_are_close():
    torch.manual_seed(0)
    absmax = torch.rand(1000) * 0.1 + 0.05
    q = QuantizedScales.quantize(absmax)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == 1000 and q.step.numel() == 4
    err = (q.dequantize() - absmax).abs().max()
    assert err <= q.step.max() / 2 + 1e-7  # within half a code step


def test_nf4_linear_gradient_matches_dequantized_matmul():
    torch.manual_seed(0)
    weight = NF4Weight(torch.randn(24, 40))
    bias = torch.randn(24)
    x = torch.randn(3, 5, 40, requires_grad=True)
    nf4_linear(x, weight, bias).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, weight.dequantize(), bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=0)


def test_state_dict_round_trip():
    weight = NF4Weight(torch.randn(8, 64))
    other = NF4Weight(torch.zeros(8, 64))
    other.load_state_dict(weight.state_dict())
    torch.testing.assert_close(other.dequantize(), weight.dequantize())
    with pytest.raises(ValueError, match="blocksize"):
        NF4Weight(torch.randn(4, 4), blocksize=3)
