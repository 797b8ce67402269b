"""Every bad input ends in one line `llmbook <cmd>: error: ...` naming the file, field and value, with exit status
2: never a traceback, never a moved, replaced or half-written file (@sec-scale-checkpoint).

Outputs that cannot be written are exercised for real in a child process: a folder without write permission
(root is made to obey it by dropping its override capability), and a full disk, simulated by a file-size
limit (`RLIMIT_FSIZE`): every write past it fails in the kernel, as on a full disk, only with EFBIG instead
of ENOSPC.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cli_fixtures import assert_one_line_error, main_error, readonly_dir, run_llmbook
from llmbook.cli import main
from train_fixtures import config_text, make_bpe_shards, synthetic_texts

FULL_DISK = 1024  # bytes: larger than a lock file, smaller than every output below


def hellaswag_items(n: int) -> str:
    words = synthetic_texts(n, seed=3)
    return "".join(json.dumps({"query": w[:60], "endings": [w[60:90], w[90:120], " the cat.", " a dog."],
                               "label": i % 4}) + "\n" for i, w in enumerate(words))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a corpus, a trained tokenizer, a 2-step training run with a real tokenizer, benchmark data."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "source": "synthetic"}) + "\n" for t in synthetic_texts(60)))
    shards = make_bpe_shards(root / "shards")
    cfg = root / "run.toml"
    cfg.write_text(config_text(shards, model={"vocab_size": 300, "block_size": 64}, data={"block_size": 64},
                               train={"steps": 2, "eval_every": 0}, checkpoint={"every": 1, "keep": 2}))
    run = root / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    tasks = root / "tasks"
    (tasks / "hellaswag").mkdir(parents=True)
    (tasks / "hellaswag" / "hellaswag_val_dev.jsonl").write_text(hellaswag_items(8))
    return SimpleNamespace(root=root, corpus=corpus, cfg=cfg, run=run, tok=root / "tok", tasks=tasks)


# The commands that write an output (`out` is the folder, or for eval the results file), by their error prefix.
WRITERS = {
    "data prepare": ("data", lambda w, out: ["data", "prepare", "--input", w.corpus, "--out", out, "--filters", "none",
                                            "--dedup", "none"]),
    "tokenizer train": ("tokenizer", lambda w, out: ["tokenizer", "train", "--input", w.corpus, "--vocab-size", "300",
                                                     "--out", out]),
    "data tokenize": ("data", lambda w, out: ["data", "tokenize", "--input", w.corpus, "--tokenizer", w.tok,
                                             "--out", out]),
    "train": ("train", lambda w, out: ["train", "--config", w.cfg, "--out", out]),
    "export": ("export", lambda w, out: ["export", "--checkpoint", w.run, "--out", out]),
    "eval --output": ("eval", lambda w, out: ["eval", "--model", w.run, "--tasks", "hellaswag", "--data-dir", w.tasks,
                                             "--bootstrap-iters", "10", "--output", out]),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", [n for n in WRITERS if n != "eval --output"])
def test_out_naming_an_existing_file_is_refused_and_the_file_kept(ws, tmp_path, capsys, name):
    """Item: data tokenize renamed such a file to a hidden .NAME.old-XXXX and crashed; now nothing moves."""
    command, argv = WRITERS[name]
    user_file = tmp_path / "notes.txt"
    user_file.write_text("precious")
    main_error(capsys, argv(ws, user_file), command, str(user_file), "not a directory")
    assert user_file.read_text() == "precious" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_eval_output_naming_a_folder_is_refused_before_evaluating(ws, tmp_path, capsys):
    main_error(capsys, WRITERS["eval --output"][1](ws, tmp_path), "eval", "--output", str(tmp_path), "is a directory")


def test_data_tokenize_refuses_a_folder_it_did_not_write(ws, tmp_path, capsys):
    """A folder with someone else's manifest.json is neither replaced nor moved aside."""
    (tmp_path / "manifest.json").write_text('{"name": "my project"}')
    (tmp_path / "data.csv").write_text("a,b\n")
    before = snapshot(tmp_path)
    main_error(capsys, WRITERS["data tokenize"][1](ws, tmp_path), "data", str(tmp_path), "manifest.json",
               "refusing to replace it")
    assert snapshot(tmp_path) == before and not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))


