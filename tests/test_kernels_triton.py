"""The Triton FlashAttention kernel against the naive attention, on CPU through the Triton interpreter.

Triton decides between compiling and interpreting when its modules are first imported, so without CUDA
these tests must run in a process started with TRITON_INTERPRET=1. In a process without it (e.g. the
full test suite), the kernel tests are skipped and test_triton_kernel_in_interpreter runs this file again
in a subprocess with the variable set. With CUDA the tests run compiled, plus realistic sizes in
float16/bfloat16. The interpreter cannot multiply bfloat16 matrices, so bfloat16 is checked on CUDA only.
Tolerances: float32 2e-5 absolute (interpreter, exact float32 dots); on GPU float32 uses IEEE dots (1e-4);
float16/bfloat16 outputs and gradients have a per-tensor relative-norm error below 1e-2/2e-2 against a float32
reference (a gradient zeroed on a slice of the tensor fails this; bf16 rounding, about 4e-3, does not).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmbook.kernels import attention

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

IN_SUBPROCESS = not CUDA and not INTERPRETED
kernel_test = pytest.mark.skipif(IN_SUBPROCESS, reason="run by test_triton_kernel_in_interpreter in a subprocess")


@pytest.mark.skipif(not IN_SUBPROCESS, reason="this process can run the kernel directly")
def test_triton_kernel_in_interpreter():
    """Run this module's tests in a fresh process with TRITON_INTERPRET=1 (a few tens of seconds)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "code"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(Path(__file__).resolve())], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


DEVICE = "cuda" if CUDA else "cpu"
# (T_q, T_k, H, H_kv, D): ragged tails (1, 17, 33 are not multiples of the 16-wide tiles), GQA 2:1, MQA 4:1,
# decoding (T_q=1), more queries than keys, head dims 16-64 (padded to a power of two inside the kernel).
SMALL = [(1, 1, 2, 2, 16), (17, 17, 4, 2, 32), (1, 17, 4, 1, 32), (33, 33, 2, 1, 24), (5, 33, 2, 2, 64),
         (20, 9, 2, 1, 16)]
LARGE = [(129, 129, 8, 2, 64), (1024, 1024, 8, 8, 128), (511, 1023, 16, 4, 32), (257, 257, 4, 1, 128)]


def rel_err(a, b):
    """Relative error of a whole tensor, ||a - b|| / ||b||: a wrong or zeroed slice shows up, rounding does not."""
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _check(shape, dtype, causal, window, tol):
    """Outputs and q/k/v gradients against the naive attention in float32: max abs error <= tol in float32,
    per-tensor relative-norm error <= tol in half precision."""
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
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, atol=tol, rtol=0, msg=f"{name} {shape} {dtype}")
        else:
            assert rel_err(a, b) < tol, (name, shape, dtype, rel_err(a, b))


@kernel_test
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("causal", [True, False])
def test_triton_matches_naive_small(shape, causal):
    _check(shape, torch.float32, causal, None, 1e-4 if CUDA else 2e-5)


@kernel_test
@pytest.mark.parametrize("window", [1, 7, 20])
def test_triton_sliding_window(window):
    _check((33, 33, 2, 1, 16), torch.float32, True, window, 1e-4 if CUDA else 2e-5)


@pytest.fixture(params=[(32, 16), (16, 32)], ids=lambda t: f"M{t[0]}N{t[1]}")
def unequal_tiles(request, monkeypatch):
    """Every GPU configuration has BLOCK_M != BLOCK_N: run the interpreter with such tiles in all three kernels."""
    from llmbook.kernels import flash_triton as ft

    if CUDA:
        pytest.skip("the GPU configurations are already unequal")
    tile = dict(BLOCK_M=request.param[0], BLOCK_N=request.param[1])
    monkeypatch.setattr(ft, "_config", lambda *a: dict(fwd=dict(tile), dkdv=dict(tile), dq=dict(tile)))
    return request.param


@kernel_test
@pytest.mark.parametrize("shape,causal,window", [
    ((20, 45, 4, 1, 16), True, 5),  # fewer queries than keys, window, GQA 4:1
    ((45, 20, 4, 1, 16), True, 5),  # more queries than keys: the first rows see nothing
    ((64, 64, 2, 1, 16), True, 40),  # a window wide enough for unmasked tiles between two masked edges
    ((33, 47, 4, 2, 16), True, None),
    ((33, 47, 4, 2, 16), False, None),
])
def test_triton_unequal_tiles(unequal_tiles, shape, causal, window):
    _check(shape, torch.float32, causal, window, 2e-5)


@kernel_test
@pytest.mark.parametrize("shape", [(20, 45, 4, 1, 16), (45, 20, 4, 1, 16)])
def test_triton_window_with_unequal_lengths(shape):
    _check(shape, torch.float32, True, 5, 1e-4 if CUDA else 2e-5)


@kernel_test
def test_triton_rejects_one_sided_window_without_causal():
    from llmbook.kernels.flash_triton import triton_attention

    q = torch.randn(1, 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="needs causal=True"):
        triton_attention(q, q, q, causal=False, window=2)
    with pytest.raises(ValueError, match="precision"):
        triton_attention(q, q, q, precision="fp8")


@kernel_test
def test_triton_float16():
    _check((17, 17, 4, 2, 32), torch.float16, True, None, 1e-2)


@kernel_test
def test_triton_rejects_unsupported():
    from llmbook.kernels.flash_triton import triton_attention

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


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() < (8, 0), reason="tf32 needs an Ampere GPU")
def test_triton_tf32_float32():
    _check((257, 257, 4, 1, 64), torch.float32, True, None, 1e-4)  # exact ("ieee") float32 stays tight
    from llmbook.kernels.flash_triton import triton_attention

    q, k, v = (torch.randn(2, 4, 257, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(i))
               for i in range(3))
    ref = attention(q, k, v, True, impl="naive")
    assert rel_err(triton_attention(q, k, v, precision="tf32"), ref) < 5e-3


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_auto_picks_triton_on_cuda():
    from llmbook.kernels import resolve_impl

    assert resolve_impl("auto", "cuda", 64, masked=False, dtype=torch.bfloat16) == "triton"
    assert resolve_impl("auto", "cuda", 64, masked=False, dtype=torch.float32) == "sdpa"
    assert resolve_impl("auto", "cuda", 80, masked=False, dtype=torch.bfloat16) == "sdpa"


# Shared memory per thread block: T4 (sm_75) 64 KiB, A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
SMEM_LIMIT = {(7, 5): 64 * 1024, (8, 0): 163 * 1024, (9, 0): 227 * 1024}


@pytest.mark.skipif(INTERPRETED, reason="compiles for CUDA targets, which the interpreter replaces")
@pytest.mark.parametrize("capability,dtype,head_dim,window", [((7, 5), torch.float16, 64, False),
                                                               ((7, 5), torch.float16, 128, True),
                                                               ((7, 5), torch.bfloat16, 64, False),
                                                               ((8, 0), torch.float16, 64, True),
                                                               ((9, 0), torch.bfloat16, 128, False)])
def test_kernels_compile_for_gpus(capability, dtype, head_dim, window):
    """Without a GPU: compile forward and backward kernels to GPU machine code (ptxas ships with triton)
    with the launch configuration `_config` picks for that GPU, check they fit its shared memory, and that
    the dot products use tensor-core (mma) instructions exactly where `triton_preferred` says so: before
    Ampere, Triton compiles float16 and bfloat16 dots to scalar FMAs, which is why "auto" does not pick it there."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from llmbook.kernels import flash_triton as ft
    from llmbook.kernels import triton_preferred

    tiles = ft._config(dtype, head_dim, capability)
    elem = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    tensor_cores = triton_preferred(dtype, head_dim, capability)
    assert tensor_cores == (capability >= (8, 0))
    for fn, name in ((ft._fwd_kernel, "fwd"), (ft._bwd_dkdv_kernel, "dkdv"), (ft._bwd_dq_kernel, "dq")):
        cfg = dict(tiles[name])
        launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
        consts = dict(H=8, GROUP=2, D=head_dim, HEAD_DIM=head_dim, CAUSAL=True, USE_WINDOW=window, PRECISION="ieee",
                      **cfg)
        signature = {a: "constexpr" if a in consts else elem if a in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")
                     else "*fp32" if a in ("LSE", "DELTA") else "fp32" if a.endswith("scale") else "i32"
                     for a in fn.arg_names}
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                                target=GPUTarget("cuda", capability[0] * 10 + capability[1], 32), options=launch)
        assert 0 < kernel.metadata.shared <= SMEM_LIMIT[capability], (fn.__name__, kernel.metadata.shared)
        assert ("mma" in kernel.asm["ptx"]) == tensor_cores, (fn.__name__, capability, dtype)
