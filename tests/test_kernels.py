"""Every attention implementation against the naive one: outputs and q/k/v gradients, float64 and float32.

Tolerances: float64 1e-10 (the algorithms differ only in summation order); float32 2e-5 absolute on unit-scale
random inputs. The Triton kernel has its own module (test_kernels_triton.py) because it needs the interpreter.
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from llmbook.kernels import (IMPLS, allowed_mask, attention, naive_attention, resolve_impl, tiled_attention,
                             triton_preferred)
from llmbook.kernels.reference import mask_block

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}

# (T_q, T_k, H, H_kv, D): odd lengths, a single decoding query, GQA 4:1 and 2:1, MQA.
SHAPES = [(1, 1, 2, 2, 8), (17, 17, 4, 2, 16), (129, 129, 4, 1, 8), (1, 17, 4, 4, 16), (5, 129, 6, 3, 8),
          (33, 33, 2, 2, 32)]


def _inputs(shape, dtype, seed=0):
    t_q, t_k, h, h_kv, d = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, h, t_q, d, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(2, h_kv, t_k, d, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(2, h_kv, t_k, d, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


def _run(impl, q, k, v, grad, **kw):
    out = attention(q, k, v, impl=impl, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


@pytest.mark.parametrize("impl", ["sdpa", "tiled"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,causal,window", [(s, c, None) for s, c in itertools.product(SHAPES, [True, False])]
                         + [(SHAPES[2], True, 7), (SHAPES[1], True, 1), (SHAPES[4], True, 40)])
def test_matches_naive(impl, dtype, shape, causal, window):
    q, k, v = _inputs(shape, dtype)
    grad = torch.randn(q.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ref = _run("naive", q, k, v, grad, causal=causal, window=window)
    got = _run(impl, q, k, v, grad, causal=causal, window=window)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=0, msg=f"{impl} {name}")


@pytest.mark.parametrize("block", [(1, 1), (16, 8), (7, 13), (256, 256)])
def test_tiled_any_block_size(block):
    q, k, v = _inputs((33, 33, 4, 2, 8), torch.float64)
    grad = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = _run("naive", q, k, v, grad)
    out = tiled_attention(q, k, v, causal=True, block_q=block[0], block_k=block[1])
    got = (out, *torch.autograd.grad(out, (q, k, v), grad))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_tiled_gradcheck():
    q, k, v = _inputs((5, 7, 2, 1, 4), torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: tiled_attention(q, k, v, True, None, 3, 2, 3), (q, k, v))


def test_naive_is_softmax_of_scores():
    """The definition, spelled out for one head: softmax(q k^T / sqrt(d) + causal mask) v."""
    q, k, v = (x.detach() for x in _inputs((4, 4, 1, 1, 8), torch.float64))
    s = q[0, 0] @ k[0, 0].T / 8 ** 0.5
    s = s.masked_fill(torch.triu(torch.ones(4, 4, dtype=torch.bool), 1), float("-inf"))
    out, w = naive_attention(q, k, v, causal=True, return_weights=True)
    torch.testing.assert_close(w[0, 0], torch.softmax(s, -1))
    torch.testing.assert_close(out[0, 0], torch.softmax(s, -1) @ v[0, 0])


def test_mask_is_bottom_right_aligned():
    m = allowed_mask(2, 4, causal=True, window=None, device="cpu")
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    w = allowed_mask(3, 3, causal=True, window=2, device="cpu")
    assert w.tolist() == [[True, False, False], [True, True, False], [False, True, True]]


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_explicit_mask_and_bias(impl):
    q, k, v = (x.detach() for x in _inputs((6, 6, 2, 1, 8), torch.float64))
    mask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    bias = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    out = attention(q, k, v, causal=False, impl=impl, mask=mask, bias=bias)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) / 8 ** 0.5 + bias
    ref = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ vv
    torch.testing.assert_close(out, ref)


def test_fully_masked_query_gives_zero_not_nan():
    q, k, v = (x.detach() for x in _inputs((3, 3, 1, 1, 4), torch.float64))
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 1, :] = False
    out = attention(q, k, v, causal=False, impl="naive", mask=mask)
    assert torch.isfinite(out).all() and out[:, :, 1].abs().max() == 0
    out_t = tiled_attention(q, k[:, :, :0], v[:, :, :0], causal=False)  # no keys at all
    assert torch.isfinite(out_t).all() and out_t.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tiled_half_precision_close_to_float32(dtype):
    q, k, v = (x.detach() for x in _inputs((33, 33, 2, 2, 16), torch.float32))
    ref = naive_attention(q, k, v)
    out = tiled_attention(q.to(dtype), k.to(dtype), v.to(dtype), block_q=8, block_k=8)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)


def test_dispatch_and_errors():
    from llmbook.model.config import ATTN_IMPLS

    assert set(IMPLS) == {"auto", "naive", "sdpa", "tiled", "triton"} and ATTN_IMPLS is IMPLS
    assert resolve_impl("auto", "cpu", 64, masked=False) == "sdpa"
    if torch.cuda.is_available():
        has_triton = importlib.util.find_spec("triton") is not None
        want = "triton" if has_triton and torch.cuda.get_device_capability() >= (8, 0) else "sdpa"
        assert resolve_impl("auto", "cuda", 64, masked=False, dtype=torch.bfloat16) == want
        assert resolve_impl("auto", "cuda", 64, masked=True, dtype=torch.float16) == "sdpa"
    assert triton_preferred(torch.bfloat16, 64, (8, 0)) and triton_preferred(torch.float16, 128, (9, 0))
    assert not triton_preferred(torch.bfloat16, 64, (7, 5))  # no tensor-core dots from Triton before Ampere
    assert not triton_preferred(torch.float16, 64, (7, 5))
    assert not triton_preferred(torch.float32, 64, (9, 0))  # exact fp32 dots: slow
    assert not triton_preferred(torch.float16, 80, (9, 0))
    q, k, v = (x.detach() for x in _inputs((4, 4, 4, 2, 8), torch.float32))
    with pytest.raises(ValueError, match="impl='bogus'"):
        attention(q, k, v, impl="bogus")
    with pytest.raises(ValueError, match="use impl='naive' or 'sdpa'"):
        attention(q, k, v, impl="tiled", bias=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention(q, k[:, :1].expand(-1, 3, -1, -1), v[:, :1].expand(-1, 3, -1, -1), impl="naive")
    with pytest.raises(ValueError, match="block sizes"):
        tiled_attention(q, k, v, block_q=0)


@pytest.mark.parametrize("impl", ["naive", "sdpa", "tiled"])
def test_window_without_causal_is_rejected(impl):
    """A window is one-sided (the last `window` keys); without causal masking that would silently let each
    query see every later key, so it is an error rather than a surprising one-sided window."""
    q, k, v = (x.detach() for x in _inputs((6, 6, 2, 1, 8), torch.float32))
    with pytest.raises(ValueError, match="needs causal=True"):
        attention(q, k, v, causal=False, impl=impl, window=3)
    with pytest.raises(ValueError, match="positive integer"):
        attention(q, k, v, causal=True, impl=impl, window=0)


def test_mask_block_tiles_the_full_mask():
    """The tiled kernel's per-tile masks are slices of the full mask (one helper builds both)."""
    full = allowed_mask(7, 11, causal=True, window=3, device="cpu")
    for rows, cols in [(range(0, 4), range(0, 5)), (range(4, 7), range(5, 11)), (range(2, 3), range(9, 10))]:
        block = full[rows.start:rows.stop, cols.start:cols.stop]
        assert torch.equal(mask_block(rows, cols, 7, 11, True, 3, "cpu"), block)


