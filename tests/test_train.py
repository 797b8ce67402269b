"""Trainer, optimizer, schedules and checkpoints on one CPU process (@sec-scale)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmbook.model import GPT, GPTConfig
from llmbook.train import checkpoint as ckpt
from llmbook.train.config import OptimConfig, RunConfig, load_config
from llmbook.train.optim import lr_at, param_groups
from llmbook.train.trainer import Trainer, TrainingDiverged, read_metrics
from train_fixtures import config_text, make_bpe_shards, make_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


def make_cfg(tmp: Path, shards: Path, overrides=(), **sections) -> RunConfig:
    path = tmp / "run.toml"
    path.write_text(config_text(shards, **sections))
    return load_config(path, overrides)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt.resolve(run_dir) / "model.safetensors")


# ------------------------------------------------------------------ config


def test_config_overrides_and_clear_errors(tmp_path, shards):
    cfg = make_cfg(tmp_path, shards, ["--optim.lr=1e-3", "train.precision=bf16", "--model.n_layer=3"])
    assert cfg.optim.lr == 1e-3 and cfg.train.precision == "bf16" and cfg.model["n_layer"] == 3
    assert cfg.model_config().n_layer == 3
    with pytest.raises(ValueError, match=r"\[optim\] lr must be positive, got -1"):
        make_cfg(tmp_path, shards, ["optim.lr=-1"])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lrr'\] in \[optim\]"):
        make_cfg(tmp_path, shards, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"precision='fp8' is not one of"):
        make_cfg(tmp_path, shards, ["train.precision=fp8"])
    with pytest.raises(ValueError, match="must look like --section.field=value"):
        make_cfg(tmp_path, shards, ["lr=3"])


def test_presets_load_and_validate(root):
    from llmbook.finetune.config import load_finetune_config

    for path in sorted((root / "configs").glob("*.toml")):
        if path.name.startswith("finetune-"):  # fine-tuning presets have their own schema
            load_finetune_config(path)
            continue
        cfg = load_config(path)
        cfg.model_config()  # the model table is a valid GPTConfig


# ------------------------------------------------------------------ optimizer and schedules


def test_lr_schedules_warmup_cosine_wsd():
    cos = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, schedule="cosine")
    assert lr_at(0, cos, 110) == pytest.approx(0.1) and lr_at(9, cos, 110) == pytest.approx(1.0)
    assert lr_at(60, cos, 110) == pytest.approx(0.55)  # halfway through the cosine: the mean of lr and min_lr
    assert lr_at(109, cos, 110) == pytest.approx(0.1, abs=1e-3) and lr_at(500, cos, 110) == pytest.approx(0.1)
    wsd = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert [lr_at(s, wsd, 100) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_at(89, wsd, 100) == pytest.approx(0.5) and lr_at(99, wsd, 100) == pytest.approx(0.0)
    steps = [lr_at(s, wsd, 100) for s in range(100)]
    assert all(a >= b for a, b in zip(steps[10:], steps[11:]))  # non-increasing after warmup


def test_param_groups_exclude_norms_biases_embeddings():
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") and "ln" not in n and "wte" not in n and "wpe" not in n for n in decayed)
    assert {"wte.weight", "wpe.weight", "blocks.0.ln_1.weight", "blocks.0.ln_1.bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_muon_adamw_steps_like_torch_muon_and_adamw_side_by_side():
    """`optim.name='muon'`: PyTorch's Muon on the blocks' matrices and AdamW on the rest, stepped as one optimizer,
    with the learning rate the schedule sets reaching both halves."""
    import copy

    from llmbook.train.optim import MuonAdamW, build_optimizer, muon_split, set_lr

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))
    twin = copy.deepcopy(model)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-2, weight_decay=0.1))
    assert isinstance(opt, MuonAdamW)
    muon, groups = muon_split(twin, 0.1)
    names = {id(p): n for n, p in twin.named_parameters()}
    assert {names[id(p)] for p in muon} == {n for n, p in twin.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    assert sum(len(g["params"]) for g in groups) + len(muon) == len(list(twin.parameters()))
    peers = [torch.optim.Muon(muon, lr=1e-2, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw"),
             torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)]
    x = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    for step in range(3):
        for o in [opt, *peers]:
            set_lr(o, 1e-2 * (step + 1) / 3)
        for m in (model, twin):
            m(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        for o in peers:
            o.step()
            o.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert {g["lr"] for g in opt.param_groups} == {1e-2}
    fresh = build_optimizer(model, OptimConfig(name="muon", lr=1e-2))
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0] is fresh.muon.param_groups[0] and len(fresh.param_groups) == len(opt.param_groups)
    with pytest.raises(ValueError, match="not a MuonAdamW state"):
        fresh.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_muon_resume_is_bit_exact_and_fsdp_is_refused(tmp_path, shards):
    over = ["train.steps=8", "train.eval_every=4", "optim.name=muon"]
    Trainer(make_cfg(tmp_path, shards, over), tmp_path / "full").fit()
    Trainer(make_cfg(tmp_path, shards, over), tmp_path / "split").fit(until=4)
    Trainer(make_cfg(tmp_path, shards, over), tmp_path / "split", resume=True).fit()
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"\[optim\] name='adam' is not one of"):
        make_cfg(tmp_path, shards, ["optim.name=adam"])
    with pytest.raises(ValueError, match="name='muon' needs whole weight matrices"):
        make_cfg(tmp_path, shards, over + ["parallel.mode=fsdp"])


# ------------------------------------------------------------------ the loop


def test_grad_accumulation_matches_big_batch(tmp_path, shards):
    """4 rows x 2 micro-steps == 8 rows in one step: the loader hands out the same windows.

    Losses agree to 1e-6; parameters to 2e-5 after 8 Adam steps at lr 3e-3 (Adam divides by sqrt(v), so
    rounding differences in near-zero gradients move a weight by up to ~lr x 1e-3).
    """
    big = Trainer(make_cfg(tmp_path, shards, ["data.batch_size=8", "train.eval_every=0"]), tmp_path / "big")
    acc = Trainer(make_cfg(tmp_path, shards, ["data.batch_size=4", "train.grad_accum=2", "train.eval_every=0"]),
                  tmp_path / "acc")
    a, b = big.fit(), acc.fit()
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    for p, q in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4)


def test_training_reduces_loss_and_logs(tmp_path, shards):
    run = tmp_path / "run"
    Trainer(make_cfg(tmp_path, shards, ["train.steps=30", "train.eval_every=10", "optim.lr=1e-2"]), run).fit()
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 31))
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_mb", "tokens"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"] - 1.0  # from ~ln(257)=5.55 towards the corpus entropy
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(tmp_path, shards, precision):
    trainer = Trainer(make_cfg(tmp_path, shards, [f"train.precision={precision}", "train.steps=3",
                                                  "train.eval_every=0"]), tmp_path / precision)
    records = trainer.fit()
    assert all(math.isfinite(r["loss"]) for r in records)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_activation_checkpointing_same_result(tmp_path, shards):
    plain = Trainer(make_cfg(tmp_path, shards, ["train.steps=3", "train.eval_every=0"]), tmp_path / "a")
    ac = Trainer(make_cfg(tmp_path, shards, ["train.steps=3", "train.eval_every=0",
                                             "train.activation_checkpointing=true"]), tmp_path / "b")
    assert [r["loss"] for r in plain.fit()] == pytest.approx([r["loss"] for r in ac.fit()], abs=1e-6)
    assert final_weights(tmp_path / "a").keys() == final_weights(tmp_path / "b").keys()  # same checkpoint names


def test_nan_guard_skips_then_stops(tmp_path, shards):
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.steps=6", "train.eval_every=0", "train.max_bad_steps=1"]),
                      tmp_path / "nan")
    forward = trainer.module.forward
    calls = {"n": 0}

    def poisoned(x, y):
        calls["n"] += 1
        logits, loss = forward(x, y)
        return logits, loss * float("nan") if calls["n"] in (3, 5, 6) else loss

    trainer.module.forward = poisoned
    trainer.fit(until=2)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit(until=3)  # step 3 is poisoned: skipped, weights untouched
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.model.parameters()))
    with pytest.raises(TrainingDiverged, match="step 6: loss is nan; stopping"):
        trainer.fit()  # step 4 is fine, 5 is skipped, 6 is the second bad step in a row (> max_bad_steps=1)
    records = read_metrics(tmp_path / "nan" / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 2]
    assert ckpt.resolve(tmp_path / "nan").name == "step_00000004"  # the last good checkpoint is kept


# ------------------------------------------------------------------ checkpoints


def test_resume_is_bit_exact(tmp_path, shards):
    """8 steps == 4 steps + resume + 4 steps: identical parameters and logged losses (dropout on, so RNG matters)."""
    over = ["train.steps=8", "model.dropout=0.1", "train.eval_every=4"]
    Trainer(make_cfg(tmp_path, shards, over), tmp_path / "full").fit()
    Trainer(make_cfg(tmp_path, shards, over), tmp_path / "split").fit(until=4)
    resumed = Trainer(make_cfg(tmp_path, shards, over), tmp_path / "split", resume=True)
    assert resumed.step == 4
    resumed.fit()
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_or_truncated_checkpoint_falls_back(tmp_path, shards):
    run = tmp_path / "run"
    Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0", "checkpoint.keep=3"]), run).fit()
    root = run / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000004", "step_00000008"]
    weights = root / "step_00000008" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # flip one byte of the last tensor
    weights.write_bytes(bytes(data))
    messages = []
    assert ckpt.latest_valid(root, log=messages.append).name == "step_00000004"
    assert "sha256" in messages[0] and "step_00000008" in messages[0]
    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ckpt.CheckpointError, match="bytes, manifest says"):
        ckpt.verify(root / "step_00000008")
    resumed = Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0"]), run, resume=True, log=messages.append)
    assert resumed.step == 4 and "resumed from step_00000004 at step 4" in messages[-1]
    (root / "step_00000004" / "manifest.json").write_text('{"step": 4, "fil')
    assert ckpt.latest_valid(root, log=messages.append) is None and "unreadable manifest" in messages[-1]


def test_keep_last_k_and_stale_temp_dirs(tmp_path, shards):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002.tmp").mkdir(parents=True)  # left by a crash mid-write
    Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0", "checkpoint.every=2", "checkpoint.keep=2"]), run).fit()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000006", "step_00000008"]
    with pytest.raises(ValueError, match="already holds checkpoints; resume"):
        Trainer(make_cfg(tmp_path, shards), run)


# Runs the trainer CLI in a subprocess that SIGKILLs itself at a chosen point: right after logging step
# `kill_log` (between checkpoints), or right after writing the model file of checkpoint `kill_save`
# (mid-checkpoint: no manifest yet). Deterministic, unlike killing from outside at a polled moment.
KILLER = """
import os, signal, sys
from llmbook.train import checkpoint, trainer
kill_save, kill_log = int(sys.argv[1]), int(sys.argv[2])
real_save_file, real_write = checkpoint.save_file, trainer.MetricsLog.write
def save_file(tensors, filename, metadata=None):
    real_save_file(tensors, filename, metadata=metadata)
    if metadata and int(metadata["step"]) == kill_save:
        os.kill(os.getpid(), signal.SIGKILL)
