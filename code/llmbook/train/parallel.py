"""Data parallelism: process groups, DDP and FSDP2 wrapping, gradient-sync control (@sec-scale-parallel).

The same entry point runs as one process (`python -m llmbook.train`) or under `torchrun`, which sets
RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; NCCL is used on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llmbook.train.config import ParallelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Set on every node of a multi-node run with --max-restarts: torchrun's c10d rendezvous shares one TCPStore with
# the workers and keeps it across restarts, but each node counts restarts itself, so after one node's failure the
# restarted workers can read stale addresses and hang (pytorch/pytorch#135712). A fresh store per round avoids it.
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(mode: str, device: str) -> DistInfo:
    """Join the process group when launched by torchrun (or start a 1-process group for mode ddp/fsdp).

    Under torchrun the environment names the rank and rendezvous; alone, a parallel mode still gets a
    world of one (so FSDP2 checkpoints can be written and resumed at world size 1).
    """
    backend = "nccl" if device == "cuda" else "gloo"
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched and mode == "none" and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError("launched by torchrun with several processes but parallel.mode=none; use --parallel ddp or fsdp")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if launched and mode != "none":
            dist.init_process_group(backend)
        elif mode != "none":
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    return DistInfo(rank, world, local_rank, dev)


def wrap_model(model: nn.Module, cfg: ParallelConfig, info: DistInfo, param_dtype: str = "fp32") -> nn.Module:
    """Return the module the training loop calls: the model itself, DDP(model), or FSDP2-sharded model.

    FSDP2 (`fully_shard`) is applied to each transformer block and then to the root, so a block's
    parameters are all-gathered just before it runs and freed after (`reshard_after_forward=True`,
    ZeRO-3), or kept until the backward (`False`, closer to ZeRO-2) [@zhao2023fsdp]. The gathered
    parameters are cast to `param_dtype` for compute while the sharded fp32 copy stays the master.
    """
    if cfg.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if cfg.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[cfg.reduce_dtype])
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError("FSDP2 needs a model with an nn.ModuleList `blocks` to shard block by block")
        for block in blocks:
            fully_shard(block, mp_policy=policy, reshard_after_forward=cfg.reshard_after_forward)
        fully_shard(model, mp_policy=policy, reshard_after_forward=cfg.reshard_after_forward)
    return model


def grad_sync(model: nn.Module, mode: str, sync: bool, fsdp_no_sync: bool = False):
    """Context for one micro-step: skip the gradient reduction except on the last micro-batch.

    DDP's `no_sync()` accumulates the full gradients locally, so accumulation costs one all-reduce per
    optimizer step. FSDP2's `set_requires_gradient_sync(False)` defers the reduce-scatter too, but then
    every block keeps unsharded gradients until the last micro-batch (the ZeRO-2/3 gradient saving is
    lost) and, with `reshard_after_forward=True`, the parameter all-gathers still run every micro-batch;
    so for FSDP it is opt-in (`parallel.fsdp_no_sync`), as in torchtitan.
    """
    if mode == "ddp" and not sync:
        return model.no_sync()
    if mode == "fsdp":
        model.set_requires_gradient_sync(sync or not fsdp_no_sync)
    return contextlib.nullcontext()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from rank `src` to every rank (used for small control decisions)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(config: str, out_dir: str, nproc: int, *args: str, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, max_restarts: int = 0) -> list[str]:
    """The command that trains `config` on `nproc` processes per node: `torchrun ... -m llmbook.train ...`.

    One node uses `--standalone`. Several nodes (`nnodes > 1`) run the same command on every node, which joins a
    c10d rendezvous at `rdzv_endpoint` (HOST:PORT of one node); torchrun assigns the ranks. With
    `max_restarts`, torchrun restarts every worker after a failure, and `--resume` (add it to `args`) makes the
    restarted job continue from the last checkpoint; run it with `RESTART_ENV` in the environment of every node
    (@sec-scale-parallel).
    """
    import sys

    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError("a multi-node run needs rdzv_endpoint=HOST:PORT")
    if nnodes == 1 and not rdzv_endpoint:
        launcher = ["--standalone"]
    else:
        launcher = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id=llmbook"]
    if max_restarts:
        launcher.append(f"--max-restarts={max_restarts}")
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}",
            "-m", "llmbook.train", "--config", str(config), "--out", str(out_dir), *args]


def launch(config: str, out_dir: str, nproc: int, *args: str, timeout: float = 600) -> str:
    """Run `torchrun_command` to completion (one thread per process) and return its output; raise on failure."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(torchrun_command(config, out_dir, nproc, *args), env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout
