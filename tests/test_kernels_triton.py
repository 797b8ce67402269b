"""The Triton FlashAttention kernel against the naive attention, on CPU through the Triton interpreter.

Without CUDA this module sets TRITON_INTERPRET=1 before the kernel module is imported (Triton decides between
compiling and interpreting when a kernel is defined), so CI checks the kernel's logic on tiny shapes. With
CUDA the same grid runs compiled, plus realistic sizes in float16/bfloat16. The interpreter cannot multiply
bfloat16 matrices, so bfloat16 is checked on CUDA only.
Tolerances: float32 2e-5 (interpreter, exact float32 dots); on GPU float32 uses IEEE dots (1e-4),
float16/bfloat16 are compared with a float32 reference at 1e-2/2e-2.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
CUDA = torch.cuda.is_available()
if not CUDA:
    if "llmbook.kernels.flash_triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel was imported without TRITON_INTERPRET=1 and cannot run on CPU",
                    allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"

from llmbook.kernels import attention  # noqa: E402
from llmbook.kernels.flash_triton import triton_attention  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
# (T_q, T_k, H, H_kv, D): ragged tails (1, 17, 33 are not multiples of the 16-wide tiles), GQA 2:1, MQA 4:1,
# decoding (T_q=1), more queries than keys, head dims 16-64 (padded to a power of two inside the kernel).
SMALL = [(1, 1, 2, 2, 16), (17, 17, 4, 2, 32), (1, 17, 4, 1, 32), (33, 33, 2, 1, 24), (5, 33, 2, 2, 64),
         (20, 9, 2, 1, 16)]
LARGE = [(129, 129, 8, 2, 64), (1024, 1024, 8, 8, 128), (511, 1023, 16, 4, 32), (257, 257, 4, 1, 128)]


def _check(shape, dtype, causal, window, tol):
    t_q, t_k, h, h_kv, d = shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(2, h, t_q, d, device=DEVICE, generator=g).to(dtype).requires_grad_()
    k = torch.randn(2, h_kv, t_k, d, device=DEVICE, generator=g).to(dtype).requires_grad_()
    v = torch.randn(2, h_kv, t_k, d, device=DEVICE, generator=g).to(dtype).requires_grad_()
    grad = torch.randn(q.shape, device=DEVICE, generator=g).to(dtype)
    ref = attention(q.float(), k.float(), v.float(), causal, impl="naive", window=window)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad.float())
    out = attention(q, k, v, causal, impl="triton", window=window)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    for name, a, b in zip(["out", "dq", "dk", "dv"], (out, *grads), (ref, *ref_grads)):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=0, msg=f"{name} {shape} {dtype}")


@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("causal", [True, False])
def test_triton_matches_naive_small(shape, causal):
    _check(shape, torch.float32, causal, None, 1e-4 if CUDA else 2e-5)


@pytest.mark.parametrize("window", [1, 7, 20])
def test_triton_sliding_window(window):
    _check((33, 33, 2, 1, 16), torch.float32, True, window, 1e-4 if CUDA else 2e-5)


def test_triton_float16():
    _check((17, 17, 4, 2, 32), torch.float16, True, None, 1e-2)


def test_triton_rejects_unsupported():
    q = torch.randn(1, 1, 4, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float16, bfloat16 and float32"):
        triton_attention(q, q, q)
    q = torch.randn(1, 1, 4, 256, device=DEVICE)
    with pytest.raises(ValueError, match="up to 128"):
        triton_attention(q, q, q)


@pytest.mark.skipif(not CUDA, reason="realistic sizes and bfloat16 need a CUDA GPU")
@pytest.mark.parametrize("shape", LARGE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_triton_matches_naive_cuda(shape, dtype, causal):
    _check(shape, dtype, causal, None, 1e-2 if dtype == torch.float16 else 2e-2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_auto_picks_triton_on_cuda():
    from llmbook.kernels import resolve_impl

    assert resolve_impl("auto", "cuda", 64, masked=False) == "triton"
