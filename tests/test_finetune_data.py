"""Fine-tuning data: readers (with one-line errors naming file, record and field), the synthetic task set, the
HH-RLHF split, encoding with loss masks, padding and packing, and loaders that resume exactly."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from llmbook.finetune import synthetic
from llmbook.finetune.chat import ChatFormat, add_chat_tokens, special_tokens
from llmbook.finetune.data import (IGNORE, BatchLoader, Example, PreferencePair, encode_chats, encode_pairs,
                                   hh_messages, load_alpaca, load_chats, load_hh_pairs, load_instructions,
                                   mask_fraction, pack_examples, pad_batch, split_held_out)
from llmbook.tokenizer import train_hf_tokenizer

FMT = ChatFormat()


@pytest.fixture(scope="module")
def tok():
    texts = [synthetic.generate(200, seed=0)[i].prompt + " " + synthetic.generate(200, seed=0)[i].answer
             for i in range(200)]
    return add_chat_tokens(train_hf_tokenizer(texts, 320))


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ readers
def test_alpaca_demo_and_seed_tasks_load(data_dir):
    demo = load_alpaca(data_dir / "alpaca" / "llamafactory_alpaca_en_demo.json")
    seeds = load_instructions(data_dir / "alpaca" / "stanford_alpaca_seed_tasks.jsonl")
    assert len(demo) == 999 and len(seeds) >= 175
    assert all(c[0]["role"] == "user" and c[1]["role"] == "assistant" and c[1]["content"] for c in demo + seeds)
    with_input = json.loads((data_dir / "alpaca" / "llamafactory_alpaca_en_demo.json").read_text())
    i = next(i for i, r in enumerate(with_input) if r["input"])
    assert demo[i][0]["content"] == with_input[i]["instruction"].strip() + "\n\n" + with_input[i]["input"].strip()


@pytest.mark.parametrize("name, text, match", [
    ("a.json", "[{]", r"a.json: malformed JSON"),
    ("a.json", '{"instruction": "x"}', r"a.json: expected a JSON array"),
    ("a.json", '[{"instruction": "x", "output": "y"}, {"output": "y"}]', r"a.json: record 1: missing field 'instruction'"),
    ("a.json", '[{"instruction": "x", "output": ""}]', r"a.json: record 0: field 'output' is empty"),
    ("a.json", '[{"instruction": "x", "output": 3}]', r"a.json: record 0: field 'output' must be a string, got int"),
    ("a.jsonl", '{"instruction": "x", "output": "y"}\n{oops\n', r"a.jsonl: line 2: malformed JSON"),
    ("a.jsonl", '{"instruction": "x", "instances": []}\n', r"a.jsonl: line 1: field 'instances' must be a non-empty"),
    ("a.jsonl", '{"instruction": "x", "instances": [{"input": ""}]}\n', r"line 1 instances\[0\]: missing field 'output'"),
])
def test_malformed_alpaca_names_file_record_field(tmp_path, name, text, match):
    with pytest.raises(ValueError, match=match):
        load_alpaca(write(tmp_path / name, text))


@pytest.mark.parametrize("line, match", [
    ('{"text": "hi"}', "line 1: missing field 'messages'"),
    ('{"messages": "hi"}', "line 1: field 'messages': expected a list"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "line 1: field 'messages': no assistant turn"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}',
     r"line 1: field 'messages': message 1 field 'content': the assistant turn is empty"),
    ('{"messages": [{"role": "admin", "content": "x"}]}', r"line 1: field 'messages': message 0 field 'role'"),
    ('{"messages": [{"role": "user"}]}', r"line 1: field 'messages': message 0: missing field 'content'"),
])
def test_malformed_chat_files(tmp_path, line, match):
    with pytest.raises(ValueError, match=f"chat.jsonl: {match}"):
        load_chats(write(tmp_path / "chat.jsonl", line + "\n"))


@pytest.mark.parametrize("name, data, match", [
    ("chat.jsonl", b'\xff{"messages": []}\n', r"chat.jsonl: not UTF-8 text \(byte 0"),
    ("chat.json", b"[" + b'"\xe9"' + b"]", r"chat.json: not UTF-8 text \(byte 2"),
    ("chat.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", r"chat.jsonl: line 1: malformed JSON"),
    ("chat.json", b"[" * 100_000 + b"]" * 100_000, r"chat.json: malformed JSON"),
])
def test_unreadable_instruction_files_are_named(tmp_path, name, data, match):
    """Bytes that are not UTF-8 and JSON nested past the parser's depth are one-line errors naming the file."""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=match):
        load_instructions(tmp_path / name)