def write(self, record):
    real_write(self, record)
    if record.get("step") == kill_log and "loss" in record:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save_file, trainer.MetricsLog.write = save_file, write
from llmbook.train.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


def _run(cfg_path: Path, out: Path, *extra: str, kill_save: int = -1, kill_log: int = -1) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "code"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILLER, str(kill_save), str(kill_log), "--config", str(cfg_path), "--out", str(out),
           *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_sigkill_during_run_and_during_checkpoint_write(tmp_path, shards):
    """Kill -9 mid-run and mid-checkpoint-write; resuming ends exactly where an uninterrupted run ends."""
    cfg_path = tmp_path / "crash.toml"
    cfg_path.write_text(config_text(shards, model={"n_embd": 64, "n_layer": 2, "n_head": 2, "dropout": 0.1},
                                    train={"steps": 16, "eval_every": 0},
                                    checkpoint={"every": 2, "keep": 2}))
    code, out = _run(cfg_path, tmp_path / "ref")
    assert code == 0, out

    run, root = tmp_path / "crash", tmp_path / "crash" / "checkpoints"
    code, out = _run(cfg_path, run, kill_log=5)  # 1) killed between checkpoints
    assert code == -signal.SIGKILL and ckpt.latest_valid(root).name == "step_00000004"
    code, out = _run(cfg_path, run, "--resume", kill_save=12)  # 2) killed after the model file of step 12
    assert code == -signal.SIGKILL and "resumed from step_00000004" in out
    assert (root / "step_00000012.tmp" / "model.safetensors").is_file()
    assert not (root / "step_00000012.tmp" / "manifest.json").exists()
    assert ckpt.latest_valid(root).name == "step_00000010"
    code, out = _run(cfg_path, run, "--resume")
    assert code == 0, out
    assert "resumed from step_00000010" in out
    assert losses(run) == losses(tmp_path / "ref")  # every step logged once, identical losses
    a, b = final_weights(run), final_weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(root.glob("*.tmp"))


