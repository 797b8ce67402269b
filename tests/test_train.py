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
from train_fixtures import config_text, make_shards

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
    for path in sorted((root / "configs").glob("*.toml")):
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


def _launch(cfg_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "code"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "llmbook.train", "--config", str(cfg_path), "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.0005)


def test_sigkill_during_run_and_during_checkpoint_write(tmp_path, shards):
    """Kill -9 mid-run and mid-checkpoint-write; resuming ends exactly where an uninterrupted run ends."""
    cfg_path = tmp_path / "crash.toml"
    cfg_path.write_text(config_text(shards, model={"n_embd": 64, "n_layer": 2, "n_head": 2, "dropout": 0.1},
                                    train={"steps": 24, "eval_every": 0},
                                    checkpoint={"every": 2, "keep": 2}))
    ref = _launch(cfg_path, tmp_path / "ref")
    assert ref.wait(timeout=120) == 0, ref.stdout.read()

    run, root = tmp_path / "crash", tmp_path / "crash" / "checkpoints"
    proc = _launch(cfg_path, run)  # 1) killed between checkpoints, once a few steps are logged
    _wait_for(lambda: (run / "metrics.jsonl").exists() and len(losses(run)) >= 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = _launch(cfg_path, run, "--resume")  # 2) killed while a checkpoint directory is being written
    _wait_for(lambda: any(p.name.endswith(".tmp") and int(p.name[5:13]) >= 12 for p in root.glob("*.tmp")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(root.glob("*.tmp")), "the kill should have hit a checkpoint write"
    last_good = ckpt.latest_valid(root)
    assert last_good is not None
    proc = _launch(cfg_path, run, "--resume")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"resumed from {last_good.name}" in out
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


def test_measured_memory_matches_costs_model():
    """Weights, gradients and AdamW state are exact; saved activations within 10% of llmbook.costs (fp32)."""
    from llmbook import costs
    from llmbook.train.memory import measure_training_memory, saved_activation_bytes
    from llmbook.train.trainer import apply_activation_checkpointing

    cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64)
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, 512, (4, 64))
    got = measure_training_memory(model, torch.optim.AdamW(model.parameters()), x, x.roll(-1, 1))
    want = costs.training_memory(cfg, 4, 64, precision="fp32")
    assert (got.weights, got.gradients, got.optimizer) == (want.weights, want.gradients, want.optimizer)
    assert got.activations == pytest.approx(want.activations, rel=0.1)
    apply_activation_checkpointing(model)
    assert saved_activation_bytes(model, x, x.roll(-1, 1)) < got.activations / 3


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
