"""`llmbook card` (@sec-applications-card): a model card written from a real (tiny) training run's records."""

from __future__ import annotations

import json

import pytest

from llmbook.apps.card import model_card
from llmbook.cli import main
from llmbook.train import Trainer, load_config
from train_fixtures import config_text, make_shards


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    shards = make_shards(tmp / "shards")
    cfg = tmp / "run.toml"
    cfg.write_text(config_text(shards, train={"steps": 4, "eval_every": 2}))
    Trainer(load_config(cfg), tmp / "run", log=lambda msg: None).fit()
    return tmp / "run"


def test_card_reports_the_runs_own_records(run, tmp_path):
    evals = {"model": "x", "results": {"hellaswag": {"n": 100, "num_fewshot": 0, "chance": 0.25, "metrics": {
        "acc": {"value": 0.27, "stderr": 0.04, "ci_low": 0.19, "ci_high": 0.36}}}}}
    report = {"input_documents": 10, "kept_documents": 7, "removed": {"exact_duplicates": 2, "quality_filters": 1},
              "pii": {"documents_redacted": 3, "spans": {"EMAIL": 4}}}
    card = model_card(run, [evals], report, name="tiny")
    manifest = json.loads((run / "checkpoints" / "step_00000004" / "manifest.json").read_text())
    assert card.startswith("# Model card: tiny")
    assert "2 layers, 2 heads, width 32, context 16 tokens, vocabulary 257" in card
    assert manifest["files"]["model.safetensors"]["sha256"] in card
    assert "4 steps planned, 4 done; batch 4 x 16 tokens x 1 accumulation x 1 ranks = 256 tokens seen" in card
    assert "| hellaswag | acc | 0.270 | [0.190, 0.360] | 100 | 0 | 0.250 |" in card
    assert "exact duplicates 2" in card and "3 documents had spans redacted (EMAIL 4)" in card
    assert "Validation loss at step 4" in card
    for section in ("## Model details", "## Intended use", "## Training data", "## Evaluation",
                    "## Limitations and risks", "## Datasheet for the training data"):
        assert section in card


def test_card_says_what_is_not_recorded(run):
    card = model_card(run)
    assert "*Not recorded.* This run read its corpora directly" in card
    assert "| bytes |" not in card and "not recorded" in card  # byte shards: no named source licence


def test_cli_card(run, tmp_path, capsys):
    out = tmp_path / "card.md"
    assert main(["card", "--checkpoint", str(run), "--out", str(out), "--intended-use", "Unit tests only."]) == 0
    text = out.read_text()
    assert text.startswith("# Model card: run") and "## Intended use\n\nUnit tests only.\n" in text


@pytest.mark.parametrize("content,expected", [
    ("{not json", "not valid JSON"),
    ('{"results": 3}', "expected the JSON written by `llmbook eval --output`"),
])
def test_cli_card_bad_eval_files(run, tmp_path, capsys, content, expected):
    bad = tmp_path / "eval.json"
    bad.write_text(content)
    assert main(["card", "--checkpoint", str(run), "--out", str(tmp_path / "c.md"), "--eval", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    assert not (tmp_path / "c.md").exists()


def test_cli_card_missing_checkpoint(tmp_path, capsys):
    assert main(["card", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "c.md")]) == 2
    assert "no valid checkpoint" in capsys.readouterr().err


def test_cli_card_out_that_is_a_folder(run, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["card", "--checkpoint", str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path) in err and "\n" not in err and (tmp_path / "notes.txt").read_text() == "mine"
