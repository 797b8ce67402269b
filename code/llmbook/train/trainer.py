"""The training loop: accumulation, clipping, mixed precision, evaluation, logging, guard, checkpoints
(@sec-scale-trainer)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from llmbook.fileio import output_dir, run_lock
from llmbook.progress import progress_bar
from llmbook.train import checkpoint as ckpt
from llmbook.train.config import RunConfig
from llmbook.train.optim import build_optimizer, lr_at, set_lr
from llmbook.train.parallel import (DTYPES, DistInfo, all_reduce_mean, broadcast_object, grad_sync,
                                    init_distributed, wrap_model)


class Loader(Protocol):
    """What the trainer needs from a data loader (llmbook.data.pack.TokenLoader has this shape)."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


# (split, rank, world_size, seed) -> loader
LoaderFactory = Callable[[str, int, int, int], Loader]


class Objective(Protocol):
    """A loss other than the model's own next-token cross-entropy (reward model, DPO, GRPO: @sec-finetune).

    Called as `objective(module, x, y)` on a micro-batch; returns the loss to minimise and a dict of scalar
    metrics that the trainer logs next to it (and, prefixed with `val_`, for the validation batches).
    """

    def __call__(self, module: nn.Module, x: Any, y: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors in a tuple, list or dict of them, to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def n_tokens(batch: Any) -> int:
    """Token ids in a batch input: the elements of its integer tensors."""
    if isinstance(batch, torch.Tensor):
        return batch.numel() if not batch.is_floating_point() else 0
    if isinstance(batch, (tuple, list)):
        return sum(n_tokens(b) for b in batch)
    if isinstance(batch, dict):
        return sum(n_tokens(b) for b in batch.values())
    return 0


class TrainingDiverged(RuntimeError):
    """Raised when the loss or gradients are non-finite or spiking and the guard says stop."""


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; refuse 'cuda' without a GPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("[train] device='cuda' but no CUDA device is available")
    return name


def memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: allocated CUDA memory on a GPU, peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward instead of storing them (@sec-scale-memory)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-normaliser of the softmax, (log Z)^2, which PaLM adds (x 1e-4) to keep logits from drifting.

    Cross-entropy is invariant to adding a constant to every logit, so nothing stops log Z from wandering
    far from zero, where bf16 rounding of large logits hurts; this term pins it [@chowdhery2022palm].
    """
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


class MetricsLog:
    """Append-only JSONL log, one object per line, flushed after each record (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool, keep_until: int, log: Callable[[str], None] = print) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            self._truncate(keep_until, log)

    def _truncate(self, step: int, log: Callable[[str], None]) -> None:
        """Drop records after `step`: a resumed run rewrites the steps the crashed run did not checkpoint."""
        if not self.path.exists():
            return
        kept = [json.dumps(r) for r in read_metrics(self.path, log) if r.get("step", 0) <= step]
        ckpt.atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
            except OSError as err:  # a full disk: name the file (a failed write() names none)
                raise OSError(err.errno, err.strerror, str(self.path)) from None


def read_metrics(path: str | Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file into a list of records, skipping (and reporting) a last line torn by a crash."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#x} at offset {err.start}); "
                         "not a metrics log written by the trainer") from None
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON (only a torn last line is tolerated)") from None
            log(f"{path}: skipped a torn last line ({len(line)} characters)")
            continue
        if not isinstance(records[-1], dict):
            raise ValueError(f"{path}: line {i + 1} is {line[:40]!r}, not a JSON object; not a metrics log written by "
                             "the trainer")
    return records


class Trainer:
    """Train a model with the settings of a RunConfig, writing `metrics.jsonl` and `checkpoints/` to `out_dir`.

    `model` is an unwrapped nn.Module whose `forward(idx, targets)` returns `(logits, loss)` and which
    holds its transformer blocks in `model.blocks`; by default a `llmbook.model.GPT` is built from
    the config. `loaders(split, rank, world_size, seed)` returns a loader; by default the run's corpus
    is tokenized and packed with `llmbook.train.data`. The main process locks `out_dir` from construction
    until the run ends (`fit` reaches `train.steps`, raises, or `close()`), so a second writer is refused.
    Resuming an FSDP2 run reads DCP's pickled metadata and needs `trust_sharded=True`. An `objective` replaces
    the model's own loss (fine-tuning objectives, @sec-finetune); `extra_files` are copied into every
    checkpoint (tokenizer, chat template).
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, model: nn.Module | None = None,
                 loaders: LoaderFactory | None = None, resume: bool = False, log: Callable[[str], None] = print,
                 trust_sharded: bool = False, objective: Objective | None = None,
                 extra_files: list[Path] | tuple[Path, ...] = ()):
        self.cfg, self.out_dir, self.trust_sharded = cfg, Path(out_dir), trust_sharded
        device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(cfg.parallel.mode, device)
        self.log = log if self.dist.is_main else (lambda msg: None)
        output_dir(self.out_dir, "output directory")
        self._lock = run_lock(self.out_dir, log=self.log) if self.dist.is_main else None
        try:
            self._setup(model, loaders, resume, device, objective, extra_files)
        except BaseException:
            self.close()
            raise

    def _setup(self, model: nn.Module | None, loaders: LoaderFactory | None, resume: bool, device: str,
               objective: Objective | None, extra_files: list[Path] | tuple[Path, ...]) -> None:
        cfg = self.cfg
        if cfg.train.gpu:
            from llmbook.costs import get_gpu

            get_gpu(cfg.train.gpu)  # an unknown name fails now, not at the first log line
        if cfg.parallel.mode == "fsdp" and cfg.train.precision == "fp16":
            raise ValueError("[train] precision='fp16' needs a sharded grad scaler; use 'bf16' with parallel.mode='fsdp'")
        self.ckpt_root = self.out_dir / "checkpoints"
        if loaders is None:
            from llmbook.train.data import token_loaders

            loaders = token_loaders(cfg.data, main=self.dist.is_main)
        self.loaders = loaders
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        if model is None:
            from llmbook.model import GPT

            model = GPT(cfg.model_config())
        self.model = model.to(self.dist.device)
        if cfg.train.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        if cfg.train.compile:
            for block in self.model.blocks:
                block.compile()
        self.module = wrap_model(self.model, cfg.parallel, self.dist, param_dtype=cfg.train.precision)
        self.optimizer = build_optimizer(self.model, cfg.optim, fused=True if device == "cuda" else None)
        self.scaler = torch.amp.GradScaler(device, enabled=cfg.train.precision == "fp16" and cfg.parallel.mode != "fsdp")
        self.train_loader = loaders("train", self.dist.rank, self.dist.world_size, cfg.train.seed)
        tokenizer = Path(getattr(self.train_loader, "shard_dir", "")) / "tokenizer.json"
        self.extra_files = ([tokenizer] if tokenizer.is_file() else []) + [Path(f) for f in extra_files]
        self.objective = objective
        self.step, self.tokens_seen = 0, 0
        self.guard = {"ema": 0.0, "count": 0, "bad_in_a_row": 0, "skipped": 0}
        torch.manual_seed(cfg.train.seed + self.dist.rank)  # per-rank stream for dropout and sampling
        if resume:
            self._resume()
        elif ckpt.list_checkpoints(self.ckpt_root):
            raise ValueError(f"{self.ckpt_root} already holds checkpoints; resume, or choose a new output directory")
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", self.dist.is_main, keep_until=self.step, log=self.log)

    def close(self) -> None:
        """Release the output-directory lock (the end of `fit` and process exit do this too)."""
        if self._lock is not None:
            self._lock.release()

    # ------------------------------------------------------------------ state
    @property
    def sharded(self) -> bool:
        return self.cfg.parallel.mode == "fsdp"

    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "rng": ckpt.rng_state(),
                "loader": self.train_loader.state_dict(), "scaler": self.scaler.state_dict(),
                "guard": dict(self.guard), "world_size": self.dist.world_size}

    def save(self) -> Path:
        """Write a checkpoint of the current step (all ranks must call this); the last one of an FSDP2 run
        also holds consolidated weights, so generate/export never read DCP's pickled metadata."""
        path = ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, self.trainer_state(),
                                    self.cfg.to_dict(), sharded=self.sharded, keep=self.cfg.checkpoint.keep,
                                    extra_files=self.extra_files,
                                    consolidated=self.sharded and self.step == self.cfg.train.steps)
        self.log(f"saved checkpoint {path.name}")
        return path

    def _resume(self) -> None:
        found = ckpt.latest_valid(self.ckpt_root, log=self.log) if self.dist.is_main else None
        found = broadcast_object(str(found) if found else None)
        if self.dist.is_main:  # checkpoints newer than the one resumed failed verification: set them aside
            resumed = int(Path(found).name[len(ckpt.PREFIX):]) if found else -1
            for path in ckpt.quarantine_newer(self.ckpt_root, resumed):
                self.log(f"renamed unusable {path.name[:-len(ckpt.CORRUPT)]} to {path.name} (kept for inspection)")
            for path in ckpt.remove_partial(self.ckpt_root):  # partial writes of a crash or a full disk free their space
                self.log(f"removed the partial checkpoint {path.name}")
        if found is None:
            self.log(f"no valid checkpoint in {self.ckpt_root}; starting from step 0")
            return
        state = ckpt.load_checkpoint(Path(found), self.model, self.optimizer, sharded=self.sharded,
                                     trust_sharded=self.trust_sharded)
        if state["step"] > self.cfg.train.steps:
            raise ValueError(f"{Path(found).name} is at step {state['step']}, past [train] steps={self.cfg.train.steps}: "
                             f"nothing to train; raise train.steps to continue the run")
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.guard = state["guard"]
        self.scaler.load_state_dict(state["scaler"])
        if not state["world_size_changed"]:
            self.train_loader.load_state_dict(state["loader"])
            ckpt.set_rng_state(state["rng"])
        else:
            self._reshard_loader(state)
            torch.manual_seed(self.cfg.train.seed + self.step + self.dist.rank)
            self.log(f"world size changed from {state['world_size']} to {self.dist.world_size}: weights and "
                     "optimizer state were resharded; dropout RNG streams restart from a new seed")
        self.log(f"resumed from {Path(found).name} at step {self.step}")
        if self.step == self.cfg.train.steps:
            self.log(f"the run is already complete ([train] steps={self.step}); nothing to train")

    def _reshard_loader(self, state: dict[str, Any]) -> None:
        """Continue the data stream after a world-size change.

        The packed loader orders windows globally, so with the same global batch (micro-batch x world
        size) its position carries over exactly; otherwise the stream restarts from a new seed.
        """
        saved = state["loader"]
        mine = self.train_loader.state_dict()
        if saved.get("batch_size", 0) * saved.get("world_size", 0) == mine["batch_size"] * mine["world_size"]:
            self.train_loader.load_state_dict({**saved, "batch_size": mine["batch_size"],
                                               "world_size": mine["world_size"]})
        else:
            self.log("global batch changed: the data stream restarts from a new seed")
            self.train_loader = self.loaders("train", self.dist.rank, self.dist.world_size,
                                             self.cfg.train.seed + self.step)

    # ------------------------------------------------------------------ one step
    def autocast(self):
        """bf16/fp16 autocast for single-process and DDP runs (FSDP2 casts through its MixedPrecisionPolicy)."""
        if self.cfg.train.precision == "fp32" or self.sharded:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=DTYPES[self.cfg.train.precision])

    def _loss(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """(loss, logits or None, metrics) of one micro-batch: the model's cross-entropy, or the objective's."""
        if self.objective is None:
            logits, loss = self.module(x, y)
            return loss, logits, {}
        loss, metrics = self.objective(self.module, x, y)
        return loss, None, metrics

    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns loss, grad norm, lr and objective metrics."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg.optim, cfg.train.steps)
        set_lr(self.optimizer, lr)
        accum = cfg.train.grad_accum
        loss_sum = torch.zeros((), device=self.dist.device)
        metrics: dict[str, float] = {}
        tokens = 0
        for micro in range(accum):
            x, y = self.train_loader.next_batch()
            tokens += n_tokens(x)
            x, y = to_device(x, self.dist.device), to_device(y, self.dist.device)
            with grad_sync(self.module, cfg.parallel.mode, sync=micro == accum - 1,
                           fsdp_no_sync=cfg.parallel.fsdp_no_sync), self.autocast():
                loss, logits, extra = self._loss(x, y)
                objective = loss + cfg.train.z_loss * z_loss(logits) if cfg.train.z_loss and logits is not None else loss
            self.scaler.scale(objective / accum).backward()
            loss_sum += loss.detach().float()
            for k, v in extra.items():  # this rank's micro-batches
                metrics[k] = metrics.get(k, 0.0) + float(v) / accum
        loss_t = all_reduce_mean(loss_sum / accum)
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        loss, grad_norm = torch.stack([loss_t, norm.float().to(loss_t.device)]).tolist()  # one host sync
        reason = self._bad_step_reason(loss, grad_norm)
        if reason:
            self.optimizer.zero_grad(set_to_none=True)
            self.guard["bad_in_a_row"] += 1
            self.guard["skipped"] += 1
            if cfg.train.on_bad_step == "stop" or self.guard["bad_in_a_row"] > cfg.train.max_bad_steps:
                raise TrainingDiverged(f"step {self.step + 1}: {reason}; stopping (last good checkpoint is kept in "
                                       f"{self.ckpt_root})")
            self.log(f"step {self.step + 1}: {reason}; update skipped")
            if self.scaler.is_enabled():
                self.scaler.update()
        else:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled() and self.scaler.get_scale() < scale:
                reason = f"fp16 gradients overflowed at loss scale {scale:g}; the scaler skipped the update"
                self.guard["skipped"] += 1  # the scaler lowers the scale and skips the update itself
            else:
                self.guard["bad_in_a_row"] = 0
                self.guard["count"] += 1
                self.guard["ema"] += (loss - self.guard["ema"]) / min(self.guard["count"], 50)
        self.step += 1
        self.tokens_seen += tokens * self.dist.world_size
        return {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped": bool(reason), "metrics": metrics}

    def _bad_step_reason(self, loss: float, grad_norm: float) -> str:
        """Why this step must not update the weights ('' when it is fine).

        With fp16 the grad scaler handles overflowing gradients itself (skips and lowers the scale).
        """
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            return f"gradient norm is {grad_norm}"
        factor = self.cfg.train.spike_factor
        if factor and self.guard["count"] >= 20 and loss > factor * self.guard["ema"]:
            return f"loss spike {loss:.3f} > {factor} x running mean {self.guard['ema']:.3f}"
        return ""

    # ------------------------------------------------------------------ evaluation and the loop
    def evaluate(self) -> float:
        """Mean loss over `eval_batches` validation batches (a fresh, seeded loader: the same batches every time)."""
        return self.validate()["val_loss"]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """`val_loss` and the objective's metrics (prefixed `val_`) averaged over the validation batches."""
        self.module.eval()
        loader = self.loaders("val", self.dist.rank, self.dist.world_size, self.cfg.train.seed)
        total = torch.zeros((), device=self.dist.device)
        metrics: dict[str, float] = {}
        n = self.cfg.train.eval_batches
        for _ in range(n):
            x, y = loader.next_batch()
            with self.autocast():
                loss, _, extra = self._loss(to_device(x, self.dist.device), to_device(y, self.dist.device))
            total += loss.float()
            for k, v in extra.items():
                metrics[f"val_{k}"] = metrics.get(f"val_{k}", 0.0) + float(v) / n
        self.module.train()
        return {"val_loss": all_reduce_mean(total / n).item(), **metrics}

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation from llmbook.costs, when the GPU is named in `train.gpu`."""
        if not self.cfg.train.gpu:
            return None
        from llmbook import costs

        peak = costs.get_gpu(self.cfg.train.gpu).peak_bf16 * self.dist.world_size
        return costs.mfu(tokens_per_s, self.cfg.model_config(), self.cfg.data.block_size, peak)

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train until `train.steps` (or stop early after step `until`), logging, evaluating and checkpointing.

        Returns the records logged by this call. `until` leaves the schedule untouched: it is how the
        book and the tests interrupt a run to resume it later.
        """
        cfg, records = self.cfg, []
        stop = cfg.train.steps if until is None else min(until, cfg.train.steps)
        self.module.train()
        bar = progress_bar(total=cfg.train.steps, initial=self.step, desc="train", unit="step",
                           progress=self.dist.is_main)
        train_time, tokens_at_tick = 0.0, self.tokens_seen  # training steps only: eval and saves are not timed
        try:
            while self.step < stop:
                start = time.perf_counter()
                out = self.train_step()
                train_time += time.perf_counter() - start
                bar.update(1)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    tokens_per_s = (self.tokens_seen - tokens_at_tick) / max(train_time, 1e-9)
                    train_time, tokens_at_tick = 0.0, self.tokens_seen
                    record = {"step": self.step, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                              "tokens": self.tokens_seen, "tokens_per_s": tokens_per_s, "mfu": self.mfu(tokens_per_s),
                              "memory_mb": memory_mb(self.dist.device), "skipped_steps": self.guard["skipped"]}
                    if self.scaler.is_enabled():
                        record["loss_scale"] = self.scaler.get_scale()
                    record.update(out["metrics"])
                    self.metrics.write(record)
                    records.append(record)
                    bar.set_postfix(loss=f"{out['loss']:.3f}")
                if cfg.train.eval_every and (self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps):
                    record = {"step": self.step, **self.validate()}
                    self.metrics.write(record)
                    records.append(record)
                if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0) or self.step == cfg.train.steps:
                    self.save()
        except BaseException:
            self.close()
            raise
        finally:
            bar.close()
        if self.step >= cfg.train.steps:
            self.close()
        return records


def run(cfg: RunConfig, out_dir: str | Path, resume: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    """Build a Trainer and fit it, leaving the process group on exit."""
    from llmbook.train.parallel import cleanup

    try:
        trainer = Trainer(cfg, out_dir, resume=resume, **kwargs)
        try:
            return trainer.fit()
        finally:
            trainer.close()
    finally:
        cleanup()
