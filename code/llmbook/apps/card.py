"""Model cards and datasheets written from a training run's own records (@sec-applications-card).

`llmbook card --checkpoint RUN --out card.md` reads what the trainer and the data pipeline wrote (the
checkpoint's config and manifest, `metrics.jsonl`, the token shards' manifest, optionally the curation
`report.json` of `llmbook data prepare` and result files of `llmbook eval --output`) and writes a Markdown card
with the sections of Mitchell et al. [@mitchell2019modelcards] and a datasheet for the training data after
Gebru et al. [@gebru2021datasheets]. What the records do not say is written as "not recorded", never guessed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmbook.fileio import atomic_write

def corpus_licence(name: str) -> str:
    """The licence the data registry records for a corpus name of the trainer's config (`llmbook.data.sources`)."""
    from llmbook.data.registry import registry
    from llmbook.data.sources import NAMED

    folder = NAMED[name][0].split("/")[0] if name in NAMED else name
    ds = registry().datasets.get(folder)
    return ds.licence if ds is not None else "not recorded"


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def run_records(checkpoint: str | Path) -> dict[str, Any]:
    """Everything the run recorded about itself: checkpoint info, config, metrics, shard manifest, parameters."""
    import torch

    from llmbook.model import GPT
    from llmbook.train import checkpoint as ckpt
    from llmbook.train.config import RunConfig
    from llmbook.train.data import shard_dir_for
    from llmbook.train.trainer import read_metrics

    meta = ckpt.info(checkpoint)
    cfg = RunConfig.from_dict(meta.config, source=str(meta.path / "config.json"))
    with torch.device("meta"):  # count parameters without allocating them
        n_params = GPT(cfg.model_config()).num_params()
    run_dir = meta.path.parent.parent if meta.path.parent.name == "checkpoints" else meta.path.parent
    metrics_file = run_dir / "metrics.jsonl"
    metrics = read_metrics(metrics_file, log=lambda msg: None) if metrics_file.is_file() else []
    shards = shard_dir_for(cfg.data) / "manifest.json"
    manifest = json.loads((meta.path / "manifest.json").read_text(encoding="utf-8"))
    return {"checkpoint": meta.path, "run_dir": run_dir, "step": meta.step, "world_size": meta.world_size,
            "format": meta.format, "config": cfg, "n_params": n_params, "metrics": metrics,
            "shards": _read_json(shards, "shard manifest") if shards.is_file() else None,
            "files": manifest.get("files", {})}


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def _eval_rows(results: dict) -> list[str]:
    """Table rows from a `llmbook eval --output` file: task, metric, value, 95% interval, items, chance."""
    rows = []
    for task, r in (results.get("results") or {}).items():
        for name, m in r.get("metrics", {}).items():
            lo, hi = m.get("ci_low", math.nan), m.get("ci_high", math.nan)
            rows.append(f"| {task} | {name} | {m['value']:.3f} | [{lo:.3f}, {hi:.3f}] | {r.get('n', '?')} | "
                        f"{r.get('num_fewshot', 0)} | {r.get('chance', math.nan):.3f} |")
    return rows


