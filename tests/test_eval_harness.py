"""Harness parity: per-item log-likelihoods, acc and acc_norm equal an independent `transformers` computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmbook.eval import harness, perplexity
from llmbook.eval.models import HFCausalLM
from llmbook.eval.tasks import TASKS, extract_gsm8k_answer, get_task
from llmbook.eval.tiny import tiny_hf_model, train_bpe_tokenizer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer(data_file):
    text = data_file("tinystories/tinystories_train_sample.txt").read_text(encoding="utf-8")[:100_000]
    return train_bpe_tokenizer([text], vocab_size=400)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf(request, tokenizer):
    return tiny_hf_model(request.param, vocab_size=len(tokenizer), n_positions=256, seed=3), tokenizer


def reference_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """Straight transformers: one unpadded forward pass per request, lm-eval's tokenization convention."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    window = whole[-(model.config.max_position_embeddings + 1):]  # keep the most recent tokens if too long
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([window[:-1]])).logits[0]
    logp = F.log_softmax(logits.double(), -1)[-len(cont):]
    target = torch.tensor(cont)
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


@pytest.mark.parametrize("task_name,limit", [("arc_easy", 6), ("hellaswag", 4), ("winogrande", 4), ("piqa", 4),
                                             ("mmlu", 4), ("boolq", 3)])
def test_multiple_choice_parity_with_transformers(hf, data_dir, task_name, limit):
    model, tok = hf
    lm = HFCausalLM(model, tok, batch_size=5)
    result = harness.evaluate_task(lm, task_name, data_dir, limit=limit, bootstrap_iters=50)
    task = get_task(task_name)
    docs = task.load(data_dir)[:limit]
    accs, norms = [], []
    for doc, item in zip(docs, result["items"]):
        choices = task.doc_to_choices(doc)
        contexts = task.doc_to_contexts(doc) if task.doc_to_contexts else [harness.build_context(task, doc, [])] * len(choices)
        ref = [reference_loglikelihood(model, tok, c, " " + ch)[0] for c, ch in zip(contexts, choices)]
        np.testing.assert_allclose(item["loglikelihoods"], ref, atol=1e-4, rtol=1e-5)
        gold = task.doc_to_target(doc)
        accs.append(float(np.argmax(ref) == gold))
        norms.append(float(np.argmax(np.array(ref) / np.array([len(c) for c in choices])) == gold))
    assert result["metrics"]["acc"]["value"] == pytest.approx(np.mean(accs))
    if "acc_norm" in result["metrics"]:
        assert result["metrics"]["acc_norm"]["value"] == pytest.approx(np.mean(norms))


def test_lambada_is_greedy_and_perplexity_parity(hf, data_dir):
    model, tok = hf
    res = harness.evaluate_task(HFCausalLM(model, tok, batch_size=3), "lambada", data_dir, limit=5, bootstrap_iters=50)
    docs = get_task("lambada").load(data_dir)[:5]
    ref = [reference_loglikelihood(model, tok, d["prompt"], " " + d["label"]) for d in docs]
    for item, (ll, greedy) in zip(res["items"], ref):
        assert item["loglikelihood"] == pytest.approx(ll, abs=1e-4)
        assert item["acc"] == float(greedy)
    assert res["metrics"]["perplexity"]["value"] == pytest.approx(math.exp(-np.mean([r[0] for r in ref])), rel=1e-4)


def test_batching_and_order_do_not_change_scores(hf):
    model, tok = hf
    reqs = [("Once upon a time", " there was"), ("The cat", " sat on the mat."), ("A", " b c d e f g h"),
            ("Lily liked to play in the park with her dog", " Max.")]
    one = HFCausalLM(model, tok, batch_size=1).loglikelihood(reqs)
    many = HFCausalLM(model, tok, batch_size=4).loglikelihood(reqs[::-1])[::-1]
    for (a, ga), (b, gb) in zip(one, many):
        assert a == pytest.approx(b, abs=1e-5) and ga == gb


def test_rolling_loglikelihood_matches_brute_force(hf, data_file):
    model, tok = hf
    text = data_file("tinystories/tinystories_valid_sample.txt").read_text(encoding="utf-8")[:300]
    ids = tok.encode(text, add_special_tokens=False)
    seq = [tok.eos_token_id] + ids
    lm = HFCausalLM(model, tok, max_length=32, batch_size=4)
    with torch.no_grad():  # stride 1: every token sees exactly min(i, 32) previous tokens
        brute = sum(
            float(F.log_softmax(model(input_ids=torch.tensor([seq[max(0, i - 32) : i]])).logits[0, -1].double(), -1)[seq[i]])
            for i in range(1, len(seq))
        )
    assert lm.loglikelihood_rolling([text], stride=1)[0].logprob == pytest.approx(brute, abs=1e-3)
    # stride = max_length: disjoint chunks of 32 predicted tokens, each one forward pass over the 32 tokens
    # before its end (lm-evaluation-harness's rolling windows: the last, short chunk gets a full window)
    chunks = 0.0
    with torch.no_grad():
        for s in range(1, len(seq), 32):
            e = min(s + 32, len(seq))
            window = seq[max(0, e - 33) : e]
            logp = F.log_softmax(model(input_ids=torch.tensor([window[:-1]])).logits[0].double(), -1)
            chunks += float(logp[-(e - s):].gather(1, torch.tensor(seq[s:e])[:, None]).sum())
    disjoint = lm.loglikelihood_rolling([text])[0]
    assert disjoint.logprob == pytest.approx(chunks, abs=1e-3) and disjoint.n_tokens == len(ids)


def test_perplexity_units_and_stride_effect(hf, data_file):
    model, tok = hf
    text = data_file("wikitext-2/valid.txt").read_text(encoding="utf-8")[:6000]
    docs = perplexity.wikitext_documents(text)
    assert docs[0].startswith("= Homarus gammarus =")
    lm = HFCausalLM(model, tok, max_length=64, batch_size=8)
    full = perplexity.perplexity(lm, docs)
    assert full.n_bytes == sum(len(d.encode()) for d in docs)
    assert full.bits_per_byte == pytest.approx(full.nll / full.n_bytes / math.log(2))
    assert math.log(full.token_perplexity) * full.n_tokens == pytest.approx(math.log(full.word_perplexity) * full.n_words)
    lo, hi = full.interval("bits_per_byte", iters=200)  # one document: the interval collapses to the point
    assert lo == pytest.approx(full.bits_per_byte) and hi == pytest.approx(full.bits_per_byte)
    two = perplexity.perplexity(lm, [docs[0][:3000], docs[0][3000:]])
    lo, hi = two.interval("bits_per_byte", iters=200)
    assert lo < two.bits_per_byte < hi
    d = two.to_dict(iters=50)
    assert d["n_documents"] == 2 and d["word_perplexity_ci_low"] <= d["word_perplexity"] <= d["word_perplexity_ci_high"]
    with pytest.raises(ValueError, match="metric="):
        full.interval("accuracy")
    strided = perplexity.perplexity(lm, docs, stride=16)
    assert strided.n_tokens == full.n_tokens and strided.nll != full.nll
    with pytest.raises(ValueError, match="stride must be in"):
        perplexity.perplexity(lm, docs, stride=65)


def test_fewshot_context_and_determinism(data_dir):
    task = get_task("arc_easy")
    docs = task.load(data_dir)[:3]
    pool = task.load(data_dir, fewshot=True)
    import random

    a = harness.sample_fewshot(task, docs, pool, 2, random.Random(1), same_split=False)
    b = harness.sample_fewshot(task, docs, pool, 2, random.Random(1), same_split=False)
    assert a == b
    ctx = harness.build_context(task, docs[0], a[0])
    assert ctx.count("Question:") == 3 and ctx.endswith("\nAnswer:")
    gold_text = task.doc_to_choices(a[0][0])[task.doc_to_target(a[0][0])]
    assert f"Answer: {gold_text}\n\n" in ctx
    mmlu = get_task("mmlu")
    mdocs = mmlu.load(data_dir)
    shots = harness.sample_fewshot(mmlu, mdocs[:2], mdocs, 4, random.Random(0), same_split=True)
    assert all(s["subject"] == mdocs[0]["subject"] and s["_line"] != mdocs[0]["_line"] for s in shots[0])
    assert harness.build_context(mmlu, mdocs[0], []).startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n")


def test_gsm8k_answer_extraction():
    assert extract_gsm8k_answer("She makes 9 * 2 = $18.\n#### 18") == ("18", "18")
    assert extract_gsm8k_answer("The answer is 1,234 dollars.") == (None, "1234")
    assert extract_gsm8k_answer("no digits") == (None, None)
    assert get_task("gsm8k").doc_to_target({"answer": "blah\n#### 1,000"}) == "1000"
    from llmbook.eval.tasks import normalize_number

    assert normalize_number(" $1,000. ") == "1000" and normalize_number("3..") == "3."  # one period, as lm-eval


def test_mmlu_prompt_keeps_choices_verbatim():
    doc = {"question": " What? ", "choice0": " a", "choice1": "b ", "choice2": "c", "choice3": "d", "answer": 0}
    assert get_task("mmlu").doc_to_text(doc) == "What?\nA.  a\nB. b \nC. c\nD. d\nAnswer:"


class StubLM:
    """A deterministic model: scores a continuation by its length, generates from a prompt -> answers table."""

    def __init__(self, answers: dict[str, list[str]] | None = None):
        self.answers, self.contexts, self.calls = answers or {}, [], {}

    def loglikelihood(self, requests):
        self.contexts.extend(c for c, _ in requests)
        return [(-float(len(cont)), False) for _, cont in requests]

    def generate(self, prompt, stop=(), max_tokens=256, temperature=0.0, generator=None):
        i = self.calls[prompt] = self.calls.get(prompt, -1) + 1
        outs = self.answers[prompt]
        return outs[i % len(outs)]


def test_fewshot_prompts_never_contain_their_own_item(data_dir):
    mmlu = get_task("mmlu")
    docs = mmlu.load(data_dir)
    for k, limit in ((4, 40), (3, None)):  # the first 40 items are subjects without duplicated questions
        lm = StubLM()
        res = harness.evaluate_task(lm, mmlu, data_dir, num_fewshot=k, limit=limit, bootstrap_iters=10)
        contexts = lm.contexts[::4]  # four choices per item share one context
        assert len(contexts) == res["n"] == len(docs[:limit])
        for doc, ctx in zip(docs, contexts):
            shots = ctx[: ctx.rindex(mmlu.doc_to_text(doc))]
            assert doc["question"].strip() not in shots, doc["_line"]
            assert shots.count("\nAnswer:") == k
    # college_physics repeats one question on two lines: excluding both leaves 3 examples for those items
    with pytest.raises(ValueError, match=r"4-shot needs 4 examples of subject 'college_physics', the pool has only 3"):
        harness.evaluate_task(StubLM(), mmlu, data_dir, num_fewshot=4, bootstrap_iters=10)
    with pytest.raises(ValueError, match=r"5-shot needs 5 examples of subject .*after excluding the item itself"):
        harness.evaluate_task(StubLM(), mmlu, data_dir, num_fewshot=5, bootstrap_iters=10)


def test_limit_zero_and_empty_choices(data_dir, tmp_path):
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        harness.evaluate_task(StubLM(), "arc_easy", data_dir, limit=0)
    (tmp_path / "arc").mkdir()
    doc = {"question": {"stem": "Pick one.", "choices": [{"text": "", "label": "A"}, {"text": "yes", "label": "B"}]},
           "answerKey": "A"}
    (tmp_path / "arc" / "ARC-Easy-Dev.jsonl").write_text(json.dumps(doc) + "\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero on the empty choice
        res = harness.evaluate_task(StubLM(), "arc_easy", tmp_path, bootstrap_iters=10)
    # lengths: " " (ll -1, norm -1/1) vs " yes" (ll -4, norm -4/3): the empty choice wins both ways
    assert res["items"][0]["acc"] == 1.0 and res["items"][0]["acc_norm"] == 1.0


def test_generation_tasks_run_end_to_end(data_dir, tokenizer, request):
    lm = HFCausalLM(tiny_hf_model("gpt2", vocab_size=len(tokenizer), n_positions=256), tokenizer)
    g = harness.evaluate_task(lm, "gsm8k", data_dir, limit=2, bootstrap_iters=20)
    assert set(g["metrics"]) == {"exact_match_strict", "exact_match_flexible"} and g["n"] == 2
    # pass@k exactly, from a model whose samples are known: problem 0 always right, problem 1 right 3 times in 10
    request.getfixturevalue("sandbox_ready")
    he = get_task("humaneval")
    p0, p1 = he.load(data_dir)[:2]
    wrong = "    return None\n"
    stub = StubLM({p0["prompt"]: [p0["canonical_solution"]], p1["prompt"]: [p1["canonical_solution"]] * 3 + [wrong] * 7})
    h = harness.evaluate_task(stub, he, data_dir, limit=2, n_samples=10, temperature=0.8, bootstrap_iters=20)
    assert [sum(it["passed"]) for it in h["items"]] == [10, 3]
    assert h["isolation"] == "bwrap"
    assert h["metrics"]["pass@1"]["value"] == pytest.approx((1.0 + 0.3) / 2)
    assert h["metrics"]["pass@10"]["value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs temperature > 0"):
        harness.evaluate_task(stub, he, data_dir, limit=1, n_samples=2, temperature=0.0)


def test_intervals_and_stderr():
    values = [1.0] * 30 + [0.0] * 70
    m = harness.summarize(values, iters=500)
    assert m.value == pytest.approx(0.3)
    assert m.stderr == pytest.approx(np.std(values, ddof=1) / 10)
    assert m.ci_low < 0.3 < m.ci_high and m.ci_high - m.ci_low == pytest.approx(4 * m.stderr, rel=0.25)


def test_bad_input_names_task_file_and_line(tmp_path):
    (tmp_path / "piqa").mkdir()
    good = {"goal": "g", "sol1": "a", "sol2": "b", "label": 0}
    (tmp_path / "piqa" / "piqa_valid_dev.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"task 'piqa': .*piqa_valid_dev.jsonl:2: invalid JSON"):
        get_task("piqa").load(tmp_path)
    (tmp_path / "piqa" / "piqa_valid_dev.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"piqa_valid_dev.jsonl:1: record lacks field\(s\) sol2"):
        get_task("piqa").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="task 'hellaswag'"):
        get_task("hellaswag").load(tmp_path)
    (tmp_path / "hellaswag").mkdir()
    good = {"query": "the cat", "endings": [" sat", " ran", " slept", " ate"], "label": "1"}
    for bad, needle in [({"label": 4}, "gold answer 4 is not one of the 4 choices"),
                        ({"endings": []}, "gold answer 1 is not one of the 0 choices"),
                        ({"query": 5}, "malformed record")]:
        (tmp_path / "hellaswag" / "hellaswag_val_dev.jsonl").write_text(json.dumps(good) + "\n" +
                                                                         json.dumps({**good, **bad}) + "\n")
        with pytest.raises(ValueError, match=rf"hellaswag_val_dev.jsonl:2: {needle}"):
            get_task("hellaswag").load(tmp_path)
    with pytest.raises(ValueError, match="unknown task 'hellaswog'"):
        get_task("hellaswog")


def test_all_tasks_load_real_files(data_dir):
    for name, task in TASKS.items():
        docs = task.load(data_dir)
        assert len(docs) >= 20, name
        if task.doc_to_choices:
            assert all(0 <= task.doc_to_target(d) < len(task.doc_to_choices(d)) for d in docs), name


def test_llmbook_adapter_matches_hf_adapter(hf, data_dir):
    from llmbook.eval.models import LLMBookLM
    from llmbook.model.hf import from_hf

    model, tok = hf
    ours = LLMBookLM(from_hf(model), tok, eot_id=tok.eos_token_id, batch_size=4)
    theirs = HFCausalLM(model, tok, batch_size=4)
    a = harness.evaluate_task(ours, "arc_easy", data_dir, limit=4, bootstrap_iters=20)
    b = harness.evaluate_task(theirs, "arc_easy", data_dir, limit=4, bootstrap_iters=20)
    for x, y in zip(a["items"], b["items"]):
        np.testing.assert_allclose(x["loglikelihoods"], y["loglikelihoods"], atol=1e-4)
    prompt = "Once upon a time"
    assert ours.generate(prompt, max_tokens=8) == theirs.generate(prompt, max_tokens=8)


def test_item_text_is_prompt_plus_gold(data_dir):
    wino = get_task("winogrande")
    doc = wino.load(data_dir)[0]
    assert harness.item_text(wino, doc) == "Sarah was a much better surgeon than Maria so Maria always got the easier cases."
    arc = get_task("arc_easy")
    d = arc.load(data_dir)[0]
    assert harness.item_text(arc, d) == "Question: Which technology was developed most recently?\nAnswer: cellular telephone"
    g = get_task("gsm8k").load(data_dir)[0]
    assert harness.item_text(get_task("gsm8k"), g).endswith("#### 18")


def test_requests_with_the_same_input_share_one_forward_pass(hf):
    model, tok = hf
    lm = HFCausalLM(model, tok, batch_size=1)
    calls = []
    original = lm.logits
    lm.logits = lambda ids: calls.append(ids.shape) or original(ids)
    ctx = "Once upon a time there was a little girl. She went to"
    single = [(ctx, c) for c in (" the", " a", " and", " was")]  # frequent words: one token each
    assert all(len(lm.encode_pair(c, x)[1]) == 1 for c, x in single)
    scores = lm.loglikelihood(single)
    assert len(calls) == 1  # one forward pass serves all four single-token continuations
    for (c, x), (ll, _) in zip(single, scores):
        assert ll == pytest.approx(reference_loglikelihood(model, tok, c, x)[0], abs=1e-4)


def test_generation_keeps_room_for_the_answer_and_warns(tokenizer, data_file):
    lm = HFCausalLM(tiny_hf_model("gpt2", vocab_size=len(tokenizer), n_positions=64, seed=3), tokenizer)
    seen = {}
    orig = lm.greedy_ids

    def spy(ids, max_tokens, stop=()):
        seen.update(n_prompt=len(ids), max_tokens=max_tokens)
        return orig(ids, max_tokens, stop)

    lm.greedy_ids = spy
    prompt = data_file("tinystories/tinystories_train_sample.txt").read_text(encoding="utf-8")[:2000]
    assert len(lm.encode(prompt)) > 64
    with pytest.warns(RuntimeWarning, match="cut to its last 54 to leave room for 10 new tokens"):
        lm.generate(prompt, max_tokens=10)
    assert seen == {"n_prompt": 54, "max_tokens": 10}
    with pytest.warns(RuntimeWarning, match="cut to its last 1 "):  # at least one prompt token survives
        lm.generate(prompt, max_tokens=500)
    assert seen == {"n_prompt": 1, "max_tokens": 63}


def test_hf_fast_path_stops_at_stop_strings(tokenizer):
    lm = HFCausalLM(tiny_hf_model("gpt2", vocab_size=len(tokenizer), n_positions=256, seed=3), tokenizer)
    free = lm.generate("Once upon a time", max_tokens=40)
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert len(stop) == 3 and stop in free
    calls = []
    orig = lm.model.generate

    def spy(ids, **kwargs):
        out = orig(ids, **kwargs)
        calls.append({**kwargs, "n_new": out.shape[1] - ids.shape[1]})
        return out

    lm.model.generate = spy
    out = lm.generate("Once upon a time", stop=[stop], max_tokens=40)
    assert out == free[: free.index(stop)]
    assert calls[0]["stop_strings"] == [stop] and calls[0]["tokenizer"] is tokenizer
    assert calls[0]["n_new"] < 40  # generation ended at the stop string, not at max_tokens


def test_tiny_model_is_seeded_without_touching_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = tiny_hf_model("gpt2", vocab_size=32, n_positions=16, seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = tiny_hf_model("gpt2", vocab_size=32, n_positions=16, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
