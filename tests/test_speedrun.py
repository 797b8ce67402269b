"""`llmbook speedrun`: presets, the stage machinery (verify, skip, resume, atomic stages), the compressors, the
report card, the chapters' model helper, and the `ci` preset end to end (@sec-speedrun)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmbook.fileio import run_lock
from llmbook.speedrun import STAGES, available_presets, book_model, load_preset, run_stages
from llmbook.speedrun.book import MODEL_SETTING, speedrun_dir
from llmbook.speedrun.compress import compressor_bits_per_byte
from llmbook.speedrun.config import from_dict
from llmbook.speedrun.machine import matmul_peak, resolve_precision
from llmbook.speedrun.runner import LOG_FILE, STAGE_FILE, Stage, StageError, read_record
from llmbook.speedrun.stages import chunk_document, head_bytes

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ presets


def test_every_preset_loads_and_names_its_model():
    assert {"ci", "cpu", "colab-t4", "h100"} <= set(available_presets())
    for name in available_presets():
        cfg = load_preset(name)
        assert cfg.name == name and cfg.description
        assert cfg.train.model_config().n_layer >= 1
        assert cfg.data.heldout_every >= 2


def test_preset_overrides_reach_stage_and_trainer_tables():
    cfg = load_preset("ci", ["speedrun.eval.limit=3", "train.steps=4", "--speedrun.data.max_docs=20"])
    assert cfg.eval.limit == 3 and cfg.train.train.steps == 4 and cfg.data.max_docs == 20


@pytest.mark.parametrize("data, message", [
    ({"speedrun": {"evaluation": {}}}, r"unknown table\(s\) \['speedrun.evaluation'\]"),
    ({"speedrun": {"eval": {"limt": 3}}}, r"unknown field\(s\) \['limt'\] in \[speedrun.eval\]"),
    ({"speedrun": {"eval": {"limit": "many"}}}, r"\[speedrun.eval\] limit must be int, got 'many'"),
    ({"speedrun": {"data": {"heldout_every": 1}}}, r"heldout_every must be >= 2"),
    ({"speedrun": {"machine": {"precision": "fp8"}}}, r"precision='fp8' is not one of"),
    ({"speedrun": {"quantize": {"bits": [5]}}}, r"bits must list values from 2, 3, 4, 8"),
    ({"optim": {"lr": -1}}, r"\[optim\] lr must be positive"),
    ({"speedrun": {"quantize": {"group_size": 0}}}, r"\[speedrun.quantize\] group_size must be >= 1"),
    ({"speedrun": {"sft": {"preset": "finetune-nope"}}}, r"\[speedrun.sft\] config .*finetune-nope"),
    ({"speedrun": {"dpo": {"overrides": ["dpo.beta=x"]}}}, r"\[speedrun.dpo\]"),
    ({"speedrun": {"machine": {"gpu": "t4"}}, "train": {"gpu": "h100-sxm"}}, r"must name the same GPU"),
    ({"extra": {}}, r"unknown table\(s\) \['extra'\]"),
])
def test_bad_presets_name_the_table_and_field(data, message):
    with pytest.raises(ValueError, match=message):
        from_dict(data, "bad", source="bad.toml")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(FileNotFoundError, match="presets: .*ci.*cpu"):
        load_preset("nope")


# ------------------------------------------------------------------ helpers


def test_chunks_join_back_to_the_book_and_keep_their_size():
    paragraphs = [f"Paragraph {i} " + "word " * (i % 7 + 3) for i in range(200)]
    book = {"id": "g:1", "text": "\n\n".join(paragraphs)}
    pieces = list(chunk_document(book, 500))
    assert "\n\n".join(p["text"] for p in pieces) == book["text"]
    assert [p["id"] for p in pieces[:2]] == ["g:1:0", "g:1:1"]
    assert all(len(p["text"]) < 500 + 60 for p in pieces)
    assert len(list(chunk_document({"id": "x", "text": "one paragraph"}, 500))) == 1


def test_head_bytes_cuts_at_a_character_boundary():
    text = "naïve café ☕ end"
    for n in range(1, len(text.encode())):
        cut = head_bytes(text, n)
        assert text.startswith(cut) and len(cut.encode()) <= n and len(cut.encode()) >= n - 3
    assert head_bytes(text, 0) == text


def test_compressors_report_the_sizes_of_the_standard_library_streams():
    data = ("The quick brown fox jumps over the lazy dog. " * 200 + "Sphinx of black quartz, judge my vow.").encode()
    out = compressor_bits_per_byte(data)
    assert out["xz -9e"]["compressed_bytes"] == len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    assert out["bzip2 -9"]["compressed_bytes"] == len(bz2.compress(data, 9))
    assert out["gzip -9"]["compressed_bytes"] == len(gzip.compress(data, 9, mtime=0))
    for value in out.values():
        assert value["bits_per_byte"] == pytest.approx(8 * value["compressed_bytes"] / len(data))
    with pytest.raises(ValueError, match="empty"):
        compressor_bits_per_byte(b"")
    with pytest.raises(ValueError, match="unknown compressor"):
        compressor_bits_per_byte(data, ("zstd",))


def test_precision_auto_follows_the_hardware(monkeypatch):
    from llmbook.speedrun import machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "fma"})
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert matmul_peak("fp32", n=64, seconds=0.01) > 0


# ------------------------------------------------------------------ the stage machinery


def toy_stages(calls: list[str], fail: str = "") -> list[Stage]:
    """Three stages that write small files (b reads a's output); `fail` names one that raises."""
    def make(name: str, reads: str = ""):
        def run(ctx):
            calls.append(name)
            if name == fail:
                raise StageError(f"{name} broke")
            text = name + (ctx.stage_dir(reads).joinpath("out.txt").read_text() if reads else "")
            (ctx.stage_dir(name) / "out.txt").write_text(text)
            return {"length": len(text)}
        return run
    return [Stage("a", make("a"), settings=("speedrun.data",)),
            Stage("b", make("b", "a"), settings=("speedrun.tokenizer",), after=("a",)),
            Stage("c", make("c"), requires="llmbook_no_such_module")]


def test_stages_run_verify_and_skip_on_resume(tmp_path):
    cfg, calls = load_preset("ci"), []
    records = run_stages(cfg, tmp_path, toy_stages(calls), echo=lambda m: None)
    assert calls == ["a", "b"]
    assert records["b"]["summary"] == {"length": 2} and (tmp_path / "b" / "out.txt").read_text() == "ba"
    assert records["c"]["status"] == "skipped" and records["c"]["reason"] == "skipped: llmbook_no_such_module not available"
    assert set(records["a"]["outputs"]) == {"out.txt"} and records["a"]["wall_s"] >= 0
    with pytest.raises(ValueError, match="already holds a speedrun .*--resume"):
        run_stages(cfg, tmp_path, toy_stages(calls), echo=lambda m: None)
    run_stages(cfg, tmp_path, toy_stages(calls), resume=True, echo=lambda m: None)
    assert calls == ["a", "b"]  # everything verified: nothing reran
    (tmp_path / "a" / "out.txt").write_text("tampered")
    run_stages(cfg, tmp_path, toy_stages(calls), resume=True, echo=lambda m: None)
    assert calls == ["a", "b", "a"]  # a failed its checksum and reran; its output is the same, so b is still valid
    changed = load_preset("ci", ["speedrun.tokenizer.vocab_size=600"])
    run_stages(changed, tmp_path, toy_stages(calls), resume=True, echo=lambda m: None)
    assert calls == ["a", "b", "a", "b"]  # b's settings changed
    events = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert {"start", "done", "verified", "skipped", "end"} <= {e["event"] for e in events}


def test_a_failed_stage_leaves_the_previous_result_and_no_record(tmp_path):
    cfg, calls = load_preset("ci"), []
    run_stages(cfg, tmp_path, toy_stages(calls), echo=lambda m: None)
    before = (tmp_path / "b" / STAGE_FILE).read_text()
    (tmp_path / "a" / "out.txt").write_text("tampered")  # a reruns, then b...
    changed = load_preset("ci", ["speedrun.tokenizer.vocab_size=600"])
    with pytest.raises(StageError, match="b broke"):
        run_stages(changed, tmp_path, toy_stages(calls, fail="b"), resume=True, echo=lambda m: None)
    assert (tmp_path / "b" / STAGE_FILE).read_text() == before  # the old, complete stage is untouched
    assert not (tmp_path / ".b.tmp" / STAGE_FILE).exists()
    events = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert events[-1]["event"] == "failed" and "b broke" in events[-1]["message"]


def test_stage_keys_tell_the_trainer_tables_from_the_stage_tables():
    from llmbook.speedrun.runner import stage_key

    stages = {s.name: s for s in STAGES}
    base = load_preset("ci")
    for override, reruns in (("data.batch_size=4", {"pretrain"}), ("speedrun.data.max_docs=9", {"data", "tokenizer"}),
                             ("speedrun.machine.precision=fp32", {"pretrain", "report"}),
                             ("speedrun.machine.price_per_hour=3", {"report"})):
        changed = load_preset("ci", [override])
        moved = {n for n, s in stages.items() if stage_key(changed, s, {}) != stage_key(base, s, {})}
        assert moved == reruns, override


def test_a_stage_not_selected_and_out_of_date_is_refused_to_later_stages(tmp_path):
    cfg, calls = load_preset("ci"), []
    run_stages(cfg, tmp_path, toy_stages(calls), echo=lambda m: None)
    changed = load_preset("ci", ["speedrun.data.max_docs=9"])  # a's settings change, but only b is asked for

    def reads_a(ctx):
        return ctx.summary("a")

    stages = [toy_stages(calls)[0], Stage("b", reads_a, settings=("speedrun.tokenizer",), after=("a",))]
    with pytest.raises(StageError, match="stage 'b' reads stage 'a', which is out of date"):
        run_stages(changed, tmp_path, stages, only=["b"], resume=True, echo=lambda m: None)


def test_a_skipped_stage_runs_once_its_module_can_be_imported(tmp_path, monkeypatch):
    cfg, calls = load_preset("ci"), []
    run_stages(cfg, tmp_path, toy_stages(calls), echo=lambda m: None)
    assert read_record(tmp_path / "c")["status"] == "skipped"
    monkeypatch.setattr("llmbook.speedrun.runner.missing_module", lambda name: "")
    records = run_stages(cfg, tmp_path, toy_stages(calls), resume=True, echo=lambda m: None)
    assert calls[-1] == "c" and records["c"]["status"] == "done"


def test_only_named_stages_run_and_unknown_names_are_refused(tmp_path):
    cfg, calls = load_preset("ci"), []
    run_stages(cfg, tmp_path, toy_stages(calls), only=["a"], echo=lambda m: None)
    assert calls == ["a"] and read_record(tmp_path / "b") is None
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['z'\]"):
        run_stages(cfg, tmp_path, toy_stages(calls), only=["z"], resume=True, echo=lambda m: None)


def test_a_locked_folder_is_refused(tmp_path):
    from llmbook.fileio import LockedError

    cfg = load_preset("ci")
    with run_lock(tmp_path):
        code = ("import sys; from llmbook.speedrun import load_preset, run_stages; "
                "from test_speedrun import toy_stages; "
                f"run_stages(load_preset('ci'), {str(tmp_path)!r}, toy_stages([]), echo=print)")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "LockedError" in proc.stderr
    assert cfg.name == "ci" and LockedError


def test_report_card_from_a_synthetic_run():
    from llmbook.speedrun.report import build_report, render_markdown

    cfg = load_preset("ci")
    pretrain = {"steps": 10, "resumed_from_step": 0, "tokens": 5120, "params": 1000, "non_embedding_params": 800,
                "model": cfg.train.model_config().to_dict(), "precision": "fp32", "device": "cpu", "train_flops": 3e10,
                "tokens_per_s": 900.0, "peak_flops": 1e11, "peak_source": "measured fp32 matmul peak", "mfu": 0.05,
                "final_loss": 5.0, "final_val_loss": 5.1, "batch_tokens": 512}
    records = {"pretrain": {"status": "done", "summary": pretrain, "wall_s": 30.0, "cpu_s": 50.0, "load_average": [1, 2, 3]},
               "sft": {"status": "skipped", "reason": "skipped: llmbook.finetune.pipeline not available"}}
    report = build_report(cfg, records, {"cpu": "test CPU", "cores": 2, "torch_threads": 2, "torch": "x"})
    assert report["total"] == {"wall_s": 30.0, "cpu_s": 50.0, "budget_minutes": 3.0, "within_budget": True}
    assert {e["gpu"] for e in report["cost"]["same_flops_on_gpus"]} == {"t4", "h100-sxm"}
    text = render_markdown(report)
    assert "5.0% of the measured fp32 matmul peak" in text and "llmbook.finetune.pipeline not available" in text


# ------------------------------------------------------------------ the ci preset end to end


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, data_file):
    data_file("gutenberg/gutenberg_en.txt.xz")
    out = tmp_path_factory.mktemp("speedrun") / "ci"
    from llmbook.speedrun import run

    records = run("ci", str(out), echo=lambda m: None, progress=False)
    return out, records


