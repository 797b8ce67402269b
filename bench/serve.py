"""Serving the book's model: continuous batching vs one request at a time over HTTP, speculative decoding, quantized
decode speed, torch.compile with a static cache, and llama.cpp on the same model and precision.

Prints one JSON record and writes bench/results/serve-<device>.json. The model is the book's cpu-tiny run (the one
the evaluation and inference chapters use, trained once and cached). Peers, each run side by side in this process:
serving the same requests one at a time (throughput and time to first token, through the real HTTP server and the
official `openai` client on 127.0.0.1), greedy decoding without a draft (speculative speed-up), the fp32 model
(quantized decode), eager decoding (torch.compile), and llama.cpp through llama-cpp-python on the GGUF export of
the same weights (tokens/s at f32, and Q8_0 bits per byte).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from llmbook.data import registry
from llmbook.eval import checkpoints
from llmbook.eval.models import LLMBookLM
from llmbook.eval.perplexity import perplexity
from llmbook.serve import roofline
from llmbook.serve.distill import DistillConfig, make_student, token_batches, train_student
from llmbook.serve.engine import Engine
from llmbook.serve.modelio import load_servable
from llmbook.serve.quant import QuantConfig, quantize_model, weight_bytes
from llmbook.serve.server import ServerConfig, create_app, running_server
from llmbook.serve.speculative import autoregressive_generate, speculative_generate
from llmbook.train import load_config

# the evaluation chapter's shortened cpu-tiny run (same overrides, so the cached run is shared)
RUN_OVERRIDES = ["train.steps=80", "train.eval_every=20", "train.log_every=10", "checkpoint.every=20",
                 "checkpoint.keep=8"]
PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the", "One day, a girl named",
           "The sun was", "Tim had a big"]


def http_throughput(served, concurrency: list[int], max_tokens: int, slots: int, rounds: int) -> dict:
    """Tokens/s and time to first token through the HTTP server: `c` concurrent streams vs the same requests in turn."""
    import openai

    engine = Engine(served.model, served.decode, served.eos_id, n_slots=slots)
    out = {}
    with running_server(create_app(served, engine, ServerConfig(max_tokens_limit=max_tokens))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=300)

        def one(i: int) -> tuple[int, float, float]:
            start = time.perf_counter()
            first, n = None, 0
            stream = client.completions.create(model=served.name, prompt=PROMPTS[i % len(PROMPTS)],
                                               max_tokens=max_tokens, temperature=0.8, seed=i, stream=True,
                                               stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and first is None:  # the first token's chunk (its text may be held back)
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    n = chunk.usage.completion_tokens
            return n, first or float("nan"), time.perf_counter() - start

        one(0)  # warm-up
        for c in concurrency:
            t_seq = t_cb = float("inf")
            for _ in range(rounds):  # alternate the two ways; keep each one's best round (shared, noisy machine)
                start = time.perf_counter()
                sequential = [one(i) for i in range(c)]
                t_seq = min(t_seq, time.perf_counter() - start)
                start = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    together = list(pool.map(one, range(c), timeout=600))
                t_cb = min(t_cb, time.perf_counter() - start)
            ttft = sorted(r[1] for r in together)
            out[str(c)] = {
                "requests": c, "tokens": sum(r[0] for r in together),
                "tokens_per_s": {"continuous_batching": sum(r[0] for r in together) / t_cb,
                                 "one_at_a_time": sum(r[0] for r in sequential) / t_seq},
                "speedup": (sum(r[0] for r in together) / t_cb) / (sum(r[0] for r in sequential) / t_seq),
                "ttft_s": {"p50": statistics.median(ttft), "p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))]},
                "ttft_one_at_a_time_s": {"p50": statistics.median(sorted(r[1] for r in sequential))},
            }
    return out


def interleaved(runs: dict, rounds: int) -> dict[str, float]:
    """Best tokens/s of each zero-argument function, measured in alternating rounds: the machine is shared and its
    load drifts, so every contender sees the same conditions in each round and keeps its best."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, fn in runs.items():
            time.sleep(0.5)  # let the previous contender's spinning OpenMP threads (llama.cpp's, torch's) go idle
            best[name] = max(best[name], fn())
    return best