def test_chat_file_round_trip(tmp_path):
    chats = [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]]
    path = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"messages": c}) for c in chats) + "\n\n")
    assert load_instructions(path) == chats


def test_hh_pairs_parse_and_split_deterministically(data_dir):
    pairs = load_hh_pairs(data_dir / "hh-rlhf" / "harmless-base_test.jsonl.gz")
    assert len(pairs) == 2312
    assert sum(p.prompt[-1]["role"] == "user" for p in pairs) > 0.99 * len(pairs)
    assert [m["role"] for m in pairs[0].prompt][:2] == ["user", "assistant"]
    train, held = split_held_out(pairs, 0.2, seed=1)
    assert (len(train), len(held)) == (1850, 462)
    assert split_held_out(pairs, 0.2, seed=1) == (train, held)
    assert not {id(p) for p in train} & {id(p) for p in held}


def test_hh_transcripts(tmp_path):
    assert hh_messages("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye") == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "no turns"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl.gz:1: malformed HH-RLHF record"):
        load_hh_pairs(path)


@pytest.mark.parametrize("record, raw, match", [
    ({"chosen": 3, "rejected": "\n\nHuman: a\n\nAssistant: b"}, None, r"bad.jsonl.gz:1: malformed HH-RLHF record"),
    ([1, 2], None, r"bad.jsonl.gz:1: malformed HH-RLHF record"),
    (None, b"not gzip at all", r"bad.jsonl.gz: unreadable HH-RLHF file"),
    (None, gzip.compress(b'{"chosen": "x"}\n')[:-12], r"bad.jsonl.gz: unreadable HH-RLHF file"),
    (None, gzip.compress(b'{"chosen": "\xff"}\n'), r"bad.jsonl.gz: unreadable HH-RLHF file"),
], ids=["chosen-not-text", "record-not-object", "not-gzip", "cut-short", "not-utf8"])
def test_hostile_preference_files_are_one_line_errors(tmp_path, record, raw, match):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(raw if raw is not None else gzip.compress((json.dumps(record) + "\n").encode()))
    with pytest.raises(ValueError, match=match):
        load_hh_pairs(path)


# ------------------------------------------------------------------------------------------------ synthetic tasks
def test_synthetic_items_are_checkable_and_held_out():
    train, test = synthetic.split(400, 80, seed=3)
    assert not {i.prompt for i in train} & {i.prompt for i in test}
    assert {i.family for i in test} == set(synthetic.FAMILIES)
    assert all(synthetic.check(i, i.answer) for i in train + test)
    assert all(synthetic.check(i, f"  {i.answer}  ") for i in test)
    assert not any(synthetic.check(i, i.answer + " and more") for i in test if i.family != "story")
    assert synthetic.split(400, 80, seed=3) == (train, test)
    story = next(i for i in test if i.family == "story")
    name, animal = story.answer.split()[0], story.answer.split()[2]
    assert synthetic.check(story, f"One day {name} saw a {animal} in the park.")
    assert not synthetic.check(story, f"One day {name} saw a tree.")
    assert synthetic.reward(test[0], test[0].answer) == 1.0
    with pytest.raises(ValueError, match="unknown task families"):
        synthetic.generate(3, 0, families=["poetry"])


# ------------------------------------------------------------------------------------------------ encoding
def test_encode_chats_masks_answers_and_truncates(tok):
    items = synthetic.generate(8, seed=0)
    examples, dropped = encode_chats(FMT, tok, [i.messages() for i in items], max_len=64)
    assert dropped == 0 and len(examples) == 8
    for item, e in zip(items, examples):
        answer = [t for t, m in zip(e.ids, e.mask) if m]
        assert tok.decode(answer) == item.answer  # the end-of-turn token is special: decode drops it
        assert answer[-1] == special_tokens(tok)["<|end|>"]
    prompt_len = len(FMT.encode(tok, items[0].messages(with_answer=False), add_generation_prompt=True)[0])
    short, dropped = encode_chats(FMT, tok, [items[0].messages()], max_len=prompt_len)
    assert short == [] and dropped == 1  # nothing left to learn once the answer is cut off


