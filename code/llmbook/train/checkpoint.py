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

import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save, save_file
from torch import nn

from llmbook.fileio import atomic_write, fsync_dir
from llmbook.fileio import file_sha256

MANIFEST = "manifest.json"
PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or fails its checksums."""


CORRUPT = ".corrupt"


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` atomically (llmbook.fileio.atomic_write) and make the rename durable."""
    atomic_write(path, lambda f: f.write(text))
    fsync_dir(path.parent)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then every directory bottom-up, so a later rename publishes durable data."""
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
    fsync_dir(path)


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
    if torch.cuda.is_available():  # only this rank's device: other GPUs belong to other ranks
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states saved by `rng_state`."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())


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
                    extra_files: list[Path] = (), consolidated: bool = False) -> Path:
    """Write checkpoint `step` under `root` atomically on every rank; return its final directory.

    `sharded=True` (FSDP2) saves model and optimizer with `torch.distributed.checkpoint`, one shard per
    rank; otherwise rank 0 writes the full model (safetensors) and optimizer state. Every rank writes
    its own trainer state; rank 0 copies `extra_files` (the tokenizer) in. Rank 0 then checksums everything, writes the manifest, renames the directory
    into place and prunes to the newest `keep` checkpoints.
    """
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    try:
        return _save(root, step, final, tmp, model, optimizer, trainer_state, config, sharded, keep, extra_files,
                     consolidated)
    except Exception as err:  # a full disk, a vanished folder: drop the partial copy, keep the previous ones
        reason = _write_failure(err, root, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in list_checkpoints(root) if p != final]
        kept = (f"the previous checkpoint {previous[-1]} is intact: free some space and rerun with --resume"
                if previous else "no earlier checkpoint exists")
        raise CheckpointError(f"could not write checkpoint {final.name} in {root} ({reason}); {kept}") from None


def _write_failure(err: BaseException, root: Path, tmp: Path) -> str:
    """What went wrong in a checkpoint write, in one line: the file being written (the newest in `tmp`), the
    error, and the free space left on the device."""
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    else:  # torch's C++ writer: "[enforce fail at inline_container.cc:NNN] . unexpected pos 206400 vs 206292"
        detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", (str(err).strip().splitlines() or [""])[0])
        reason = f"write failed: {detail}" if detail else f"write failed ({type(err).__name__})"
    try:
        partial = max((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
        reason = f"{partial.relative_to(tmp).as_posix()}: {reason}"
    except (OSError, ValueError):  # nothing written yet
        pass
    try:
        return f"{reason}; {shutil.disk_usage(root).free / 2**20:.1f} MiB free on that device"
    except OSError:
        return reason


def _save(root: Path, step: int, final: Path, tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
          trainer_state: dict[str, Any], config: dict[str, Any], sharded: bool, keep: int,
          extra_files: list[Path], consolidated: bool) -> Path:
    rank, world = _rank(), _world()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        if consolidated:  # a collective: every rank gathers, rank 0 keeps the CPU copy
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if rank == 0:
                save_file({k: v.detach().clone().contiguous() for k, v in full.items()}, str(tmp / "model.safetensors"),
                          metadata={"step": str(step)})
    elif rank == 0:
        save_file(full_model_state(model), str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(to_safe(trainer_state), tmp / f"rank_{rank:05d}.pt")
    fsync_tree(tmp)  # each rank makes its own files durable before rank 0 may publish them
    _barrier()
    if rank == 0:
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True))
        for extra in extra_files:
            shutil.copyfile(extra, tmp / Path(extra).name)
        fsync_tree(tmp)
        files = {path.relative_to(tmp).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
                 for path in sorted(p for p in tmp.rglob("*") if p.is_file())}
        manifest = {"step": step, "world_size": world, "format": "dcp" if sharded else "full", "files": files,
                    "consolidated": bool(sharded and consolidated)}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        prune(root, keep, newest=final)
    _barrier()
    return final


def prune(root: Path, keep: int, newest: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints and any stale `.tmp` directories; return what was removed.

    `newest` (the checkpoint just written) is never deleted, even when older-numbered directories
    outrank it; `.corrupt` directories are kept for inspection and never counted.
    """
    removed = remove_partial(root)
    found = list_checkpoints(root)
    if newest is not None:
        found = [p for p in found if p != newest] + [newest]
    old = [p for p in found[:-keep] if p != newest]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return removed + old


def remove_partial(root: Path) -> list[Path]:
    """Delete the `step_X.tmp` directories a crash or a full disk left behind (never valid); return them."""
    removed = [p for p in root.glob(f"{PREFIX}*.tmp") if p.is_dir()] if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def quarantine_newer(root: Path, step: int) -> list[Path]:
    """Rename every checkpoint newer than `step` to `step_X.corrupt` (after resuming from an older one).

    Those directories failed verification; leaving them would let the next prune keep them and delete
    the good checkpoints written after the resume. The renamed copies stay for inspection.
    """
    moved = []
    for path in list_checkpoints(root):
        if int(path.name[len(PREFIX):]) > step:
            target = path.with_name(path.name + CORRUPT)
            if target.exists():
                shutil.rmtree(target)
            os.replace(path, target)
            moved.append(target)
    if moved:
        fsync_dir(root)
    return moved


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
    manifest = read_manifest(path)
    for rel, meta in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"{path.name}: missing file {rel}")
        if file.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{path.name}: {rel} has {file.stat().st_size} bytes, manifest says {meta['bytes']}")
        if file_sha256(file) != meta["sha256"]:
            raise CheckpointError(f"{path.name}: {rel} fails its sha256 checksum (corrupted)")
    return manifest


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of checkpoint `path`, checked field by field (a planted or damaged one raises CheckpointError)."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path.name}: unreadable {MANIFEST} ({' '.join(str(err).split())})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path.name}: {MANIFEST} is not a JSON object")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path.name}: {MANIFEST} field 'files' is {'missing' if files is None else 'malformed'} "
                              f"(got {json.dumps(files)[:60]}); expected a table of file -> bytes, sha256")
    for rel, meta in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts:
            raise CheckpointError(f"{path.name}: {MANIFEST} files lists {rel!r}, outside the checkpoint")
        if not (isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and isinstance(meta.get("sha256"), str)):
            raise CheckpointError(f"{path.name}: {MANIFEST} files[{rel!r}] is malformed (got {json.dumps(meta)[:60]}); "
                                  "expected {\"bytes\": int, \"sha256\": str}")
    for key, kind in (("step", int), ("world_size", int), ("format", str)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise CheckpointError(f"{path.name}: {MANIFEST} field {key!r} is missing or malformed "
                                  f"(got {json.dumps(manifest.get(key))[:60]})")
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

# What every rank_NNNNN.pt holds (Trainer.trainer_state), checked before a resume uses it.
TRAINER_STATE = ("step", "tokens_seen", "rng", "loader", "scaler", "guard", "world_size")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    sharded: bool, trust_sharded: bool = False) -> dict[str, Any]:
    """Load model (and optimizer) state from checkpoint `path` on every rank; return this rank's trainer state.

    The loader follows the caller's configuration, never a field of the checkpoint's own files: a resume of an
    FSDP2 run (`sharded=True`) reads the DCP shards, resharded to the current world size; any other resume reads
    `model.safetensors` and `optimizer.pt` (tensors only). Loading weights only (`optimizer=None`: generate,
    export, eval) reads the consolidated `model.safetensors` when the checkpoint has one. DCP's metadata file is
    a pickle, which runs code from the file, so every path that reads it (resume included) refuses unless
    `trust_sharded=True` (@sec-scale-checkpoint).
    When the world size changed, ranks without a saved trainer state take rank 0's (RNG streams and data
    order then differ from an uninterrupted run, which the trainer reports).
    """
    manifest = read_manifest(path)
    full = path / "model.safetensors"
    if optimizer is None and full.is_file():
        _load_weights(path, model, full)
    elif sharded or optimizer is None:
        if not (path / "dcp" / ".metadata").is_file():
            raise CheckpointError(f"{path.name} holds no sharded (DCP) state: it was written by a run with "
                                  "parallel.mode=none or ddp; resume it with that mode" if optimizer is not None else
                                  f"{path.name} has neither model.safetensors nor sharded (DCP) state")
        if not trust_sharded:
            what = "resuming from" if optimizer is not None else "loading"
            raise CheckpointError(f"{what} {path.name} reads its sharded (DCP) state, whose metadata is a pickle: "
                                  "reading it runs code from the file; pass --trust-sharded only for checkpoints "
                                  "you wrote yourself")
        _load_dcp(path, model, optimizer)
    else:
        if not full.is_file() or not (path / "optimizer.pt").is_file():
            raise CheckpointError(f"{path.name} holds sharded (FSDP2) training state; resume it with "
                                  "parallel.mode=fsdp (and --trust-sharded)")
        _load_weights(path, model, full)
        try:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{path.name}: optimizer.pt does not fit this model's optimizer "
                                  f"({' '.join(str(err).split())[:120] or type(err).__name__})") from None
    rank = _rank()
    own = path / f"rank_{rank:05d}.pt"
    state_file = own if own.is_file() else path / "rank_00000.pt"
    trainer_state = from_safe(torch.load(state_file, weights_only=True))
    missing = [k for k in TRAINER_STATE if not isinstance(trainer_state, dict) or k not in trainer_state]
    if missing or not all(type(trainer_state[k]) is int for k in ("step", "tokens_seen")):
        what = f"has no {missing[0]!r}" if missing else "has a step or token count that is not an integer"
        raise CheckpointError(f"{path.name}: {state_file.name} {what}; it is not trainer state written by this "
                              "version of llmbook")
    trainer_state["world_size_changed"] = manifest["world_size"] != _world()
    return trainer_state


