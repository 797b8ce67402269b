"""GGUF export: the file's metadata and tensors read back with the `gguf` package; llama.cpp (llama-cpp-python) loads
it and its greedy tokens equal ours in f32 and f16 (GPT-2 and Llama shapes), its tokenizer splits text as ours
does, and Q8_0's perplexity is within a whisker of f32's. Unsupported models and hostile inputs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serve_fixtures import servable_folder, trained
from train_fixtures import synthetic_texts

from llmbook.cli import main
from llmbook.model import GPT, GPTConfig
from llmbook.serve.export_gguf import export_gguf, gguf_tensors
from llmbook.serve.quant import QuantConfig, quantize_model

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (the test extra installs it)")

PROMPTS = ("the cat sat on", "once upon a time there", "a big")


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: `make test-gguf` installs "
                                                   "the gguf-parity extra (it compiles llama.cpp, ~10 minutes)")


def test_file_metadata_and_tensors_read_back(tmp_path):
    model, tok = trained()
    path = export_gguf(model, tok, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    fields = {name: f for name, f in reader.fields.items()}

    def scalar(name):
        f = fields[name]
        return f.parts[f.data[0]].tolist()[0] if f.types[0] != gguf.GGUFValueType.STRING else \
            bytes(f.parts[f.data[0]]).decode()

    assert scalar("general.architecture") == "gpt2" and scalar("gpt2.context_length") == model.config.block_size
    assert scalar("gpt2.block_count") == 2 and len(fields["tokenizer.ggml.tokens"].data) == tok.get_vocab_size()
    ours = gguf_tensors(model)
    for t in reader.tensors:
        np.testing.assert_array_equal(np.asarray(t.data).reshape(ours[t.name].shape), ours[t.name])
    assert {t.name for t in reader.tensors} == set(ours)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_equal_ours(kind, dtype, tmp_path):
    _llama_cpp()
    from llmbook.serve.export_gguf import llama_cpp_greedy

    model, tok = trained(kind=kind)
    if dtype == "f16":  # compare with our model at the precision the file stores
        model = model.half().float()
    path = export_gguf(model, tok, tmp_path / "m.gguf", dtype=dtype)
    for text in PROMPTS:
        prompt = tok.encode(text).ids
        ours = model.generate(torch.tensor([prompt]), 24, temperature=0)[0, len(prompt):].tolist()
        assert llama_cpp_greedy(path, prompt, 24, model.config.block_size) == ours


def test_llama_cpp_tokenizer_splits_text_like_ours(tmp_path):
    llama_cpp = _llama_cpp()
    model, tok = trained()
    path = export_gguf(model, tok, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        for text in synthetic_texts(20, seed=3) + ["Once upon a time, a girl said: \"Hi!\" 123 apples."]:
            ids = tok.encode(text).ids
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
            assert llm.detokenize(ids).decode() == tok.decode(ids)
    finally:
        llm.close()


def test_q8_0_perplexity_is_close_to_f32_and_f32_matches_ours(tmp_path):
    _llama_cpp()
    from llmbook.eval.models import LLMBookLM
    from llmbook.eval.perplexity import perplexity
    from llmbook.serve.export_gguf import LlamaCppLM

    model, tok = trained()
    eos = tok.token_to_id("<|endoftext|>")
    texts = synthetic_texts(12, seed=8)
    ours = perplexity(LLMBookLM(model, tok, eot_id=eos), texts).bits_per_byte
    results = {}
    for dtype in ("f32", "q8_0"):
        lm = LlamaCppLM(export_gguf(model, tok, tmp_path / f"{dtype}.gguf", dtype=dtype), tok, eos,
                        model.config.block_size)
        try:
            results[dtype] = perplexity(lm, texts).bits_per_byte
        finally:
            lm.close()
    assert abs(results["f32"] - ours) < 1e-3 * ours
    assert abs(results["q8_0"] - results["f32"]) < 1e-2 * results["f32"]


# ------------------------------------------------------------------------------------------------ refused
@pytest.mark.parametrize("shape", [dict(pos_emb="alibi"), dict(norm_position="post"), dict(pos_emb="sinusoidal"),
                                   dict(pos_emb="rope", sliding_window=4), dict(mlp="swiglu")])
def test_unsupported_shapes_are_refused(shape, tmp_path):
    model = GPT(GPTConfig(vocab_size=320, block_size=32, n_layer=1, n_head=2, n_embd=32, **shape))
    _, tok = trained()
    with pytest.raises(ValueError, match="GGUF export supports"):
        export_gguf(model, tok, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_quantized_models_bad_dtypes_and_mismatched_tokenizers_are_refused(tmp_path):
    model, tok = trained()
    with pytest.raises(ValueError, match="dtype"):
        export_gguf(model, tok, tmp_path / "m.gguf", dtype="q4_k")
    with pytest.raises(ValueError, match="has no"):
        export_gguf(model, tok, tmp_path / "m.gguf", eos_token="<|nothing|>")
    small = GPT(GPTConfig(**{**model.config.to_dict(), "vocab_size": 100}))
    with pytest.raises(ValueError, match="vocab_size"):
        export_gguf(small, tok, tmp_path / "m.gguf")
    from tokenizers import Tokenizer, models

    with pytest.raises(ValueError, match="byte-level BPE"):
        export_gguf(model, Tokenizer(models.WordLevel({"a": 0}, unk_token="a")), tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="unquantized"):
        export_gguf(quantize_model(model, QuantConfig("int8")), tok, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_export_gguf_and_a_tampered_source(tmp_path, capsys):
    import shutil

    folder = shutil.copytree(servable_folder(), tmp_path / "model")
    assert main(["export", "--format", "gguf", "--checkpoint", str(folder), "--out", str(tmp_path / "m.gguf"),
                 "--dtype", "q8_0"]) == 0
    assert gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors
    spec = json.loads((folder / "model.json").read_text())
    spec["model"]["n_layer"] = 3
    (folder / "model.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert main(["export", "--format", "gguf", "--checkpoint", str(folder), "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "\n" not in err.strip() and not (tmp_path / "x.gguf").exists()