def test_cli_train_generate_export(tmp_path, capsys):
    """`llmbook train/generate/export` end to end; the export loads in transformers with the same logits."""
    from transformers import AutoModelForCausalLM

    from llmbook.cli import main
    from llmbook.data.pack import write_shards
    from llmbook.tokenizer import train_hf_tokenizer
    from llmbook.train.generate import load_model
    from train_fixtures import synthetic_texts

    texts = synthetic_texts()
    tok = train_hf_tokenizer(texts, 300, special_tokens=("<|endoftext|>",))
    shards = tmp_path / "shards"
    write_shards(texts, lambda t: tok.encode(t).ids, shards, eos_id=tok.token_to_id("<|endoftext|>"),
                 vocab_size=tok.get_vocab_size(), val_fraction=0.1, progress=False)
    tok.save(str(shards / "tokenizer.json"))
    cfg = tmp_path / "cli.toml"
    cfg.write_text(config_text(shards, model={"vocab_size": tok.get_vocab_size()}, train={"steps": 4}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--optim.lr=1e-2", "--train.eval_every=0"]) == 0
    assert read_metrics(run / "metrics.jsonl")[0]["lr"] == pytest.approx(5e-3)  # warmup step 1 of 2 at lr 1e-2
    assert main(["generate", "--checkpoint", str(run), "--prompt", "the cat", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("the cat")
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    ours, _, _ = load_model(run)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = torch.tensor([tok.encode("the dog sat on a mat").ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=1e-4)
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2  # refuses to overwrite without --resume
    assert "already holds checkpoints" in capsys.readouterr().err


MEMORY_SHAPES = {
    "gpt2": GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64),
    "llama": GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp="swiglu",
                       norm="rmsnorm", pos_emb="rope", bias=False, tie_weights=False),
}


@pytest.mark.parametrize("shape", sorted(MEMORY_SHAPES))
@pytest.mark.parametrize("precision, autocast_dtype", [("fp32", None), ("amp", torch.bfloat16)])
def test_measured_memory_matches_costs_model(shape, precision, autocast_dtype):
    """Weights, gradients, AdamW state and autocast's weight copies are exact; saved activations within 2%.

    "amp" is what the trainer does with precision = "bf16": fp32 weights, grads and moments under autocast.
    """
    from llmbook import costs
    from llmbook.train.memory import measure_training_memory, saved_activation_bytes
    from llmbook.train.trainer import apply_activation_checkpointing

    cfg = MEMORY_SHAPES[shape]
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, 512, (4, 64))
    got = measure_training_memory(model, torch.optim.AdamW(model.parameters()), x, x.roll(-1, 1), autocast_dtype)
    want = costs.training_memory(cfg, 4, 64, precision=precision)
    assert (got.weights, got.gradients, got.optimizer) == (want.weights, want.gradients, want.optimizer)
    assert got.working_weights == want.working_weights  # 0 in fp32; a 16-bit copy of every matrix under autocast
    assert got.activations == pytest.approx(want.activations, rel=0.02)
    apply_activation_checkpointing(model)
    assert saved_activation_bytes(model, x, x.roll(-1, 1), autocast_dtype) < got.activations / 2  # fp32 logits stay


@pytest.mark.parametrize("shape", sorted(MEMORY_SHAPES))
def test_sixteen_bit_forward_matches_zero3_activation_model(shape):
    """FSDP2's MixedPrecisionPolicy computes in bf16 without autocast: the activations of a bf16 model."""
    from llmbook import costs
    from llmbook.train.memory import saved_activation_bytes

    cfg = MEMORY_SHAPES[shape]
    torch.manual_seed(0)
    model = GPT(cfg).to(torch.bfloat16)
    x = torch.randint(0, 512, (4, 64))
    want = costs.training_memory(cfg, 4, 64, world_size=2, zero_stage=3, precision="amp").activations
    assert saved_activation_bytes(model, x, x.roll(-1, 1)) == pytest.approx(want, rel=0.02)


def test_z_loss_pulls_log_normaliser_to_zero(tmp_path, shards):
    """With a (large, for speed) z-loss coefficient the RMS of log Z ends well below the run without it.

    At initialisation log Z = log V (all logits near 0); plain cross-entropy leaves it there, z-loss pulls it down.
    """
    from llmbook.train.trainer import z_loss

    results = {}
    for coef in (0.0, 1.0):
        trainer = Trainer(make_cfg(tmp_path, shards, [f"train.z_loss={coef}", "train.steps=15", "train.eval_every=0",
                                                      "optim.lr=1e-2"]), tmp_path / f"z{coef}")
        trainer.fit()
        xb, yb = trainer.loaders("val", 0, 1, 0).next_batch()
        with torch.no_grad():
            results[coef] = z_loss(trainer.model(xb)[0]).sqrt().item()
    assert results[1.0] < results[0.0] - 1.0


def test_plot_metrics(tmp_path, shards):
    import matplotlib

    matplotlib.use("Agg")
    from llmbook.train.plots import plot_metrics

    Trainer(make_cfg(tmp_path, shards, ["train.steps=4"]), tmp_path / "run").fit()
    fig = plot_metrics(tmp_path / "run", baselines={"uniform": math.log(257)})
    loss_ax = fig.axes[0]
    assert len(loss_ax.lines) == 3 and [a.get_ylabel() for a in fig.axes][1] == "learning rate"


# ------------------------------------------------------------------ regressions from the review


def test_resume_past_corrupt_newest_quarantines_it_and_prune_keeps_new(tmp_path, shards):
    """Checkpoints 4 and 8, 8 corrupt: the resume renames 8 aside, and saving 5 with keep=1 keeps 5 (not 8)."""
    run = tmp_path / "run"
    Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0", "checkpoint.keep=3"]), run).fit()
    root = run / "checkpoints"
    (root / "step_00000008" / "model.safetensors").write_bytes(b"torn")
    messages: list[str] = []
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0", "checkpoint.every=1", "checkpoint.keep=1"]),
                      run, resume=True, log=messages.append)
    assert trainer.step == 4 and any("step_00000008.corrupt" in m for m in messages)
    trainer.fit(until=5)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005", "step_00000008.corrupt"]
    assert ckpt.resolve(run).name == "step_00000005"
    # prune never deletes the checkpoint it was told is the newest, even if a higher number is present
    (root / "step_00000009").mkdir()
    ckpt.prune(root, 1, newest=root / "step_00000005")
    assert (root / "step_00000005").is_dir() and not (root / "step_00000009").exists()


def test_tokens_per_s_times_training_steps_only(tmp_path, shards, monkeypatch):
    """A fake clock: each step costs 1 s, evaluation and saving 100 s; throughput must ignore the latter."""
    from types import SimpleNamespace

    import llmbook.train.trainer as trainer_mod

    clock = [0.0]
    monkeypatch.setattr(trainer_mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    cfg = make_cfg(tmp_path, shards, ["train.log_every=2", "train.eval_every=1", "checkpoint.every=1"])
    trainer = Trainer(cfg, tmp_path / "run")
    step, evaluate, save = trainer.train_step, trainer.evaluate, trainer.save

    def advance(fn, seconds):
        def wrapped():
            out = fn()
            clock[0] += seconds
            return out
        return wrapped

    trainer.train_step, trainer.evaluate, trainer.save = advance(step, 1.0), advance(evaluate, 100.0), advance(save, 100.0)
    records = [r for r in trainer.fit() if "tokens_per_s" in r]
    tokens_per_step = cfg.data.batch_size * cfg.data.block_size
    assert len(records) == 4 and all(r["tokens_per_s"] == tokens_per_step for r in records)


def test_torn_last_metrics_line_is_skipped_on_resume(tmp_path, shards):
    run = tmp_path / "run"
    Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0"]), run).fit(until=5)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 6, "lo')  # the crash hit mid-write
    messages: list[str] = []
    assert len(read_metrics(run / "metrics.jsonl", log=messages.append)) == 5 and "torn last line" in messages[0]
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0"]), run, resume=True, log=messages.append)
    trainer.fit()
    assert [s for s, _ in losses(run)] == list(range(1, 9))
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(run / "metrics.jsonl")


def test_h100_multi_gpu_command_keeps_the_global_batch(root):
    import re

    path = root / "configs" / "h100-124m.toml"
    text = path.read_text()
    command = re.search(r"torchrun --nproc_per_node=(\d+).*?--out RUN", text.replace("\n# ", " "), re.S)
    nproc = int(command.group(1))
    overrides = re.findall(r"--((?:data|train)\.\w+=\S+)", command.group(0))
    one, many = load_config(path), load_config(path, overrides)
    assert one.data.batch_size * one.train.grad_accum == nproc * many.data.batch_size * many.train.grad_accum


def test_cuda_rng_state_is_this_device_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.zeros(4))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("must not touch other ranks' GPUs"))
    ckpt.set_rng_state(ckpt.rng_state())
    assert calls == [("get", 3), ("set", 3)]