@pytest.mark.slow
def test_ci_preset_runs_every_stage_and_writes_a_complete_report_card(ci_run):
    out, records = ci_run
    for name in ("data", "tokenizer", "pretrain", "eval", "sft", "dpo", "quantize", "report"):
        assert records[name]["status"] == "done", name
    report = json.loads((out / "report.json").read_text())
    s = report["summaries"]
    assert s["data"]["heldout_documents"] == 2 and s["data"]["train_documents"] == 15
    assert s["tokenizer"]["vocab_size"] == 512 and s["tokenizer"]["train_tokens"] > 0
    assert s["pretrain"]["steps"] == load_preset("ci").train.train.steps and 0 < s["pretrain"]["mfu"] < 1
    held = s["eval"]["heldout"]
    assert held["bytes"] == sum(b["bytes"] for b in held["per_book"]) == 2 * 20_000
    assert 0 < held["ci_low"] <= held["bits_per_byte"] <= held["ci_high"] < 8
    assert held["ratio_to_xz"] == pytest.approx(held["bits_per_byte"] / s["eval"]["compressors"]["xz -9e"]["bits_per_byte"])
    assert set(s["eval"]["benchmarks"]) == {"lambada", "arc_easy"}
    assert [x["prompt"] for x in s["eval"]["samples"]] == load_preset("ci").eval.prompts
    sft, dpo = s["sft"], s["dpo"]
    assert sft["test_items"] == 40 and -1 <= sft["gain"]["value"] <= 1 and sft["books_bits_per_byte_sft"] > 0
    assert dpo["held_out_pairs"] == 20 and 0 <= dpo["implicit_reward_accuracy"]["value"] <= 1
    assert [a["prompt"] for a in sft["answers"]] == load_preset("ci").sft.prompts
    schemes = {r["scheme"]: r for r in s["quantize"]["schemes"]}
    assert set(schemes) == {"fp32", "int8", "int4, group 32"}
    assert schemes["int4, group 32"]["weight_bytes"] < schemes["int8"]["weight_bytes"] < schemes["fp32"]["weight_bytes"]
    assert (out / "quantize" / "int4" / "model.safetensors").is_file()
    text = (out / "report.md").read_text()
    for heading in ("## Stages", "## Data", "## Tokenizer", "## Pretraining", "## Held-out books", "## Benchmarks",
                    "## Fine-tuning", "## Quantization", "## Samples"):
        assert heading in text
    # the held-out books never reach the tokenizer's or the model's training text
    train_text = (out / "data" / "train.jsonl").read_text()
    for line in (out / "data" / "heldout.jsonl").read_text().splitlines():
        book = json.loads(line)["text"]
        assert book[1000:1200] not in train_text


