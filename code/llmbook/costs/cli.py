"""`llmbook costs`: training cost, compute-optimal sizing and memory per GPU from the command line (@sec-costs)."""

from __future__ import annotations

import argparse
import json
import math

from llmbook.costs.budget import DEFAULT_GRID_KG_PER_KWH, DEFAULT_PUE, estimate_training
from llmbook.costs.flops import train_flops, train_flops_for
from llmbook.costs.hardware import GPUS
from llmbook.costs.memory import PRECISIONS, training_memory
from llmbook.costs.params import count_params
from llmbook.costs.scaling import chinchilla_optimal, kaplan_optimal
from llmbook.model.config import GPTConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("costs", help="estimate training compute, time, money, energy and memory",
                              description="Estimate the cost of a training run (default), the compute-optimal "
                                          "model size (chinchilla), or training memory per GPU (memory).")
    p.add_argument("--params", type=float, help="model parameters N (or use --config)")
    p.add_argument("--config", help="model preset name or JSON/TOML file; FLOPs then include attention")
    p.add_argument("--tokens", type=float, help="training tokens D")
    p.add_argument("--flops", type=float, help="training FLOPs (instead of --params/--tokens)")
    p.add_argument("--gpu", default="h100-sxm", help=f"accelerator: {', '.join(GPUS)} (default h100-sxm)")
    p.add_argument("--gpus", type=int, default=1, help="number of accelerators for wall-clock time")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation in (0, 1] (default 0.4)")
    p.add_argument("--price", type=float, help="price per GPU-hour in USD")
    p.add_argument("--pue", type=float, default=DEFAULT_PUE, help=f"data-centre PUE (default {DEFAULT_PUE})")
    p.add_argument("--grid", type=float, default=DEFAULT_GRID_KG_PER_KWH,
                   help=f"grid intensity, kg CO2e/kWh (default {DEFAULT_GRID_KG_PER_KWH})")
    p.add_argument("--power", type=float, help="board power in watts (default: the GPU's rated power)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_estimate)
    sub = p.add_subparsers(dest="costs_command", metavar="{chinchilla,memory,gpus}")

    c = sub.add_parser("chinchilla", help="compute-optimal parameters and tokens for a FLOP budget")
    c.add_argument("--flops", type=float, required=True, help="compute budget in FLOPs")
    c.add_argument("--method", choices=("rule", "fit", "kaplan"), default="rule",
                   help="rule: 20 tokens/parameter; fit: Chinchilla's fitted loss; kaplan: Kaplan et al. 2020")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_chinchilla)

    m = sub.add_parser("memory", help="training memory per GPU under DDP or ZeRO-1/2/3 (FSDP)")
    m.add_argument("--config", required=True, help="model preset name or JSON/TOML file")
    m.add_argument("--world-size", type=int, default=1)
    m.add_argument("--zero", type=int, default=0, help="0 = DDP, 1/2/3 = ZeRO stage (3 = FSDP)")
    m.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per step")
    m.add_argument("--seq-len", type=int, help="tokens per sequence (default: the config's block_size)")
    m.add_argument("--precision", choices=sorted(PRECISIONS), default="mixed",
                   help="mixed: DeepSpeed/Megatron's 16-bit weights and grads + fp32 master and moments "
                        "(2+2+12 bytes/param, default); amp: llmbook train's autocast, fp32 weights, grads "
                        "and moments (4+4+8) plus 16-bit working copies; fp32: no mixed precision")
    m.add_argument("--checkpointing", action="store_true", help="full activation checkpointing")
    m.add_argument("--no-flash", action="store_true", help="materialise attention scores (no FlashAttention)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_memory)

    g = sub.add_parser("gpus", help="list the accelerators and their datasheet figures")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=run_gpus)


def _check_finite(args: argparse.Namespace, *names: str) -> None:
    """Reject `inf`/`nan` for the given float flags (argparse's float() accepts them), naming flag and value."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def _finite(obj: object, path: str = "") -> object:
    """`obj` unchanged when every number in it is finite; otherwise a one-line error naming the figure that
    overflowed, so `--json` never prints `Infinity` or `NaN` (which are not JSON)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            _finite(value, key)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"the estimate overflows: {path} = {obj}; check the magnitude of the inputs")
    return obj


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    return (f"{x:.3e}" if abs(x) >= 1e7 else f"{x:,.1f}") + (f" {unit}" if unit else "")


