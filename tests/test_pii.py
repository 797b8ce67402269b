"""PII redaction: precision and recall on a hand-labelled set of positive and tricky negative cases."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llmbook.data.pii import PLACEHOLDERS, find_pii, iban_valid, luhn_valid, redact

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "pii_cases.jsonl").read_text().splitlines()]


def test_the_labelled_set_is_large_and_balanced():
    assert len(CASES) >= 200
    positives = sum(1 for c in CASES if c["pii"])
    assert positives >= 90 and len(CASES) - positives >= 90
    types = Counter(t for c in CASES for t, _ in c["pii"])
    assert set(types) == set(PLACEHOLDERS) and min(types.values()) >= 15


def score(cases):
    tp = fp = fn = 0
    for c in cases:
        expected = {tuple(p) for p in c["pii"]}
        found = {(m.type, m.text) for m in find_pii(c["text"])}
        tp, fp, fn = tp + len(expected & found), fp + len(found - expected), fn + len(expected - found)
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def test_precision_and_recall_overall():
    # Entity level: a detection counts only with the right type and the exact span.
    precision, recall = score(CASES)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


@pytest.mark.parametrize("kind", sorted(PLACEHOLDERS))
def test_recall_per_type(kind):
    cases = [{"text": c["text"], "pii": [p for p in c["pii"] if p[0] == kind]} for c in CASES if any(p[0] == kind for p in c["pii"])]
    found = sum(len({tuple(p) for p in c["pii"]} & {(m.type, m.text) for m in find_pii(c["text"])}) for c in cases)
    assert found / sum(len(c["pii"]) for c in cases) >= 0.9


@pytest.mark.parametrize("kind", sorted(PLACEHOLDERS))
def test_precision_per_type(kind):
    # Of all detections of this type over the whole set, at least 90% are labelled with this type and span.
    found = [(c, (m.type, m.text)) for c in CASES for m in find_pii(c["text"]) if m.type == kind]
    correct = sum(hit in {tuple(p) for p in c["pii"]} for c, hit in found)
    assert found and correct / len(found) >= 0.9, [hit for c, hit in found if hit not in {tuple(p) for p in c["pii"]}]


def test_phone_digit_groups():
    assert [(m.type, m.text) for m in find_pii("Call 415 555 2671 now.")] == [("PHONE", "415 555 2671")]
    assert find_pii("The inventory lists 8 045 311 447 screws.") == []  # the tail of a longer number


def test_tricky_negatives_are_left_alone():
    negatives = [c["text"] for c in CASES if not c["pii"]]
    flagged = [t for t in negatives if find_pii(t)]
    assert len(flagged) <= 0.05 * len(negatives), flagged


def test_redact_replaces_spans_with_typed_placeholders():
    text = "Mail jane@example.com or call +1 415 555 0199; card 4111 1111 1111 1111; host 10.0.0.1; IBAN DE89370400440532013000."
    out, counts = redact(text)
    assert out == "Mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>; host <IP_ADDRESS>; IBAN <IBAN>."
    assert counts == Counter({"EMAIL": 1, "PHONE": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1, "IBAN": 1})
    for c in CASES:
        redacted, _ = redact(c["text"])
        assert not any(value in redacted for _, value in c["pii"])
    assert redact("nothing here") == ("nothing here", Counter())


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")


@pytest.mark.parametrize("text,found", [
    ("write to josé@exämple.de", [("EMAIL", "josé@exämple.de")]),  # internationalised address (RFC 6531)
    ("用户@例子.广告 answered", [("EMAIL", "用户@例子.广告")]),
    ("bound to ::1 and 127.0.0.1", [("IP_ADDRESS", "::1"), ("IP_ADDRESS", "127.0.0.1")]),
    ("libfoo 1.2.3.4 released", []),  # a version number, not an IP address
    ("1.2.3.4 is out now", []),
    ("xs[::1] is the list itself", []),  # a Python slice, not the loopback address
    ("std::vector and a::b are C++", []),
])
def test_the_cases_of_the_issue(text, found):
    assert [(m.type, m.text) for m in find_pii(text)] == found