@pytest.mark.slow
def test_ci_preset_resumes_without_rerunning_and_reruns_what_changed(ci_run, tmp_path):
    import shutil

    out, _ = ci_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    lines = len((copy / LOG_FILE).read_text().splitlines())
    from llmbook.speedrun import run

    records = run("ci", str(copy), resume=True, echo=lambda m: None, progress=False)
    events = [json.loads(x) for x in (copy / LOG_FILE).read_text().splitlines()[lines:]]
    assert {e["event"] for e in events} <= {"start", "end", "verified"}  # nothing reran
    assert records["eval"]["status"] == "done"
    lines = len((copy / LOG_FILE).read_text().splitlines())
    run("ci", str(copy), resume=True, overrides=["speedrun.eval.limit=5"], echo=lambda m: None, progress=False)
    reran = {e["stage"] for e in map(json.loads, (copy / LOG_FILE).read_text().splitlines()[lines:]) if e["event"] == "done"}
    assert reran == {"eval", "report"}  # the tuning and quantization stages do not read the evaluation


@pytest.mark.slow
def test_changed_training_settings_retrain_and_keep_the_previous_run_aside(ci_run, tmp_path):
    import shutil

    from llmbook.speedrun import run

    out, _ = ci_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    records = run("ci", str(copy), resume=True, overrides=["train.steps=12"], echo=lambda m: None, progress=False)
    assert records["pretrain"]["summary"]["steps"] == 12 and records["pretrain"]["summary"]["resumed_from_step"] == 0
    previous = copy / ".pretrain.previous"  # the superseded run is kept, checkpoints and settings
    settings = json.loads((previous / "settings.json").read_text())
    assert settings["config"]["train"]["steps"] == load_preset("ci").train.train.steps
    assert any((previous / "checkpoints").iterdir())
    assert {r["status"] for r in records.values()} == {"done"}


