"""DDP and FSDP2 with 2 gloo ranks on CPU match one process; FSDP2 checkpoints move across world sizes; two
torchrun launchers joined by a c10d rendezvous (two "nodes") match one process and recover from a lost node
with --max-restarts (@sec-scale-parallel).

Every run trains the same tiny GPT for 6 steps on the same global batch of 16 windows per step: one process
with micro-batch 8 and 2 accumulation steps, or 2 ranks with micro-batch 4 and 2 accumulation steps each
(exercising DDP's `no_sync`, and FSDP2 both with its default per-micro-batch reduce-scatter and with the
opt-in deferred one, `parallel.fsdp_no_sync`). Tolerances: losses 1e-5 absolute,
parameters 5e-5 absolute after 6 AdamW steps (float sums are reduced in a different order across ranks).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmbook.model import GPT
from llmbook.train import checkpoint as ckpt
from llmbook.train.config import load_config
from llmbook.train.parallel import RESTART_ENV, cleanup, launch, torchrun_command
from llmbook.train.trainer import Trainer, read_metrics
from train_fixtures import config_text, make_shards

pytestmark = pytest.mark.xdist_group("distributed")
ONE = ["data.batch_size=8"]  # overrides for world size 1; world size 2 uses the file's micro-batch of 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    shards = make_shards(tmp / "shards")
    cfg = tmp / "dist.toml"
    cfg.write_text(config_text(shards, train={"steps": 6, "grad_accum": 2, "eval_every": 3},
                               checkpoint={"every": 3, "keep": 2}))
    reference = tmp / "reference"
    Trainer(load_config(cfg, ONE), reference).fit()
    return cfg, reference


def torchrun(cfg: Path, out: Path, nproc: int, *extra: str) -> str:
    return launch(str(cfg), str(out), nproc, *extra, timeout=180)


def curve(run: Path, key: str = "loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if key in r]


def assert_same_curves(run: Path, reference: Path, steps: range = range(1, 7)) -> None:
    for key in ("loss", "val_loss"):
        got = [v for s, v in curve(run, key) if s in steps]
        want = [v for s, v in curve(reference, key) if s in steps]
        assert got and got == pytest.approx(want, abs=1e-5), key


def weights(run: Path, cfg: Path) -> dict[str, torch.Tensor]:
    """Final weights of a run as one full state dict (consolidating an FSDP2 checkpoint if needed)."""
    path = ckpt.resolve(run)
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    model = GPT(load_config(cfg).model_config())
    return load_file(ckpt.consolidate(path, model, run / "consolidated.safetensors", trust_sharded=True))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=5e-5, rtol=0, msg=k)


def test_ddp_matches_single_process(setup, tmp_path):
    cfg, reference = setup
    log = torchrun(cfg, tmp_path / "ddp", 2, "--parallel", "ddp")
    assert "saved checkpoint step_00000006" in log
    assert_same_curves(tmp_path / "ddp", reference)
    assert_same_weights(weights(tmp_path / "ddp", cfg), weights(reference, cfg))


def test_fsdp2_matches_single_process_and_resumes_at_world_size_1(setup, tmp_path):
    cfg, reference = setup
    run = tmp_path / "fsdp"
    torchrun(cfg, run, 2, "--parallel", "fsdp")
    manifest = ckpt.verify(ckpt.resolve(run))
    assert manifest["format"] == "dcp" and manifest["world_size"] == 2
    assert {"dcp/__0_0.distcp", "dcp/__1_0.distcp", "dcp/.metadata"} <= set(manifest["files"])
    assert manifest["consolidated"] and "model.safetensors" in manifest["files"]  # the final save: no pickle to export
    assert_same_curves(run, reference)
    assert_same_weights(weights(run, cfg), weights(reference, cfg))

    # an intermediate (DCP-only) checkpoint: generate/export refuse its pickled metadata unless trusted
    step3 = run / "checkpoints" / "step_00000003"
    assert not ckpt.verify(step3)["consolidated"]
    with pytest.raises(ckpt.CheckpointError, match="--trust-sharded"):
        ckpt.consolidate(step3, GPT(load_config(cfg).model_config()), run / "x.safetensors")
    from llmbook.cli import main
    assert main(["export", "--checkpoint", str(step3), "--out", str(tmp_path / "hf")]) == 2
    assert main(["explore", "--checkpoint", str(step3), "--out", str(tmp_path / "explorer.html")]) == 2
    ckpt.consolidate(step3, GPT(load_config(cfg).model_config()), run / "x.safetensors", trust_sharded=True)

    # world size 2 -> 1: drop the final checkpoint, resume the step-3 one in a 1-process FSDP2 group
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    messages: list[str] = []
    try:
        with pytest.raises(ckpt.CheckpointError, match="--trust-sharded"):  # resuming reads DCP's pickle too
            Trainer(load_config(cfg, ONE + ["parallel.mode=fsdp"]), run, resume=True)
        trainer = Trainer(load_config(cfg, ONE + ["parallel.mode=fsdp"]), run, resume=True, log=messages.append,
                          trust_sharded=True)
        assert trainer.step == 3 and "world size changed from 2 to 1" in " ".join(messages)
        trainer.fit()
    finally:
        cleanup()
    assert_same_curves(run, reference)  # the same global batch: the data stream continues exactly
    assert_same_weights(weights(run, cfg), weights(reference, cfg))


def test_fsdp2_checkpoint_from_world_size_1_resumes_at_2(setup, tmp_path):
    cfg, reference = setup
    run = tmp_path / "grow"
    try:
        Trainer(load_config(cfg, ONE + ["parallel.mode=fsdp"]), run).fit(until=3)
    finally:
        cleanup()
    assert ckpt.verify(ckpt.resolve(run))["world_size"] == 1
    log = torchrun(cfg, run, 2, "--parallel", "fsdp", "--resume", "--trust-sharded", "--parallel.fsdp_no_sync=true")
    assert "resumed from step_00000003 at step 3" in log
    assert_same_curves(run, reference)
    assert_same_weights(weights(run, cfg), weights(reference, cfg))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_match_one_process_and_a_lost_node_restarts_from_the_last_checkpoint(setup, tmp_path):
    """`torchrun --nnodes=2 --nproc-per-node=1` twice (two launchers, as on two machines) with a c10d rendezvous on
    127.0.0.1. Rank 1 dies once right after checkpoint 3 (tests/fault_train.py); `--max-restarts=1` restarts both
    nodes' workers, `--resume` continues from step 3, and every logged loss equals the single-process run.
    Without RESTART_ENV, torch 2.13's shared rendezvous store makes the restarted workers hang."""
    cfg, reference = setup
    run, marker = tmp_path / "two-nodes", tmp_path / "fault-injected"
    cmd = torchrun_command(str(cfg), str(run), 1, "--parallel", "ddp", "--resume", nnodes=2,
                           rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=1)
    entry = cmd.index("-m", cmd.index("--nproc_per_node=1"))
    cmd[entry : entry + 2] = [str(Path(__file__).with_name("fault_train.py"))]  # llmbook.train plus the fault hook
    env = {**os.environ, **RESTART_ENV, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "LLMBOOK_TEST_FAIL_AFTER_STEP": "3",
           "LLMBOOK_TEST_FAULT_MARKER": str(marker), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        logs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    log = "\n".join(logs)
    assert all(node.returncode == 0 for node in nodes), log[-4000:]
    assert marker.exists() and "fault injected: rank 1 exits after saving step 3" in log
    assert "resumed from step_00000003 at step 3" in log
    assert_same_curves(run, reference)
    assert_same_weights(weights(run, cfg), weights(reference, cfg))
