"""The benchmark harness: build prompts, score them through the model interface, add intervals (@sec-evaluation-harness)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmbook.fileio import atomic_write
from llmbook.eval.models import CausalLM
from llmbook.eval.sandbox import Limits, estimate_pass_at_k, humaneval_program, mbpp_program, run_many
from llmbook.eval.tasks import Task, extract_gsm8k_answer, get_task


@dataclass(frozen=True)
class MetricValue:
    """A score with its standard error and a percentile-bootstrap confidence interval."""

    value: float
    stderr: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "ci_low": self.ci_low, "ci_high": self.ci_high}


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of a mean, sqrt(s^2 / n) with the n-1 sample variance (as lm-evaluation-harness reports)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, iters: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over items resampled with replacement."""
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"bootstrap iterations must be a positive integer, got {iters!r}")
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    stats = [statistic(v[rng.integers(0, len(v), len(v))]) for _ in range(iters)]
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def summarize(values: Sequence[float], iters: int = 1000, seed: int = 0) -> MetricValue:
    """Mean of per-item scores with stderr and a 95% bootstrap interval."""
    lo, hi = bootstrap_ci(values, iters=iters, seed=seed)
    return MetricValue(float(np.mean(values)), mean_stderr(values), lo, hi)


def paired_difference(a: Sequence[float], b: Sequence[float], iters: int = 1000, seed: int = 0) -> MetricValue:
    """Mean of a - b over the same items with a 95% bootstrap interval over items: the fair way to compare two
    systems scored on the same items."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return summarize(a - b, iters, seed)


def build_context(task: Task, doc: dict, fewshot_docs: Sequence[dict]) -> str:
    """Description + k worked examples + the item's prompt, joined like lm-evaluation-harness."""
    parts = []
    for ex in fewshot_docs:
        if task.doc_to_fewshot_target:
            answer = task.doc_to_fewshot_target(ex)
        elif task.doc_to_choices:
            answer = task.doc_to_choices(ex)[task.doc_to_target(ex)]
        else:
            answer = str(task.doc_to_target(ex)).strip()
        parts.append(task.doc_to_text(ex) + task.target_delimiter + answer)
    parts.append(task.doc_to_text(doc))
    prefix = task.description(doc) if task.description else ""
    return prefix + task.fewshot_delimiter.join(parts)


def item_text(task: Task, doc: dict) -> str:
    """An item as it could appear in a web crawl: its prompt followed by the gold answer (for contamination)."""
    gold = task.doc_to_target(doc)
    if task.doc_to_contexts:
        return task.doc_to_contexts(doc)[gold] + task.target_delimiter + task.doc_to_choices(doc)[gold]
    answer = task.doc_to_choices(doc)[gold] if task.doc_to_choices else (
        task.doc_to_fewshot_target(doc) if task.doc_to_fewshot_target else str(gold))
    return task.doc_to_text(doc) + task.target_delimiter + answer


def sample_fewshot(task: Task, docs: list[dict], pool: list[dict], k: int, rng: random.Random,
                   same_split: bool) -> list[list[dict]]:
    """k examples per item from the pool (never the item itself; MMLU draws from the same subject).

    With `same_split` the pool is the evaluated file itself: the item is excluded by its source line, and so
    are exact duplicates of its prompt on other lines (MMLU's dev split repeats a college_physics question).
    """
    out = []
    for doc in docs:
        candidates = pool
        if task.name == "mmlu":
            candidates = [d for d in pool if d["subject"] == doc["subject"]]
        if same_split:
            text = task.doc_to_text(doc)
            candidates = [d for d in candidates if d["_line"] != doc["_line"] and task.doc_to_text(d) != text]
        if k > len(candidates):
            where = f" of subject {doc['subject']!r}" if task.name == "mmlu" else ""
            raise ValueError(f"task {task.name!r}: {k}-shot needs {k} examples{where}, the pool has only "
                             f"{len(candidates)}" + (" after excluding the item itself" if same_split else ""))
        out.append(rng.sample(candidates, k) if k else [])
    return out


def mc_requests(task: Task, context: str, doc: dict) -> list[tuple[str, str]]:
    """The (context, continuation) pairs scored for one multiple-choice item, one per choice."""
    choices = task.doc_to_choices(doc)
    if task.doc_to_contexts:  # WinoGrande: the choice changes the context, the continuation is shared (zero-shot)
        return [(c, task.target_delimiter + choices[i]) for i, c in enumerate(task.doc_to_contexts(doc))]
    return [(context, task.target_delimiter + c) for c in choices]


