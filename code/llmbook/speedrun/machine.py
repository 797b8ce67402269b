"""The machine a speedrun runs on: its description, native bf16 support and a measured matmul peak for MFU
(@sec-speedrun-machine).

On a GPU, MFU divides by the datasheet peak of `llmbook.costs`. A CPU has no such table entry, so the
report divides by the throughput of a large matrix multiply measured on the same machine, with the same
threads and number format: an upper bound that training can approach but not exceed.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute bf16 products natively


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (Linux); empty where the file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: CUDA from Ampere on, x86 CPUs with AVX512-BF16 or
    AMX. Elsewhere bf16 autocast is emulated and slower than fp32."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_flags() & set(BF16_FLAGS))


def resolve_precision(precision: str, device: str) -> str:
    """`auto` -> bf16 where `native_bf16(device)`; otherwise fp16 with loss scaling on a GPU (a T4) and fp32 on a
    CPU. An explicit choice is kept."""
    if precision != "auto":
        return precision
    if native_bf16(device):
        return "bf16"
    return "fp16" if device == "cuda" else "fp32"


def matmul_peak(precision: str, device: str = "cpu", n: int = 2048, seconds: float = 1.0) -> float:
    """Measured FLOP/s of an n x n matrix product in `precision` on `device` (best of repeated runs)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    a @ b  # warm-up: kernel selection, page faults
    while True:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best = max(best, 2 * n**3 / elapsed)
        if time.perf_counter() > deadline:
            return best


def describe(device: str) -> dict[str, Any]:
    """What the report card says about the machine: CPU, cores, threads, GPU, library versions."""
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "native_bf16": native_bf16(device)}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