def run_estimate(args: argparse.Namespace) -> int:
    _check_finite(args, "params", "tokens", "flops", "mfu", "price", "pue", "grid", "power")
    if args.flops is not None:
        if args.params is not None or args.config is not None or args.tokens is not None:
            raise ValueError("give either --flops or --params/--config with --tokens, not both")
        flops, params = args.flops, None
    else:
        if args.tokens is None or (args.params is None) == (args.config is None):
            raise ValueError("give --tokens and exactly one of --params or --config (or --flops alone)")
        if args.config is not None:
            cfg = GPTConfig.load(args.config)
            params, flops = count_params(cfg).total, train_flops_for(cfg, args.tokens)
        else:
            params, flops = args.params, train_flops(args.params, args.tokens)
    est = estimate_training(flops, args.gpu, args.mfu, n_gpus=args.gpus, price_per_gpu_hour=args.price,
                            pue=args.pue, grid_kg_per_kwh=args.grid, power_w=args.power)
    result = _finite({"params": params, "tokens": args.tokens, **est.as_dict(),
                      "wall_clock_days": est.wall_clock_hours / 24})
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    print(_table([
        ("model parameters", _fmt(params)), ("training tokens", _fmt(args.tokens)),
        ("training FLOPs", _fmt(est.train_flops)),
        ("accelerator", f"{est.gpu} x {est.n_gpus} at {est.mfu:.0%} MFU"),
        ("GPU-hours", _fmt(est.gpu_hours)), ("wall clock", f"{_fmt(est.wall_clock_hours / 24)} days"),
        ("cost", _fmt(est.cost_usd, "USD")), ("energy", _fmt(est.energy_kwh, "kWh")),
        ("emissions", _fmt(est.co2e_kg, "kg CO2e")),
    ]))
    return 0


def run_chinchilla(args: argparse.Namespace) -> int:
    _check_finite(args, "flops")
    alloc = kaplan_optimal(args.flops) if args.method == "kaplan" else chinchilla_optimal(args.flops, args.method)
    result = _finite({"flops": alloc.flops, "params": alloc.params, "tokens": alloc.tokens,
                      "tokens_per_param": alloc.tokens_per_param, "method": alloc.method})
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        print(_table([("compute budget", _fmt(alloc.flops, "FLOPs")), ("parameters", _fmt(alloc.params)),
                      ("tokens", _fmt(alloc.tokens)), ("tokens per parameter", f"{alloc.tokens_per_param:.1f}"),
                      ("method", alloc.method)]))
    return 0


def run_memory(args: argparse.Namespace) -> int:
    cfg = GPTConfig.load(args.config)
    mem = training_memory(cfg, micro_batch=args.micro_batch, seq_len=args.seq_len, world_size=args.world_size,
                          zero_stage=args.zero, precision=args.precision, checkpointing=args.checkpointing,
                          flash_attention=not args.no_flash)
    result = _finite({"config": args.config, "params": count_params(cfg).total, "world_size": args.world_size,
                      "zero_stage": args.zero, "precision": args.precision, "bytes_per_gpu": mem.as_dict()})
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        stage = "DDP" if args.zero == 0 else f"ZeRO-{args.zero}"
        print(f"{args.config}: {stage}, {args.world_size} GPU(s), {args.precision} precision, per GPU:")
        print(_table([(k, f"{v / 2**30:,.2f} GiB") for k, v in mem.as_dict().items()]))
    return 0


def run_gpus(args: argparse.Namespace) -> int:
    rows = [{"name": g.name, "peak_bf16_tflops": g.peak_bf16 / 1e12, "memory_gb": g.memory_gb,
             "bandwidth_tb_s": g.bandwidth / 1e12, "power_w": g.power_w, "bf16": g.bf16, "source": g.cite}
            for g in GPUS.values()]
    if args.json:
        print(json.dumps(rows))
    else:
        print(_table([(r["name"], f"{r['peak_bf16_tflops']:7.1f} TFLOP/s  {r['memory_gb']:5.0f} GB  "
                                  f"{r['bandwidth_tb_s']:5.2f} TB/s  {r['power_w'] or '?'} W") for r in rows]))
    return 0