def test_files_are_fsynced_before_the_manifest(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(ckpt, "fsync_tree", lambda path: events.append(("fsync", sorted(p.name for p in path.iterdir()))))
    write = ckpt.atomic_write_text
    monkeypatch.setattr(ckpt, "atomic_write_text", lambda path, text: (events.append(("write", path.name)),
                                                                        write(path, text)))
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_kv_head=2, n_embd=16))
    opt = torch.optim.AdamW(model.parameters())
    ckpt.save_checkpoint(tmp_path, 1, model, opt, {"step": 1}, {}, sharded=False, keep=2)
    assert events[0] == ("fsync", ["model.safetensors", "optimizer.pt", "rank_00000.pt"])  # before the barrier
    assert events.index(("write", ckpt.MANIFEST)) > max(i for i, e in enumerate(events) if e[0] == "fsync")


def test_prepare_builds_aside_and_renames(tmp_path, monkeypatch):
    from llmbook.train import data as train_data
    from llmbook.train.config import DataConfig
    from train_fixtures import synthetic_texts

    monkeypatch.setattr(train_data, "documents", lambda cfg: ({"text": t} for t in synthetic_texts(60)))
    cfg = DataConfig(datasets=["tinystories"], tokenizer_vocab=300, cache_dir=str(tmp_path), block_size=16)
    real = train_data.write_shards

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_data, "write_shards", crash)
    with pytest.raises(KeyboardInterrupt):
        train_data.prepare(cfg)
    assert not any((tmp_path / "shards").iterdir())  # nothing half-built is left where a reader would look
    monkeypatch.setattr(train_data, "write_shards", real)
    out = train_data.prepare(cfg)
    assert (out / "manifest.json").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in (tmp_path / "shards").iterdir()] == [out.name]


