"""`llmbook data prepare` (curate a corpus) and `llmbook data tokenize` (pack it into token shards) (@sec-data-pipeline)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path

from llmbook.fileio import atomic_write, output_dir, run_lock, write_json
from llmbook.data.dedup import MinHashConfig
from llmbook.data.filters import LANGUAGES, FilterConfig
from llmbook.data.pack import write_shards
from llmbook.fileio import file_sha256
from llmbook.data.pii import redact
from llmbook.data.pipeline import DEDUP_METHODS, prepare
from llmbook.data.sources import SEPARATORS, load_inputs, utf8_text


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", required=True,
                   help="corpus name (tinystories, wikitext2, gutenberg, fineweb-edu, ...) or file (.txt[.gz|.xz], .jsonl, .parquet); repeatable")
    p.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the text (default text)")
    p.add_argument("--separator", choices=SEPARATORS, help="how plain text splits into documents (default paragraph)")
    p.add_argument("--max-docs", type=int, help="read at most this many documents of each input (a sample of a large corpus)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="fetch data sets, curate corpora and pack them into token shards",
                              description="Fetch the book's data sets (download), curate text corpora (prepare) "
                                          "and tokenize them into shards (tokenize).")
    sub = p.add_subparsers(dest="data_command", metavar="{download,prepare,tokenize}", required=True)

    dl = sub.add_parser("download", help="fetch data sets of the registry into the cache, checked by sha256",
                        description="Fetch data sets into the cache ($LLMBOOK_CACHE/data): from LLMBOOK_DATA_MIRROR "
                                    "when set, else from their pinned sources. Files already in LLMBOOK_DATA or the "
                                    "cache are not downloaded again.")
    dl.add_argument("names", nargs="*", metavar="NAME", help="data set names, or data files as folder/file")
    dl.add_argument("--all", action="store_true", help="every data set with files (hub corpora are streamed, not stored)")
    dl.add_argument("--list", action="store_true", help="list the data sets with size and licence, download nothing")
    dl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dl.set_defaults(func=run_download)

    prep = sub.add_parser("prepare", help="clean, filter, deduplicate and redact; writes curated.jsonl + report.json")
    _add_input_args(prep)
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--filters", default="default", help="'default' (all), 'none', or comma-separated filter names")
    prep.add_argument("--min-words", type=int, help="override FilterConfig.min_words")
    prep.add_argument("--languages", help="comma-separated language codes to keep (default en)")
    prep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override any FilterConfig threshold, e.g. --set max_words=1000000 (repeatable)")
    prep.add_argument("--dedup", default="exact,minhash", help="comma-separated subset of exact,minhash, or none")
    prep.add_argument("--threshold", type=float, default=0.8, help="MinHash Jaccard threshold (default 0.8)")
    prep.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    prep.add_argument("--pii", action="store_true", help="redact e-mails, phones, IPs, card numbers and IBANs")
    prep.set_defaults(func=run_prepare)

    tok = sub.add_parser("tokenize", help="tokenize documents into uint16/uint32 shards with a manifest")
    _add_input_args(tok)
    tok.add_argument("--tokenizer", required=True, help="tokenizer.json, or the folder holding it (from `llmbook tokenizer train`)")
    tok.add_argument("--out", required=True, help="shard folder")
    tok.add_argument("--eos", default="<|endoftext|>", help="end-of-text token appended after each document")
    tok.add_argument("--shard-tokens", type=int, default=1 << 24, help="tokens per shard (default 16M)")
    tok.add_argument("--val-fraction", type=float, default=0.005, help="share of documents for validation")
    tok.set_defaults(func=run_tokenize)


def parse_overrides(items: list[str]) -> dict:
    """`FIELD=VALUE` strings -> FilterConfig overrides, each value parsed as the type of the field's default."""
    defaults = {f.name: f.default for f in fields(FilterConfig)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in defaults:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(defaults)}")
        default = defaults[name]
        try:
            if isinstance(default, tuple) and all(isinstance(v, str) for v in default):
                out[name] = tuple(v.strip() for v in value.split(",") if v.strip())
            elif isinstance(default, (int, float)):
                out[name] = type(default)(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--set {item!r}: cannot use {value!r} for {name} (default {default!r})") from None
    return out


def _max_docs(args: argparse.Namespace) -> int | None:
    if args.max_docs is not None and args.max_docs < 1:
        raise ValueError(f"--max-docs must be a positive number of documents, got {args.max_docs}")
    return args.max_docs


def run_download(args: argparse.Namespace) -> int:
    """`llmbook data download`: list the registry, or fetch data sets / files into the cache."""
    from llmbook.data import registry

    reg = registry.registry()
    if args.list:
        rows = registry.describe()
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
            return 0
        table = [[r["name"], str(len(r["files"])) if r["files"] else "hub",
                  registry.human_size(r["bytes"]) if r["files"] else "sample", r["local"] if r["files"] else "-",
                  r["licence"]] for r in rows]
        headers = ["data set", "files", "size", "local", "licence"]
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers[:-1])]
        for row in [headers, *table]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        total = sum(r["bytes"] for r in rows)
        print(f"{len(rows)} data sets, {registry.human_size(total)} in files; hub corpora are streamed to the "
              f"sample size the caller asks for")
        return 0
    if args.all and args.names:
        raise ValueError("give data set names or --all, not both")
    if not args.all and not args.names:
        raise ValueError("name the data sets to download (see --list), or pass --all")
    names = [n for n, d in reg.datasets.items() if d.files] if args.all else args.names
    paths = []
    for name in names:
        if "/" in name:
            if name not in reg.files:
                raise ValueError(f"unknown data file {name!r}; `llmbook data download --list --json` lists them")
            paths.append(name)
        elif not reg.dataset(name).files:
            raise ValueError(f"{name} is streamed from the hub (read it with --input {name} --max-docs N), not stored")
        else:
            paths.extend(f.path for f in reg.dataset(name).files)
    fetched = {p: str(registry.fetch(p)) for p in paths}
    if args.json:
        print(json.dumps(fetched, indent=2))
    else:
        for p, where in fetched.items():
            print(f"{p}  ->  {where}")
    return 0

