"""The report card: every measured number of a speedrun in `report.json`, and the same as `report.md`
(@sec-speedrun-report), in the spirit of nanochat's report card.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from llmbook.book import duration, si
from llmbook.speedrun.config import SpeedrunConfig

REFERENCE_GPUS = ("t4", "h100-sxm")  # where a CPU run's FLOPs would also be priced


def _estimates(flops: float, gpus: tuple[str, ...], mfu: float, price: float | None = None) -> list[dict[str, Any]]:
    """Time, energy and (given a price per GPU-hour) cost of the same training FLOPs on each GPU at `mfu`, from
    `llmbook.costs`."""
    from llmbook.costs import estimate_training

    out = []
    for gpu in gpus:
        est = estimate_training(flops, gpu, mfu, price_per_gpu_hour=price)
        out.append({"gpu": gpu, "mfu": mfu, "hours": est.gpu_hours, "energy_kwh": est.energy_kwh,
                    "cost_usd": est.cost_usd})
    return out


def pretraining_estimate(cfg: SpeedrunConfig, peak_flops: float | None = None) -> dict[str, Any]:
    """How long the preset's pretraining should take, from `llmbook.costs`: its FLOPs over the peak of the
    preset's GPU (or `peak_flops`, e.g. a measured CPU matmul peak) times the preset's assumed MFU. An estimate,
    to be replaced by the measured time of a real run."""
    from llmbook.costs import get_gpu, train_flops_for

    t = cfg.train
    tokens = t.train.steps * t.train.grad_accum * t.data.batch_size * t.data.block_size
    flops = train_flops_for(t.model_config(), tokens, t.data.block_size)
    if peak_flops is None:
        if not cfg.machine.gpu:
            raise ValueError(f"preset {cfg.name!r} names no GPU ([speedrun.machine] gpu): pass a measured peak")
        peak_flops, source = get_gpu(cfg.machine.gpu).peak_bf16, f"datasheet peak of {cfg.machine.gpu}"
    else:
        source = "measured matmul peak"
    seconds = flops / (peak_flops * cfg.machine.mfu)
    return {"tokens": tokens, "train_flops": flops, "peak_flops": peak_flops, "peak_source": source,
            "mfu": cfg.machine.mfu, "seconds": seconds, "estimate": True}


def build_report(cfg: SpeedrunConfig, records: dict[str, dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """Collect every stage's record into one report: stages with their times, and each stage's summary."""
    stages = []
    for name, record in records.items():
        stages.append({"stage": name, "status": record.get("status"), "reason": record.get("reason", ""),
                       "wall_s": record.get("wall_s"), "cpu_s": record.get("cpu_s"),
                       "load_average": record.get("load_average")})
    done = [s for s in stages if s["status"] == "done"]
    wall = sum(s["wall_s"] or 0 for s in done)
    cpu = sum(s["cpu_s"] or 0 for s in done)
    m = cfg.machine
    report: dict[str, Any] = {
        "preset": cfg.name, "description": cfg.description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
        "stages": stages, "total": {"wall_s": wall, "cpu_s": cpu, "budget_minutes": m.budget_minutes or None,
                                    "within_budget": (wall <= 60 * m.budget_minutes) if m.budget_minutes else None},
        "summaries": {name: r.get("summary", {}) for name, r in records.items() if r.get("status") == "done"},
    }
    pre = report["summaries"].get("pretrain")
    if pre:
        gpus = (m.gpu,) if m.gpu else REFERENCE_GPUS
        report["cost"] = {"measured_hours": wall / 3600, "price_per_hour": m.price_per_hour,
                          "measured_cost_usd": wall / 3600 * m.price_per_hour,
                          "same_flops_on_gpus": _estimates(pre["train_flops"], gpus, m.mfu,
                                                           m.price_per_hour if m.gpu and m.price_per_hour else None)}
    return report


# ------------------------------------------------------------------------------------------------ Markdown
def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _ci(m: dict[str, float], sign: bool = False) -> str:
    """A metric with its interval: 0.412 [0.35, 0.47]."""
    f = "+.3f" if sign else ".3f"
    return f"{m['value']:{f}} [{m['ci_low']:{f}}, {m['ci_high']:{f}}]"


def _minutes(seconds: float | None) -> str:
    return "" if seconds is None else duration(seconds / 3600)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(report: dict[str, Any]) -> str:
    """The report card as Markdown: stages and times, data, model, compression, benchmarks, samples."""
    s = report["summaries"]
    mach = report["machine"]
    total = report["total"]
    out = [f"# Speedrun report card: preset `{report['preset']}`", "", report["description"], "",
           f"Machine: {mach.get('cpu')} ({mach.get('cores')} cores, {mach.get('torch_threads')} PyTorch threads"
           + (f", GPU {mach['gpu']}" if mach.get("gpu") else "") + f"), torch {mach.get('torch')}, "
           f"native bf16: {'yes' if mach.get('native_bf16') else 'no'}. Finished {report['created']}.", ""]
    budget = total.get("budget_minutes")
    line = f"Total: {_minutes(total['wall_s'])} wall clock, {_minutes(total['cpu_s'])} of CPU time"
    if budget:
        line += f" (budget {budget:g} min: {'met' if total['within_budget'] else 'missed'})"
    out += [line + ".", "", "## Stages", ""]
    out += _table(["stage", "status", "wall", "CPU", "load average (1, 5, 15 min)"],
                  [[st["stage"], st["status"] if st["status"] == "done" else st["reason"] or st["status"],
                    _minutes(st["wall_s"]), _minutes(st["cpu_s"]), ", ".join(map(str, st["load_average"] or []))]
                   for st in report["stages"]])
    if "data" in s:
        d = s["data"]
        out += ["## Data", "", f"{d['documents']} documents of `{d['corpus']}`: {d['heldout_documents']} held out "
                f"({_num(d['heldout_bytes'])} bytes, never seen by the tokenizer or the model), {d['train_documents']} "
                f"for training, cut into {d['pieces']:,} pieces; {d['kept_pieces']:,} pieces ({_num(d['kept_bytes'])} "
                "bytes) kept by curation.", ""]
        out += _table(["removed by", "pieces"], [[k, v] for k, v in d["removed"].items()])
        if d["pii_spans"]:
            out += ["PII spans redacted: " + ", ".join(f"{k} {v}" for k, v in d["pii_spans"].items()), ""]
    if "tokenizer" in s:
        t = s["tokenizer"]
        out += ["## Tokenizer", "", f"Byte-level BPE, {t['vocab_size']:,} tokens; {_num(t['train_tokens'])} training "
                f"and {_num(t['val_tokens'])} validation tokens; {t['bytes_per_token_train']:.2f} bytes per token on "
                f"the training text, {t['bytes_per_token_heldout']:.2f} on the held-out books.", ""]
    if "pretrain" in s:
        p = s["pretrain"]
        mc = p["model"]
        out += ["## Pretraining", ""]
        out += _table(["quantity", "value"], [
            ["parameters (non-embedding)", f"{_num(p['params'])} ({_num(p['non_embedding_params'])})"],
            ["shape", f"{mc['n_layer']} layers, width {mc['n_embd']}, {mc['n_head']} heads, context {mc['block_size']}"],
            ["steps x tokens per step", f"{p['steps']:,} x {p['batch_tokens']:,}"],
            ["training tokens", _num(p["tokens"])],
            ["training FLOPs", f"{p['train_flops']:.3g}"],
            ["precision, device", f"{p['precision']}, {p['device']}"],
            ["throughput", f"{_num(p['tokens_per_s'])} tokens/s"],
            ["MFU", f"{p['mfu']:.1%} of the {p['peak_source']} ({p['peak_flops'] / 1e9:,.0f} GFLOP/s)"
             if p["mfu"] is not None else "n/a"],
            ["final training loss, validation loss", f"{_num(p['final_loss'])}, {_num(p['final_val_loss'])}"],
        ])
    if "cost" in report:
        c = report["cost"]
        out += ["## Time and cost", "",
                f"Measured: {duration(c['measured_hours'])}"
                + (f", {c['measured_cost_usd']:.2f} USD at {c['price_per_hour']:g} USD/hour" if c["price_per_hour"] else "")
                + ". The same training FLOPs elsewhere (estimates from `llmbook.costs` at the MFU shown):", ""]
        out += _table(["GPU", "MFU", "time", "energy", "cost"],
                      [[e["gpu"], f"{e['mfu']:.0%}", duration(e["hours"]),
                        si(e["energy_kwh"] * 1000, "Wh") if e["energy_kwh"] is not None else "n/a",
                        f"{e['cost_usd']:.2f} USD" if e.get("cost_usd") is not None else "no price set"]
                       for e in c["same_flops_on_gpus"]])
    if "eval" in s:
        e = s["eval"]
        h = e["heldout"]
        out += ["## Held-out books: the model as a compressor", "",
                f"{_num(h['bytes'])} bytes of held-out books, scored with a {h['context']}-token context and a "
                f"{h['stride']}-token stride; 95% interval from resampling books.", ""]
        rows = [["this model", f"{h['bits_per_byte']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}]",
                 f"{h['ratio_to_xz']:.3f}"]]
        xz = e["compressors"]["xz -9e"]["bits_per_byte"]
        rows += [[name, f"{c['bits_per_byte']:.3f}", f"{c['bits_per_byte'] / xz:.3f}"] for name, c in e["compressors"].items()]
        out += _table(["compressor", "bits per byte", "relative to xz -9e"], rows)
        out += _table(["held-out book", "bytes", "model bits/byte", "xz bits/byte"],
                      [[b["title"], _num(b["bytes"]), f"{b['bits_per_byte']:.3f}", f"{b['xz_bits_per_byte']:.3f}"]
                       for b in h["per_book"]])
        if e["benchmarks"]:
            out += ["## Benchmarks (zero-shot, accuracy with 95% bootstrap intervals)", ""]
            rows = []
            for task, r in e["benchmarks"].items():
                acc = r["metrics"]["acc"]
                rows.append([task, r["n"], f"{r['chance']:.3f}", f"{acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"])
            out += _table(["task", "items", "chance", "accuracy"], rows)
    if "sft" in s or "dpo" in s:
        out += ["## Fine-tuning (95% bootstrap intervals over the same held-out items)", ""]
        rows = []
        if "sft" in s:
            f = s["sft"]
            rows += [[f"synthetic tasks ({f['test_items']} held-out items): base -> SFT",
                      f"{_ci(f['accuracy_base'])} -> {_ci(f['accuracy_sft'])}", f"{_ci(f['gain'], sign=True)}"],
                     ["held-out books, bits per byte: base -> SFT",
                      f"{f['books_bits_per_byte_base']:.3f} -> {f['books_bits_per_byte_sft']:.3f}",
                      f"{f['books_bits_per_byte_sft'] - f['books_bits_per_byte_base']:+.3f}"]]
        if "dpo" in s:
            d = s["dpo"]
            rows += [[f"implicit-reward accuracy on {d['held_out_pairs']} held-out preference pairs (chance 0.5)",
                      _ci(d["implicit_reward_accuracy"]), ""],
                     ["synthetic tasks: SFT -> DPO", f"{_ci(d['accuracy_sft'])} -> {_ci(d['accuracy_dpo'])}",
                      _ci(d["task_change"], sign=True)],
                     ["held-out books, bits per byte: SFT -> DPO",
                      f"{d['books_bits_per_byte_sft']:.3f} -> {d['books_bits_per_byte_dpo']:.3f}",
                      f"{d['books_bits_per_byte_dpo'] - d['books_bits_per_byte_sft']:+.3f}"]]
        out += _table(["measure", "value", "change"], rows)
        for name in ("sft", "dpo"):
            for a in s.get(name, {}).get("answers", []):
                out += [f"> **{name.upper()}, asked** {a['prompt']} **answers** {a['answer']}".replace("\n", " "), ""]
    if "quantize" in s:
        qz = s["quantize"]
        out += ["## Quantization", "", f"Weight-only, {_num(qz['heldout_bytes'])} bytes of held-out books; "
                f"{qz['note']}.", ""]
        out += _table(["scheme", "weights", "bits per byte", "change"],
                      [[r["scheme"], si(r["weight_bytes"], "B"), f"{r['bits_per_byte']:.4f}",
                        f"{100 * r['change']:+.2f}%" if "change" in r else ""] for r in qz["schemes"]])
    if "eval" in s and s["eval"]["samples"]:
        smp = s["eval"]["sampling"]
        out += ["## Samples from the base model", "",
                f"Temperature {smp['temperature']:g}, top-k {smp['top_k']}, up to {smp['max_new_tokens']} new tokens; "
                "the prompt is in bold.", ""]
        for sample in s["eval"]["samples"]:
            cont = sample["text"][len(sample["prompt"]):]
            out += [f"> **{sample['prompt']}**{cont}".replace("\n", "\n> "), ""]
    skipped = [st for st in report["stages"] if st["status"] == "skipped"]
    if skipped:
        out += ["## Not run", ""] + [f"- `{st['stage']}`: {st['reason']}" for st in skipped] + [""]
    return "\n".join(out).rstrip() + "\n"
