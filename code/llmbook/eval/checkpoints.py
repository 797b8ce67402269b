"""Book-trained runs as evaluation models: load checkpoints or `transformers` folders, reuse a cached training run,
and recover the run's held-out documents (@sec-evaluation-checkpoints).

A training run (`llmbook train --out RUN`) holds `checkpoints/step_XXXXXXXX/` folders with `model.safetensors`
(or FSDP2 shards), the run's `config.json`, the tokenizer and a checksummed `manifest.json`
(`llmbook.train.checkpoint`). Every function here reads them through the trainer's own loaders.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from llmbook.eval.models import CausalLM, LLMBookLM

EOS = "<|endoftext|>"


def is_training_run(path: str | Path) -> bool:
    """True for one checkpoint (it has a manifest), a `checkpoints/` folder, or a run directory holding one."""
    from llmbook.train import checkpoint as ckpt

    p = Path(path)
    return ((p / ckpt.MANIFEST).is_file() or bool(ckpt.list_checkpoints(p))
            or bool(ckpt.list_checkpoints(p / "checkpoints")))


def checkpoint_lm(path: str | Path, batch_size: int = 8, device: str = "cpu",
                  max_length: int | None = None, trust_sharded: bool = False) -> LLMBookLM:
    """The newest valid checkpoint of a run (or the given checkpoint) as an `LLMBookLM` with the run's tokenizer.

    A sharded (FSDP2) checkpoint without consolidated weights is read only with `trust_sharded=True`: its DCP
    metadata is a pickle (@sec-scale-checkpoint)."""
    from llmbook.train.checkpoint import CheckpointError
    from llmbook.train.generate import load_model

    try:
        model, tokenizer, meta = load_model(path, device=device, trust_sharded=trust_sharded)
    except CheckpointError as err:  # a RuntimeError in the trainer; a user error here
        raise ValueError(f"checkpoint {path}: {err}") from None
    eot = tokenizer.token_to_id(EOS)
    if eot is None:
        raise ValueError(f"{meta.path / 'tokenizer.json'} has no {EOS} token to use as end-of-text")
    return LLMBookLM(model, tokenizer, eot_id=eot, batch_size=batch_size, device=device, max_length=max_length)


def hf_lm(path: str | Path, batch_size: int = 8, device: str = "cpu", max_length: int | None = None) -> CausalLM:
    """A `transformers` model folder (config.json, weights, tokenizer) as an `HFCausalLM`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmbook.eval.models import HFCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} has a config.json but is not a loadable transformers causal LM: {first}") from None
    return HFCausalLM(model, tokenizer, max_length=max_length, batch_size=batch_size, device=device)


def load_lm(path: str | Path, batch_size: int = 8, device: str = "cpu", max_length: int | None = None,
            trust_sharded: bool = False) -> CausalLM:
    """Any model the book can evaluate: a training run or checkpoint (llmbook.train), or a `transformers` folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path {p} does not exist")
    if not p.is_dir():
        raise ValueError(f"model path {p} is a file; expected a training run, a checkpoint or a transformers folder")
    if is_training_run(p):
        return checkpoint_lm(p, batch_size, device, max_length, trust_sharded=trust_sharded)
    if (p / "config.json").is_file():
        return hf_lm(p, batch_size, device, max_length)
    raise ValueError(f"{p} is neither a training run or checkpoint (expected manifest.json, or checkpoints/step_*/ "
                     "from llmbook train) nor a transformers model folder (expected config.json, weights and "
                     "tokenizer)")


def run_lms(run_dir: str | Path, batch_size: int = 8, device: str = "cpu") -> dict[int, LLMBookLM]:
    """Every kept checkpoint of a run by step, plus step 0: the initial weights drawn from the run's seed as the
    trainer draws them (the untrained baseline with the same architecture and tokenizer)."""
    import torch

    from llmbook.model import GPT
    from llmbook.train import checkpoint as ckpt
    from llmbook.train.config import RunConfig

    root = Path(run_dir) / "checkpoints"
    found = ckpt.list_checkpoints(root)
    if not found:
        raise FileNotFoundError(f"no checkpoints in {root}")
    with torch.random.fork_rng(devices=[]):  # building models draws random weights: leave the caller's generator alone
        lms = {int(path.name[len(ckpt.PREFIX):]): checkpoint_lm(path, batch_size, device) for path in found}
        last = lms[max(lms)]
        cfg = RunConfig.from_dict(ckpt.info(found[-1]).config, source=str(found[-1] / "config.json"))
        torch.manual_seed(cfg.train.seed)  # the trainer seeds, then builds the model: the same draw gives step 0
        init = GPT(cfg.model_config())
    return {0: LLMBookLM(init, last.tokenizer, eot_id=last.eot_id, batch_size=batch_size, device=device), **lms}


def run_dir_for(cfg) -> Path:
    """Where `cached_run` keeps a run: `runs/` next to the trainer's prepared shards, named by the config's hash."""
    from llmbook.train.data import cache_root

    key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cfg.data) / "runs" / f"{'+'.join(cfg.data.datasets)}-{key}"


def _complete(run: Path, steps: int) -> bool:
    from llmbook.train import checkpoint as ckpt

    last = ckpt.latest_valid(run / "checkpoints", log=lambda msg: None)
    return last is not None and last.name == ckpt.step_dir_name(steps) and (run / "metrics.jsonl").is_file()


def train_once(out: Path, steps: int, train: Callable[[Path], None]) -> Path:
    """`out` once it holds a run finished at `steps`; otherwise `train(folder)` into a temporary folder that is
    renamed to `out` when complete, so an interrupted run is never reused (shared by every cached run)."""
    from llmbook.fileio import replace_dir

    if _complete(out, steps):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        train(tmp)
        if not _complete(out, steps):  # another process may have finished the same run first
            replace_dir(tmp, out)  # over a stale, incomplete folder from elsewhere
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def cached_run(cfg, log: Callable[[str], None] = print) -> Path:
    """Train `cfg` with the book's trainer once and return the run directory; later calls reuse the finished run.

    Runs are cached like the trainer caches shards (`$LLMBOOK_CACHE`, keyed by the settings), by `train_once`.
    """
    from llmbook.train import Trainer

    return train_once(run_dir_for(cfg), cfg.train.steps, lambda folder: Trainer(cfg, folder, log=log).fit())


# The quick stand-in for the book's model: the `cpu-tiny` preset shortened as @sec-evaluation-checkpoints trains
# it, so every chapter that falls back to it reuses that one cached run.
BOOK_RUN = ("cpu-tiny", ("train.steps=80", "train.eval_every=20", "train.log_every=10", "checkpoint.every=20",
                         "checkpoint.keep=8"))


def held_out_documents(data_cfg) -> list[str]:
    """The documents that `llmbook.train.data.prepare` put in the validation split, as text (for bits per byte)."""
    from llmbook.data.pack import is_val_document
    from llmbook.train.data import documents

    if data_cfg.shard_dir:
        raise ValueError("[data] shard_dir: pre-packed shards do not record their documents' text")
    texts = (r["text"] for r in documents(data_cfg) if r["text"])
    return [t for i, t in enumerate(texts) if is_val_document(i, data_cfg.val_fraction)]