def _warn(command: str, message: str) -> None:
    print(f"llmbook data {command}: warning: {message}", file=sys.stderr)


def run_prepare(args: argparse.Namespace) -> int:
    out = output_dir(args.out)
    with run_lock(out):
        return _prepare(args, out)


def _prepare(args: argparse.Namespace, out: Path) -> int:
    dedup = [] if args.dedup == "none" else [d.strip() for d in args.dedup.split(",") if d.strip()]
    bad = [d for d in dedup if d not in DEDUP_METHODS]
    if bad:
        raise ValueError(f"--dedup: unknown methods {bad}; choose from {', '.join(DEDUP_METHODS)} or none")
    overrides = {}
    if args.min_words is not None:
        overrides["min_words"] = args.min_words
    if args.languages:
        overrides["languages"] = tuple(x.strip() for x in args.languages.split(",") if x.strip())
        unknown = [code for code in overrides["languages"] if code not in LANGUAGES]
        if unknown:
            _warn("prepare", f"--languages {','.join(unknown)}: not a language the identifier knows "
                             f"({', '.join(LANGUAGES)}); the language filter removes every document in it")
    overrides.update(parse_overrides(args.set))
    skipped: Counter = Counter()
    records = load_inputs(args.input, args.separator, args.text_field, skipped, _max_docs(args))
    kept, report = prepare(records, filters=args.filters, filter_config=FilterConfig(**overrides), dedup=dedup,
                           minhash=MinHashConfig(num_perm=args.num_perm, threshold=args.threshold), pii=args.pii,
                           skipped=skipped)
    report["inputs"] = [redact(str(i))[0] if args.pii else str(i) for i in args.input]
    atomic_write(out / "curated.jsonl",
                 lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    write_json(out / "report.json", report)
    language = report["filters"]["filters"].get("language", {}).get("documents", 0)
    if report["kept_documents"] == 0 and language:
        _warn("prepare", f"every document was removed, {language} of them by the language filter "
                         f"(languages {', '.join(FilterConfig(**overrides).languages)})")
    removed = ", ".join(f"{k} {v}" for k, v in report["removed"].items())
    print(f"input {report['input_documents']} documents -> kept {report['kept_documents']} (removed: {removed})")
    print(f"wrote {out / 'curated.jsonl'} and {out / 'report.json'}")
    return 0


def run_tokenize(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()  # `--out .` still names a folder with a parent to hold the lock
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory; refusing to replace a file")
    # the shard folder is replaced by a rename at the end, so its lock lives beside it; an existing folder's own
    # lock is held too, so a training run or another command writing there is refused, not moved away
    with run_lock(output_dir(out.parent, "--out's parent"), name=f".{out.name}.lock"), \
            (run_lock(out) if out.is_dir() else contextlib.nullcontext()):
        return _tokenize(args, out)


def _tokenize(args: argparse.Namespace, out: Path) -> int:
    from llmbook.tokenizer.hf import load_hf_tokenizer, tokenizer_file

    tok_path = tokenizer_file(args.tokenizer)  # a folder means its tokenizer.json: load and hash the same file
    tok = load_hf_tokenizer(tok_path)
    eos = tok.token_to_id(args.eos)
    if eos is None:
        raise ValueError(f"the tokenizer has no token {args.eos!r} to use as EOS (pass --eos)")
    skipped: Counter = Counter()
    records = load_inputs(args.input, args.separator, args.text_field, skipped, _max_docs(args))
    literal_eos = 0

    repaired: Counter = Counter()

    def texts():
        for rec in records:
            text = utf8_text(rec["text"])  # tokenizers take valid Unicode only: bad bytes become U+FFFD, counted
            if text is not rec["text"]:
                repaired[rec.get("source", "unknown")] += 1
            yield {**rec, "text": text}

    def encode(text: str) -> list[int]:
        # a literal EOS string in a document is encoded as text (load_hf_tokenizer); the EOS id comes only from
        # write_shards, after each document. The manifest counts such documents.
        nonlocal literal_eos
        literal_eos += args.eos in text
        return tok.encode(text, add_special_tokens=False).ids

    manifest = write_shards(texts(), encode, out, eos_id=eos,
                            shard_tokens=args.shard_tokens, tokenizer_hash=file_sha256(tok_path),
                            vocab_size=tok.get_vocab_size(), val_fraction=args.val_fraction)
    if skipped or literal_eos or repaired:
        manifest["unreadable"] = dict(skipped)
        manifest["documents_with_literal_eos"] = literal_eos
        manifest["documents_with_invalid_utf8"] = dict(repaired)
        write_json(out / "manifest.json", manifest)
    splits = manifest["splits"]
    print(f"{manifest['documents']} documents, {manifest['tokens']:,} tokens ({manifest['dtype']}): "
          f"train {splits['train']['tokens']:,} in {len(splits['train']['shards'])} shards, "
          f"val {splits['val']['tokens']:,}; skipped {manifest['skipped_empty']} empty, {sum(skipped.values())} unreadable")
    return 0
