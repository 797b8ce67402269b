"""Crash-safe checkpoints: atomic directories, sha256 manifests, keep-last-K, exact RNG and loader state
(@sec-scale-checkpoint).

Layout of one checkpoint, `checkpoints/step_00000100/`:

- `model.safetensors` + `optimizer.pt` (single process and DDP: full, replicated state written by rank 0), or
  `dcp/` (FSDP2: one shard file per rank written by `torch.distributed.checkpoint`, loadable at any world size);
- `rank_00000.pt`, ... : per-rank trainer state (step, RNG states, data-loader position, grad scaler);
- `config.json` (the run config) and, written last, `manifest.json` with the size and sha256 of every file.

The directory is assembled as `step_00000100.tmp` and renamed into place only when complete, so a crash
leaves either the previous checkpoints or a `.tmp` directory that is ignored and cleaned up.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

MANIFEST = "manifest.json"
PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or fails its checksums."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or directory to stable storage (a rename is only durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` atomically: temp file in the same directory, flush + fsync, os.replace."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------- RNG state (weights_only-safe containers)

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors, ints and tuples only."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states saved by `rng_state`."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_safe(obj: Any) -> Any:
    """Turn NumPy arrays and scalars into tensors and Python numbers so `torch.load(weights_only=True)` reads them."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def from_safe(obj: Any) -> Any:
    """Inverse of `to_safe`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_safe(v) for v in obj)
    return obj


# ---------------------------------------------------------------- writing

def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the model's tensors (tied weights become two equal tensors, as safetensors requires)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], config: dict[str, Any], sharded: bool, keep: int,
                    extra_files: list[Path] = ()) -> Path:
    """Write checkpoint `step` under `root` atomically on every rank; return its final directory.

    `sharded=True` (FSDP2) saves model and optimizer with `torch.distributed.checkpoint`, one shard per
    rank; otherwise rank 0 writes the full model (safetensors) and optimizer state. Every rank writes
    its own trainer state; rank 0 copies `extra_files` (the tokenizer) in. Rank 0 then checksums everything, writes the manifest, renames the directory
    into place and prunes to the newest `keep` checkpoints.
    """
    rank, world = _rank(), _world()
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    elif rank == 0:
        save_file(full_model_state(model), str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(to_safe(trainer_state), tmp / f"rank_{rank:05d}.pt")
    _barrier()
    if rank == 0:
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True))
        for extra in extra_files:
            shutil.copyfile(extra, tmp / Path(extra).name)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            fsync_path(path)
            files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {"step": step, "world_size": world, "format": "dcp" if sharded else "full", "files": files}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
        prune(root, keep)
    _barrier()
    return final


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints and any stale `.tmp` directories; return what was removed."""
    removed = [p for p in root.glob(f"{PREFIX}*.tmp") if p.is_dir()]
    removed += list_checkpoints(root)[:-keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ---------------------------------------------------------------- finding and verifying

def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoint directories under `root`, oldest first (temp directories excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def verify(path: Path) -> dict[str, Any]:
    """Return the manifest of checkpoint `path` after checking every file's size and sha256; raise CheckpointError."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path.name}: no {MANIFEST} (incomplete write)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path.name}: unreadable manifest ({err})") from None
    for rel, meta in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"{path.name}: missing file {rel}")
        if file.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{path.name}: {rel} has {file.stat().st_size} bytes, manifest says {meta['bytes']}")
        if sha256_file(file) != meta["sha256"]:
            raise CheckpointError(f"{path.name}: {rel} fails its sha256 checksum (corrupted)")
    return manifest


def latest_valid(root: Path, log=print) -> Path | None:
    """The newest checkpoint under `root` that passes `verify`, reporting each bad one skipped on the way."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify(path)
            return path
        except CheckpointError as err:
            log(f"checkpoint {err}; falling back to the previous one")
    return None


def resolve(path: str | Path) -> Path:
    """Accept a run directory, its `checkpoints/` folder or one checkpoint; return the newest valid checkpoint."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        verify(path)
        return path
    for root in (path / "checkpoints", path):
        found = latest_valid(root, log=lambda msg: warnings.warn(msg, stacklevel=2))
        if found is not None:
            return found
    raise FileNotFoundError(f"no valid checkpoint found in {path}")


# ---------------------------------------------------------------- reading

def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    sharded: bool) -> dict[str, Any]:
    """Load model (and optimizer) state from checkpoint `path` on every rank; return this rank's trainer state.

    A sharded (DCP) checkpoint is resharded to the current world size by `torch.distributed.checkpoint`.
    When the world size changed, ranks without a saved trainer state take rank 0's (RNG streams and data
    order then differ from an uninterrupted run, which the trainer reports).
    """
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    if manifest["format"] == "dcp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if optimizer is None:
            state = {"model": model.state_dict()}
            dcp.load(state, checkpoint_id=str(path / "dcp"))
            model.load_state_dict(state["model"])
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(path / "dcp"))
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        if sharded:
            raise CheckpointError(f"{path.name} holds full (non-FSDP) state; resume it with parallel.mode=none or ddp")
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rank = _rank()
    own = path / f"rank_{rank:05d}.pt"
    state_file = own if own.is_file() else path / "rank_00000.pt"
    trainer_state = from_safe(torch.load(state_file, weights_only=True))
    trainer_state["world_size_changed"] = manifest["world_size"] != _world()
    return trainer_state


def consolidate(path: str | Path, model: nn.Module, out_file: str | Path) -> Path:
    """Load any checkpoint (full or DCP-sharded) into an unsharded `model` and write one safetensors file."""
    ckpt = resolve(path)
    with warnings.catch_warnings():  # DCP announces that it reads a sharded checkpoint in one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_checkpoint(ckpt, model, None, sharded=False)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp{os.getpid()}")
    save_file(full_model_state(model), str(tmp))
    fsync_path(tmp)
    os.replace(tmp, out_file)
    return out_file


@dataclass
class CheckpointInfo:
    """What a checkpoint holds, read from its manifest and config (for `generate` and `export`)."""

    path: Path
    step: int
    world_size: int
    format: str
    config: dict[str, Any]


def info(path: str | Path) -> CheckpointInfo:
    """Resolve and describe a checkpoint."""
    ckpt = resolve(path)
    manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    return CheckpointInfo(ckpt, manifest["step"], manifest["world_size"], manifest["format"], config)
