"""`llmbook rag`: index a folder of text or Markdown and ask it questions with cited answers
(@sec-applications-assistant).

    llmbook rag index --input chapters/ --out book.idx
    llmbook rag ask --index book.idx --question "What does bits per byte measure?"

The answer is extractive by default (the best-matching retrieved sentence, cited); with `--model RUN` the
book's model (or a transformers folder) writes it from the RAG prompt instead.
"""

from __future__ import annotations

import argparse
import json

from llmbook.cli import CLIError


def run_index(args: argparse.Namespace) -> int:
    from llmbook.apps.bm25 import BM25Config
    from llmbook.apps.store import build_index, read_folder, save_index

    if args.size < 1 or not 0 <= args.overlap < args.size:
        raise CLIError(f"--size must be >= 1 and 0 <= --overlap < --size, got {args.size} and {args.overlap}")
    index = build_index(read_folder(args.input), by=args.by, size=args.size, overlap=args.overlap,
                        max_chars=args.max_chars, config=BM25Config(args.k1, args.b))
    save_index(index, args.out)
    print(f"indexed {index.settings['files']} files as {len(index.chunks)} chunks "
          f"({len(index.bm25.vocab):,} terms) -> {args.out}")
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from llmbook.apps.rag import Passage, build_prompt, extractive_answer, grounding, screen_passages
    from llmbook.apps.store import load_index

    question = args.question.strip()
    if not question:
        raise CLIError("--question is empty")
    if args.k < 1:
        raise CLIError(f"--k must be >= 1, got {args.k}")
    index = load_index(args.index)
    hits = index.search(question, args.k)
    passages = [Passage(c.source, c.text) for c, _ in hits]
    dropped: list[Passage] = []
    if not args.no_screen:
        passages, dropped = screen_passages(passages)
    prompt = build_prompt(question, passages)
    if args.model:
        from llmbook.eval.checkpoints import load_lm

        lm = load_lm(args.model, device=args.device)
        answer = lm.generate(prompt, stop=["\nQuestion:"], max_tokens=args.max_tokens).strip()
    else:
        answer = extractive_answer(question, passages)
    check = grounding(answer, passages)
    if args.json:
        print(json.dumps({"question": question, "answer": answer,
                          "sources": [{"n": i, "source": p.source, "text": p.text} for i, p in enumerate(passages, 1)],
                          "screened_out": [p.source for p in dropped],
                          "grounding": {"cites": check.cites, "valid": check.valid, "support": check.support},
                          **({"prompt": prompt} if args.show_prompt else {})}, indent=2, ensure_ascii=False))
        return 0
    if args.show_prompt:
        print(prompt, end="\n\n")
    print(answer)
    print()
    for i, p in enumerate(passages, 1):
        print(f"[{i}] {p.source}")
    for p in dropped:
        print(f"[screened out as a possible prompt injection] {p.source}")
    if not check.valid:
        print("warning: the answer does not cite a retrieved source")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rag", help="retrieval-augmented answers over a folder of text or Markdown",
                              description="Index a folder (index) and ask questions with cited answers (ask).")
    sub = p.add_subparsers(dest="rag_command", metavar="{index,ask}", required=True)

    q = sub.add_parser("index", help="chunk and index .md/.qmd/.txt/.rst files under a folder")
    q.add_argument("--input", required=True, help="folder to index (searched recursively; hidden paths skipped)")
    q.add_argument("--out", required=True, help="index file to write (safetensors, written atomically)")
    q.add_argument("--by", choices=("tokens", "paragraph"), default="tokens",
                   help="chunk by word windows with overlap (default) or by paragraphs")
    q.add_argument("--size", type=int, default=120, help="words per chunk (default 120)")
    q.add_argument("--overlap", type=int, default=30, help="words shared by neighbouring chunks (default 30)")
    q.add_argument("--max-chars", type=int, default=1500, help="largest paragraph chunk in characters (default 1500)")
    q.add_argument("--k1", type=float, default=1.5, help="BM25 term-frequency saturation (default 1.5)")
    q.add_argument("--b", type=float, default=0.75, help="BM25 length normalisation (default 0.75)")
    q.set_defaults(func=run_index)

    a = sub.add_parser("ask", help="answer a question from an index, citing the retrieved chunks")
    a.add_argument("--index", required=True, help="index file from `llmbook rag index`")
    a.add_argument("--question", required=True, help="the question")
    a.add_argument("--k", type=int, default=3, help="chunks to retrieve (default 3)")
    a.add_argument("--model", help="write the answer with this training run or transformers folder "
                                   "(default: quote the best-matching retrieved sentence)")
    a.add_argument("--device", default="cpu", help="torch device for --model (default cpu)")
    a.add_argument("--max-tokens", type=int, default=128, help="longest generated answer in tokens (default 128)")
    a.add_argument("--no-screen", action="store_true",
                   help="keep retrieved chunks that look like prompt injections (screened out by default)")
    a.add_argument("--show-prompt", action="store_true", help="also print the prompt given to the model")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=run_ask)