def model_card(checkpoint: str | Path, evals: Sequence[dict] = (), data_report: dict | None = None,
               name: str | None = None, intended_use: str | None = None) -> str:
    """The Markdown model card and datasheet of a run (see the module docstring for what is read)."""
    rec = run_records(checkpoint)
    cfg, mc = rec["config"], rec["config"].model_config()
    tr, dc, oc = cfg.train, cfg.data, cfg.optim
    name = name or rec["run_dir"].name
    tokens_seen = rec["step"] * dc.batch_size * dc.block_size * tr.grad_accum * rec["world_size"]
    train_logs = [m for m in rec["metrics"] if "loss" in m]
    val_logs = [m for m in rec["metrics"] if "val_loss" in m]
    shards = rec["shards"]
    weights = rec["files"].get("model.safetensors", {}).get("sha256", "not recorded")
    lines = [
        f"# Model card: {name}",
        "",
        "Written by `llmbook card` from the run's own records, following the model-card sections of Mitchell et al. "
        "(2019) and, for the data, the datasheet questions of Gebru et al. (2021). Everything below is read from "
        "files the trainer and the data pipeline wrote; what they do not record is marked *not recorded*.",
        "",
        "## Model details",
        "",
        f"- **Architecture:** decoder-only transformer (`llmbook.model.GPT`), {mc.n_layer} layers, {mc.n_head} heads, "
        f"width {mc.n_embd}, context {mc.block_size} tokens, vocabulary {mc.vocab_size:,}, "
        f"{mc.pos_emb} positions, {mc.norm} normalisation.",
        f"- **Parameters:** {rec['n_params']:,}.",
        f"- **Checkpoint:** step {rec['step']:,} (`{rec['checkpoint'].name}`, {rec['format']} format, "
        f"world size {rec['world_size']}); `model.safetensors` SHA-256 `{weights}`.",
        f"- **Training:** {tr.steps:,} steps planned, {rec['step']:,} done; batch {dc.batch_size} x {dc.block_size} tokens "
        f"x {tr.grad_accum} accumulation x {rec['world_size']} ranks = {tokens_seen:,} tokens seen; AdamW, peak "
        f"learning rate {_fmt(oc.lr)} ({oc.schedule}, {oc.warmup_steps} warm-up steps), weight decay {_fmt(oc.weight_decay)}, "
        f"{tr.precision} on {tr.device}, seed {tr.seed}.",
        "- **Licence of the code:** MIT (the llmbook repository). The weights inherit the data's terms below.",
        "",
        "## Intended use",
        "",
        intended_use or ("Not stated by the run's builders (`llmbook card --intended-use`). A pre-trained model of the "
                         "book's trainer is meant for teaching and research on how language models are built and "
                         "evaluated, not to answer questions, give advice or be deployed to users."),
        "",
        "## Training data",
        "",
    ]
    if shards:
        lines += ["| source | licence | documents | tokens |", "|:--|:--|--:|--:|"]
        for src, s in shards.get("sources", {}).items():
            lines.append(f"| {src} | {corpus_licence(src)} | {s.get('documents', 0):,} | "
                         f"{s.get('tokens', 0):,} |")
        sp = shards.get("splits", {})
        lines += ["", f"{shards.get('documents', 0):,} documents and {shards.get('tokens', 0):,} tokens in all; "
                  f"{sp.get('val', {}).get('documents', 0):,} documents ({dc.val_fraction:.0%} by a hash of their position) "
                  f"were held out for validation. Tokenizer: byte-level BPE with {shards.get('vocab_size', mc.vocab_size):,} "
                  "tokens trained on the same corpus."]
    else:
        lines.append(f"Corpora: {', '.join(dc.datasets) or dc.shard_dir}. Token counts: *not recorded* (no shard "
                     "manifest found for this configuration).")
    lines += ["", "## Data processing: deduplication and personal data", ""]
    if data_report:
        removed = data_report.get("removed", {})
        pii = data_report.get("pii")
        lines.append(f"Curation report: {data_report.get('input_documents', '?'):,} input documents, "
                     f"{data_report.get('kept_documents', '?'):,} kept; removed: "
                     + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in removed.items()) + ".")
        if pii is not None:
            spans = ", ".join(f"{k} {v:,}" for k, v in pii.get("spans", {}).items()) or "none found"
            lines.append(f"Personal data: {pii.get('documents_redacted', 0):,} documents had spans redacted ({spans}).")
        else:
            lines.append("Personal data: PII redaction was **not** run.")
    else:
        lines.append("*Not recorded.* This run read its corpora directly, without the curation pipeline "
                     "(`llmbook data prepare`), so no deduplication or PII-redaction statistics exist for it. "
                     "Pass `--data-report report.json` when the data went through the pipeline.")
    lines += ["", "## Evaluation", ""]
    if train_logs:
        last = train_logs[-1]
        lines.append(f"- Training loss at step {last['step']:,}: {last['loss']:.3f} nats/token.")
    if val_logs:
        v = val_logs[-1]
        lines.append(f"- Validation loss at step {v['step']:,}: {v['val_loss']:.3f} nats/token "
                     f"(perplexity {math.exp(v['val_loss']):.1f}), on the held-out split of the training corpora "
                     f"({tr.eval_batches} batches; no interval recorded by the trainer).")
    rows = [row for e in evals for row in _eval_rows(e)]
    if rows:
        lines += ["", "| task | metric | value | 95% interval | items | shots | chance |",
                  "|:--|:--|--:|:--|--:|--:|--:|", *rows]
    elif not (train_logs or val_logs):
        lines.append("*Not recorded.*")
    lines += [
        "",
        "## Limitations and risks",
        "",
        f"- Trained on {tokens_seen:,} tokens of {', '.join(dc.datasets) or 'pre-tokenised shards'}: a model "
        "reflects the text it was trained on; evaluate it on your own task and data before relying on it.",
        f"- A context of {mc.block_size} tokens: longer inputs are cut, so prompts and retrieved passages must fit.",
        "- The records show pre-training only: no instruction tuning and no safety tuning. Such a model continues "
        "text; it does not follow instructions and will not refuse harmful requests.",
        "- Memorisation of training text and social biases are not measured by these records: run the extraction "
        "test and the bias probes of `llmbook.eval` (the book's applications chapter) before release.",
        "",
        "## Datasheet for the training data",
        "",
        "- **Motivation.** Corpora chosen to train a small model on a laptop CPU for an executable book.",
        "- **Composition.** " + (", ".join(f"{src}: {s.get('documents', 0):,} documents" for src, s in
                                            (shards or {}).get("sources", {}).items()) or "*not recorded*") + ".",
        "- **Collection.** Public corpora read by `llmbook.data.sources`; provenance and checksums are listed in the "
        "data registry.",
        "- **Preprocessing.** " + ("See the curation report above." if data_report else
                                   "Documents split by the corpus's separator rule and tokenised; no filtering, "
                                   "deduplication or PII redaction recorded."),
        "- **Uses.** Language-model pre-training for teaching. Not suited to evaluating factual knowledge.",
        "- **Distribution.** The weights are derived from the data: their terms follow the licences above "
        "(share-alike terms may apply to the weights).",
        "- **Maintenance.** Regenerate this card with `llmbook card` after any retraining.",
        "",
    ]
    return "\n".join(lines)


