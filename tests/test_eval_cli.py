"""`llmbook eval` end to end: benchmark run on a saved tiny model, ppl, bleu, rouge, contamination, clear errors."""

from __future__ import annotations

import json

import pytest

from llmbook.cli import main
from llmbook.eval import sandbox
from llmbook.eval.bleu import corpus_bleu, corpus_chrf
from llmbook.eval.perplexity import wikitext_documents
from llmbook.eval.rouge import corpus_rouge
from llmbook.eval.tiny import tiny_hf_model, train_bpe_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_file):
    text = data_file("tinystories/tinystories_train_sample.txt").read_text(encoding="utf-8")[:50_000]
    tok = train_bpe_tokenizer([text], vocab_size=300)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_hf_model("gpt2", vocab_size=len(tok), n_positions=128).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_eval_tasks_json(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    code = main(["eval", "--model", str(model_dir), "--tasks", "arc_easy,winogrande", "--data-dir", str(data_dir),
                 "--limit", "4", "--bootstrap-iters", "20", "--json", "--output", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"arc_easy", "winogrande"} and printed["arc_easy"]["n"] == 4
    m = printed["arc_easy"]["metrics"]["acc"]
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    saved = json.loads(out.read_text())
    assert len(saved["results"]["arc_easy"]["items"]) == 4


def test_eval_ppl(model_dir, data_file, tmp_path, capsys):
    text = data_file("wikitext-2/valid.txt").read_text(encoding="utf-8")[:20_000]
    (tmp_path / "wiki.txt").write_text(text, encoding="utf-8")
    assert main(["eval", "ppl", "--model", str(model_dir), "--input", str(tmp_path / "wiki.txt"),
                 "--wikitext", "--max-length", "64", "--stride", "32", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_bytes"] == sum(len(d.encode()) for d in wikitext_documents(text))
    assert res["stride"] == 32 and res["max_length"] == 64 and res["bits_per_byte"] > 0


def test_eval_bleu_and_rouge_files(data_file, tmp_path, capsys):
    eng = data_file("flores200/eng_Latn.dev").read_text(encoding="utf-8").splitlines()[:50]
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("\n".join(" ".join(s.split()[:-2]) for s in eng) + "\n")
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(eng) + "\n")
    eng2 = [" ".join(s.split()[1:]) for s in eng]  # a second, different reference stream
    ref2 = tmp_path / "ref2.txt"
    ref2.write_text("\n".join(eng2) + "\n")
    assert main(["eval", "bleu", "--hyp", str(hyp), "--ref", str(ref), "--ref", str(ref2), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    hyps = hyp.read_text().splitlines()
    assert out["bleu"] == pytest.approx(corpus_bleu(hyps, [eng, eng2]).score)
    assert out["bleu"] != pytest.approx(corpus_bleu(hyps, [eng]).score)  # the second reference counts
    assert out["chrf"] == pytest.approx(corpus_chrf(hyps, [eng, eng2]))
    assert main(["eval", "rouge", "--hyp", str(hyp), "--ref", str(ref), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert r["rouge1"] == pytest.approx(corpus_rouge(eng, hyps)["rouge1"])
    assert main(["eval", "rouge", "--hyp", str(hyp), "--ref", str(ref), "--no-stem", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rouge1"] == pytest.approx(corpus_rouge(eng, hyps, stem=False)["rouge1"])


def test_eval_contamination(data_dir, data_file, tmp_path, capsys):
    lines = [json.loads(x)["question"] for x in data_file("gsm8k/test_dev.jsonl").open()][:2]
    corpus = tmp_path / "train.txt"
    corpus.write_text("unrelated text\n" + "\n".join(lines) + "\n")
    assert main(["eval", "contamination", "--train", str(corpus), "--tasks", "gsm8k", "--data-dir", str(data_dir),
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["gsm8k"]
    assert rep["contaminated"] == [0, 1] and rep["n_items"] == 200


def test_eval_contamination_sees_ngrams_across_line_breaks(data_dir, data_file, tmp_path, capsys):
    q = json.loads(data_file("gsm8k/test_dev.jsonl").open().readline())["question"].split()
    wrapped = "\n".join(" ".join(q[i : i + 5]) for i in range(0, len(q), 5))  # hard-wrapped at 5 words a line
    corpus = tmp_path / "train.txt"
    corpus.write_text("unrelated text\n\n" + wrapped + "\n\nanother document\n")
    assert main(["eval", "contamination", "--train", str(corpus), "--tasks", "gsm8k", "--data-dir", str(data_dir),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gsm8k"]["contaminated"] == [0]


def test_errors_are_one_clear_line(data_dir, model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--tasks", "hellaswog", "--data-dir", str(data_dir)]) == 2
    assert "unknown task 'hellaswog'" in capsys.readouterr().err
    assert main(["eval", "bleu", "--hyp", str(tmp_path / "nope.txt"), "--ref", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt not found" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("x\ny\n")
    (tmp_path / "b.txt").write_text("x\n")
    assert main(["eval", "bleu", "--hyp", str(tmp_path / "a.txt"), "--ref", str(tmp_path / "b.txt")]) == 2
    assert "b.txt has 1 lines but" in capsys.readouterr().err
    bad = tmp_path / "data"
    (bad / "boolq").mkdir(parents=True)
    (bad / "boolq" / "boolq_val_dev.jsonl").write_text('{"question": "q", "passage": "p", "label": "maybe"}\n')
    assert main(["eval", "--model", str(model_dir), "--tasks", "boolq", "--data-dir", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "task 'boolq'" in err and "boolq_val_dev.jsonl:1" in err
    assert main(["eval", "--model", str(tmp_path), "--tasks", "piqa", "--data-dir", str(data_dir)]) == 2
    assert "is neither a training run or checkpoint" in capsys.readouterr().err


def test_code_tasks_need_explicit_opt_in(data_dir, tmp_path, capsys, monkeypatch):
    # refused before any model is loaded (the model path does not even exist)
    code_task = ["eval", "--model", str(tmp_path / "none"), "--tasks", "humaneval", "--data-dir", str(data_dir)]
    assert main(["eval", "--model", str(tmp_path / "none"), "--tasks", "arc_easy,humaneval", "--data-dir",
                 str(data_dir)]) == 2
    assert "humaneval execute model-generated code; pass --allow-code-execution" in capsys.readouterr().err
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: None)  # bubblewrap works
    assert main([*code_task, "--allow-code-execution"]) == 2
    assert "model path" in capsys.readouterr().err  # opted in: it got as far as loading the model
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "bubblewrap (bwrap) is not installed")
    assert main([*code_task, "--allow-code-execution"]) == 2
    err = capsys.readouterr().err
    assert "bubblewrap (bwrap) is not installed: code tasks run model-generated code only in the bubblewrap " \
           "sandbox" in err and "sudo apt-get install bubblewrap" in err and "--allow-unsandboxed-code" in err
    assert "model path" not in err and len(err.strip().splitlines()) == 1
    assert main([*code_task, "--allow-code-execution", "--allow-unsandboxed-code"]) == 2
    err = capsys.readouterr().err
    assert "WARNING: bubblewrap (bwrap) is not installed; running model-generated code on this machine WITHOUT " \
           "isolation" in err and "model path" in err
