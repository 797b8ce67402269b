"""`llmbook eval`: benchmarks, perplexity, BLEU/chrF, ROUGE and contamination from the command line (@sec-evaluation)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from llmbook.cli import CLIError
from llmbook.fileio import output_dir, run_lock


def _data_dir(value: str | None) -> Path | None:
    """An explicit benchmark folder, or None: the data registry then fetches each task's files."""
    if value is None:
        return None
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"data directory {path} does not exist")
    return path


def _read_text(path: str, flag: str) -> str:
    """The UTF-8 text of the file given to `flag`, or a one-line error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{flag} file {p} not found")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{flag} {p}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None


def _read_lines(path: str, flag: str = "file") -> list[str]:
    return _read_text(path, flag).splitlines()


def _check_device(name: str) -> str:
    """A torch device this machine has (cpu, cuda, cuda:N, mps), or a one-line error naming the value."""
    import torch

    try:
        kind = torch.device(name).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r} is not a device this command can use (cpu, cuda, cuda:N, mps)")
    if kind == "cuda" and not torch.cuda.is_available() or kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r}: no {kind} device is available on this machine")
    return name


def _check_model_args(args: argparse.Namespace) -> None:
    _check_device(args.device)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 2:
        raise ValueError(f"--max-length must be at least 2, got {args.max_length}")


def _aligned(hyp: str, refs: list[str]) -> tuple[list[str], list[list[str]]]:
    hyps = _read_lines(hyp, "--hyp")
    streams = [_read_lines(r, "--ref") for r in refs]
    for r, s in zip(refs, streams):
        if len(s) != len(hyps):
            raise ValueError(f"{r} has {len(s)} lines but {hyp} has {len(hyps)}; one segment per line is required")
    return hyps, streams


def _print(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=float))
    else:
        for k, v in obj.items():
            print(f"{k:>12s}  {v:.4f}" if isinstance(v, float) else f"{k:>12s}  {v}")


def run_tasks(args: argparse.Namespace) -> int:
    from llmbook.eval import sandbox
    from llmbook.eval.checkpoints import load_lm
    from llmbook.eval.harness import evaluate, write_json
    from llmbook.eval.tasks import get_task

    if not args.model or not args.tasks:
        raise CLIError("llmbook eval needs --model and --tasks (or a subcommand: ppl, bleu, rouge, contamination)")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    code = [name for name in names if get_task(name).kind == "code"]  # unknown names fail before the model loads
    if code and not args.allow_code_execution:
        raise CLIError(f"task(s) {', '.join(code)} execute model-generated code; pass --allow-code-execution to "
                       "run it in the bubblewrap sandbox")
    isolation = "auto"
    problem = sandbox.isolation_problem() if code else None
    if problem and not args.allow_unsandboxed_code:  # refused before the model loads
        raise CLIError(f"{problem}: code tasks run model-generated code only in the bubblewrap sandbox; install "
                       "bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap), or pass --allow-unsandboxed-code "
                       "to run it on this machine WITHOUT isolation, at your own risk")
    if problem:
        isolation = "unsafe-host"
        print(f"llmbook eval: WARNING: {problem}; running model-generated code on this machine WITHOUT isolation "
              "(--allow-unsandboxed-code)", file=sys.stderr)
    _check_model_args(args)
    for flag, value, low in (("--bootstrap-iters", args.bootstrap_iters, 1), ("--num-fewshot", args.num_fewshot, 0),
                             ("--limit", args.limit, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    data_dir = _data_dir(args.data_dir)
    lock = contextlib.nullcontext()
    if args.output:  # fail now, not after the evaluation: the file's folder must be writable and not busy
        output = Path(args.output)
        if output.is_dir():
            raise ValueError(f"--output {output}: is a directory; give a file name")
        lock = run_lock(output_dir(output.parent, "--output's folder"), name=f".{output.name}.lock")
    with lock:
        model = load_lm(args.model, args.batch_size, args.device, args.max_length, trust_sharded=args.trust_sharded)
        results = evaluate(model, names, data_dir, limit=args.limit, num_fewshot=args.num_fewshot, seed=args.seed,
                           bootstrap_iters=args.bootstrap_iters, isolation=isolation)
        if args.output:
            write_json(args.output, {"model": args.model, "results": results})
    summary = {name: {k: r[k] for k in ("n", "num_fewshot", "chance", "metrics")} for name, r in results.items()}
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
    else:
        for name, r in summary.items():
            for metric, m in r["metrics"].items():
                print(f"{name:>14s} {metric:>22s} {m['value']:8.4f} ± {m['stderr']:.4f}  95% CI [{m['ci_low']:.4f}, "
                      f"{m['ci_high']:.4f}]  n={r['n']} chance={r['chance']:.3f}")
    return 0


def run_ppl(args: argparse.Namespace) -> int:
    from llmbook.eval.checkpoints import load_lm
    from llmbook.eval.perplexity import perplexity, wikitext_documents

    text = _read_text(args.input, "--input")
    _check_model_args(args)
    docs = wikitext_documents(text) if args.wikitext else [d for d in text.split("\n\n") if d.strip()]
    model = load_lm(args.model, args.batch_size, args.device, args.max_length, trust_sharded=args.trust_sharded)
    _print(perplexity(model, docs, stride=args.stride).to_dict(), args.json)
    return 0


def run_bleu(args: argparse.Namespace) -> int:
    from llmbook.eval.bleu import corpus_bleu, corpus_chrf

    hyps, refs = _aligned(args.hyp, args.ref)
    b = corpus_bleu(hyps, refs, smooth_method=args.smooth, lowercase=args.lowercase, tokenize=args.tokenize)
    out = {"bleu": b.score, "chrf": corpus_chrf(hyps, refs, lowercase=args.lowercase),
           "chrf++": corpus_chrf(hyps, refs, word_order=2, lowercase=args.lowercase),
           "precisions": list(b.precisions), "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len}
    _print(out, args.json)
    return 0


def run_rouge(args: argparse.Namespace) -> int:
    from llmbook.eval.rouge import corpus_rouge

    hyps, refs = _aligned(args.hyp, [args.ref])
    # one segment per line: a literal backslash-n inside a line marks a sentence break for rougeLsum
    refs_, hyps_ = ([s.replace("\\n", "\n") for s in lines] for lines in (refs[0], hyps))
    _print(corpus_rouge(refs_, hyps_, stem=not args.no_stem), args.json)
    return 0


def run_contamination(args: argparse.Namespace) -> int:
    from llmbook.eval.contamination import ContaminationIndex, read_documents
    from llmbook.eval.harness import item_text
    from llmbook.eval.tasks import get_task

    tasks = [get_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    data_dir = _data_dir(args.data_dir)
    items = {t.name: [item_text(t, d) for d in t.load(data_dir)] for t in tasks}
    corpus = Path(args.train)
    if not corpus.is_file():
        raise FileNotFoundError(f"training corpus {corpus} not found")
    try:
        with corpus.open(encoding="utf-8") as f:
            report = ContaminationIndex(items, n=args.n).scan(read_documents(f)).report()
    except UnicodeDecodeError as err:
        raise ValueError(f"--train {corpus}: not UTF-8 text (byte 0x{err.object[err.start]:02x})") from None
    out = {name: r.to_dict() for name, r in report.items()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, r in out.items():
            print(f"{name:>14s}  {r['n_contaminated']}/{r['n_items']} items share a {args.n}-gram ({r['fraction']:.2%})")
    return 0


def _model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required,
                   help="training run or checkpoint (llmbook train --out DIR), or transformers model folder")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--max-length", type=int, help="context window in tokens (default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trust-sharded", action="store_true",
                   help="read an FSDP2 (DCP) checkpoint without a consolidated model.safetensors; its metadata is "
                        "a pickle, so only use this on checkpoints you trust")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model: benchmarks, perplexity, BLEU/chrF, ROUGE, contamination",
                              description="Run benchmark tasks (default) or a subcommand.")
    _model_args(p, required=False)
    p.add_argument("--tasks", help="comma-separated task names, e.g. hellaswag,arc_easy")
    p.add_argument("--data-dir", help="folder laid out like the data folder (default: the data registry)")
    p.add_argument("--limit", type=int, help="evaluate only the first N items of each task")
    p.add_argument("--num-fewshot", type=int, default=0, help="in-context examples per item (default 0)")
    p.add_argument("--seed", type=int, default=1234, help="few-shot sampling and bootstrap seed")
    p.add_argument("--bootstrap-iters", type=int, default=1000, help="bootstrap resamples for intervals")
    p.add_argument("--output", help="also write full per-item results JSON here (atomically)")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="required for humaneval/mbpp: run model-generated code in the bubblewrap sandbox")
    p.add_argument("--allow-unsandboxed-code", action="store_true",
                   help="DANGEROUS: where bubblewrap is unavailable, run model-generated code on this machine "
                        "without isolation (it can read, change and delete your files)")
    p.set_defaults(func=run_tasks)
    sub = p.add_subparsers(dest="eval_command", metavar="{ppl,bleu,rouge,contamination}")

    q = sub.add_parser("ppl", help="perplexity, word perplexity and bits per byte of a text file")
    _model_args(q, required=True)
    q.add_argument("--input", required=True, help="UTF-8 text; documents separated by blank lines")
    q.add_argument("--stride", type=int, help="sliding-window stride in tokens (default: the window, no overlap)")
    q.add_argument("--wikitext", action="store_true", help="split documents at WikiText ' = Title = ' headings")
    q.set_defaults(func=run_ppl)

    b = sub.add_parser("bleu", help="corpus BLEU and chrF (sacrebleu-compatible, 0-100)")
    b.add_argument("--hyp", required=True, help="hypotheses, one segment per line")
    b.add_argument("--ref", required=True, action="append", help="references, one per line; repeat for more")
    b.add_argument("--smooth", default="exp", choices=("exp", "floor", "add-k", "none"), help="BLEU smoothing")
    b.add_argument("--tokenize", default="13a", choices=("13a", "none"), help="BLEU tokenizer (default 13a)")
    b.add_argument("--lowercase", action="store_true", help="case-insensitive scores")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=run_bleu)

    r = sub.add_parser("rouge", help="ROUGE-1/2/L/Lsum F-measures (rouge-score-compatible, 0-1)")
    r.add_argument("--hyp", required=True, help="predictions, one per line ('\\n' inside a line splits sentences)")
    r.add_argument("--ref", required=True, help="references, one per line")
    r.add_argument("--no-stem", action="store_true", help="turn off Porter stemming (on by default)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=run_rouge)

    c = sub.add_parser("contamination", help="n-gram overlap between a training corpus and benchmark items")
    c.add_argument("--train", required=True, help="training corpus, UTF-8 text (documents separated by blank lines)")
    c.add_argument("--tasks", required=True, help="comma-separated task names")
    c.add_argument("--data-dir", help="folder laid out like the data folder (default: the data registry)")
    c.add_argument("--n", type=int, default=13, help="n-gram length in words (default 13)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=run_contamination)
