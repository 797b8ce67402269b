"""Evaluating runs of the book's trainer: checkpoint and transformers loading, `llmbook eval` on a run, the cached
run, step-0 weights and the held-out documents (@sec-evaluation-checkpoints)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from llmbook.cli import main
from llmbook.fileio import file_sha256
from llmbook.eval import checkpoints
from llmbook.eval.models import HFCausalLM, LLMBookLM
from llmbook.eval.perplexity import perplexity
from llmbook.train import Trainer, load_config
from llmbook.train import checkpoint as ckpt
from llmbook.train.config import DataConfig, RunConfig
from train_fixtures import config_text, make_shards, synthetic_texts

REQUESTS = [("the cat sat on", " a mat"), ("once upon a time there", " lived a little girl."), ("the", " dog")]


@pytest.fixture(scope="module")
def bpe_shards(tmp_path_factory):
    """The trainer-test corpus packed with a small BPE whose tokenizer.json travels into every checkpoint."""
    from llmbook.data.pack import write_shards
    from llmbook.tokenizer import train_hf_tokenizer

    texts = synthetic_texts()
    tok = train_hf_tokenizer(texts, 300, special_tokens=(checkpoints.EOS,))
    shards = tmp_path_factory.mktemp("bpe-shards")
    write_shards(texts, lambda t: tok.encode(t).ids, shards, eos_id=tok.token_to_id(checkpoints.EOS),
                 vocab_size=tok.get_vocab_size(), val_fraction=0.1, progress=False)
    tok.save(str(shards / "tokenizer.json"))
    return shards


def tiny_cfg(tmp_path, shards, **train) -> RunConfig:
    path = tmp_path / "run.toml"
    path.write_text(config_text(shards, model={"vocab_size": 300, "block_size": 64},
                                data={"block_size": 64}, checkpoint={"every": 2, "keep": 10},
                                train={"steps": 6, "eval_every": 0, **train}))
    return load_config(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bpe_shards):
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "run"
    Trainer(tiny_cfg(tmp, bpe_shards), out, log=lambda msg: None).fit()
    return out


def direct_loglikelihoods(model, tok, requests):
    """log p(continuation | context) from the GPT's logits, one request at a time (no harness code)."""
    out = []
    for ctx, cont in requests:
        c, whole = tok.encode(ctx).ids, tok.encode(ctx + cont).ids
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0][0].float(), -1)
        out.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(c), len(whole))))
    return out


def test_checkpoint_lm_scores_like_the_trained_model(run_dir):
    from llmbook.train.generate import load_model

    lm = checkpoints.load_lm(run_dir)
    assert isinstance(lm, LLMBookLM) and lm.max_length == 64
    model, tok, meta = load_model(run_dir)
    assert meta.step == 6
    got = [ll for ll, _ in lm.loglikelihood(REQUESTS)]
    np.testing.assert_allclose(got, direct_loglikelihoods(model, tok, REQUESTS), atol=1e-4)
    # an earlier checkpoint is a different model, and loading it by path gives that one
    early = checkpoints.load_lm(run_dir / "checkpoints" / ckpt.step_dir_name(2))
    assert not np.allclose([ll for ll, _ in early.loglikelihood(REQUESTS)], got, atol=1e-3)
    assert lm.generate("the cat", max_tokens=5) == lm.decode(lm.greedy_ids(lm.encode("the cat"), 5))


def test_checkpoint_and_its_transformers_export_agree(run_dir, tmp_path):
    from llmbook.train.export import export

    export(str(run_dir), str(tmp_path / "hf"))
    ours, hf = checkpoints.load_lm(run_dir), checkpoints.load_lm(tmp_path / "hf")
    assert isinstance(hf, HFCausalLM)
    a, b = ours.loglikelihood(REQUESTS), hf.loglikelihood(REQUESTS)
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], atol=1e-4)
    assert [g for _, g in a] == [g for _, g in b]
    text = " ".join(synthetic_texts(5, seed=3))
    pa, pb = perplexity(ours, [text], stride=16), perplexity(hf, [text], stride=16)
    assert pa.n_tokens == pb.n_tokens and pa.bits_per_byte == pytest.approx(pb.bits_per_byte, rel=1e-5)


def test_run_lms_step0_is_the_trainers_initial_model(run_dir, tmp_path, bpe_shards):
    lms = checkpoints.run_lms(run_dir)
    assert list(lms) == [0, 2, 4, 6]
    fresh = Trainer(tiny_cfg(tmp_path, bpe_shards), tmp_path / "fresh", log=lambda msg: None)
    init = lms[0].model.state_dict()
    assert all(torch.equal(v, init[k]) for k, v in fresh.model.state_dict().items())
    state = torch.get_rng_state()
    checkpoints.run_lms(run_dir)
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator is untouched
    # training lowers the held-out loss: a sanity check that the steps are in order
    text = " ".join(synthetic_texts(20, seed=5))
    bpb = [perplexity(lm, [text]).bits_per_byte for lm in lms.values()]
    assert bpb[-1] < bpb[0]


