"""Multiple-choice scoring throughput: the batched harness vs a one-request-at-a-time loop, same model, same items.

Prints one JSON record and writes bench/results/eval-<device>.json. The peer is the straightforward loop
(one unpadded forward pass per (context, choice) request); the harness sorts requests by length and scores
them in right-padded batches. Both must produce the same log-likelihoods (checked here, max abs difference
reported). With --full on a GPU it also times every item of the local HellaSwag validation sample (not the
full 10,042-item split) for a 124M GPT-2 shaped model with GPT-2's 50,257-token vocabulary (randomly
initialised: the time, not the accuracy, is the point).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from llmbook.data.registry import fetch
from llmbook.eval.harness import build_context, mc_requests
from llmbook.eval.models import HFCausalLM
from llmbook.eval.tasks import get_task
from llmbook.eval.tiny import tiny_hf_model, train_bpe_tokenizer


def device_name(device: str) -> str:
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return "cpu"


def naive_loglikelihood(lm: HFCausalLM, requests: list[tuple[str, str]]) -> list[float]:
    """The peer: one forward pass per request, no batching, no sorting."""
    out = []
    for ctx, cont in requests:
        c, t = lm.encode_pair(ctx, cont)
        ids = (c + t)[-(lm.max_length + 1):]
        with torch.no_grad():
            logits = lm.logits(torch.tensor([ids[:-1]], device=lm.device))[0].float()
        logp = F.log_softmax(logits, -1)[-len(t):]
        out.append(float(logp.gather(1, torch.tensor(t, device=lm.device)[:, None]).sum()))
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=60, help="HellaSwag items (4 requests each)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each scorer; the best is kept")
    ap.add_argument("--full", action="store_true",
                    help="also time every item of the local HellaSwag sample with a 124M model (GPU)")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    task = get_task("hellaswag")
    docs = task.load()
    text = fetch("tinystories/tinystories_train_sample.txt").read_text(encoding="utf-8")[:300_000]
    tok = train_bpe_tokenizer([text], vocab_size=2048)
    model = tiny_hf_model("gpt2", vocab_size=len(tok), n_positions=256, n_embd=args.n_embd,
                          n_layer=args.n_layer, n_head=max(1, args.n_embd // 64))
    lm = HFCausalLM(model, tok, batch_size=args.batch_size, device=device)
    reqs = [r for d in docs[: args.items] for r in mc_requests(task, build_context(task, d, []), d)]

    naive_loglikelihood(lm, reqs[:8]); lm.loglikelihood(reqs[:8])  # noqa: E702  warm-up
    t_naive = t_batched = float("inf")
    for _ in range(args.repeats):  # alternate the two and keep each one's best time (shared, noisy machine)
        sync(device)
        t0 = time.perf_counter()
        ref = naive_loglikelihood(lm, reqs)
        sync(device)
        t_naive = min(t_naive, time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = [ll for ll, _ in lm.loglikelihood(reqs)]
        sync(device)
        t_batched = min(t_batched, time.perf_counter() - t0)
    figures = {
        "task": "hellaswag", "items": args.items, "requests": len(reqs),
        "model": {"kind": "gpt2 (random init)", "n_embd": args.n_embd, "n_layer": args.n_layer,
                  "params": sum(p.numel() for p in model.parameters())},
        "items_per_s": {"batched": args.items / t_batched, "one_at_a_time": args.items / t_naive},
        "speedup_vs_one_at_a_time": t_naive / t_batched,
        "max_abs_loglik_diff": max(abs(a - b) for a, b in zip(ref, got)),
        "cpu_threads": torch.get_num_threads(),
    }
    if args.full and device == "cuda":
        big = tiny_hf_model("gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
        big_lm = HFCausalLM(big.to(torch.bfloat16), tok, batch_size=64, device=device)
        all_reqs = [r for d in docs for r in mc_requests(task, build_context(task, d, []), d)]
        big_lm.loglikelihood(all_reqs[:64])
        sync(device)
        t0 = time.perf_counter()
        big_lm.loglikelihood(all_reqs)
        sync(device)
        figures[f"hellaswag_sample_{len(docs)}_items_124m"] = {
            "items": len(docs), "seconds": time.perf_counter() - t0, "dtype": "bf16",
            "params": sum(p.numel() for p in big.parameters())}
    record("eval", figures, {"batch_size": args.batch_size, "repeats": args.repeats, "full": args.full},
           ["torch", "transformers"], args.out_dir, device=device_name(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
