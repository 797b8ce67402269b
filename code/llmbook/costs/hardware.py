"""Accelerators with their published peak throughput, memory, bandwidth and board power (@sec-costs-hardware)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    """One accelerator's datasheet figures; peaks are dense (no 2:4 sparsity) tensor-core FLOP/s."""

    name: str
    peak_bf16: float  # FLOP/s in bf16 (fp16 where the chip has no bf16, see `bf16`)
    memory_gb: float
    bandwidth: float  # memory bandwidth, bytes/s
    power_w: float | None  # board power (TDP) in watts; None where the vendor publishes none
    cite: str  # references.bib key of the datasheet
    bf16: bool = True  # False: the peak is fp16 and bf16 is not supported

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def ridge_point(self) -> float:
        """FLOPs per byte at which a kernel stops being memory-bound (the roofline's ridge)."""
        return self.peak_bf16 / self.bandwidth


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("a100-40gb", 312e12, 40, 1555e9, 400, "nvidia2020a100"),
        GPU("a100-80gb", 312e12, 80, 2039e9, 400, "nvidia2020a100"),
        GPU("h100-sxm", 989e12, 80, 3.35e12, 700, "nvidia2022h100"),
        GPU("h100-pcie", 756e12, 80, 2.0e12, 350, "nvidia2022h100"),
        GPU("h200", 989e12, 141, 4.8e12, 700, "nvidia2024h200"),
        GPU("l4", 121e12, 24, 300e9, 72, "nvidia2023l4"),
        GPU("t4", 65e12, 16, 320e9, 70, "nvidia2019t4", bf16=False),
        GPU("rtx-4090", 165.2e12, 24, 1008e9, 450, "nvidia2022ada"),
        GPU("tpu-v5e", 197e12, 16, 819e9, None, "google2023tpuv5e"),
    )
}


def get_gpu(name: str) -> GPU:
    """Look up an accelerator by name, with an error listing the known ones."""
    key = name.strip().lower()
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[key]
