"""Time, money, energy and emissions of a training run (@sec-costs-budget)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmbook.costs.flops import _positive
from llmbook.costs.hardware import GPU, get_gpu

# Facility overhead and grid carbon intensity used for GPT-3's footprint in [@patterson2021carbon].
DEFAULT_PUE = 1.1
DEFAULT_GRID_KG_PER_KWH = 0.429


@dataclass(frozen=True)
class TrainingEstimate:
    """What a run of `train_flops` costs on `n_gpus` accelerators at a given MFU."""

    train_flops: float
    gpu: str
    n_gpus: int
    mfu: float
    gpu_hours: float
    wall_clock_hours: float
    cost_usd: float | None
    energy_kwh: float | None
    co2e_kg: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_training(train_flops: float, gpu: str | GPU, mfu: float, n_gpus: int = 1,
                      price_per_gpu_hour: float | None = None, pue: float = DEFAULT_PUE,
                      grid_kg_per_kwh: float = DEFAULT_GRID_KG_PER_KWH,
                      power_w: float | None = None) -> TrainingEstimate:
    """GPU-hours = FLOPs / (peak · MFU); wall clock over `n_gpus`; energy = GPU-hours · board power · PUE.

    Energy counts accelerator board power at its rated maximum times the facility's PUE; host CPUs,
    networking and idle time are left out, so treat it as an order-of-magnitude figure.
    """
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    _positive("train_flops", train_flops)
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    if not isinstance(n_gpus, int) or isinstance(n_gpus, bool) or n_gpus < 1:
        raise ValueError(f"n_gpus must be a positive integer, got {n_gpus!r}")
    if price_per_gpu_hour is not None:
        _positive("price", price_per_gpu_hour)
    _positive("pue", pue)
    if grid_kg_per_kwh < 0:
        raise ValueError(f"grid intensity must be >= 0 kg CO2e/kWh, got {grid_kg_per_kwh!r}")
    gpu_hours = train_flops / (gpu.peak_bf16 * mfu) / 3600
    watts = power_w if power_w is not None else gpu.power_w
    if watts is not None:
        _positive("power_w", watts)
    energy = gpu_hours * watts / 1000 * pue if watts is not None else None
    return TrainingEstimate(
        train_flops=train_flops,
        gpu=gpu.name,
        n_gpus=n_gpus,
        mfu=mfu,
        gpu_hours=gpu_hours,
        wall_clock_hours=gpu_hours / n_gpus,
        cost_usd=gpu_hours * price_per_gpu_hour if price_per_gpu_hour is not None else None,
        energy_kwh=energy,
        co2e_kg=energy * grid_kg_per_kwh if energy is not None else None,
    )