def _load_weights(path: Path, model: nn.Module, file: Path) -> None:
    """Load `model.safetensors` into `model`, after checking every tensor's name and shape against it."""
    from safetensors import safe_open

    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(file), framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type for a damaged header
        raise CheckpointError(f"{file}: not a readable safetensors file ({' '.join(str(err).split())[:120]})") from None
    if saved != mine:
        bad = sorted(set(saved) ^ set(mine)) or [k for k in mine if saved[k] != mine[k]]
        name = bad[0]
        detail = (f"{name} has shape {list(saved[name])} in the checkpoint and {list(mine[name])} in this model"
                  if name in saved and name in mine else
                  f"{name} is only in the {'checkpoint' if name in saved else 'model'}")
        raise CheckpointError(f"{path.name} was written for a different model shape ({detail}{_config_diff(path, model)}); "
                              "use the checkpoint's [model] settings or a new output directory")
    model.load_state_dict(load_file(str(file)))


def _config_diff(path: Path, model: nn.Module) -> str:
    """'; [model] n_layer: 2 in the checkpoint, 3 now' from the checkpoint's config.json, when it says."""
    from llmbook.train.config import RunConfig

    mine = getattr(getattr(model, "config", None), "to_dict", lambda: {})()
    try:
        saved = RunConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8"))).model_config().to_dict()
    except (OSError, ValueError, TypeError):
        return ""
    diff = [f"{k}: {saved[k]!r} in the checkpoint, {mine[k]!r} now" for k in mine
            if k in saved and saved[k] != mine[k] and k not in ("extra", "dropout")]
    return "; [model] " + ", ".join(diff) if diff else ""


def _load_dcp(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Read the DCP shards into `model` (and `optimizer`), resharding to the current world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if optimizer is None:
        state = {"model": model.state_dict()}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(path / "dcp"))
    except (Exception, CheckpointException) as err:  # DCP collects each rank's failure into a CheckpointException
        last = ([line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__])[-1]
        raise CheckpointError(f"{path.name}: cannot load its sharded (DCP) state into this model ({last[:200]})"
                              f"{_config_diff(path, model)}") from None
    if optimizer is None:
        model.load_state_dict(state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def consolidate(path: str | Path, model: nn.Module, out_file: str | Path, trust_sharded: bool = False) -> Path:
    """Load any checkpoint (full or DCP-sharded) into an unsharded `model` and write one safetensors file."""
    ckpt = resolve(path)
    with warnings.catch_warnings():  # DCP announces that it reads a sharded checkpoint in one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_checkpoint(ckpt, model, None, sharded=False, trust_sharded=trust_sharded)
    state = full_model_state(model)
    return atomic_write(out_file, lambda f: f.write(save(state)), mode="wb")


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
    manifest = read_manifest(ckpt)
    try:
        config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{ckpt / 'config.json'}: unreadable run config ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{ckpt / 'config.json'}: not a JSON object")
    return CheckpointInfo(ckpt, manifest["step"], manifest["world_size"], manifest["format"], config)