def llama_tokens_per_s(llm, prompt: list[int], n: int) -> float:
    """Greedy decode speed of a loaded llama.cpp model (prompt prefill included, as in our measurement)."""
    import numpy as np

    start = time.perf_counter()
    llm.reset()
    llm.eval(prompt)
    for _ in range(n - 1):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per request in the throughput test")
    ap.add_argument("--decode-tokens", type=int, default=100, help="tokens per decode-speed measurement")
    ap.add_argument("--repeats", type=int, default=5, help="alternating decode-speed rounds; each keeps its best")
    ap.add_argument("--student-steps", type=int, default=300, help="distillation steps of the speculative draft")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation on CPU)")
    ap.add_argument("--skip-llama-cpp", action="store_true", help="leave out the llama.cpp comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_config("cpu-tiny", RUN_OVERRIDES)
    run = checkpoints.cached_run(cfg, log=lambda msg: None)
    served = load_servable(run)
    model, tok = served.model, served.tokenizer
    prompt = served.encode(PROMPTS[0])
    held = checkpoints.held_out_documents(cfg.data)[:40]
    figures: dict = {"model": {"params": model.num_params(), "config": "cpu-tiny, 80 steps",
                               "weight_bytes_fp32": weight_bytes(model)}}

    # continuous batching over HTTP
    figures["batching"] = http_throughput(served, args.concurrency, args.max_tokens, slots=max(args.concurrency),
                                          rounds=2)

    # quantized vs fp32 decode speed at batch 1 (and bits per byte on held-out stories)
    quant, qmodels = {}, {}
    ids = [i for d in checkpoints.held_out_documents(cfg.data)[100:200] for i in served.encode(d)]
    calibration = torch.tensor(ids[: 32 * 128]).reshape(32, 128)
    for name, qc in [("fp32", None), ("int8", QuantConfig("int8")), ("int8-zp", QuantConfig("int8-zp")),
                     ("int4-g32", QuantConfig("int4", 32)), ("gptq-g32", QuantConfig("gptq", 32))]:
        m = qmodels[name] = load_servable(run).model
        if qc is not None:
            quantize_model(m, qc, calibration)
        quant[name] = {"bytes": weight_bytes(m),
                       "bits_per_byte": perplexity(LLMBookLM(m, tok, served.eos_id, batch_size=32), held).bits_per_byte}
    speeds = interleaved({name: (lambda m=m: roofline.decode_tokens_per_s(m, prompt, args.decode_tokens, "slot"))
                          for name, m in qmodels.items()}, args.repeats)
    for name in quant:
        quant[name]["decode_tokens_per_s"] = speeds[name]
    for name in quant:
        quant[name]["decode_speed_vs_fp32"] = quant[name]["decode_tokens_per_s"] / quant["fp32"]["decode_tokens_per_s"]
    figures["quantized_decode"] = quant

    # speculative decoding with a distilled draft
    draft = make_student(model.config, n_layer=1, n_head=4, n_embd=64)
    text_ids = served.encode(registry.fetch("tinystories/tinystories_train_sample.txt").read_text(encoding="utf-8"))
    train_student(draft, token_batches(text_ids, 16, 128, seed=0),
                  DistillConfig(steps=args.student_steps, warmup_steps=args.student_steps // 10, alpha=0.9,
                                temperature=1.0), teacher=model)
    spec, plain_s, spec_s = [], 0.0, 0.0
    for p in PROMPTS:
        ids_p = served.encode(p)
        n = min(args.decode_tokens, model.config.block_size - len(ids_p))
        start = time.perf_counter()
        ref = autoregressive_generate(model, ids_p, n)  # the same slot cache, one target pass per token
        plain_s += time.perf_counter() - start
        start = time.perf_counter()
        out, stats = speculative_generate(model, draft, ids_p, n, k=3)
        spec_s += time.perf_counter() - start
        assert out == ref, "speculative greedy output differs from the target's"
        spec.append(stats)
    figures["speculative"] = {
        "draft_params": draft.num_params(), "k": 3,
        "acceptance_rate": sum(s.accepted for s in spec) / sum(s.proposed for s in spec),
        "tokens_per_target_pass": sum(s.new_tokens for s in spec) / sum(s.target_passes for s in spec),
        "speedup_vs_greedy": plain_s / spec_s, "identical_to_greedy": True}

    # static cache and torch.compile
    n = args.decode_tokens
    modes = {f"{mode}_cache" if mode != "static" else "static_cache_eager":
             (lambda mode=mode: roofline.decode_tokens_per_s(model, prompt, n, mode))
             for mode in ("concat", "slot", "static")}
    compile_seconds = None
    if args.compile:
        from llmbook.serve.kvcache import forward_slots

        compiled = torch.compile(forward_slots, dynamic=False)
        start = time.perf_counter()
        roofline.decode_tokens_per_s(model, prompt, 3, "static", step=compiled)
        compile_seconds = time.perf_counter() - start
        modes["static_cache_compiled"] = lambda: roofline.decode_tokens_per_s(model, prompt, n, "static", step=compiled)
    static = interleaved(modes, args.repeats)
    if compile_seconds is not None:
        static["compile_seconds"] = compile_seconds
    figures["decode_tokens_per_s"] = static

    # llama.cpp on the GGUF export of the same weights
    try:
        if args.skip_llama_cpp:
            raise ImportError("--skip-llama-cpp")
        import llama_cpp  # noqa: F401

        from llmbook.serve.export_gguf import LlamaCppLM, export_gguf, llama_cpp_greedy
    except ImportError as err:
        figures["llama_cpp"] = {"skipped": f"llama-cpp-python not used ({err}); pip install '.[gguf-parity]'"}
    else:
        llama, lms = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for dtype in ("f32", "f16", "q8_0"):
                path = export_gguf(model, tok, Path(tmp) / f"{dtype}.gguf", dtype=dtype)
                lms[dtype] = LlamaCppLM(path, tok, served.eos_id, model.config.block_size)
                llama[dtype] = {"bytes": path.stat().st_size, "bits_per_byte": perplexity(lms[dtype], held).bits_per_byte}
                if dtype == "f32":
                    ours = model.generate(torch.tensor([prompt]), n, temperature=0)[0, len(prompt):].tolist()
                    llama[dtype]["greedy_identical_to_ours"] = llama_cpp_greedy(path, prompt, n,
                                                                                model.config.block_size) == ours
            runs = {"ours_f32": lambda: roofline.decode_tokens_per_s(model, prompt, n, "slot")}
            runs.update({dtype: (lambda lm=lm: llama_tokens_per_s(lm.llm, prompt, n)) for dtype, lm in lms.items()})
            speeds = interleaved(runs, args.repeats)
            for dtype, lm in lms.items():
                llama[dtype]["decode_tokens_per_s"] = speeds[dtype]
                lm.close()
        llama["ours_f32_decode_tokens_per_s"] = speeds["ours_f32"]
        llama["ours_f32_vs_llama_cpp_f32"] = speeds["ours_f32"] / speeds["f32"]
        figures["llama_cpp"] = llama

    packages = ["torch", "fastapi", "uvicorn", "openai", "gguf"]
    try:
        import llama_cpp  # noqa: F401, F811

        packages.append("llama_cpp_python")
    except ImportError:
        pass
    record("serve", figures, {k: v for k, v in vars(args).items() if k != "out_dir"}, packages, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