def test_attention_flops_counts_visible_pairs():
    from llmbook.kernels.measure import attention_flops

    assert attention_flops(1, 1, 4, 4, 8, causal=False) == 4 * 16 * 8
    assert attention_flops(1, 1, 4, 4, 8, causal=True) == 4 * 10 * 8  # 1 + 2 + 3 + 4 visible pairs
    assert attention_flops(2, 3, 1, 9, 8, causal=True, mode="fwd+bwd") == int(3.5 * 4 * 2 * 3 * 9 * 8)
    with pytest.raises(ValueError, match="mode"):
        attention_flops(1, 1, 1, 1, 1, True, mode="both")


def test_tiled_never_builds_the_score_matrix():
    """The largest tensor of the naive forward is the (B, H, T, T) scores; the tiled one's is O(T)."""
    from llmbook.kernels.measure import largest_tensor_bytes

    q, k, v = (x.detach() for x in _inputs((256, 256, 2, 2, 8), torch.float32))
    naive = largest_tensor_bytes(lambda: attention(q, k, v, impl="naive"))
    tiled = largest_tensor_bytes(lambda: tiled_attention(q, k, v, block_q=32, block_k=32))
    assert naive == 2 * 2 * 256 * 256 * 4
    assert tiled <= max(2 * 2 * 256 * 8 * 4, 2 * 2 * 32 * 32 * 4)  # the output (B, H, T, D) or a score tile


def test_bench_script_runs(tmp_path, root):
    import json
    import subprocess
    import sys

    out = tmp_path / "a.json"
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "code")}
    subprocess.run([sys.executable, str(root / "bench" / "attention.py"), "--seq-lens", "17", "--head-dims", "16",
                    "--repeats", "1", "--impls", "naive", "tiled", "--out", str(out)], check=True, env=env,
                   capture_output=True)
    record = json.loads(out.read_text())
    assert record["peer"] == "sdpa" and {r["impl"] for r in record["results"]} == {"sdpa", "naive", "tiled"}
    assert {r["mode"] for r in record["results"]} == {"fwd", "bwd", "fwd+bwd"}
    assert all(r["tflops"] > 0 and r["speedup_vs_sdpa"] > 0 for r in record["results"])
