"""LoRA and NF4 against their libraries, side by side in one process (@sec-finetune-lora, @sec-finetune-qlora).

1. Forward + backward time of one LoRA layer (`llmbook.finetune.lora.LoRALinear`) vs PEFT's `lora.Linear` on the same
   shapes, weights and inputs (median of interleaved repeats); the ratio is PEFT's time over ours (target >= 1.0).
2. Peak training memory of full fine-tuning vs LoRA vs QLoRA for the same model and a small batch: the tensors one
   AdamW step allocates (`llmbook.finetune.memory`), and each mode's resident memory before and at the peak of one
   step, measured in its own fresh process (on a GPU: the allocator's peak).
3. NF4 quantize and dequantize throughput (million weights per second) of `llmbook.finetune.nf4` vs bitsandbytes'
   CPU kernels, where bitsandbytes runs.

Prints one JSON record and writes bench/results/finetune-<device>.json.

    python bench/finetune.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # peft imports bitsandbytes, whose CPU backend may look for hub kernels
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from llmbook.finetune.lora import LoRAConfig, LoRALinear, apply_lora  # noqa: E402
from llmbook.finetune.memory import measure_training_memory  # noqa: E402
from llmbook.finetune.nf4 import NF4Weight  # noqa: E402
from llmbook.model import GPT, GPTConfig  # noqa: E402

MODEL = dict(vocab_size=8192, block_size=256, n_layer=6, n_head=8, n_embd=512)


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int, rounds: int = 5) -> dict[str, float]:
    """Median time of each function, measured in alternating rounds so load changes hit both sides alike."""
    per = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            per[name].append(median_time(fn, repeats))
    return {k: statistics.median(v) for k, v in per.items()}


def lora_layer(tokens: int, d_in: int, d_out: int, r: int, repeats: int, device: str) -> dict:
    """Forward + backward of our LoRA layer and PEFT's on the same base weights, adapters and input."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Linear(d_in, d_out).to(device)
    ours = LoRALinear(base, r=r, alpha=2 * r).to(device)
    wrapped = get_peft_model(torch.nn.Sequential(copy.deepcopy(base)), LoraConfig(r=r, lora_alpha=2 * r,
                                                                                  target_modules=["0"]))
    theirs = wrapped.base_model.model[0]  # PEFT's lora.Linear around the same base weights
    with torch.no_grad():
        ours.lora_B.normal_(std=0.02)
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    theirs.base_layer.requires_grad_(False)
    x = torch.randn(tokens, d_in, device=device, requires_grad=True)
    grad = torch.randn(tokens, d_out, device=device)
    assert torch.allclose(ours(x), theirs(x), atol=1e-4), "the two layers must compute the same function"

    def step(layer):
        def run():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(x).backward(grad)
            if device == "cuda":
                torch.cuda.synchronize()
        return run

    t = interleaved({"ours": step(ours), "peft": step(theirs)}, repeats)
    return {"shape": [tokens, d_in, d_out], "rank": r, "ours_ms": 1e3 * t["ours"], "peft_ms": 1e3 * t["peft"],
            "speedup_vs_peft": t["peft"] / t["ours"]}


def build(mode: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL))
    if mode != "full":
        apply_lora(model, LoRAConfig(r=16, alpha=32, quantize="nf4" if mode == "qlora" else "none"))
    return model


def batch(device: str, n: int = 2, t: int = 128):
    """A small batch, the usual regime of fine-tuning a large model on one device (with gradient accumulation)."""
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, MODEL["vocab_size"], (n, t + 1), generator=gen)
    return data[:, :-1].to(device), data[:, 1:].to(device)


def peak_rss_child(mode: str, device: str) -> dict[str, float]:
    """Resident memory (MiB) of a fresh process that builds the model, then runs one training step: before the step,
    and the peak during it (Linux: the high-water mark is reset through /proc/self/clear_refs after building)."""
    code = """
import gc, resource, sys, torch
sys.path.insert(0, 'bench')
import finetune as f
m = f.build(MODE).to(DEVICE)
x, y = f.batch(DEVICE)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])
gc.collect()
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
try:
    open('/proc/self/clear_refs', 'w').write('5')
    before = status('VmRSS:')
except OSError:
    before = float('nan')
loss = m(x, y)[1]
loss.backward()
opt.step()
peak = status('VmHWM:') if before == before else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(before, peak)
""".replace("MODE", repr(mode)).replace("DEVICE", repr(device))
    # large blocks come from mmap and go back to the system when freed, so resident memory tracks live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env=env)
    before, peak = map(float, out.stdout.strip().splitlines()[-1].split())
    return {"rss_before_step_mib": before, "peak_rss_step_mib": peak}


def memory(device: str) -> dict:
    x, y = batch(device)
    out = {}
    for mode in ("full", "lora", "qlora"):
        model = build(mode).to(device)
        out[mode] = measure_training_memory(model, x, y).to_dict()
        if device == "cpu":
            out[mode].update(peak_rss_child(mode, device))
    out["lora_vs_full_total"] = out["lora"]["total"] / out["full"]["total"]
    out["qlora_vs_full_total"] = out["qlora"]["total"] / out["full"]["total"]
    return out


def nf4_throughput(shape: tuple[int, int], repeats: int) -> dict:
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.02
    n = w.numel() / 1e6
    weight = NF4Weight(w)
    fns = {"ours_quantize": lambda: NF4Weight(w), "ours_dequantize": lambda: weight.dequantize()}
    try:
        import bitsandbytes.functional as F

        q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        fns.update({"bnb_quantize": lambda: F.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                             compress_statistics=True),
                    "bnb_dequantize": lambda: F.dequantize_4bit(q, state)})
        available = True
    except Exception as err:  # noqa: BLE001 - report why the peer is missing
        available = f"bitsandbytes unavailable: {type(err).__name__}: {err}"
    t = interleaved(fns, repeats, rounds=3)
    out = {"shape": list(shape), "bitsandbytes": available,
           **{f"{k}_mweights_per_s": n / v for k, v in t.items()}}
    if available is True:
        out["quantize_ratio_vs_bnb"] = t["bnb_quantize"] / t["ours_quantize"]
        out["dequantize_ratio_vs_bnb"] = t["bnb_dequantize"] / t["ours_dequantize"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lora = [lora_layer(2048, 768, 768, 16, args.repeats, args.device),
            lora_layer(2048, 768, 3072, 16, args.repeats, args.device)]
    figures = {"lora_layer": lora, "memory": memory(args.device),
               "nf4": nf4_throughput((2048, 2048), max(3, args.repeats // 3))}
    record("finetune", figures, {"threads": args.threads, "repeats": args.repeats, "model": MODEL, "lora_r": 16},
           ["torch", "peft", "bitsandbytes"], device=args.device)


if __name__ == "__main__":
    main()
