"""`llmbook quantize | prune | distill | export --format gguf | serve`: each writes what it says, `--help` documents
every option, and bad input is one line on stderr with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serve_fixtures import servable_folder
from train_fixtures import synthetic_texts

from llmbook.cli import main
from llmbook.serve.modelio import load_folder

COMMANDS = ["serve", "quantize", "prune", "distill"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "stories.txt"
    path.write_text("\n".join(synthetic_texts(300, seed=4)), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", COMMANDS + ["export"])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    from llmbook.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"
            assert action.option_strings[-1] in out


@pytest.mark.parametrize("method", ["int8", "int4", "gptq"])
def test_quantize_writes_a_servable_folder(method, tmp_path, text_file, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--checkpoint", str(servable_folder()), "--method", method, "--group-size", "16",
                 "--calibration", str(text_file), "--calibration-tokens", "512", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes_after"] < report["bytes_before"]
    assert load_folder(out).info["quantization"]["method"] == method


def test_prune_and_distill_write_servable_folders(tmp_path, text_file, capsys):
    assert main(["prune", "--checkpoint", str(servable_folder()), "--method", "2:4", "--out", str(tmp_path / "p")]) == 0
    assert json.loads(capsys.readouterr().out)["sparsity"] == 0.5
    assert main(["distill", "--teacher", str(servable_folder()), "--out", str(tmp_path / "d"), "--n-layer", "1",
                 "--n-embd", "16", "--n-head", "2", "--steps", "5", "--batch-size", "2", "--block-size", "32",
                 "--text", str(text_file)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] < report["teacher_params"]
    student = load_folder(tmp_path / "d")
    assert student.model.config.n_layer == 1 and student.info["source"]["teacher"] == str(servable_folder())


def test_chat_template_travels_with_the_model(tmp_path):
    assert main(["prune", "--checkpoint", str(servable_folder(chat=True)), "--out", str(tmp_path / "p")]) == 0
    assert load_folder(tmp_path / "p").chat is not None


@pytest.mark.parametrize("argv,message", [
    (["quantize", "--checkpoint", "{missing}", "--out", "{tmp}/q"], "does not exist"),
    (["quantize", "--checkpoint", "{model}", "--method", "int4", "--group-size", "7", "--out", "{tmp}/q"],
     "group_size"),
    (["quantize", "--checkpoint", "{model}", "--method", "int4", "--group-size", "128", "--out", "{tmp}/q"],
     "multiple of group_size"),
    (["quantize", "--checkpoint", "{model}", "--method", "gptq", "--calibration", "{tmp}/none.txt", "--out",
      "{tmp}/q"], "does not exist"),
    (["prune", "--checkpoint", "{bad}", "--out", "{tmp}/p"], "not valid JSON"),
    (["distill", "--teacher", "{model}", "--out", "{tmp}/d", "--text", "{tiny}"], "tokens"),
    (["distill", "--teacher", "{model}", "--out", "{tmp}/d", "--alpha", "3", "--text", "{tiny}"], "alpha"),
    (["export", "--format", "gguf", "--checkpoint", "{quantized}", "--out", "{tmp}/m.gguf"], "unquantized"),
    (["export", "--checkpoint", "{model}", "--out", "{tmp}/hf", "--dtype", "q8_0"], "--format gguf"),
    (["serve", "--checkpoint", "{model}", "--api-key-file", "{tmp}/nokey"], "does not exist"),
    (["serve", "--checkpoint", "{model}", "--max-len", "100000"], "exceeds block_size"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("{oops")
    (tmp_path / "tiny.txt").write_text("too short")
    quantized = tmp_path / "quantized"
    if "{quantized}" in argv:
        assert main(["quantize", "--checkpoint", str(servable_folder()), "--out", str(quantized)]) == 0
    capsys.readouterr()
    values = {"{missing}": str(tmp_path / "missing"), "{model}": str(servable_folder()), "{bad}": str(bad),
              "{tiny}": str(tmp_path / "tiny.txt"), "{quantized}": str(quantized)}
    argv = [values.get(a, a).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["prune", "--checkpoint", "x", "--out", "y", "--sparsity", "1.5"],
                                  ["serve", "--checkpoint", "x", "--slots", "0"],
                                  ["quantize", "--checkpoint", "x", "--out", "y", "--method", "int2"]])
def test_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2


def test_llmbook_serve_runs_as_a_process(tmp_path):
    """The README's command: start `llmbook serve` on 127.0.0.1, query it with the openai client, stop it."""
    import socket
    import time

    openai = pytest.importorskip("openai")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "key"
    key.write_text("sesame\n")
    proc = subprocess.Popen([sys.executable, "-m", "llmbook", "serve", "--checkpoint", str(servable_folder()),
                             "--port", str(port), "--quantize", "int8", "--name", "tiny", "--api-key-file", str(key),
                             "--max-len", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "serving" and first["quantization"]["method"] == "int8" and first["auth"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesame", max_retries=0, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            try:
                out = client.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0)
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert out.usage.completion_tokens >= 1
        with pytest.raises(openai.BadRequestError, match="maximum context length is 32 tokens"):  # --max-len
            client.completions.create(model="tiny", prompt="the cat", max_tokens=31)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["record"].get("event") == "generation" and r["record"]["tokens"] >= 1 for r in records)


def test_missing_optional_packages_are_named(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", "--checkpoint", str(servable_folder())]) == 2
    assert "pip install 'llmbook[serve]'" in capsys.readouterr().err