def evaluate_task(model: CausalLM, task: Task | str, data_dir: str | Path | None = None, limit: int | None = None,
                  num_fewshot: int = 0, seed: int = 1234, bootstrap_iters: int = 1000, n_samples: int = 1,
                  temperature: float = 0.0, limits: Limits = Limits(), isolation: str = "auto") -> dict:
    """Evaluate one task (its data from `data_dir`, or the data registry when None); returns metrics with stderr
    and 95% intervals plus per-item records. Code tasks run the completions in the sandbox (`isolation`, see
    `sandbox.run_program`)."""
    task = get_task(task) if isinstance(task, str) else task
    if task.doc_to_contexts and num_fewshot:
        raise ValueError(f"task {task.name!r}: few-shot prompts are not supported for per-choice contexts")
    if task.kind == "code" and n_samples > 1 and temperature == 0:
        raise ValueError(f"task {task.name!r}: pass@k with n_samples={n_samples} needs temperature > 0 "
                         "(greedy samples are identical, not independent)")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if bootstrap_iters < 1:
        raise ValueError(f"bootstrap_iters must be >= 1, got {bootstrap_iters}")
    all_docs = task.load(data_dir)
    docs = all_docs[:limit] if limit is not None else all_docs
    rng = random.Random(seed)
    pool = task.load(data_dir, fewshot=True) if (num_fewshot and task.fewshot_path) else all_docs
    shots = sample_fewshot(task, docs, pool, num_fewshot, rng, same_split=task.fewshot_path is None)
    contexts = [build_context(task, d, s) for d, s in zip(docs, shots)]
    per_item: dict[str, list[float]] = {}
    items: list[dict] = []
    extra: dict[str, str] = {}

    if task.kind == "multiple_choice":
        reqs = [mc_requests(task, c, d) for c, d in zip(contexts, docs)]
        flat = model.loglikelihood([r for rs in reqs for r in rs])
        pos = 0
        for doc, rs in zip(docs, reqs):
            lls = [ll for ll, _ in flat[pos : pos + len(rs)]]
            pos += len(rs)
            gold = task.doc_to_target(doc)
            lens = [float(max(len(c), 1)) for c in task.doc_to_choices(doc)]
            acc = float(int(np.argmax(lls)) == gold)
            acc_norm = float(int(np.argmax(np.array(lls) / np.array(lens))) == gold)
            per_item.setdefault("acc", []).append(acc)
            if "acc_norm" in task.metrics:
                per_item.setdefault("acc_norm", []).append(acc_norm)
            items.append({"line": doc["_line"], "gold": gold, "loglikelihoods": lls, "acc": acc, "acc_norm": acc_norm})
        chance = float(np.mean([1 / len(task.doc_to_choices(d)) for d in docs]))
    elif task.kind == "lambada":
        res = model.loglikelihood([(c, task.doc_to_target(d)) for c, d in zip(contexts, docs)])
        for doc, (ll, greedy) in zip(docs, res):
            per_item.setdefault("acc", []).append(float(greedy))
            per_item.setdefault("loglikelihood", []).append(ll)
            items.append({"line": doc["_line"], "loglikelihood": ll, "acc": float(greedy)})
        chance = 0.0
    elif task.kind == "generate_math":
        for doc, ctx in zip(docs, contexts):
            out = model.generate(ctx, stop=task.stop, max_tokens=task.max_tokens)
            strict, flexible = extract_gsm8k_answer(out)
            gold = task.doc_to_target(doc)
            per_item.setdefault("exact_match_strict", []).append(float(strict == gold))
            per_item.setdefault("exact_match_flexible", []).append(float(flexible == gold))
            items.append({"line": doc["_line"], "completion": out, "gold": gold, "strict": strict, "flexible": flexible})
        chance = 0.0
    elif task.kind == "code":
        import torch

        gen = torch.Generator().manual_seed(seed)
        to_program = humaneval_program if task.name == "humaneval" else mbpp_program
        completions = [[model.generate(ctx, stop=task.stop, max_tokens=task.max_tokens, temperature=temperature,
                                       generator=gen) for _ in range(n_samples)] for ctx in contexts]
        results = run_many([to_program(d, c) for d, cs in zip(docs, completions) for c in cs], limits,
                           isolation=isolation)
        outcomes = [[r.passed for r in results[i * n_samples : (i + 1) * n_samples]] for i in range(len(docs))]
        for k in (1, 10, 100):
            if k <= n_samples:
                per_item[f"pass@{k}"] = [estimate_pass_at_k([o], k) for o in outcomes]
        items = [{"line": d["_line"], "completions": c, "passed": o} for d, c, o in zip(docs, completions, outcomes)]
        extra["isolation"] = ",".join(sorted({r.isolation for r in results}))  # 'bwrap' or 'unsafe-host'
        chance = 0.0
    else:
        raise ValueError(f"task {task.name!r}: unknown kind {task.kind!r}")

    metrics = {name: summarize(v, bootstrap_iters, seed).to_dict() for name, v in per_item.items() if name != "loglikelihood"}
    if task.kind == "lambada":  # corpus perplexity of the target word, exp(-mean log-likelihood), as lm-eval reports
        lls = per_item["loglikelihood"]
        lo, hi = bootstrap_ci(lls, lambda v: math.exp(-v.mean()), bootstrap_iters, seed=seed)
        metrics["perplexity"] = {"value": math.exp(-float(np.mean(lls))), "stderr": math.nan, "ci_low": lo, "ci_high": hi}
    return {"task": task.name, "n": len(docs), "num_fewshot": num_fewshot, "chance": chance,
            "metrics": metrics, **extra, "items": items}


def evaluate(model: CausalLM, tasks: Sequence[str], data_dir: str | Path | None = None, **kwargs) -> dict[str, dict]:
    """Evaluate several tasks; unknown names fail before any model call."""
    resolved = [get_task(t) for t in tasks]
    return {t.name: evaluate_task(model, t, data_dir, **kwargs) for t in resolved}


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temp file in the same directory, fsync, rename); numpy scalars become floats."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=float))