@pytest.mark.slow
def test_an_interrupted_pretraining_resumes_from_its_checkpoint(ci_run, tmp_path):
    import shutil

    from llmbook.train import checkpoint as ckpt

    out, _ = ci_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = ckpt.list_checkpoints(copy / "pretrain" / "checkpoints")[0]
    for later in ckpt.list_checkpoints(copy / "pretrain" / "checkpoints")[1:]:
        shutil.rmtree(later)  # as if killed after the first checkpoint
    (copy / "pretrain" / STAGE_FILE).unlink()
    from llmbook.speedrun import run

    records = run("ci", str(copy), resume=True, stages=["pretrain"], echo=lambda m: None, progress=False)
    assert records["pretrain"]["summary"]["resumed_from_step"] == int(first.name.split("_")[1])
    assert records["pretrain"]["summary"]["steps"] == load_preset("ci").train.train.steps


@pytest.mark.slow
def test_book_model_finds_the_speedrun_through_the_setting(ci_run, monkeypatch, tmp_path):
    out, _ = ci_run
    monkeypatch.setenv(MODEL_SETTING, str(out))
    model = book_model()
    assert model.source == "speedrun" and model.run_dir == out / "pretrain" and model.speedrun == out
    assert "speedrun preset `ci`" in model.label and model.steps == load_preset("ci").train.train.steps
    docs = model.held_out(max_docs=5, max_chars=300)
    assert len(docs) == 5 and all(0 < len(d) <= 300 for d in docs)
    monkeypatch.setenv(MODEL_SETTING, str(out / "pretrain"))  # a plain training run works too
    assert book_model().source == "run"
    monkeypatch.setenv(MODEL_SETTING, str(tmp_path))
    with pytest.raises(ValueError, match=f"{MODEL_SETTING}=.*neither a finished speedrun"):
        book_model()
    monkeypatch.delenv(MODEL_SETTING)
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path / "cache"))
    assert speedrun_dir("cpu") == tmp_path / "cache" / "speedrun" / "cpu"
    shutil_copy = speedrun_dir("ci")
    import shutil

    shutil.copytree(out, shutil_copy)
    assert book_model("ci").source == "speedrun"  # found in the cache without any setting


def test_cli_lists_and_refuses_bad_input_in_one_line(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "llmbook", "speedrun", *args], capture_output=True, text=True)

    proc = cli("--list")
    assert proc.returncode == 0 and "ci" in proc.stdout and " -> ".join(s.name for s in STAGES) in proc.stdout
    for args, message in ((["--preset", "nope", "--out", str(tmp_path)], "speedrun preset 'nope' not found"),
                          (["--preset", "ci", "--out", str(tmp_path), "--stages", "data,zz"], "unknown stage(s) ['zz']"),
                          (["--preset", "ci", "--set", "speedrun.eval.limit=x", "--out", str(tmp_path)],
                           "limit must be int")):
        proc = cli(*args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "f").write_text("a file")
    proc = cli("--preset", "ci", "--out", str(tmp_path / "f"))
    assert proc.returncode == 2 and "exists and is not a directory" in proc.stderr
