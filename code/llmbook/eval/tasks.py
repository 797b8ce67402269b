"""Benchmark tasks as small data: a file, a prompt template, choices and an answer (@sec-evaluation-harness).

Templates follow lm-evaluation-harness's defaults so scores are comparable with published tables. Each task
reads its JSONL/CSV file through the data registry (or from a folder laid out like the data folder); a
malformed record raises an error that names the task, the file and the line.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Task:
    """One benchmark: where its items are and how an item becomes a prompt, choices and a gold answer.

    kind: 'multiple_choice' (score each choice's log-likelihood), 'lambada' (greedy last word),
    'generate_math' (GSM8K exact match) or 'code' (HumanEval/MBPP pass@k in the sandbox).
    """

    name: str
    kind: str
    path: str
    doc_to_text: Callable[[dict], str]
    doc_to_target: Callable[[dict], int | str]
    doc_to_choices: Callable[[dict], list[str]] | None = None
    doc_to_contexts: Callable[[dict], list[str]] | None = None  # per-choice contexts (WinoGrande)
    doc_to_fewshot_target: Callable[[dict], str] | None = None  # worked answer shown in few-shot examples
    fewshot_path: str | None = None
    description: Callable[[dict], str] | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    stop: tuple[str, ...] = ()
    max_tokens: int = 256
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    fields: tuple[str, ...] = field(default_factory=tuple)

    def load(self, data_dir: str | Path | None = None, fewshot: bool = False) -> list[dict]:
        """Read the task's items (or its few-shot pool) and check every record has the fields it needs.
        The file comes from `data_dir` when given, else from the data registry (@sec-data-sources)."""
        rel = self.fewshot_path if fewshot else self.path
        if rel is None:
            raise ValueError(f"task {self.name!r} has no few-shot split")
        if data_dir is None:
            from llmbook.data.registry import fetch

            path = fetch(rel)
        else:
            path = Path(data_dir) / rel
        if not path.is_file():
            raise FileNotFoundError(f"task {self.name!r}: data file {path} not found")
        docs = []
        try:
            if path.suffix == ".csv":
                with path.open(newline="", encoding="utf-8") as f:
                    for lineno, row in enumerate(csv.DictReader(f), start=2):
                        docs.append(self._check(row, path, lineno))
            else:
                with path.open(encoding="utf-8") as f:
                    for lineno, line in enumerate(f, start=1):
                        if not line.strip():
                            continue
                        try:
                            doc = json.loads(line)
                        except json.JSONDecodeError as err:
                            raise ValueError(f"task {self.name!r}: {path}:{lineno}: invalid JSON ({err.msg})") from err
                        if not isinstance(doc, dict):
                            raise ValueError(f"task {self.name!r}: {path}:{lineno}: not a JSON object")
                        docs.append(self._check(doc, path, lineno))
        except UnicodeDecodeError as err:
            raise ValueError(f"task {self.name!r}: {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                             f"offset {err.start})") from None
        if not docs:
            raise ValueError(f"task {self.name!r}: data file {path} holds no items")
        return docs

    def _check(self, doc: dict, path: Path, lineno: int) -> dict:
        missing = [k for k in self.fields if doc.get(k) in (None, "")]
        if missing:
            raise ValueError(f"task {self.name!r}: {path}:{lineno}: record lacks field(s) {', '.join(missing)}")
        try:
            self.doc_to_text(doc)
            target = self.doc_to_target(doc)
            choices = self.doc_to_choices(doc) if self.doc_to_choices else None
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as err:
            raise ValueError(f"task {self.name!r}: {path}:{lineno}: malformed record ({err!r})") from err
        if choices is not None and not (isinstance(target, int) and 0 <= target < len(choices)):
            # an out-of-range gold answer would be scored wrong for every model, silently
            raise ValueError(f"task {self.name!r}: {path}:{lineno}: gold answer {target!r} is not one of the "
                             f"{len(choices)} choices")
        return {**doc, "_line": lineno}


def _hellaswag_clean(text: str) -> str:
    # lm-evaluation-harness's hellaswag preprocess: drop WikiHow [bracket] markers, fix double spaces
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _arc_choices(doc: dict) -> list[str]:
    return [c["text"] for c in doc["question"]["choices"]]


def _arc_gold(doc: dict) -> int:
    labels = [c["label"] for c in doc["question"]["choices"]]
    key = doc["answerKey"]
    if key not in labels:
        raise ValueError(f"answerKey {key!r} not among labels {labels}")
    return labels.index(key)


def _winogrande_contexts(doc: dict) -> list[str]:
    # partial evaluation (Trinh & Le 2018): the option fills the blank in the context; the rest is scored
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + doc[f"option{i}"] for i in (1, 2)]


def _winogrande_continuation(doc: dict) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def _mmlu_text(doc: dict) -> str:
    options = "".join(f"\n{'ABCD'[i]}. {doc[f'choice{i}']}" for i in range(4))  # choices unstripped, as lm-eval
    return f"{doc['question'].strip()}{options}\nAnswer:"


def _boolq_gold(doc: dict) -> int:
    value = str(doc["label"]).lower()
    if value not in ("true", "false"):
        raise ValueError(f"label {doc['label']!r} is not true/false")
    return int(value == "true")


def gsm8k_gold(doc: dict) -> str:
    """The number after '####' in a GSM8K solution, without thousands separators."""
    answer = doc["answer"]
    if "####" not in answer:
        raise ValueError("GSM8K answer has no '####' line")
    return normalize_number(answer.split("####")[-1])


def normalize_number(text: str) -> str:
    """Canonical form of a numeric answer: strip $, commas, spaces and one trailing period (as lm-eval)."""
    text = text.strip().replace(",", "").replace("$", "")
    return (text[:-1] if text.endswith(".") else text).strip()


_GSM_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def extract_gsm8k_answer(completion: str) -> tuple[str | None, str | None]:
    """(strict, flexible) answers: the number after '#### ', and the last number in the text."""
    strict = _GSM_STRICT.search(completion)
    numbers = [m.group(0) for m in _NUMBER.finditer(completion)]
    return (normalize_number(strict.group(1)) if strict else None,
            normalize_number(numbers[-1]) if numbers else None)


TASKS: dict[str, Task] = {
    "hellaswag": Task(
        "hellaswag", "multiple_choice", "hellaswag/hellaswag_val_dev.jsonl",
        doc_to_text=lambda d: _hellaswag_clean(d["query"]),
        doc_to_choices=lambda d: [_hellaswag_clean(e) for e in d["endings"]],
        doc_to_target=lambda d: int(d["label"]),
        fields=("query", "endings", "label"),
    ),
    "arc_easy": Task(
        "arc_easy", "multiple_choice", "arc/ARC-Easy-Dev.jsonl", fewshot_path="arc/ARC-Easy-Train.jsonl",
        doc_to_text=lambda d: f"Question: {d['question']['stem']}\nAnswer:",
        doc_to_choices=_arc_choices, doc_to_target=_arc_gold, fields=("question", "answerKey"),
    ),
    "arc_challenge": Task(
        "arc_challenge", "multiple_choice", "arc/ARC-Challenge-Dev.jsonl", fewshot_path="arc/ARC-Challenge-Train.jsonl",
        doc_to_text=lambda d: f"Question: {d['question']['stem']}\nAnswer:",
        doc_to_choices=_arc_choices, doc_to_target=_arc_gold, fields=("question", "answerKey"),
    ),
    "piqa": Task(
        "piqa", "multiple_choice", "piqa/piqa_valid_dev.jsonl",
        doc_to_text=lambda d: f"Question: {d['goal']}\nAnswer:",
        doc_to_choices=lambda d: [d["sol1"], d["sol2"]], doc_to_target=lambda d: int(d["label"]),
        fields=("goal", "sol1", "sol2"),
    ),
    "mmlu": Task(
        "mmlu", "multiple_choice", "mmlu/mmlu_dev.csv",
        doc_to_text=_mmlu_text, doc_to_choices=lambda d: ["A", "B", "C", "D"],
        doc_to_target=lambda d: int(d["answer"]),
        description=lambda d: f"The following are multiple choice questions (with answers) about "
                              f"{d['subject'].replace('_', ' ')}.\n\n",
        fields=("subject", "question", "answer"), metrics=("acc",),
    ),
    "boolq": Task(
        "boolq", "multiple_choice", "boolq/boolq_val_dev.jsonl",
        doc_to_text=lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:",
        doc_to_choices=lambda d: ["no", "yes"], doc_to_target=_boolq_gold,
        fields=("passage", "question", "label"), metrics=("acc",),
    ),
    "winogrande": Task(
        "winogrande", "multiple_choice", "winogrande/winogrande_dev_dev.jsonl",
        doc_to_text=_winogrande_continuation, doc_to_contexts=_winogrande_contexts,
        doc_to_choices=lambda d: [_winogrande_continuation(d)] * 2,
        doc_to_target=lambda d: int(d["answer"]) - 1,
        fields=("sentence", "option1", "option2", "answer"), metrics=("acc",),
    ),
    "lambada": Task(
        "lambada", "lambada", "lambada/lambada_test_dev.jsonl",
        doc_to_text=lambda d: d["prompt"], doc_to_target=lambda d: " " + d["label"],
        fields=("prompt", "label"), metrics=("acc", "perplexity"),
    ),
    "gsm8k": Task(
        "gsm8k", "generate_math", "gsm8k/test_dev.jsonl", fewshot_path="gsm8k/train.jsonl",
        doc_to_text=lambda d: f"Question: {d['question']}\nAnswer:",
        doc_to_target=gsm8k_gold, doc_to_fewshot_target=lambda d: d["answer"], stop=("Question:", "</s>", "<|im_end|>"), max_tokens=256,
        fields=("question", "answer"), metrics=("exact_match_strict", "exact_match_flexible"),
    ),
    "humaneval": Task(
        "humaneval", "code", "humaneval/HumanEval_dev.jsonl",
        doc_to_text=lambda d: d["prompt"], doc_to_target=lambda d: d["entry_point"],
        stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), max_tokens=256,
        fields=("prompt", "test", "entry_point"), metrics=("pass@1",),
    ),
    "mbpp": Task(
        "mbpp", "code", "mbpp/mbpp_validation.jsonl", fewshot_path="mbpp/mbpp_prompt.jsonl",
        doc_to_text=lambda d: f"You are an expert Python programmer, and here is your task: {d['text']} "
                              f"Your code should pass these tests:\n\n" + "\n".join(d["test_list"]) + "\n[BEGIN]\n",
        doc_to_target=lambda d: d["code"], doc_to_fewshot_target=lambda d: d["code"] + "\n[DONE]",
        target_delimiter="", stop=("[DONE]",), max_tokens=256,
        fields=("text", "code", "test_list"), metrics=("pass@1",),
    ),
}


def get_task(name: str) -> Task:
    """Look up a task by name with an error that lists the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