def run_card(args: argparse.Namespace) -> int:
    evals = [_read_json(Path(p), "--eval file") for p in args.eval or []]
    for path, e in zip(args.eval or [], evals):
        if not isinstance(e, dict) or not isinstance(e.get("results"), dict):
            raise ValueError(f"--eval {path}: expected the JSON written by `llmbook eval --output` (a 'results' object)")
    report = _read_json(Path(args.data_report), "--data-report file") if args.data_report else None
    if report is not None and not isinstance(report, dict):
        raise ValueError(f"--data-report {args.data_report}: expected the report.json of `llmbook data prepare`")
    try:
        text = model_card(args.checkpoint, evals, report, name=args.name, intended_use=args.intended_use)
    except RuntimeError as err:  # the trainer's CheckpointError: a bad checkpoint is a user error here
        raise ValueError(f"--checkpoint {args.checkpoint}: {err}") from None
    atomic_write(args.out, lambda f: f.write(text))
    print(f"wrote {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("card", help="write a model card and datasheet from a training run's records",
                              description="Write a Markdown model card (Mitchell et al.) and datasheet (Gebru et al.) "
                                          "from a run's config, manifests and metrics.")
    p.add_argument("--checkpoint", required=True, help="training run, its checkpoints/ folder or one checkpoint")
    p.add_argument("--out", required=True, help="Markdown file to write (atomically)")
    p.add_argument("--eval", action="append", help="result file of `llmbook eval --output` (repeatable)")
    p.add_argument("--data-report", help="report.json of `llmbook data prepare` (deduplication and PII statistics)")
    p.add_argument("--name", help="model name in the title (default: the run folder's name)")
    p.add_argument("--intended-use", help="the intended-use statement, in Markdown (default: a generic one)")
    p.set_defaults(func=run_card)
