"""The speedrun's stages, each a small function over the package's public API (@sec-speedrun).

data -> tokenizer -> pretrain -> eval -> sft -> dpo -> quantize -> report. Each returns a summary of
measured numbers that goes into its `stage.json` and, at the end, into the report card.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmbook.fileio import atomic_write, write_json
from llmbook.speedrun.runner import Context, Stage, StageError

EOS = "<|endoftext|>"


# ------------------------------------------------------------------------------------------------- helpers
def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write records as JSON Lines atomically."""
    return atomic_write(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON Lines written by `write_jsonl`, naming the file and line of a damaged record."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise StageError(f"{path}:{lineno}: not a JSON record; rerun the stage that wrote it") from None
    return out


def chunk_document(record: dict[str, Any], max_chars: int) -> Iterator[dict[str, Any]]:
    """Cut a long document (a book) at paragraph breaks into pieces of about `max_chars` characters.

    The curation filters were designed for web pages, not whole books: on pieces they can drop a table of
    contents or an index and keep the prose around it. The text is unchanged; joined with the blank lines
    they were cut at, the pieces give the book back.
    """
    paragraphs = record["text"].split("\n\n")
    piece: list[str] = []
    size = part = 0
    for i, paragraph in enumerate(paragraphs):
        piece.append(paragraph)
        size += len(paragraph) + 2
        if size >= max_chars or i == len(paragraphs) - 1:
            yield {**record, "id": f"{record['id']}:{part}", "text": "\n\n".join(piece)}
            piece, size, part = [], 0, part + 1


def head_bytes(text: str, n: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding has at most `n` bytes (0: all of it)."""
    if not n:
        return text
    return text.encode("utf-8")[:n].decode("utf-8", errors="ignore")


def heldout_texts(ctx: Context, max_bytes: int) -> list[dict[str, Any]]:
    """The held-out books written by the data stage, each cut to its first `max_bytes` bytes (0: whole)."""
    books = read_jsonl(ctx.stage_dir("data") / "heldout.jsonl")
    return [{**b, "text": head_bytes(b["text"], max_bytes)} for b in books]


def run_config(ctx: Context):
    """The trainer's RunConfig for this speedrun: the preset's tables, the tokenizer stage's shards, the
    resolved precision and device."""
    from llmbook.speedrun.machine import resolve_precision
    from llmbook.train.trainer import resolve_device

    cfg = copy.deepcopy(ctx.cfg.train)
    tok = ctx.summary("tokenizer")
    cfg.data.shard_dir = str(ctx.stage_dir("tokenizer") / "shards")
    cfg.data.tokenizer_vocab = tok["vocab_size"]
    cfg.data.val_fraction = ctx.cfg.data.val_fraction
    device = resolve_device(cfg.train.device)
    cfg.train.device = device
    cfg.train.precision = resolve_precision(ctx.cfg.machine.precision, device)
    return cfg


# ------------------------------------------------------------------------------------------------- stages
def stage_data(ctx: Context) -> dict[str, Any]:
    """Read the corpus, hold out every k-th book, cut the others into pieces and curate them (filters, exact
    and MinHash dedup, PII redaction) with `llmbook.data.pipeline.prepare`."""
    from llmbook.data import pipeline, sources
    from llmbook.data.filters import FilterConfig

    d = ctx.cfg.data
    books = list(sources.load_corpus(d.corpus, max_docs=d.max_docs or None))
    if d.max_doc_chars:
        books = [{**b, "text": b["text"][: d.max_doc_chars]} for b in books]
    if len(books) < d.heldout_every + 1:
        raise StageError(f"[speedrun.data] {d.corpus} gave {len(books)} documents: too few to hold out one in "
                         f"{d.heldout_every} and train on the rest")
    held = [b for i, b in enumerate(books) if i % d.heldout_every == 0]
    train = [b for i, b in enumerate(books) if i % d.heldout_every]
    pieces = [p for b in train for p in chunk_document(b, d.chunk_chars)]
    try:
        config = FilterConfig(**d.filter_config)
    except TypeError as err:
        raise ValueError(f"[speedrun.data] filter_config: {err}") from None
    kept, report = pipeline.prepare(pieces, filters=d.filters, filter_config=config, dedup=d.dedup, pii=d.pii,
                                    progress=ctx.progress)
    folder = ctx.stage_dir("data")
    write_jsonl(folder / "train.jsonl", [{"id": r["id"], "source": r.get("source", d.corpus), "text": r["text"]}
                                         for r in kept])
    write_jsonl(folder / "heldout.jsonl", [{"id": b["id"], "title": b.get("title", ""), "author": b.get("author", ""),
                                            "text": b["text"]} for b in held])
    write_json(folder / "curation.json", report)

    def nbytes(records):
        return sum(len(r["text"].encode("utf-8", "surrogatepass")) for r in records)

    return {"corpus": d.corpus, "documents": len(books), "train_documents": len(train),
            "heldout_documents": len(held), "heldout_titles": [b.get("title", b["id"]) for b in held],
            "heldout_bytes": nbytes(held), "train_bytes_in": nbytes(train), "pieces": len(pieces),
            "kept_pieces": len(kept), "kept_bytes": nbytes(kept), "removed": report["removed"],
            "pii_spans": report.get("pii", {}).get("spans", {})}


def stage_tokenizer(ctx: Context) -> dict[str, Any]:
    """Train a byte-level BPE on the curated training text only, then tokenize and pack it into shards."""
    from llmbook.data.pack import write_shards
    from llmbook.fileio import file_sha256
    from llmbook.tokenizer import train_hf_tokenizer
    from llmbook.tokenizer.hf import save_hf_tokenizer, special_tokens_as_text

    records = read_jsonl(ctx.stage_dir("data") / "train.jsonl")
    vocab = ctx.cfg.tokenizer.vocab_size
    tok = train_hf_tokenizer((r["text"] for r in records), vocab, special_tokens=(EOS,))
    shards = ctx.stage_dir("tokenizer") / "shards"
    save_hf_tokenizer(tok, shards / "tokenizer.json")  # inside the shard folder: the trainer copies it into checkpoints
    special_tokens_as_text(tok)
    manifest = write_shards(records, lambda text: tok.encode(text).ids, shards, eos_id=tok.token_to_id(EOS),
                            vocab_size=tok.get_vocab_size(), val_fraction=ctx.cfg.data.val_fraction,
                            tokenizer_hash=file_sha256(shards / "tokenizer.json"), progress=ctx.progress)
    held = heldout_texts(ctx, 0)
    held_bytes = sum(len(b["text"].encode("utf-8")) for b in held)
    held_tokens = sum(len(e.ids) for e in tok.encode_batch([b["text"] for b in held]))
    train_bytes = sum(len(r["text"].encode("utf-8", "surrogatepass")) for r in records)
    return {"vocab_size": tok.get_vocab_size(), "train_tokens": manifest["splits"]["train"]["tokens"],
            "val_tokens": manifest["splits"]["val"]["tokens"], "documents": manifest["documents"],
            "bytes_per_token_train": train_bytes / manifest["tokens"], "bytes_per_token_heldout": held_bytes / held_tokens}


def stage_pretrain(ctx: Context) -> dict[str, Any]:
    """Pretrain the base model with `llmbook.train.Trainer`; an interrupted run resumes from its last checkpoint."""
    import numpy as np

    from llmbook import costs
    from llmbook.speedrun.machine import matmul_peak
    from llmbook.train import Trainer, checkpoint as ckpt, read_metrics

    cfg = run_config(ctx)
    folder = ctx.stage_dir("pretrain")
    settings = cfg.to_dict()  # the run's settings and the shards' checksums, not where the folder happens to be
    settings["data"]["shard_dir"] = "tokenizer/shards"
    settings = {"config": settings, "shards": ctx.records["tokenizer"]["outputs"]}
    saved = folder / "settings.json"
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != settings:
        previous = folder.with_name(".pretrain.previous")  # the last superseded run is kept, not deleted
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder, previous)
        folder.mkdir()
        ctx.log(f"settings or data changed: the previous run moved to {previous.name}, training from scratch")
    write_json(saved, settings)
    resume = bool(ckpt.list_checkpoints(folder / "checkpoints"))
    trainer = Trainer(cfg, folder, resume=resume, log=ctx.log)
    start_step = trainer.step
    model_cfg = cfg.model_config()
    n_params, n_non_embedding = trainer.model.num_params(), trainer.model.num_params(non_embedding=True)
    trainer.fit()
    log = read_metrics(folder / "metrics.jsonl")
    train_log = [r for r in log if "loss" in r]
    val_log = [r for r in log if "val_loss" in r]
    tokens = trainer.tokens_seen
    tokens_per_s = float(np.median([r["tokens_per_s"] for r in train_log])) if train_log else float("nan")
    flops = costs.train_flops_for(model_cfg, tokens, cfg.data.block_size)
    device = cfg.train.device
    if cfg.train.gpu:
        peak, peak_source = costs.get_gpu(cfg.train.gpu).peak_bf16, f"datasheet peak of {cfg.train.gpu}"
    else:
        peak, peak_source = matmul_peak(cfg.train.precision, device), f"measured {cfg.train.precision} matmul peak"
    mfu = costs.mfu(tokens_per_s, model_cfg, cfg.data.block_size, peak) if train_log else None
    return {"steps": trainer.step, "resumed_from_step": start_step, "tokens": tokens, "params": n_params,
            "non_embedding_params": n_non_embedding, "model": model_cfg.to_dict(), "precision": cfg.train.precision,
            "device": device, "train_flops": flops, "tokens_per_s": tokens_per_s, "peak_flops": peak,
            "peak_source": peak_source, "mfu": mfu, "final_loss": train_log[-1]["loss"] if train_log else None,
            "final_val_loss": val_log[-1]["val_loss"] if val_log else None,
            "batch_tokens": cfg.data.batch_size * cfg.data.block_size * cfg.train.grad_accum}


def load_base(ctx: Context, batch_size: int):
    """The pretrained model as an evaluation model (`llmbook.eval.models.LLMBookLM`) on the run's device."""
    from llmbook.eval.checkpoints import checkpoint_lm

    device = ctx.summary("pretrain")["device"]
    return checkpoint_lm(ctx.stage_dir("pretrain"), batch_size=batch_size, device=device)


def heldout_bits_per_byte(lm, books: list[dict[str, Any]], stride: int) -> dict[str, Any]:
    """Bits per byte of the model on the held-out books, with a document-bootstrap interval, and per book."""
    from llmbook.eval.perplexity import perplexity

    result = perplexity(lm, [b["text"] for b in books], stride=stride or max(1, lm.max_length // 2))
    lo, hi = result.interval("bits_per_byte")
    per_book = [{"title": b.get("title") or b["id"], "bytes": n, "bits_per_byte": nll / (n * math.log(2))}
                for b, nll, n in zip(books, result.doc_nll, result.doc_bytes)]
    return {"bits_per_byte": result.bits_per_byte, "ci_low": lo, "ci_high": hi, "bytes": result.n_bytes,
            "tokens": result.n_tokens, "stride": result.stride, "context": result.max_length, "per_book": per_book}


def stage_eval(ctx: Context) -> dict[str, Any]:
    """Held-out bits per byte beside xz, bzip2 and gzip on the same bytes; benchmarks with intervals; samples."""
    from llmbook.eval import harness
    from llmbook.speedrun.compress import compressor_bits_per_byte
    from llmbook.train.generate import generate_text

    e = ctx.cfg.eval
    folder = ctx.stage_dir("eval")
    books = heldout_texts(ctx, e.heldout_bytes)
    lm = load_base(ctx, e.batch_size)
    heldout = heldout_bits_per_byte(lm, books, e.stride)
    data = "".join(b["text"] for b in books).encode("utf-8")
    compressors = compressor_bits_per_byte(data)
    for row, book in zip(heldout["per_book"], books):
        row["xz_bits_per_byte"] = compressor_bits_per_byte(book["text"].encode("utf-8"), ("xz -9e",))["xz -9e"][
            "bits_per_byte"]
    heldout["ratio_to_xz"] = heldout["bits_per_byte"] / compressors["xz -9e"]["bits_per_byte"]
    benchmarks = {}
    if e.tasks and e.limit:
        results = harness.evaluate(lm, e.tasks, limit=e.limit)
        harness.write_json(folder / "benchmarks.json", results)
        benchmarks = {name: {"n": r["n"], "chance": r["chance"], "metrics": r["metrics"]} for name, r in results.items()}
    samples = [{"prompt": p, "seed": i, "text": generate_text(lm.model, lm.tokenizer, p, e.sample_tokens, e.temperature,
                                                             e.top_k or None, seed=i)}
               for i, p in enumerate(e.prompts)]
    write_jsonl(folder / "samples.jsonl", samples)
    write_json(folder / "heldout.json", {"model": heldout, "compressors": compressors})
    return {"heldout": heldout, "compressors": compressors, "benchmarks": benchmarks, "samples": samples,
            "sampling": {"temperature": e.temperature, "top_k": e.top_k, "max_new_tokens": e.sample_tokens}}


def finetune_config(ctx: Context, stage: str):
    """The `llmbook.finetune` config of a tuning stage: its preset and overrides, the speedrun's base model,
    device and precision."""
    from llmbook.finetune.config import load_finetune_config

    settings = getattr(ctx.cfg, stage)
    pre = ctx.summary("pretrain")
    fixed = [f"base.run={json.dumps(str(ctx.stage_dir('pretrain')))}", f'run.device="{pre["device"]}"',
             f'run.precision="{pre["precision"]}"']
    return load_finetune_config(settings.preset, [*settings.overrides, *fixed])


def _books_sample(ctx: Context, max_bytes: int) -> list[str]:
    return [b["text"] for b in heldout_texts(ctx, max_bytes)]


def stage_sft(ctx: Context) -> dict[str, Any]:
    """Supervised fine-tuning with `llmbook.finetune.pipeline.run_sft`; measured: accuracy on held-out synthetic
    tasks before (the base model, prompted in plain text) and after (chat), their paired difference, and the
    bits per byte on held-out books before and after."""
    from llmbook.finetune import evaluate, pipeline
    from llmbook.finetune.base import load_base, load_finetuned

    cfg = finetune_config(ctx, "sft")
    out = pipeline.run_sft(cfg, ctx.stage_dir("sft") / "run", log=ctx.log)
    device = cfg.run.device
    items = pipeline.test_items(cfg)
    base, base_tok = load_base(cfg.base, device, log=ctx.log)
    eos = base_tok.token_to_id(EOS)
    tuned = load_finetuned(out, device=device)
    before = evaluate.accuracy(items, evaluate.plain_answers(base, base_tok, items, eos))
    after = evaluate.task_accuracy(tuned.model, tuned.tokenizer, tuned.chat, items)
    gain = evaluate.paired_difference(after.correct, before.correct)
    texts = _books_sample(ctx, ctx.cfg.sft.eval_bytes)
    bpb_before = evaluate.bits_per_byte(base, base_tok, texts, eos).bits_per_byte
    bpb_after = evaluate.bits_per_byte(tuned.model, tuned.tokenizer, texts, tuned.tokenizer.token_to_id(EOS)).bits_per_byte
    answers = evaluate.chat_answers(tuned.model, tuned.tokenizer, tuned.chat,
                                    [[{"role": "user", "content": p}] for p in ctx.cfg.sft.prompts], max_new_tokens=48)
    return {"steps": cfg.sft.steps, "test_items": len(items), "accuracy_base": before.overall.to_dict(),
            "accuracy_sft": after.overall.to_dict(), "gain": gain.to_dict(), "books_bits_per_byte_base": bpb_before,
            "books_bits_per_byte_sft": bpb_after, "answers": [{"prompt": p, "answer": a}
                                                               for p, a in zip(ctx.cfg.sft.prompts, answers)]}


def stage_dpo(ctx: Context) -> dict[str, Any]:
    """Preference tuning with `llmbook.finetune.pipeline.run_dpo` from the SFT model; measured: the implicit-reward
    accuracy on held-out preference pairs (0.5 is chance) and the task accuracy against the SFT model's."""
    from llmbook.eval.harness import summarize
    from llmbook.finetune import dpo, evaluate, pipeline
    from llmbook.finetune.base import load_finetuned
    from llmbook.finetune.chat import END, special_tokens

    cfg = finetune_config(ctx, "dpo")
    sft_run = ctx.stage_dir("sft") / "run"
    if not sft_run.is_dir():
        raise StageError("stage 'sft' left no run: preference tuning starts from the SFT model")
    out = pipeline.run_dpo(cfg, ctx.stage_dir("dpo") / "run", init=sft_run, log=ctx.log)
    device = cfg.run.device
    sft, tuned = load_finetuned(sft_run, device=device), load_finetuned(out, device=device)
    _, held = pipeline.preference_pairs(cfg, sft.chat, sft.tokenizer)
    held = held[:ctx.cfg.dpo.held_out_pairs]
    pad = special_tokens(sft.tokenizer)[END]
    ref = dpo.reference_logps(sft.model, held, pad)
    implicit = summarize(dpo.implicit_accuracy(tuned.model, held, ref, pad))
    items = pipeline.test_items(cfg)
    before = evaluate.task_accuracy(sft.model, sft.tokenizer, sft.chat, items)
    after = evaluate.task_accuracy(tuned.model, tuned.tokenizer, tuned.chat, items)
    texts = _books_sample(ctx, ctx.cfg.dpo.eval_bytes)
    eos = sft.tokenizer.token_to_id(EOS)
    answers = evaluate.chat_answers(tuned.model, tuned.tokenizer, tuned.chat,
                                    [[{"role": "user", "content": p}] for p in ctx.cfg.dpo.prompts], max_new_tokens=48)
    return {"steps": cfg.dpo.steps, "beta": cfg.dpo.beta, "held_out_pairs": len(held),
            "implicit_reward_accuracy": implicit.to_dict(), "accuracy_sft": before.overall.to_dict(),
            "accuracy_dpo": after.overall.to_dict(),
            "task_change": evaluate.paired_difference(after.correct, before.correct).to_dict(),
            "books_bits_per_byte_sft": evaluate.bits_per_byte(sft.model, sft.tokenizer, texts, eos).bits_per_byte,
            "books_bits_per_byte_dpo": evaluate.bits_per_byte(tuned.model, tuned.tokenizer, texts, eos).bits_per_byte,
            "answers": [{"prompt": p, "answer": a} for p, a in zip(ctx.cfg.dpo.prompts, answers)]}


def stage_quantize(ctx: Context) -> dict[str, Any]:
    """Weight-only quantization of the base model with `llmbook.serve.quant` (int8 per channel, int4/3/2 in groups),
    each written as a servable folder; measured: weight bytes, file size and held-out bits per byte."""
    from llmbook.eval.models import LLMBookLM
    from llmbook.eval.perplexity import perplexity
    from llmbook.serve import quant
    from llmbook.serve.modelio import load_servable, save_model

    q = ctx.cfg.quantize
    run = ctx.stage_dir("pretrain")
    texts = _books_sample(ctx, q.heldout_bytes)
    base = load_servable(run)

    def bits_per_byte(model) -> float:
        return perplexity(LLMBookLM(model, base.tokenizer, base.eos_id, batch_size=16), texts).bits_per_byte

    reference = bits_per_byte(base.model)
    rows = [{"scheme": "fp32", "weight_bytes": quant.weight_bytes(base.model), "bits_per_byte": reference}]
    for bits in q.bits:
        config = quant.QuantConfig("int8") if bits == 8 else quant.QuantConfig("int4", q.group_size, weight_bits=bits)
        model = quant.quantize_model(copy.deepcopy(base.model), config)  # it quantizes in place
        folder = save_model(model, base.tokenizer, ctx.stage_dir("quantize") / f"int{bits}", quant=config,
                            source={"speedrun": ctx.cfg.name, "stage": "pretrain"})
        value = bits_per_byte(model)
        rows.append({"scheme": f"int{bits}" + (f", group {q.group_size}" if bits != 8 else ""),
                     "weight_bytes": quant.weight_bytes(model), "file_bytes": (folder / "model.safetensors").stat().st_size,
                     "bits_per_byte": value, "change": value / reference - 1})
    return {"heldout_bytes": sum(len(t.encode("utf-8")) for t in texts), "schemes": rows,
            "note": "the tied embedding and output head stay fp32"}


def stage_report(ctx: Context) -> dict[str, Any]:
    """Write `report.json` and `report.md` (the report card) into the stage folder and the run folder."""
    from llmbook.speedrun.machine import describe
    from llmbook.speedrun.report import build_report, render_markdown

    for name in ctx.stale:  # a report card never mixes results of other settings
        ctx.summary(name)
    device = ctx.records.get("pretrain", {}).get("summary", {}).get("device", "cpu")
    records = {k: v for k, v in ctx.records.items() if k != "report"}
    report = build_report(ctx.cfg, records, describe(device))
    text = render_markdown(report)
    for folder in (ctx.stage_dir("report"), ctx.out):
        write_json(folder / "report.json", report)
        atomic_write(folder / "report.md", lambda f: f.write(text))
    return {"total_wall_s": report["total"]["wall_s"], "total_cpu_s": report["total"]["cpu_s"]}


STAGES: list[Stage] = [
    Stage("data", stage_data, settings=("speedrun.data",), description="corpus, held-out books, curation"),
    Stage("tokenizer", stage_tokenizer, settings=("speedrun.tokenizer", "speedrun.data"), after=("data",),
          description="byte-level BPE and packed token shards"),
    Stage("pretrain", stage_pretrain,
          settings=("model", "data", "optim", "train", "checkpoint", "speedrun.machine.precision"),
          after=("tokenizer",), resumable=True, description="pretraining with llmbook.train"),
    Stage("eval", stage_eval, settings=("speedrun.eval",), after=("data", "pretrain"),
          description="held-out bits per byte vs compressors, benchmarks, samples"),
    Stage("sft", stage_sft, settings=("speedrun.sft",), after=("pretrain",), requires="llmbook.finetune.pipeline",
          description="supervised fine-tuning (llmbook.finetune)"),
    Stage("dpo", stage_dpo, settings=("speedrun.dpo",), after=("sft",), requires="llmbook.finetune.pipeline",
          description="preference tuning, DPO (llmbook.finetune)"),
    Stage("quantize", stage_quantize, settings=("speedrun.quantize",), after=("pretrain",),
          requires="llmbook.serve.quant", description="weight-only quantization (llmbook.serve)"),
    Stage("report", stage_report, settings=("speedrun.machine",),
          after=("data", "tokenizer", "pretrain", "eval", "sft", "dpo", "quantize"), description="report card"),
]
