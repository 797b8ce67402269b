"""Attention benchmark: every implementation, forward / backward / forward+backward, against SDPA in the same run.

Prints one JSON record and writes bench/results/attention-<device>.json. TFLOP/s count the matmul FLOPs of
`llmbook.kernels.measure.attention_flops` (causal pairs only). Memory: on CUDA the peak allocated during the
call minus what was allocated before; on every device also the largest single tensor the call creates.
Small defaults run on a laptop CPU; on a GPU pass e.g. --seq-lens 1024 2048 4096 8192 --head-dims 64 128 --dtype bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from llmbook.kernels import attention, triton_available
from llmbook.kernels.measure import attention_flops, largest_tensor_bytes

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "bwd", "fwd+bwd")


def device_name(device: str) -> str:
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return "cpu"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(impl: str, mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
            repeats: int) -> dict:
    """Median time (s), peak CUDA memory and the largest tensor of one (impl, mode) on fixed inputs."""
    device = q.device.type
    grad = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            return attention(q, k, v, causal, impl=impl)

    def fwd_bwd():
        out = attention(q, k, v, causal, impl=impl)
        return torch.autograd.grad(out, (q, k, v), grad)

    def make_bwd():  # a fresh graph per call: time only the backward
        out = attention(q, k, v, causal, impl=impl)
        return lambda: torch.autograd.grad(out, (q, k, v), grad)

    fn = {"fwd": fwd, "fwd+bwd": fwd_bwd}.get(mode)
    fn() if fn else make_bwd()()  # warm-up (compiles Triton kernels)
    times = []
    for _ in range(repeats):
        call = fn or make_bwd()
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = None
    if device == "cuda":
        call = fn or make_bwd()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    largest = largest_tensor_bytes(fn or make_bwd()) / 2**20
    return dict(seconds=sorted(times)[len(times) // 2], peak_mb=peak, largest_tensor_mb=largest)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--impls", nargs="+", default=None, help="default: naive sdpa tiled (+ triton on CUDA)")
    p.add_argument("--seq-lens", nargs="+", type=int, default=[128, 512])
    p.add_argument("--head-dims", nargs="+", type=int, default=[32, 64])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (multi-head attention)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--no-causal", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = args.impls or ["sdpa", "naive", "tiled"] + (["triton"] if triton_available(args.device) else [])
    impls = ["sdpa", *[i for i in impls if i != "sdpa"]]  # the named peer every ratio is against, measured first
    dtype, causal, kv = DTYPES[args.dtype], not args.no_causal, args.kv_heads or args.heads
    rows = []
    torch.manual_seed(0)
    for t in args.seq_lens:
        for d in args.head_dims:
            q = torch.randn(args.batch, args.heads, t, d, device=args.device, dtype=dtype, requires_grad=True)
            k = torch.randn(args.batch, kv, t, d, device=args.device, dtype=dtype, requires_grad=True)
            v = torch.randn(args.batch, kv, t, d, device=args.device, dtype=dtype, requires_grad=True)
            for mode in MODES:
                flops = attention_flops(args.batch, args.heads, t, t, d, causal, mode)
                base = None
                for impl in impls:
                    r = measure(impl, mode, q, k, v, causal, args.repeats)
                    base = r["seconds"] if impl == "sdpa" else base
                    row = dict(impl=impl, mode=mode, seq_len=t, head_dim=d, ms=r["seconds"] * 1e3,
                               tflops=flops / r["seconds"] / 1e12, peak_mb=r["peak_mb"],
                               largest_tensor_mb=r["largest_tensor_mb"], speedup_vs_sdpa=base / r["seconds"])
                    rows.append(row)
                    print(f"T={t:6d} D={d:4d} {mode:8s} {impl:7s} {row['ms']:9.3f} ms {row['tflops']:8.4f} TFLOP/s "
                          f"x{row['speedup_vs_sdpa']:.2f} vs sdpa  largest tensor {row['largest_tensor_mb']:.2f} MB"
                          + (f"  peak {row['peak_mb']:.1f} MB" if row["peak_mb"] is not None else ""),
                          file=sys.stderr)
    dev = device_name(args.device)
    record = dict(
        benchmark="attention", peer="sdpa", device=dev,
        machine=platform.processor() or platform.machine(), cpu_threads=torch.get_num_threads(),
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        commit=git_commit(), date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        settings=dict(batch=args.batch, heads=args.heads, kv_heads=kv, dtype=args.dtype, causal=causal,
                      repeats=args.repeats),
        results=rows)
    if "triton" in impls:
        import triton

        record["versions"]["triton"] = triton.__version__
    out = args.out or Path(__file__).parent / "results" / f"attention-{dev}.json"
    write_atomic(out, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