def test_cli_eval_on_a_training_run(run_dir, data_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(run_dir), "--tasks", "arc_easy,boolq", "--data-dir", str(data_dir),
                 "--limit", "4", "--bootstrap-iters", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arc_easy"]["n"] == 4 and 0 <= out["arc_easy"]["metrics"]["acc"]["value"] <= 1
    text = tmp_path / "held.txt"
    text.write_text("\n\n".join(synthetic_texts(6, seed=9)), encoding="utf-8")
    step = run_dir / "checkpoints" / ckpt.step_dir_name(4)
    assert main(["eval", "ppl", "--model", str(step), "--input", str(text), "--stride", "16", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    direct = perplexity(checkpoints.load_lm(step), synthetic_texts(6, seed=9), stride=16)
    assert res["n_documents"] == 6 and res["max_length"] == 64 and res["stride"] == 16
    assert res["bits_per_byte"] == pytest.approx(direct.bits_per_byte)
    assert res["bits_per_byte_ci_low"] <= res["bits_per_byte"] <= res["bits_per_byte_ci_high"]


def test_clear_errors_for_what_is_not_a_model(run_dir, tmp_path, capsys):
    def err(path, *extra):
        assert main(["eval", "ppl", "--model", str(path), "--input", str(tmp_path / "t.txt"), *extra]) == 2
        return capsys.readouterr().err

    (tmp_path / "t.txt").write_text("the cat sat.\n")
    (tmp_path / "empty").mkdir()
    msg = err(tmp_path / "empty")
    assert str(tmp_path / "empty") in msg and "expected manifest.json" in msg and "expected config.json" in msg
    assert "does not exist" in err(tmp_path / "missing")
    assert "is a file" in err(tmp_path / "t.txt")
    assert "max_length=100 exceeds the model's block_size=64" in err(run_dir, "--max-length", "100")
    (tmp_path / "badhf").mkdir()
    (tmp_path / "badhf" / "config.json").write_text("{}")
    assert "is not a loadable transformers causal LM" in err(tmp_path / "badhf")
    # a run whose only checkpoint fails its checksum, and one trained on shards without a tokenizer
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "checkpoints" / ckpt.step_dir_name(6), broken / "checkpoints" / ckpt.step_dir_name(6))
    with open(broken / "checkpoints" / ckpt.step_dir_name(6) / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.warns(UserWarning, match="sha256"):
        assert "no valid checkpoint found in" in err(broken)
    byte_run = tmp_path / "bytes"
    cfg = tmp_path / "b.toml"
    cfg.write_text(config_text(make_shards(tmp_path / "byte-shards"), train={"steps": 2, "eval_every": 0}))
    Trainer(load_config(cfg), byte_run, log=lambda msg: None).fit()
    assert "has no tokenizer.json" in err(byte_run)


def test_cached_run_trains_once_and_matches_a_direct_run(tmp_path, bpe_shards, monkeypatch):
    cfg = tiny_cfg(tmp_path, bpe_shards, steps=4)
    cfg.data.cache_dir = str(tmp_path / "cache")
    run = checkpoints.cached_run(cfg, log=lambda msg: None)
    assert run.parent == tmp_path / "cache" / "runs" and run == checkpoints.run_dir_for(cfg)
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]  # the temp folder was renamed
    Trainer(cfg, tmp_path / "direct", log=lambda msg: None).fit()
    a = ckpt.resolve(run) / "model.safetensors"
    assert file_sha256(a) == file_sha256(ckpt.resolve(tmp_path / "direct") / "model.safetensors")
    monkeypatch.setattr("llmbook.train.Trainer", None)  # a second call must not train
    assert checkpoints.cached_run(cfg) == run
    other = tiny_cfg(tmp_path, bpe_shards, steps=2)
    other.data.cache_dir = cfg.data.cache_dir
    assert checkpoints.run_dir_for(other) != run  # a different config is a different run


def test_held_out_documents_are_the_validation_shards(tmp_path, data_dir):
    from tokenizers import Tokenizer

    from llmbook.data.pack import read_manifest
    from llmbook.train.data import prepare

    cfg = DataConfig(datasets=["tinystories"], tokenizer_vocab=300, max_chars=60_000, val_fraction=0.1,
                     cache_dir=str(tmp_path))
    shards = prepare(cfg)
    docs = checkpoints.held_out_documents(cfg)
    tok = Tokenizer.from_file(str(shards / "tokenizer.json"))
    manifest = read_manifest(shards)
    val = np.concatenate([np.fromfile(shards / s["file"], dtype=manifest["dtype"])
                          for s in manifest["splits"]["val"]["shards"]])
    eos = tok.token_to_id(checkpoints.EOS)
    expected = [i for d in docs for i in tok.encode(d).ids + [eos]]
    assert len(docs) >= 2 and val.tolist() == expected
    assert math.isclose(len(docs) / (len(docs) + manifest["splits"]["train"]["documents"]), 0.1, abs_tol=0.02)
    with pytest.raises(ValueError, match="shard_dir"):
        checkpoints.held_out_documents(DataConfig(shard_dir=str(shards)))
