"""Cross-check with lm-evaluation-harness itself, run offline on the same local files (skipped if not installed).

lm-eval reads local JSONL through task YAMLs with `dataset_path: json`; the model is the same tiny random
`transformers` model object, so per-item log-likelihoods and acc/acc_norm must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmbook.eval import harness
from llmbook.eval.models import HFCausalLM
from llmbook.eval.tiny import tiny_hf_model, train_bpe_tokenizer

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

YAMLS = {
    "piqa": """task: piqa_local
dataset_path: json
dataset_kwargs: {{data_files: {{validation: "{data}/piqa/piqa_valid_dev.jsonl"}}}}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
""",
    "arc_easy": """task: arc_easy_local
dataset_path: json
dataset_kwargs: {{data_files: {{validation: "{data}/arc/ARC-Easy-Dev.jsonl"}}}}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{question.stem}}}}\\nAnswer:"
doc_to_target: "{{{{(question.choices | map(attribute='label') | list).index(answerKey)}}}}"
doc_to_choice: "{{{{question.choices | map(attribute='text') | list}}}}"
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
""",
    "lambada": """task: lambada_local
dataset_path: json
dataset_kwargs: {{data_files: {{test: "{data}/lambada/lambada_test_dev.jsonl"}}}}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{' ' + label}}}}"
target_delimiter: ""
metric_list: [{{metric: acc}}]
""",
}


@pytest.fixture(scope="module")
def setup(data_dir, data_file, tmp_path_factory):
    text = data_file("tinystories/tinystories_train_sample.txt").read_text(encoding="utf-8")[:100_000]
    tok = train_bpe_tokenizer([text], vocab_size=400)
    model = tiny_hf_model("gpt2", vocab_size=len(tok), n_positions=256, seed=3)
    include = tmp_path_factory.mktemp("lm_eval_tasks")
    for name, yaml in YAMLS.items():
        (include / f"{name}_local.yaml").write_text(yaml.format(data=data_dir))
    return model, tok, include


@pytest.mark.parametrize("task", ["piqa", "arc_easy", "lambada"])
def test_per_item_loglikelihoods_match_lm_eval(setup, data_dir, task, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok, include = setup
    limit = 8
    res = evaluator.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu"),
                                    tasks=[f"{task}_local"], task_manager=TaskManager(include_path=str(include)),
                                    log_samples=True, limit=limit, bootstrap_iters=0)
    theirs = sorted(res["samples"][f"{task}_local"], key=lambda s: s["doc_id"])
    ours = harness.evaluate_task(HFCausalLM(model, tok, batch_size=4), task, data_dir, limit=limit, bootstrap_iters=10)
    for t, o in zip(theirs, ours["items"]):
        lls = [r[0] for r in t["filtered_resps"]]
        if task == "lambada":
            assert o["loglikelihood"] == pytest.approx(float(lls[0]), abs=1e-4)
        else:
            np.testing.assert_allclose(o["loglikelihoods"], lls, atol=1e-4)
    for metric in ("acc", "acc_norm"):
        if f"{metric},none" in res["results"][f"{task}_local"] and metric in ours["metrics"]:
            assert ours["metrics"][metric]["value"] == pytest.approx(res["results"][f"{task}_local"][f"{metric},none"])
