"""GPU-only checks (skipped cleanly without CUDA): the same engine code decodes on a GPU with the CPU's greedy
tokens, and vLLM serves the Hugging Face export with our greedy tokens (the deployment path of @sec-inference-export)."""

from __future__ import annotations

import pytest
import torch

from serve_fixtures import trained

from llmbook.serve.engine import Engine, SamplingParams

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")]

PROMPTS = ("the cat sat on", "once upon a time there", "a big")


def _greedy_cpu(model, tok, max_tokens: int) -> list[list[int]]:
    prompts = [tok.encode(t).ids for t in PROMPTS]
    out = model.generate(torch.tensor([prompts[0]]), 1, temperature=0)  # warm the model up on CPU
    assert out.shape[1] == len(prompts[0]) + 1
    return [model.generate(torch.tensor([p]), max_tokens, temperature=0)[0, len(p):].tolist() for p in prompts]


def test_engine_on_cuda_gives_the_cpu_greedy_tokens():
    model, tok = trained()
    expected = _greedy_cpu(model, tok, 20)
    engine = Engine(model.cuda(), tok.decode, None, n_slots=4)
    got = engine.generate([tok.encode(t).ids for t in PROMPTS], SamplingParams(max_tokens=20, temperature=0))
    assert [c.token_ids for c in got] == expected


def test_vllm_serves_the_hf_export_with_our_greedy_tokens(tmp_path):
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm on a CUDA machine)")
    from transformers import PreTrainedTokenizerFast

    from llmbook.model import to_hf

    model, tok = trained()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    to_hf(model, tmp_path / "hf", tokenizer=hf_tok)
    expected = _greedy_cpu(model, tok, 20)
    llm = vllm.LLM(model=str(tmp_path / "hf"), dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2,
                   max_model_len=model.config.block_size)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": tok.encode(t).ids} for t in PROMPTS], params)
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