def test_bf16_autocast_changes_the_loss_a_little(tmp_path, shards):
    over = ["train.steps=1", "train.eval_every=0"]
    fp32 = Trainer(make_cfg(tmp_path, shards, over), tmp_path / "fp32").fit()[0]["loss"]
    bf16 = Trainer(make_cfg(tmp_path, shards, over + ["train.precision=bf16"]), tmp_path / "bf16").fit()[0]["loss"]
    assert bf16 != fp32  # autocast really ran in bf16 ...
    assert bf16 == pytest.approx(fp32, rel=2e-2)  # ... and rounding only moves the loss slightly


def _poison_grads(trainer: Trainer, steps: set[int]) -> None:
    """Turn the gradient of the first parameter into inf during the given (1-based) steps."""
    param = next(trainer.model.parameters())
    param.register_hook(lambda g: g * float("inf") if trainer.step + 1 in steps else g)


def test_fp16_scaler_starts_at_2_16_and_halves_on_overflow(tmp_path, shards):
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.precision=fp16", "train.steps=4", "train.eval_every=0"]),
                      tmp_path / "fp16")
    assert trainer.scaler.get_scale() == 2.0**16
    _poison_grads(trainer, {3})
    trainer.fit(until=2)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit(until=3)
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.model.parameters()))  # the scaler skipped it
    records = trainer.fit()
    all_records = read_metrics(tmp_path / "fp16" / "metrics.jsonl")
    assert [r["loss_scale"] for r in all_records] == [2.0**16, 2.0**16, 2.0**15, 2.0**15]
    assert [r["skipped_steps"] for r in all_records] == [0, 0, 1, 1] and records


