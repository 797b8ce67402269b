"""`llmbook serve`, `llmbook quantize`, `llmbook prune` and `llmbook distill` (@sec-inference); `llmbook export
--format gguf` lives with the Hugging Face export in `llmbook.train.export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmbook.serve.quant import METHODS

GROUP_HELP = "input columns sharing one scale for int4 and gptq (a divisor of every layer's input width; default 64)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _text_ids(served, path: str | None, limit_chars: int) -> list[int]:
    """Token ids of a text file (default: the TinyStories training sample from the data registry)."""
    from llmbook.data import registry

    file = Path(path) if path else registry.fetch("tinystories/tinystories_train_sample.txt")
    if not file.is_file():
        raise FileNotFoundError(f"text file {file} does not exist")
    try:
        text = file.read_text(encoding="utf-8")[:limit_chars]
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({err})") from None
    ids = served.encode(text)
    if len(ids) < 2 * served.model.config.block_size:
        raise ValueError(f"{file}: only {len(ids)} tokens; need at least {2 * served.model.config.block_size}")
    return ids


# ------------------------------------------------------------------------------------------------ serve
def require_package(module: str, extra: str) -> None:
    """One-line error naming the extra to install when an optional dependency is missing."""
    import importlib.util

    from llmbook.cli import CLIError

    if importlib.util.find_spec(module) is None:
        raise CLIError(f"this command needs the '{module}' package: pip install 'llmbook[{extra}]'")


def run_serve(args: argparse.Namespace) -> int:
    require_package("fastapi", "serve")
    require_package("uvicorn", "serve")
    import uvicorn

    from llmbook.serve.engine import Engine
    from llmbook.serve.modelio import load_servable
    from llmbook.serve.server import ServerConfig, create_app, json_logging

    api_key = None
    if args.api_key_file:
        key_file = Path(args.api_key_file)
        if not key_file.is_file():
            raise FileNotFoundError(f"--api-key-file {key_file} does not exist")
        api_key = key_file.read_text(encoding="utf-8").strip()
        if not api_key:
            raise ValueError(f"--api-key-file {key_file} is empty")
    rag = None
    if args.rag_index:  # checked before the model loads
        from llmbook.apps.store import load_index

        rag = load_index(args.rag_index)
    served = load_servable(args.checkpoint, device=args.device, quantize=args.quantize, group_size=args.group_size)
    if rag is not None and served.chat is None:
        from llmbook.cli import CLIError

        raise CLIError(f"--rag-index needs a chat model (a folder with chat_template.jinja); {args.checkpoint} is a "
                       "base model")
    if args.name:
        served.name = args.name
    config = ServerConfig(api_key=api_key, max_body_bytes=args.max_body_bytes,
                          max_tokens_limit=args.max_tokens_limit, default_max_tokens=args.default_max_tokens)
    engine = Engine(served.model, served.decode, served.eos_id, n_slots=args.slots, max_len=args.max_len)
    json_logging()
    print(json.dumps({"event": "serving", "model": served.name, "url": f"http://{args.host}:{args.port}",
                      "slots": args.slots, "quantization": served.info.get("quantization"),
                      "chat": served.chat is not None, "auth": api_key is not None,
                      "rag": None if rag is None else str(args.rag_index)}), flush=True)
    uvicorn.run(create_app(served, engine, config, rag=rag, rag_k=args.rag_k), host=args.host, port=args.port,
                log_level="warning", access_log=False)
    return 0


# --------------------------------------------------------------------------------------------- quantize
def run_quantize(args: argparse.Namespace) -> int:
    import torch

    from llmbook.serve.modelio import load_servable, save_model
    from llmbook.serve.quant import QuantConfig, quantize_model, weight_bytes

    config = QuantConfig(args.method, args.group_size, args.bits)
    served = load_servable(args.checkpoint)
    before = weight_bytes(served.model)
    calibration = None
    if args.method == "gptq":
        block = served.model.config.block_size
        ids = _text_ids(served, args.calibration, 40 * args.calibration_tokens)[: args.calibration_tokens]
        n = len(ids) // block
        if n == 0:
            raise ValueError(f"--calibration-tokens {args.calibration_tokens} is less than one block of {block}")
        calibration = torch.tensor(ids[: n * block]).reshape(n, block)
    quantize_model(served.model, config, calibration)
    save_model(served.model, served.tokenizer, args.out, quant=config, chat=served.chat,
               source={"checkpoint": str(args.checkpoint), "command": "quantize"})
    print(json.dumps({"out": args.out, "method": args.method, "bits": config.bits, "group_size": config.groups,
                      "bytes_before": before, "bytes_after": weight_bytes(served.model)}))
    return 0


# ------------------------------------------------------------------------------------------------ prune
def run_prune(args: argparse.Namespace) -> int:
    from llmbook.serve.modelio import load_servable, save_model
    from llmbook.serve.prune import prune_model, sparsity_of

    served = load_servable(args.checkpoint)
    if served.info.get("quantization"):
        raise ValueError(f"{args.checkpoint} is quantized; prune the unquantized model, then quantize")
    prune_model(served.model, args.method, args.sparsity)
    save_model(served.model, served.tokenizer, args.out, chat=served.chat,
               source={"checkpoint": str(args.checkpoint), "command": "prune", "method": args.method,
                       "sparsity": args.sparsity})
    print(json.dumps({"out": args.out, "method": args.method, "sparsity": sparsity_of(served.model)}))
    return 0


# ----------------------------------------------------------------------------------------------- distill
def run_distill(args: argparse.Namespace) -> int:
    from llmbook.serve.distill import DistillConfig, make_student, token_batches, train_student
    from llmbook.serve.modelio import load_servable, save_model

    teacher = load_servable(args.teacher)
    if teacher.info.get("quantization"):
        raise ValueError(f"{args.teacher} is quantized; distill from the unquantized teacher")
    config = DistillConfig(steps=args.steps, lr=args.lr, temperature=args.temperature, alpha=args.alpha,
                           warmup_steps=min(20, args.steps - 1))
    student = make_student(teacher.model.config, args.n_layer, args.n_head, args.n_embd, seed=args.seed)
    ids = _text_ids(teacher, args.text, args.max_chars)
    block = min(args.block_size, student.config.block_size)
    batches = token_batches(ids, args.batch_size, block, seed=args.seed)
    history = train_student(student, batches, config, teacher=teacher.model if args.alpha > 0 else None)
    save_model(student, teacher.tokenizer, args.out, chat=teacher.chat,
               source={"teacher": str(args.teacher), "command": "distill", **config.to_dict()})
    print(json.dumps({"out": args.out, "params": student.num_params(), "teacher_params": teacher.model.num_params(),
                      "final_loss": history[-1]["loss"]}))
    return 0


def add_parser(subparsers) -> None:
    """Register `llmbook serve`, `quantize`, `prune` and `distill`."""
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with a chat page",
                              description="Serve a training run, checkpoint or servable folder (from quantize, "
                                          "prune or distill) at /v1/models, /v1/completions, /v1/chat/completions "
                                          "(chat models only), /health, and a chat page at /.")
    p.add_argument("--checkpoint", required=True, help="training run, checkpoint, or folder with model.json")
    p.add_argument("--quantize", choices=[m for m in METHODS if m != "gptq"],
                   help="quantize the weights on load (weight-only; GPTQ needs `llmbook quantize`)")
    p.add_argument("--group-size", type=_positive_int, default=64, help=GROUP_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive_int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--name", help="model id clients use (default: the folder's name)")
    p.add_argument("--slots", type=_positive_int, default=8,
                   help="requests decoded together: cache slots of the continuous batch (default 8)")
    p.add_argument("--max-len", type=_positive_int,
                   help="tokens (prompt + completion) reserved per slot (default: the model's block_size)")
    p.add_argument("--api-key-file", help="file holding a bearer token clients must send (default: no auth)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20,
                   help="largest accepted request body in bytes (default 1 MiB)")
    p.add_argument("--max-tokens-limit", type=_positive_int, default=1024,
                   help="largest max_tokens a request may ask for (default 1024)")
    p.add_argument("--default-max-tokens", type=_positive_int, default=64,
                   help="max_tokens of a completions request that gives none (default 64)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--rag-index", help="retrieve from this `llmbook rag index` file before every chat answer")
    p.add_argument("--rag-k", type=_positive_int, default=3, help="passages retrieved per answer, as many as fit (default 3)")
    p.set_defaults(func=run_serve)

    q = subparsers.add_parser("quantize", help="weight-only quantization of a model's linear layers",
                              description="Write a servable folder (model.safetensors + model.json) with int8 "
                                          "(absmax), int8-zp (zero-point), int4 (group-wise) or GPTQ weights.")
    q.add_argument("--checkpoint", required=True, help="training run, checkpoint, or folder with model.json")
    q.add_argument("--method", choices=METHODS, default="int8", help="quantization scheme (default int8)")
    q.add_argument("--group-size", type=_positive_int, default=64, help=GROUP_HELP)
    q.add_argument("--bits", type=int, choices=[2, 3, 4], default=4,
                   help="bits per weight for int4 and gptq (stored in 4-bit containers; default 4)")
    q.add_argument("--calibration", help="GPTQ calibration text file (default: the TinyStories training sample)")
    q.add_argument("--calibration-tokens", type=_positive_int, default=4096,
                   help="GPTQ calibration tokens (default 4096)")
    q.add_argument("--out", required=True, help="output folder")
    q.set_defaults(func=run_quantize)

    r = subparsers.add_parser("prune", help="magnitude or 2:4 pruning of a model's linear layers",
                              description="Zero the smallest-magnitude weights of every linear layer except the "
                                          "output head and write a servable folder.")
    r.add_argument("--checkpoint", required=True, help="training run, checkpoint, or folder with model.json")
    r.add_argument("--method", choices=["magnitude", "2:4"], default="magnitude",
                   help="unstructured per-layer magnitude pruning, or 2 of every 4 weights (default magnitude)")
    r.add_argument("--sparsity", type=_fraction, default=0.5, help="fraction of weights to zero (magnitude only)")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(func=run_prune)

    d = subparsers.add_parser("distill", help="distil a smaller student from a teacher model",
                              description="Train a smaller GPT (same tokenizer, same block design) on the teacher's "
                                          "temperature-softened next-token distributions plus the labels.")
    d.add_argument("--teacher", required=True, help="training run, checkpoint, or folder with model.json")
    d.add_argument("--out", required=True, help="output folder for the student")
    d.add_argument("--n-layer", type=_positive_int, default=2, help="student layers (default 2)")
    d.add_argument("--n-head", type=_positive_int, default=4, help="student attention heads (default 4)")
    d.add_argument("--n-embd", type=_positive_int, default=64, help="student width (default 64)")
    d.add_argument("--steps", type=_positive_int, default=200, help="training steps (default 200)")
    d.add_argument("--batch-size", type=_positive_int, default=16, help="sequences per step (default 16)")
    d.add_argument("--block-size", type=_positive_int, default=128, help="tokens per sequence (default 128)")
    d.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    d.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the soft targets (default 1)")
    d.add_argument("--alpha", type=float, default=0.9,
                   help="weight of the distillation term; 0 trains without the teacher (default 0.9)")
    d.add_argument("--text", help="training text file (default: the TinyStories training sample)")
    d.add_argument("--max-chars", type=_positive_int, default=2_000_000, help="characters of text to use")
    d.add_argument("--seed", type=int, default=0, help="seed of the student's init and batch order (default 0)")
    d.set_defaults(func=run_distill)