def test_pad_batch_targets_only_the_masked_next_tokens():
    a, b = Example((1, 2, 3, 4), (0, 0, 1, 1)), Example((5, 6), (0, 1))
    x, y = pad_batch([a, b], pad_id=9)
    assert x.tolist() == [[1, 2, 3], [5, 6, 9]]
    assert y.tolist() == [[IGNORE, 3, 4], [6, IGNORE, IGNORE]]


def test_packing_fills_rows_without_splitting_examples():
    examples = [Example(tuple(range(n)), (0,) * (n - 1) + (1,)) for n in (3, 4, 2, 5, 1)]
    rows = pack_examples(examples, row_len=6, pad_id=0)
    assert [len(r.ids) for r in rows] == [6, 6, 6]
    assert sum(sum(r.mask) for r in rows) == 5
    assert mask_fraction(rows) == 5 / 18 and mask_fraction(examples) == 5 / 15
    with pytest.raises(ValueError, match="does not fit"):
        pack_examples([Example(tuple(range(9)), (1,) * 9)], row_len=6, pad_id=0)


def test_encode_pairs_share_the_prompt_and_mask_responses(tok):
    pair = PreferencePair([{"role": "user", "content": "What is 2 + 2?"}], "4", "5 or so")
    (enc,) = encode_pairs(FMT, tok, [pair], max_prompt=64, max_response=64)
    n = enc.chosen.mask.index(1)
    assert enc.chosen.ids[:n] == enc.rejected.ids[:n] == tuple(
        FMT.encode(tok, pair.prompt, add_generation_prompt=True)[0])
    assert tok.decode([t for t, m in zip(enc.rejected.ids, enc.rejected.mask) if m]) == "5 or so"
    same = PreferencePair(pair.prompt, "four", "four!")
    assert encode_pairs(FMT, tok, [same], max_prompt=64, max_response=1) == []  # equal after truncation


# ------------------------------------------------------------------------------------------------ loaders
def test_batch_loader_resumes_exactly_and_groups_lengths():
    items = [Example(tuple(range(n)), (1,) * n) for n in [2, 9, 3, 8, 4, 7, 5, 6] * 5]
    make = lambda: BatchLoader(items, 4, lambda b: [len(e.ids) for e in b], seed=3,  # noqa: E731
                               length=lambda e: len(e.ids), group=2)
    loader = make()
    first = [loader.next_batch() for _ in range(7)]
    state = loader.state_dict()
    rest = [loader.next_batch() for _ in range(9)]
    again = make()
    again.load_state_dict(state)
    assert [again.next_batch() for _ in range(9)] == rest
    spread = sum(max(b) - min(b) for b in first) / len(first)
    random_spread = sum(max(b) - min(b) for b in (BatchLoader(items, 4, lambda b: [len(e.ids) for e in b], seed=3)
                                                     .next_batch() for _ in range(7))) / 7
    assert spread < random_spread


def test_batch_loader_shards_ranks_and_refuses_tiny_data():
    items = list(range(16))
    r0 = BatchLoader(items, 2, list, seed=0, rank=0, world_size=2)
    r1 = BatchLoader(items, 2, list, seed=0, rank=1, world_size=2)
    seen = [x for _ in range(4) for x in r0.next_batch() + r1.next_batch()]
    assert sorted(seen) == items
    with pytest.raises(ValueError, match="cannot fill one batch"):
        BatchLoader(items[:3], 2, list, world_size=2)


def test_sft_loader_batches_are_tensors(tok):
    from llmbook.finetune.data import sft_loaders

    examples, _ = encode_chats(FMT, tok, [i.messages() for i in synthetic.generate(32, seed=1)], 64)
    for pack in (False, True):
        x, y = sft_loaders(examples, examples, 4, pad_id=0, pack=pack, row_len=64)("train", 0, 1, 0).next_batch()
        assert x.shape == y.shape and x.dtype == torch.long and (y != IGNORE).any()