def test_fp16_guard_skips_a_nan_loss(tmp_path, shards):
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.precision=fp16", "train.steps=3", "train.eval_every=0"]),
                      tmp_path / "fp16")
    forward = trainer.module.forward
    trainer.module.forward = lambda x, y: (lambda out: (out[0], out[1] * float("nan") if trainer.step == 1 else out[1]))(
        forward(x, y))
    messages: list[str] = []
    trainer.log = messages.append
    trainer.fit()
    assert [r["skipped_steps"] for r in read_metrics(tmp_path / "fp16" / "metrics.jsonl")] == [0, 1, 1]
    assert any("step 2: loss is nan; update skipped" in m for m in messages)
    assert trainer.scaler.get_scale() == 2.0**15  # unscale_ found the NaN gradients: the scale backs off


def test_spike_factor_skips_a_loss_spike(tmp_path, shards):
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.steps=23", "train.eval_every=0", "checkpoint.every=0",
                                                  "train.spike_factor=3"]), tmp_path / "spike")
    forward = trainer.module.forward
    trainer.module.forward = lambda x, y: (lambda out: (out[0], out[1] * 10 if trainer.step == 21 else out[1]))(
        forward(x, y))
    messages: list[str] = []
    trainer.log = messages.append
    records = trainer.fit()
    assert [r["skipped_steps"] for r in records][20:] == [0, 1, 1]
    assert any(m.startswith("step 22: loss spike") for m in messages)


def test_on_bad_step_stop_raises_and_cli_reports_one_line(tmp_path, shards, monkeypatch, capsys):
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.eval_every=0", "train.on_bad_step=stop"]), tmp_path / "stop")
    _poison_grads(trainer, {2})
    with pytest.raises(TrainingDiverged, match="step 2: gradient norm is inf; stopping"):
        trainer.fit()
    assert trainer.step == 1

    import llmbook.train.trainer as trainer_mod
    from llmbook.cli import main

    def diverge(*args, **kwargs):
        raise TrainingDiverged("step 7: loss is nan; stopping")

    monkeypatch.setattr(trainer_mod, "run", diverge)
    cfg = tmp_path / "run.toml"
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "llmbook train: error: step 7: loss is nan; stopping"


def test_ddp_no_sync_skips_all_reduce_until_the_last_micro_batch(tmp_path, shards):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from llmbook.train.parallel import cleanup

    try:
        trainer = Trainer(make_cfg(tmp_path, shards, ["parallel.mode=ddp", "train.grad_accum=3", "train.steps=2",
                                                      "train.eval_every=0"]), tmp_path / "ddp")
        micro, at = [0], []
        next_batch = trainer.train_loader.next_batch
        trainer.train_loader.next_batch = lambda: (micro.__setitem__(0, micro[0] + 1), next_batch())[1]

        def counting(state, bucket):
            at.append(micro[0])
            return allreduce_hook(state, bucket)

        trainer.module.register_comm_hook(None, counting)
        trainer.fit()
    finally:
        cleanup()
    assert at and set(at) <= {3, 6}  # only during the backward of micro-batches 3 and 6 (each step's last)
    assert at.count(3) == at.count(6) > 0


# ------------------------------------------------------------------ security and reliability


