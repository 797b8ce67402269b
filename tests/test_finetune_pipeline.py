"""The fine-tuning stages end to end on a tiny base run: SFT through the trainer (full, LoRA, QLoRA), adapters
loaded on the base and merged, reward model, DPO and GRPO, the cache, and the command line (`llmbook finetune`,
`llmbook chat`) with its one-line errors."""

from __future__ import annotations

import gzip
import io
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmbook.cli import main  # noqa: E402
from llmbook.finetune import synthetic  # noqa: E402
from llmbook.finetune.base import FINETUNE_FILE, load_finetuned, load_with_adapter, save_checkpoint_dir  # noqa: E402
from llmbook.finetune.chat import CHAT_TOKENS, TEMPLATE_FILE, ChatFormat  # noqa: E402
from llmbook.finetune.config import BaseConfig, FinetuneConfig, load_finetune_config  # noqa: E402
from llmbook.finetune.interactive import chat_loop, fit_context  # noqa: E402
from llmbook.finetune.pipeline import (cached_stage, load_reward_model, run_dpo, run_grpo, run_reward,  # noqa: E402
                                       run_sft)
from llmbook.model import GPT, GPTConfig  # noqa: E402
from llmbook.train import read_metrics  # noqa: E402
from llmbook.train.config import RunConfig  # noqa: E402