def test_data_tokenize_refuses_a_folder_another_command_is_writing(ws, tmp_path, capsys):
    """Its own lock lives beside the folder it swaps in; the folder's lock, held by a training run, is respected too."""
    from llmbook.fileio import run_lock

    run = shutil.copytree(ws.run, tmp_path / "run")
    before = snapshot(run)
    with run_lock(run):  # a training run writing there
        main_error(capsys, WRITERS["data tokenize"][1](ws, run), "data", str(run), "is in use by process")
    assert snapshot(run) == before and not (run / "manifest.json").exists()


def test_export_refuses_a_folder_that_is_not_a_model_folder(ws, tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine")
    main_error(capsys, WRITERS["export"][1](ws, tmp_path), "export", str(tmp_path), "'thesis.tex'",
               "is not a model folder")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_export_does_not_overwrite_an_applications_config_json(ws, tmp_path, capsys):
    """A config.json alone does not make a model folder: a project's own config.json and files stay untouched."""
    (tmp_path / "config.json").write_text('{"name": "my app", "port": 8080}')
    (tmp_path / "app.py").write_text("print('mine')")
    before = snapshot(tmp_path)
    main_error(capsys, WRITERS["export"][1](ws, tmp_path), "export", str(tmp_path), "is not a model folder")
    assert snapshot(tmp_path) == before
    step = shutil.copytree(ws.run / "checkpoints" / "step_00000002", tmp_path / "step")  # its config.json is ours
    before = snapshot(step)
    main_error(capsys, WRITERS["export"][1](ws, step), "export", str(step), "is not a model folder")
    assert snapshot(step) == before  # the checkpoint still matches its manifest
    model = tmp_path / "model"  # a model folder, such as an earlier export, is rewritten in place
    assert main(["export", "--checkpoint", str(ws.run), "--out", str(model)]) == 0
    (model / "notes.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(ws.run), "--out", str(model)]) == 0
    assert (model / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", list(WRITERS))
def test_out_in_a_read_only_folder_is_one_line(ws, tmp_path, name):
    command, argv = WRITERS[name]
    ro = readonly_dir(tmp_path / "ro")
    try:
        out = ro / ("results.json" if name == "eval --output" else "out")
        done = run_llmbook(*argv(ws, out), obey_permissions=True)
        assert_one_line_error(done.returncode, done.stderr, command, str(ro), "Permission denied")
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("name", ["data prepare", "tokenizer train", "data tokenize", "export", "eval --output"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_output(ws, tmp_path, name):
    command, argv = WRITERS[name]
    out = tmp_path / ("results.json" if name == "eval --output" else "out")
    assert main([str(a) for a in argv(ws, out)]) == 0
    before = snapshot(tmp_path)
    done = run_llmbook(*argv(ws, out), fsize=FULL_DISK)
    assert_one_line_error(done.returncode, done.stderr, command, str(tmp_path), "File too large")
    assert snapshot(tmp_path) == before  # no temp file, no lock file, no half-written output left


def test_training_on_a_full_disk_names_the_metrics_file(ws, tmp_path):
    """The metrics log outgrows the disk before the first checkpoint (a checkpoint write is tested in test_train.py)."""
    run = tmp_path / "run"
    done = run_llmbook("train", "--config", ws.cfg, "--out", run, "--train.steps=30", "--train.log_every=1",
                       "--checkpoint.every=0", fsize=FULL_DISK)
    assert_one_line_error(done.returncode, done.stderr, "train", f"{run / 'metrics.jsonl'}: File too large")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]  # the lock is released, nothing else written


def bad_files(root: Path) -> dict[str, Path]:
    files = {"bytes.json": b"\xff\xfe\x00garbage", "wrong.json": b'{"model": 1}', "bad.txt.xz": b"not xz data" * 20,
             "bad.txt.gz": b"not gzip data" * 20, "bad.parquet": b"not parquet data" * 20,
             "latin1.txt": "Caf\xe9 au lait, na\xefve r\xe9sum\xe9.\n\nAnother paragraph here.\n".encode("latin-1")}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in files}


@pytest.mark.parametrize("case", ["tokenizer-bytes", "tokenizer-json", "input-xz", "input-gz", "input-parquet",
                                  "ppl-latin1", "bleu-latin1", "bpe-bytes"])
def test_garbage_or_non_utf8_files_name_the_file(ws, tmp_path, capsys, case):
    bad = bad_files(tmp_path)
    out = tmp_path / "out"
    argv, command, needles = {
        "tokenizer-bytes": (["data", "tokenize", "--input", ws.corpus, "--tokenizer", bad["bytes.json"], "--out", out],
                            "data", [bad["bytes.json"], "not a valid tokenizer.json"]),
        "tokenizer-json": (["data", "tokenize", "--input", ws.corpus, "--tokenizer", bad["wrong.json"], "--out", out],
                           "data", [bad["wrong.json"], "not a valid tokenizer.json"]),
        "input-xz": (["tokenizer", "train", "--input", bad["bad.txt.xz"], "--vocab-size", "300", "--out", out],
                     "tokenizer", [bad["bad.txt.xz"], "cannot read it as .txt.xz data"]),
        "input-gz": (["data", "prepare", "--input", bad["bad.txt.gz"], "--out", out], "data",
                     [bad["bad.txt.gz"], "cannot read it as .txt.gz data"]),
        "input-parquet": (["data", "tokenize", "--input", bad["bad.parquet"], "--tokenizer", ws.tok, "--out", out],
                          "data", [bad["bad.parquet"], "cannot read it as .parquet data"]),
        "ppl-latin1": (["eval", "ppl", "--model", ws.run, "--input", bad["latin1.txt"]], "eval",
                       ["--input", bad["latin1.txt"], "not UTF-8 text (byte 0xe9"]),
        "bleu-latin1": (["eval", "bleu", "--hyp", bad["latin1.txt"], "--ref", ws.corpus], "eval",
                        ["--hyp", bad["latin1.txt"], "not UTF-8"]),
        "bpe-bytes": (["data", "tokenize", "--input", ws.corpus, "--tokenizer", tmp_path, "--out", out], "data",
                      [tmp_path / "tokenizer.json", "not a valid tokenizer.json"]),
    }[case]
    if case == "bpe-bytes":
        (tmp_path / "tokenizer.json").write_bytes(b"\xc3\x28 not utf-8")
    main_error(capsys, argv, command, *map(str, needles))


@pytest.mark.parametrize("content,needle", [
    (b'{"step": 1}\n[1, 2]\n{"step": 2}\n', "line 2 is '[1, 2]', not a JSON object"),
    (b'{"step": 1}\n\xff\xfe\n', "not UTF-8 text (byte 0xff"),
], ids=["not-an-object", "not-utf8"])
def test_resume_with_a_metrics_log_that_is_not_ours_names_it(ws, tmp_path, capsys, content, needle):
    run = shutil.copytree(ws.run, tmp_path / "run")
    (run / "metrics.jsonl").write_bytes(content)
    main_error(capsys, ["train", "--config", ws.cfg, "--out", run, "--resume", "--train.steps=3"], "train",
               f"{run / 'metrics.jsonl'}: {needle}")
    assert (run / "metrics.jsonl").read_bytes() == content


def test_a_config_that_is_not_utf8_or_is_a_folder_names_it(ws, tmp_path, capsys):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(ws.cfg.read_bytes() + "# r\xe9sum\xe9\n".encode("latin-1"))
    main_error(capsys, ["train", "--config", bad, "--out", tmp_path / "run"], "train", str(bad), "not UTF-8 text")
    main_error(capsys, ["train", "--config", tmp_path, "--out", tmp_path / "run"], "train", str(tmp_path),
               "is a directory, not a TOML file")


def test_a_vocabulary_size_typo_is_one_line_not_an_out_of_memory_abort(ws, tmp_path):
    done = run_llmbook("tokenizer", "train", "--input", ws.corpus, "--vocab-size", "32000000000",
                       "--out", tmp_path / "t")
    assert_one_line_error(done.returncode, done.stderr, "tokenizer", "--vocab-size must be at most", "32,000,000,000")


def test_non_utf8_documents_are_repaired_and_counted_not_fatal(ws, tmp_path, capsys):
    """Bytes that are not UTF-8 in a corpus become U+FFFD (as `data prepare` repairs them), and the count is shown."""
    latin1 = bad_files(tmp_path)["latin1.txt"]
    assert main(["tokenizer", "train", "--input", str(latin1), "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 0
    assert "replaced bytes that are not UTF-8 by U+FFFD in 1 documents {'latin1': 1}" in capsys.readouterr().out
    assert main(["data", "tokenize", "--input", str(latin1), "--tokenizer", str(ws.tok), "--out", str(tmp_path / "s"),
                 "--val-fraction", "0"]) == 0
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["documents_with_invalid_utf8"] == {"latin1": 1}


def test_resume_with_a_changed_model_shape_names_the_field(ws, tmp_path, capsys):
    run = shutil.copytree(ws.run, tmp_path / "run")
    main_error(capsys, ["train", "--config", ws.cfg, "--out", run, "--resume", "--model.n_layer=3"], "train",
               "step_00000002 was written for a different model shape", "blocks.2.", "n_layer: 2 in the checkpoint, 3 now")
    main_error(capsys, ["train", "--config", ws.cfg, "--out", run, "--resume", "--model.n_embd=48", "--model.n_head=2"],
               "train", "wte.weight has shape [300, 32] in the checkpoint and [300, 48] in this model")


def _replace_in_checkpoint(step: Path, name: str, obj) -> None:
    """Save `obj` as `name` in checkpoint `step` and record it in the manifest, as a checkpoint of another
    version, or a hand-edited one, would hold it."""
    from llmbook.fileio import file_sha256

    torch.save(obj, step / name)
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": (step / name).stat().st_size, "sha256": file_sha256(step / name)}
    (step / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name,obj,needle", [
    ("rank_00000.pt", torch.zeros(2), "rank_00000.pt has no 'step'"),
    ("rank_00000.pt", {}, "rank_00000.pt has no 'step'"),
    ("rank_00000.pt", "step-as-text", "rank_00000.pt has a step or token count that is not an integer"),
    ("optimizer.pt", {"state": {}}, "optimizer.pt does not fit this model's optimizer"),
], ids=["rank-tensor", "rank-empty", "rank-step-text", "optimizer-without-groups"])
def test_resume_from_a_checkpoint_with_foreign_state_is_one_line(ws, tmp_path, capsys, name, obj, needle):
    run = shutil.copytree(ws.run, tmp_path / "run")
    step = run / "checkpoints" / "step_00000002"
    if obj == "step-as-text":
        obj = {**torch.load(step / name, weights_only=True), "step": "2"}
    _replace_in_checkpoint(step, name, obj)
    main_error(capsys, ["train", "--config", ws.cfg, "--out", run, "--resume", "--train.steps=3"], "train",
               "step_00000002", needle)


@pytest.mark.parametrize("files,needle", [(None, "field 'files' is missing"), ([1, 2], "field 'files' is malformed"),
                                          ({"model.safetensors": "abc"}, "files['model.safetensors'] is malformed"),
                                          ({"../../etc/passwd": {"bytes": 1, "sha256": "0"}}, "outside the checkpoint")])
def test_a_manifest_without_or_with_malformed_files(ws, tmp_path, capsys, files, needle):
    run = shutil.copytree(ws.run, tmp_path / "run")
    step = run / "checkpoints" / "step_00000002"
    manifest = json.loads((step / "manifest.json").read_text())
    manifest.pop("files") if files is None else manifest.update(files=files)
    (step / "manifest.json").write_text(json.dumps(manifest))
    main_error(capsys, ["generate", "--checkpoint", step, "--max-new-tokens", "3"], "generate", "step_00000002",
               "manifest.json", needle)
    # a run directory falls back to the previous, intact checkpoint
    assert main(["generate", "--checkpoint", str(run), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("# step_00000001")


@pytest.mark.parametrize("flag,value,needle", [("--temperature", "nan", "--temperature must be a finite number >= 0"),
                                               ("--temperature", "-1", "got -1.0"),
                                               ("--samples", "0", "--samples must be at least 1, got 0"),
                                               ("--prompt", "caf\udce9", "--prompt 'caf\\udce9': not UTF-8 text"),
                                               ("--max-new-tokens", "0", "--max-new-tokens must be at least 1"),
                                               ("--top-k", "-3", "--top-k must be >= 0 (0: off), got -3")])
def test_generate_sampling_settings(ws, capsys, flag, value, needle):
    main_error(capsys, ["generate", "--checkpoint", ws.run, flag, value], "generate", needle)


@pytest.mark.parametrize("argv,needle", [
    (["--bootstrap-iters", "-5"], "--bootstrap-iters must be at least 1, got -5"),
    (["--num-fewshot", "-1"], "--num-fewshot must be at least 0, got -1"),
    (["--device", "tpu"], "--device 'tpu' is not a device this command can use"),
    pytest.param(["--device", "cuda"], "--device 'cuda': no cuda device is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_eval_settings(ws, capsys, argv, needle):
    main_error(capsys, ["eval", "--model", ws.run, "--tasks", "hellaswag", "--data-dir", ws.tasks, *argv], "eval", needle)


def test_eval_ppl_device(ws, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("the cat sat on a mat.\n")
    main_error(capsys, ["eval", "ppl", "--model", ws.run, "--input", text, "--device", "tpu"], "eval", "'tpu'")


@pytest.mark.parametrize("override,needle", [("--train.steps=1.5", "[train] steps must be an integer, got 1.5"),
                                             ("--optim.lr=inf", "[optim] lr must be a finite number, got inf"),
                                             ("--optim.eps=inf", "[optim] eps must be a finite number, got inf"),
                                             ("--optim.lr=nan", "[optim] lr must be a finite number, got nan"),
                                             ("--train.compile=maybe", "[train] compile must be true or false, got 'maybe'"),
                                             ("--data.batch_size=2.5", "[data] batch_size must be an integer, got 2.5"),
                                             ("--model.bias=maybe", "GPTConfig.bias must be true or false"),
                                             ("--model.dropout=abc", "GPTConfig.dropout must be a number, got 'abc'")])
def test_train_overrides_are_validated(ws, tmp_path, capsys, override, needle):
    main_error(capsys, ["train", "--config", ws.cfg, "--out", tmp_path / "run", override], "train", needle)
    assert not (tmp_path / "run").exists()


def test_integral_float_steps_are_accepted(ws):
    from llmbook.train.config import load_config

    cfg = load_config(ws.cfg, ["train.steps=1e3"])
    assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)


def test_resume_with_fewer_steps_than_the_checkpoint_says_so(ws, tmp_path, capsys):
    run = shutil.copytree(ws.run, tmp_path / "run")
    main_error(capsys, ["train", "--config", ws.cfg, "--out", run, "--resume", "--train.steps=1"], "train",
               "step_00000002 is at step 2, past [train] steps=1", "raise train.steps")
    assert main(["train", "--config", str(ws.cfg), "--out", str(run), "--resume"]) == 0  # equal: nothing to do
    assert "already complete ([train] steps=2); nothing to train" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--params", "inf", "--tokens", "1e9"], "--params must be a finite number, got inf"),
    (["--params", "1e9", "--tokens", "nan"], "--tokens must be a finite number, got nan"),
    (["--flops", "inf"], "--flops must be a finite number, got inf"),
    (["--params", "1e9", "--tokens", "1e9", "--price", "inf"], "--price must be a finite number, got inf"),
    (["--params", "1e300", "--tokens", "1e300"], "the estimate overflows: train_flops = inf"),
    (["chinchilla", "--flops", "inf"], "--flops must be a finite number, got inf"),
])
def test_costs_never_prints_infinity_or_nan(capsys, argv, needle):
    line = main_error(capsys, ["costs", *argv, "--json"], "costs", needle)
    assert "Infinity" not in line
    assert main(["costs", "--params", "1e9", "--tokens", "2e10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert all(math.isfinite(v) for v in result.values() if isinstance(v, float))


def test_an_empty_task_file_is_an_error_not_nan(ws, tmp_path, capsys):
    (tmp_path / "hellaswag").mkdir()
    empty = tmp_path / "hellaswag" / "hellaswag_val_dev.jsonl"
    empty.write_text("\n")
    main_error(capsys, ["eval", "--model", ws.run, "--tasks", "hellaswag", "--data-dir", tmp_path], "eval",
               f"data file {empty} holds no items")


def test_unknown_language_warns_instead_of_dropping_everything_silently(ws, tmp_path, capsys):
    assert main(["data", "prepare", "--input", str(ws.corpus), "--out", str(tmp_path), "--languages", "xx",
                 "--filters", "language", "--dedup", "none"]) == 0
    err = capsys.readouterr().err
    assert "llmbook data prepare: warning: --languages xx: not a language the identifier knows (en, de" in err
    assert "every document was removed, 60 of them by the language filter (languages xx)" in err