class _PlantedPickle:
    """Unpickling this runs `os.mkdir(marker)`: what a planted DCP metadata file could do with any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant_dcp_checkpoint(run: Path, step: int, marker: Path) -> Path:
    """A checkpoint someone could leave in a run directory: valid checksums (they detect corruption, not
    tampering), `"format": "dcp"`, and a DCP metadata pickle that runs code."""
    import hashlib
    import json
    import pickle
    import shutil

    real = ckpt.list_checkpoints(run / "checkpoints")[-1]
    planted = run / "checkpoints" / ckpt.step_dir_name(step)
    (planted / "dcp").mkdir(parents=True)
    (planted / "dcp" / ".metadata").write_bytes(pickle.dumps(_PlantedPickle(marker)))
    for name in ("rank_00000.pt", "config.json"):
        shutil.copyfile(real / name, planted / name)
    files = {p.relative_to(planted).as_posix(): {"bytes": p.stat().st_size,
                                                 "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(planted.rglob("*")) if p.is_file()}
    manifest = {"step": step, "world_size": 1, "format": "dcp", "consolidated": False, "files": files}
    (planted / "manifest.json").write_text(json.dumps(manifest))
    return planted


def test_resume_never_unpickles_a_planted_checkpoint_without_consent(tmp_path, shards, capsys):
    """The loader follows the run's parallel.mode, not the manifest; DCP's pickle needs --trust-sharded."""
    from cli_fixtures import main_error
    from llmbook.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(config_text(shards, train={"steps": 2, "eval_every": 0}, checkpoint={"every": 1, "keep": 5}))
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    _plant_dcp_checkpoint(run, 3, marker)
    resume = ["train", "--config", cfg, "--out", run, "--resume", "--train.steps=4"]
    main_error(capsys, resume, "train", "step_00000003 holds sharded (FSDP2) training state",
               "parallel.mode=fsdp (and --trust-sharded)")
    main_error(capsys, [*resume, "--parallel", "fsdp"], "train", "resuming from step_00000003 reads its sharded (DCP) "
               "state, whose metadata is a pickle", "--trust-sharded")
    assert not marker.exists()
    main_error(capsys, [*resume, "--parallel", "fsdp", "--trust-sharded"], "train", "step_00000003")
    assert marker.exists()  # the consent is the only gate: with it, the pickle does run


def test_fsdp_resume_and_eval_of_a_sharded_checkpoint_need_trust_sharded(tmp_path, shards, capsys):
    from cli_fixtures import main_error
    from llmbook.cli import main
    from llmbook.train.parallel import cleanup

    cfg = tmp_path / "run.toml"
    cfg.write_text(config_text(make_bpe_shards(tmp_path / "bpe"), model={"vocab_size": 300},
                               parallel={"mode": "fsdp"}, train={"steps": 2, "eval_every": 0},
                               checkpoint={"every": 1, "keep": 5}))
    run = tmp_path / "run"
    try:
        Trainer(load_config(cfg), run).fit(until=1)  # step 1: DCP shards only, no consolidated weights
    finally:
        cleanup()
    main_error(capsys, ["train", "--config", cfg, "--out", run, "--resume"], "train", "--trust-sharded")
    step1 = run / "checkpoints" / "step_00000001"
    doc = tmp_path / "doc.txt"
    doc.write_text("the cat sat on a mat and the dog ran to the park.\n")
    main_error(capsys, ["eval", "ppl", "--model", step1, "--input", doc], "eval", "--trust-sharded")
    assert main(["eval", "ppl", "--model", str(step1), "--input", str(doc), "--trust-sharded", "--json"]) == 0
    assert main(["train", "--config", str(cfg), "--out", str(run), "--resume", "--trust-sharded"]) == 0
    assert "resumed from step_00000001 at step 1" in capsys.readouterr().out


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_resume_works(tmp_path, shards):
    """torch's own writer fails mid-file (file-size limit: the kernel refuses the write, as on a full disk): one
    line instead of `inline_container.cc`, no partial directory left, and --resume finishes the run exactly."""
    from cli_fixtures import assert_one_line_error, run_llmbook

    cfg = tmp_path / "disk.toml"
    cfg.write_text(config_text(shards, train={"steps": 6, "eval_every": 0}, checkpoint={"every": 2, "keep": 2}))
    Trainer(load_config(cfg), tmp_path / "ref").fit()
    run = tmp_path / "run"
    Trainer(load_config(cfg), run).fit(until=2)
    step2 = run / "checkpoints" / "step_00000002"
    model_bytes, optim_bytes = ((step2 / name).stat().st_size for name in ("model.safetensors", "optimizer.pt"))
    limit = (model_bytes + optim_bytes) // 2  # the weights fit, the optimizer state does not: torch.save fails
    assert model_bytes < limit < optim_bytes
    done = run_llmbook("train", "--config", cfg, "--out", run, "--resume", fsize=limit)
    line = assert_one_line_error(done.returncode, done.stderr, "train", "could not write checkpoint step_00000004",
                                 "optimizer.pt: write failed", "MiB free on that device",
                                 "the previous checkpoint step_00000002 is intact", "--resume")
    assert "inline_container" not in line and "enforce fail" not in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]  # no step_00000004.tmp
    messages: list[str] = []
    Trainer(load_config(cfg), run, resume=True, log=messages.append).fit()
    assert "resumed from step_00000002 at step 2" in messages
    assert losses(run) == losses(tmp_path / "ref")
    a, b = final_weights(run), final_weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_trainings_into_one_run_directory(tmp_path, shards, capsys):
    """The second writer is refused while the first runs (exit 2, one line naming it); after the first is
    killed, its stale lock is taken over with a message."""
    from cli_fixtures import main_error
    from llmbook.cli import main
    from llmbook.fileio import LOCK_NAME, LockedError

    cfg = tmp_path / "long.toml"
    cfg.write_text(config_text(shards, train={"steps": 100000, "eval_every": 0, "log_every": 1},
                               checkpoint={"every": 0, "keep": 1}))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "code"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "llmbook", "train", "--config", str(cfg), "--out", str(run)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # the lock is taken before the first step; wait (up to 2 minutes) until it trains
            if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip():
                break
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.1)
        main_error(capsys, ["train", "--config", cfg, "--out", run, "--train.steps=2"], "train",
                   f"{run} is in use by process {first.pid}")
        with pytest.raises(LockedError, match=f"in use by process {first.pid}"):
            Trainer(load_config(cfg), run)
    finally:
        first.kill()
        first.wait()
    assert (run / LOCK_NAME).read_text().strip() == str(first.pid)  # killed: the file stays, the lock does not
    assert main(["train", "--config", str(cfg), "--out", str(run), "--resume", "--train.steps=2"]) == 0
    out = capsys.readouterr().out
    assert f"took over the lock of {run} left by process {first.pid}, which is no longer running" in out
    assert not (run / LOCK_NAME).exists()  # released when the run ended


def test_trainer_releases_its_lock_on_errors_and_at_the_end(tmp_path, shards):
    from llmbook.fileio import LOCK_NAME

    run = tmp_path / "run"
    trainer = Trainer(make_cfg(tmp_path, shards, ["train.steps=2", "train.eval_every=0"]), run)
    assert (run / LOCK_NAME).is_file()
    trainer.fit(until=1)
    assert (run / LOCK_NAME).is_file()  # still running
    trainer.fit()
    assert not (run / LOCK_NAME).exists()
    with pytest.raises(ValueError, match="already holds checkpoints"):  # __init__ fails after taking the lock
        Trainer(make_cfg(tmp_path, shards), run)
    assert not (run / LOCK_NAME).exists()


def test_export_carries_the_tokenizer_ids_and_transformers_generate_stops_where_llmbook_does(tmp_path, capsys):
    """config.json and generation_config.json name the tokenizer's end-of-text id (not GPT-2's 50256), so greedy
    `transformers` generation on the export stops at exactly the token where `llmbook generate` stops."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmbook.cli import main
    from llmbook.data.pack import write_shards
    from llmbook.tokenizer import train_hf_tokenizer
    from llmbook.train.generate import load_model

    stories = ["the cat sat on the mat.", "a dog ran to the park.", "the bird sang in the tree.",
               "a girl read a big book."]
    texts = [stories[i % 4] for i in range(400)]
    tok = train_hf_tokenizer(texts, 300, special_tokens=("<|endoftext|>",))
    eos = tok.token_to_id("<|endoftext|>")
    shards = tmp_path / "shards"
    write_shards(texts, lambda t: tok.encode(t).ids, shards, eos_id=eos, vocab_size=tok.get_vocab_size(),
                 val_fraction=0.1, progress=False)
    tok.save(str(shards / "tokenizer.json"))
    cfg = tmp_path / "short.toml"
    cfg.write_text(config_text(shards, model={"vocab_size": tok.get_vocab_size()}, optim={"lr": 1e-2, "min_lr": 1e-3},
                               train={"steps": 60, "eval_every": 0, "log_every": 20}, checkpoint={"every": 0}))
    run, hf_dir = tmp_path / "run", tmp_path / "hf"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(hf_dir)]) == 0
    for name in ("config.json", "generation_config.json"):
        config = json.loads((hf_dir / name).read_text())
        assert config["eos_token_id"] == config["bos_token_id"] == eos == 0, name

    prompt = "the cat sat on"
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "20"]) == 0
    ours_text = capsys.readouterr().out.splitlines()[-1]
    model, tokenizer, _ = load_model(run)
    idx = torch.tensor([tokenizer.encode(prompt).ids])
    ours = model.generate(idx, 20, temperature=0, stop=eos)[0].tolist()
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == idx[0].tolist()
    with torch.no_grad():
        theirs = hf.generate(ids, max_new_tokens=20, do_sample=False)[0].tolist()
    assert eos in ours and len(ours) < idx.shape[1] + 20  # the model learned to end its story
    assert theirs == ours[: ours.index(eos) + 1]  # the same tokens, ending at the same end-of-text
    assert ours_text == prompt + hf_tok.decode(theirs[idx.shape[1]:], skip_special_tokens=True)