VOCAB = 320


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny base run (random GPT + a BPE trained on the synthetic tasks), an Alpaca file and HH-style pairs."""
    from llmbook.tokenizer import train_hf_tokenizer

    root = tmp_path_factory.mktemp("ft")
    items = synthetic.generate(300, seed=9)
    tok = train_hf_tokenizer([f"{i.prompt} {i.answer}" for i in items], VOCAB)
    (root / "tok").mkdir()
    (root / "tok" / "tokenizer.json").write_text(tok.to_str())
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2, n_embd=32))
    run_cfg = RunConfig.from_dict({"model": model.config.to_dict(),
                                   "data": {"block_size": 64, "tokenizer_vocab": VOCAB, "batch_size": 2}})
    save_checkpoint_dir(model, run_cfg, root / "base", [root / "tok" / "tokenizer.json"])
    alpaca = [{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w}"} for w in synthetic.WORDS]
    (root / "alpaca.json").write_text(json.dumps(alpaca))
    with gzip.open(root / "hh.jsonl.gz", "wt") as f:
        for i in range(24):
            head = f"\n\nHuman: Tell me about the {synthetic.WORDS[i % 14]}.\n\nAssistant:"
            f.write(json.dumps({"chosen": f"{head} It is nice.", "rejected": f"{head} Go away {i}."}) + "\n")
    return root


def tiny_config(files, **tables) -> dict:
    data = {
        "base": {"run": str(files / "base")},
        "run": {"device": "cpu", "seed": 3},
        "data": {"n_synthetic": 96, "n_test": 16, "instructions": [str(files / "alpaca.json")], "n_instructions": 8,
                 "max_len": 48, "preferences": str(files / "hh.jsonl.gz"), "max_prompt": 24, "max_response": 12},
        "sft": {"steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "log_every": 1,
                "checkpoint_every": 2, "keep": 2, "warmup_steps": 1},
        "reward": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "log_every": 1},
        "dpo": {"steps": 2, "batch_size": 2, "eval_every": 2, "eval_batches": 1, "log_every": 1},
        "grpo": {"steps": 2, "batch_size": 2, "group_size": 2, "max_new_tokens": 4, "n_prompts": 16, "log_every": 1,
                 "iterations": 2},
    }
    for name, values in tables.items():
        data.setdefault(name, {}).update(values)
    return data


@pytest.fixture(scope="module")
def sft_run(files, tmp_path_factory):
    return run_sft(FinetuneConfig.from_dict(tiny_config(files)), tmp_path_factory.mktemp("sft") / "run",
                   log=lambda m: None)


def test_sft_writes_a_chat_checkpoint_through_the_trainer(sft_run):
    records = read_metrics(sft_run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    loaded = load_finetuned(sft_run)
    assert loaded.step == 4 and loaded.model.config.vocab_size == VOCAB + len(CHAT_TOKENS)
    assert [loaded.tokenizer.token_to_id(t) for t in CHAT_TOKENS] == list(range(VOCAB, VOCAB + 4))
    assert loaded.chat == ChatFormat() and loaded.meta["stage"] == "sft"
    for name in ("tokenizer.json", TEMPLATE_FILE, FINETUNE_FILE, "model.safetensors"):
        assert (loaded.path / name).is_file()


def test_sft_resume_of_a_finished_run_trains_nothing(files, sft_run):
    before = (sft_run / "metrics.jsonl").read_text()
    run_sft(FinetuneConfig.from_dict(tiny_config(files)), sft_run, resume=True, log=lambda m: None)
    assert (sft_run / "metrics.jsonl").read_text() == before


def test_chat_loop_streams_and_keeps_history(sft_run):
    loaded = load_finetuned(sft_run)
    out = io.StringIO()
    messages = chat_loop(loaded.model, loaded.tokenizer, loaded.chat, io.StringIO("What is 2 + 3?\n/reset\nhi\n"),
                         out, system="Be brief.", max_new_tokens=5, temperature=0.0)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] and messages[1]["content"] == "hi"
    assert out.getvalue().count("\n") == 2
    long = [{"role": "system", "content": "s"}] + [{"role": r, "content": "word " * 10}
                                                   for r in ("user", "assistant") * 6] + [{"role": "user", "content": "q"}]
    ids = fit_context(loaded.chat, loaded.tokenizer, long, budget=40)
    assert len(ids) <= 40 and ids[0] == loaded.tokenizer.token_to_id("<|system|>")


def test_lora_sft_adapter_loads_on_its_base_and_merges(files, tmp_path):
    cfg = FinetuneConfig.from_dict(tiny_config(files, lora={"r": 2, "alpha": 4}))
    run = run_sft(cfg, tmp_path / "lora", log=lambda m: None)
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "adapter" / TEMPLATE_FILE).is_file()
    ids = torch.tensor([[VOCAB + 1, 5, 6, VOCAB + 3, VOCAB + 2]])
    trained = load_finetuned(run)
    with torch.no_grad():
        expected = trained.model(ids)[0]
        model, _, _ = load_with_adapter(BaseConfig(run=str(files / "base")), run / "adapter", log=lambda m: None)
        torch.testing.assert_close(model(ids)[0], expected, atol=1e-5, rtol=0)
        merged = load_finetuned(run, merge=True).model
        torch.testing.assert_close(merged(ids)[0], expected, atol=1e-5, rtol=0)
    assert main(["finetune", "merge", "--checkpoint", str(run), "--out", str(tmp_path / "merged")]) == 0
    plain = load_finetuned(tmp_path / "merged")
    assert not plain.model.config.extra.get("lora")
    with torch.no_grad():
        torch.testing.assert_close(plain.model(ids)[0], expected, atol=1e-5, rtol=0)
    assert main(["generate", "--checkpoint", str(tmp_path / "merged"), "--max-new-tokens", "3"]) == 0
    assert main(["finetune", "merge", "--checkpoint", str(run), "--out", str(tmp_path / "merged")]) == 2  # no pruning


def test_adapter_for_another_base_is_a_one_line_cli_error(files, tmp_path, capsys):
    cfg = FinetuneConfig.from_dict(tiny_config(files, lora={"r": 2}))
    run = run_sft(cfg, tmp_path / "lora", log=lambda m: None)
    other = GPT(GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2, n_embd=32))  # other weights
    save_checkpoint_dir(other, RunConfig.from_dict({"model": other.config.to_dict(), "data": {"block_size": 64}}),
                        tmp_path / "other", [files / "tok" / "tokenizer.json"])
    capsys.readouterr()
    assert main(["chat", "--checkpoint", str(tmp_path / "other"), "--adapter", str(run / "adapter")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapter_config.json: field 'base_sha256'" in err and "another model" in err


def test_qlora_sft(files, tmp_path):
    cfg = FinetuneConfig.from_dict(tiny_config(files, lora={"r": 2, "quantize": "nf4", "blocksize": 32}))
    run = run_sft(cfg, tmp_path / "qlora", log=lambda m: None)
    loaded = load_finetuned(run)
    layer = loaded.model.blocks[0].attn.c_attn
    assert layer.nf4 is not None and layer.weight is None
    from safetensors.torch import load_file

    assert any(k.endswith("nf4.packed") for k in load_file(str(loaded.path / "model.safetensors")))


def test_reward_dpo_grpo_from_the_sft_run(files, sft_run, tmp_path):
    cfg = FinetuneConfig.from_dict(tiny_config(files))
    reward = run_reward(cfg, tmp_path / "rm", sft_run, log=lambda m: None)
    assert {"loss", "accuracy", "margin"} <= set(read_metrics(reward / "metrics.jsonl")[0])
    rm, tokenizer, fmt = load_reward_model(reward)
    assert rm.head.out_features == 1 and fmt == ChatFormat()
    for loss in ("dpo", "ipo"):
        cfg = FinetuneConfig.from_dict(tiny_config(files, dpo={"loss": loss}))
        dpo = run_dpo(cfg, tmp_path / loss, sft_run, log=lambda m: None)
        records = read_metrics(dpo / "metrics.jsonl")
        assert {"margin", "accuracy", "reward_chosen", "reward_rejected"} <= set(records[0])
        assert "val_accuracy" in records[-1]
    grpo = run_grpo(cfg, tmp_path / "grpo", sft_run, log=lambda m: None)
    records = read_metrics(grpo / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and {"reward", "kl", "clip_fraction"} <= set(records[0])
    assert load_finetuned(grpo).meta["stage"] == "grpo"


def test_dpo_and_grpo_switch_off_the_dropout_of_their_init(files, tmp_path):
    """From a model with dropout, the first DPO step sees policy == reference (loss log 2, zero implicit rewards) and
    the first GRPO step has ratio 1 and no KL: the policy's dropout is off, as in TRL."""
    import math

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.5))
    run_cfg = RunConfig.from_dict({"model": model.config.to_dict(),
                                   "data": {"block_size": 64, "tokenizer_vocab": VOCAB, "batch_size": 2}})
    save_checkpoint_dir(model, run_cfg, tmp_path / "base", [files / "tok" / "tokenizer.json"])
    cfg = FinetuneConfig.from_dict(tiny_config(files, base={"run": str(tmp_path / "base")},
                                               sft={"steps": 1, "eval_every": 0, "checkpoint_every": 0},
                                               dpo={"steps": 1, "eval_every": 0}, grpo={"steps": 1}))
    sft = run_sft(cfg, tmp_path / "sft", log=lambda m: None)
    assert load_finetuned(sft).model.config.dropout == 0.5
    first = read_metrics(run_dpo(cfg, tmp_path / "dpo", sft, log=lambda m: None) / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and abs(first["margin"]) < 1e-5
    first = read_metrics(run_grpo(cfg, tmp_path / "grpo", sft, log=lambda m: None) / "metrics.jsonl")[0]
    assert first["kl"] == 0 and first["clip_fraction"] == 0


@pytest.mark.parametrize("stage", ["sft-lora", "reward", "dpo", "grpo", "grpo-mid-batch"])
def test_an_interrupted_stage_resumes_to_the_same_weights(files, sft_run, tmp_path, stage, monkeypatch):
    """Each stage run for 4 steps with checkpoints, then the newer checkpoints removed and the run resumed: the
    weights at step 4 are the uninterrupted run's (data order, reference log-probs, rollouts, RNG). GRPO uses each
    rollout for 2 steps; 'mid-batch' resumes from step 1, between the two steps on one batch."""
    import shutil

    from safetensors.torch import load_file

    from llmbook.train import checkpoint as ckpt

    name = stage.split("-")[0]
    every = 1 if stage == "grpo-mid-batch" else 2
    # the untrained policy never answers right: a reward by answer length gives the groups nonzero advantages
    monkeypatch.setattr("llmbook.finetune.grpo.reward", lambda item, text: float(len(text) % 2))
    table = {"steps": 4, "checkpoint_every": every, "keep": 4, "eval_every": 0}
    extra = {"lora": {"r": 2}} if stage == "sft-lora" else {}
    cfg = FinetuneConfig.from_dict(tiny_config(files, **{name: table}, **extra))
    run = {"sft": lambda **kw: run_sft(cfg, tmp_path / "run", **kw),
           "reward": lambda **kw: run_reward(cfg, tmp_path / "run", sft_run, **kw),
           "dpo": lambda **kw: run_dpo(cfg, tmp_path / "run", sft_run, **kw),
           "grpo": lambda **kw: run_grpo(cfg, tmp_path / "run", sft_run, **kw)}[name]
    out = run(log=lambda m: None)
    final = out / "checkpoints" / ckpt.step_dir_name(4)
    expected = load_file(str(final / "model.safetensors"))
    for step in range(every + 1, 5):
        shutil.rmtree(out / "checkpoints" / ckpt.step_dir_name(step), ignore_errors=True)
    assert ckpt.latest_valid(out / "checkpoints", log=lambda m: None).name == ckpt.step_dir_name(every)
    run(resume=True, log=lambda m: None)
    resumed = load_file(str(final / "model.safetensors"))
    if name in ("dpo", "grpo"):  # the run trained: its weights moved away from the SFT model's
        start = load_file(str(load_finetuned(sft_run).path / "model.safetensors"))
        assert any(not torch.equal(t, start[k]) for k, t in expected.items() if k in start)
    assert resumed.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(resumed[key], tensor, atol=0, rtol=0, msg=key)


def test_cached_stage_trains_once(files, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path / "cache"))
    cfg = FinetuneConfig.from_dict(tiny_config(files, sft={"steps": 2, "eval_every": 0}))
    first = cached_stage("sft", cfg)
    stamp = (first / "metrics.jsonl").stat().st_mtime_ns
    assert cached_stage("sft", cfg) == first and (first / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "cache" / "finetune"
    with pytest.raises(ValueError, match="unknown stage"):
        cached_stage("ppo", cfg)


# ------------------------------------------------------------------------------------------------ command line
def write_toml(path, data) -> str:
    lines = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_cli_sft_with_overrides_then_dpo(files, tmp_path, capsys):
    config = write_toml(tmp_path / "ft.toml", tiny_config(files))
    assert main(["finetune", "sft", "--config", config, "--out", str(tmp_path / "sft"), "--sft.steps=2",
                 "--sft.eval_every=0", "--lora.r=2"]) == 0
    assert "adapter in adapter/" in capsys.readouterr().out
    assert load_finetuned(tmp_path / "sft").step == 2
    assert main(["finetune", "dpo", "--config", config, "--init", str(tmp_path / "sft"), "--out",
                 str(tmp_path / "dpo"), "--dpo.steps=1", "--dpo.eval_every=0"]) == 0


@pytest.mark.parametrize("args, match", [
    (["finetune", "dpo", "--out", "X"], "dpo starts from a fine-tuned chat model: pass --init"),
    (["finetune", "sft", "--out", "X", "--sft.steps=-1"], r"\[sft\] steps must be positive"),
    (["finetune", "sft", "--out", "X", "--lora.quantize=int3"], r"\[lora\] quantize='int3'"),
    (["finetune", "grpo", "--out", "X", "--init", "nowhere"], "--init nowhere does not exist"),
    (["finetune", "grpo", "--out", "X", "--grpo.group_size=1"], r"\[grpo\] group_size must be at least 2"),
    (["chat", "--checkpoint", "nowhere"], "no valid checkpoint found in nowhere"),
])
def test_cli_errors_are_one_line(files, tmp_path, capsys, args, match):
    config = write_toml(tmp_path / "ft.toml", tiny_config(files))
    if args[0] == "finetune":
        args = args[:2] + ["--config", config] + args[2:]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert __import__("re").search(match, err), err


def test_cli_malformed_chat_data_names_file_record_field(files, tmp_path, capsys):
    bad = tmp_path / "chats.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}))
    config = write_toml(tmp_path / "ft.toml", tiny_config(files, data={"instructions": [str(bad)]}))
    assert main(["finetune", "sft", "--config", config, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llmbook finetune: error: {bad}: line 1: field 'messages': message 1 field 'content': "
                   "the assistant turn is empty")


def test_presets_load(root):
    for path in sorted((root / "configs").glob("finetune-*.toml")):
        cfg = load_finetune_config(path)
        assert cfg.sft.steps > 0 and cfg.lora.r == 0
        assert (root / "configs" / f"{cfg.base.preset}.toml").is_file()  # the base preset exists
        assert path.stem == f"finetune-{cfg.base.preset}"  # the chapter picks finetune-<book preset>
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['stpes'\] in \[sft\]"):
        FinetuneConfig.from_dict({"sft": {"stpes": 3}})


def test_export_of_a_lora_run_chats_with_transformers(files, tmp_path):
    """`llmbook export` folds the adapters in and ships the chat template: transformers renders and scores alike."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = run_sft(FinetuneConfig.from_dict(tiny_config(files, lora={"r": 2})), tmp_path / "lora", log=lambda m: None)
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    fmt, loaded = ChatFormat(), load_finetuned(run, merge=True)
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == fmt.render(messages, True)
    ids, _ = fmt.encode(loaded.tokenizer, messages, add_generation_prompt=True)
    theirs = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert list(theirs) == ids
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits, loaded.model(torch.tensor([ids]))[0],
                                   atol=1e-5, rtol=0)


def test_chat_model_grows_the_vocabulary_without_changing_old_logits(files):
    from llmbook.finetune.base import chat_model, load_base

    model, tokenizer = load_base(BaseConfig(run=str(files / "base")))
    chat, chat_tok, ids = chat_model(model, tokenizer, seed=1)
    assert ids == list(range(VOCAB, VOCAB + 4)) and chat.config.vocab_size == VOCAB + 4
    assert model.config.vocab_size == VOCAB and tokenizer.get_vocab_size() == VOCAB  # inputs untouched
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(chat(x)[0][..., :VOCAB], model(x)[0])
    rows = chat.wte.weight[VOCAB:]
    assert torch.cdist(rows, rows).fill_diagonal_(1).min() > 0  # the new tokens differ from each other
    assert (rows.mean(0) - model.wte.weight.mean(0)).norm() < model.wte.weight.std(0).norm()


def test_sft_from_a_transformers_model(files, tmp_path):
    """`[base] hf_model`: a transformers GPT-2 (here tiny and local) is loaded with from_hf and fine-tuned alike."""
    from llmbook.eval.tiny import tiny_hf_model, train_bpe_tokenizer

    tok = train_bpe_tokenizer([f"{i.prompt} {i.answer}" for i in synthetic.generate(200, seed=4)], 300)
    tiny_hf_model("gpt2", vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2).save_pretrained(
        tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    cfg = FinetuneConfig.from_dict(tiny_config(files, base={"run": "", "hf_model": str(tmp_path / "hf")},
                                               sft={"steps": 2, "eval_every": 0}))
    loaded = load_finetuned(run_sft(cfg, tmp_path / "sft", log=lambda m: None))
    assert loaded.model.config.vocab_size == len(tok) + len(CHAT_TOKENS) and loaded.step == 2
    assert loaded.tokenizer.token_to_id("<|assistant|>") == len(tok) + 2


def test_cli_chat_streams_answers_from_stdin(sft_run, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\nSay <|assistant|> twice.\n/exit\nnever read\n"))
    assert main(["chat", "--checkpoint", str(sft_run), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 2  # one answer per line, nothing after /exit
    with pytest.raises(SystemExit):
        main(["chat"])  # --checkpoint is required: argparse's usage error


def test_a_new_run_never_overwrites_an_existing_one(files, sft_run, capsys):
    before = {p: p.read_bytes() for p in sorted(sft_run.rglob("*")) if p.is_file()}
    config_path = write_toml(sft_run.parent / "again.toml", tiny_config(files, sft={"steps": 2}))
    assert main(["finetune", "sft", "--config", config_path, "--out", str(sft_run)]) == 2
    assert "already holds checkpoints; resume (--resume), or choose a new output directory" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(sft_run.rglob("*")) if p.is_file()} == before
