"""Fine-tuning data: instruction and chat files, preference pairs, their encoding with the chat format, and the
loaders that batch them for the trainer (@sec-finetune-data).

Readers name the file, the record and the field of anything malformed. Encoded examples carry a loss mask: in
SFT only the assistant's tokens count, in preference learning only the response's. Batches are right-padded
(`pad`) or packed several examples to a row (`pack`), and a loader has the `next_batch` / `state_dict` /
`load_state_dict` shape the trainer expects, so fine-tuning resumes exactly like pre-training.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmbook.finetune.chat import ChatFormat, validate_messages

Chat = list[dict[str, str]]
IGNORE = -100  # the target value cross-entropy skips


# ------------------------------------------------------------------------------------------------ reading files
def _records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) pairs of a JSON array or a JSONL file; `where` is 'record N' or 'line N' for messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path}: malformed JSON: {err}") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        return [(f"record {i}", r) for i, r in enumerate(data)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {lineno}", json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path}: line {lineno}: malformed JSON: {err}") from None
    return out


def _text_field(path: Path, where: str, record: dict, name: str, required: bool = True) -> str:
    value = record.get(name, "" if not required else None)
    if value is None:
        raise ValueError(f"{path}: {where}: missing field {name!r}")
    if not isinstance(value, str):
        raise ValueError(f"{path}: {where}: field {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{path}: {where}: field {name!r} is empty")
    return value


def alpaca_chat(instruction: str, input: str, output: str) -> Chat:
    """An Alpaca record as a chat: the instruction (and its input, after a blank line) from the user."""
    prompt = instruction.strip() + (f"\n\n{input.strip()}" if input.strip() else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output.strip()}]


def load_alpaca(path: str | Path) -> list[Chat]:
    """Alpaca-format instructions as chats: a JSON array or JSONL of {instruction, input, output}, or self-instruct
    seed tasks ({instruction, instances: [{input, output}]}), one chat per instance."""
    path = Path(path)
    chats = []
    for where, record in _records(path):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {where}: expected an object, got {type(record).__name__}")
        instruction = _text_field(path, where, record, "instruction")
        if "instances" in record:
            instances = record["instances"]
            if not isinstance(instances, list) or not instances:
                raise ValueError(f"{path}: {where}: field 'instances' must be a non-empty list")
            for j, inst in enumerate(instances):
                if not isinstance(inst, dict):
                    raise ValueError(f"{path}: {where}: field 'instances[{j}]' must be an object")
                at = f"{where} instances[{j}]"
                chats.append(alpaca_chat(instruction, _text_field(path, at, inst, "input", False),
                                         _text_field(path, at, inst, "output")))
        else:
            chats.append(alpaca_chat(instruction, _text_field(path, where, record, "input", False),
                                     _text_field(path, where, record, "output")))
    return chats


def load_chats(path: str | Path) -> list[Chat]:
    """A JSONL file of {"messages": [{"role", "content"}, ...]}, each with at least one non-empty assistant turn."""
    path = Path(path)
    chats = []
    for where, record in _records(path):
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(f"{path}: {where}: missing field 'messages'")
        try:
            messages = validate_messages(record["messages"], allow_empty_assistant=False)
        except ValueError as err:
            raise ValueError(f"{path}: {where}: field 'messages': {str(err).removeprefix('messages: ')}") from None
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{path}: {where}: field 'messages': no assistant turn to learn from")
        chats.append(messages)
    return chats


def load_instructions(path: str | Path) -> list[Chat]:
    """Any supported SFT file: chat JSONL ({"messages"}) or Alpaca format, told apart by the first record."""
    path = Path(path)
    records = _records(path)
    if not records:
        raise ValueError(f"{path}: no records")
    first = records[0][1]
    return load_chats(path) if isinstance(first, dict) and "messages" in first else load_alpaca(path)


# ------------------------------------------------------------------------------------------------ preferences
@dataclass(frozen=True)
class PreferencePair:
    """A conversation up to the assistant's turn, a preferred answer and a rejected one."""

    prompt: Chat
    chosen: str
    rejected: str


_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_messages(transcript: str) -> Chat:
    """An HH-RLHF transcript ('\\n\\nHuman: ... \\n\\nAssistant: ...') as chat messages."""
    parts = _TURN.split(transcript)
    if parts[0].strip():
        raise ValueError("transcript does not start with a '\\n\\nHuman:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]


def load_hh_pairs(path: str | Path) -> list[PreferencePair]:
    """HH-RLHF chosen/rejected transcripts as `PreferencePair`s (the prompt ends before the final assistant turn).

    Kept as they are: an empty final answer (preferring to say nothing is a preference too) and the few
    transcripts where a 'Human:' lost its blank line, so the prompt ends with an assistant turn.
    """
    from llmbook.eval.ratings import load_hh_rlhf

    out = []
    for i, (prompt, chosen, rejected) in enumerate(load_hh_rlhf(path)):
        try:
            messages = hh_messages(prompt.removesuffix("\n\nAssistant:"))
        except ValueError as err:
            raise ValueError(f"{path}:{i + 1}: field 'chosen': {err}") from None
        if not messages:
            raise ValueError(f"{path}:{i + 1}: field 'chosen': no turn before the final answer")
        out.append(PreferencePair(messages, chosen, rejected))
    return out


def split_held_out(items: Sequence, held_out_fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, held-out): a seeded shuffle of the indices, the first `held_out_fraction` of them held out."""
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    k = round(len(items) * held_out_fraction)
    held = set(order[:k])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


# ------------------------------------------------------------------------------------------------ encoding
@dataclass(frozen=True)
class Example:
    """Token ids and a 0/1 mask of the tokens the loss counts."""

    ids: tuple[int, ...]
    mask: tuple[int, ...]


def encode_chats(fmt: ChatFormat, tokenizer: Any, chats: Sequence[Chat], max_len: int) -> tuple[list[Example], int]:
    """Encode chats for SFT, truncated to `max_len` tokens; returns the examples and how many were dropped because
    no assistant token was left after truncation."""
    out, dropped = [], 0
    for chat in chats:
        ids, mask = fmt.encode(tokenizer, chat)
        ids, mask = ids[:max_len], mask[:max_len]
        if sum(mask[1:]) == 0:  # the first token is never a target
            dropped += 1
            continue
        out.append(Example(tuple(ids), tuple(mask)))
    return out, dropped


@dataclass(frozen=True)
class EncodedPair:
    """A preference pair as ids: prompt + chosen and prompt + rejected, each with its response mask."""

    chosen: Example
    rejected: Example


def encode_response(fmt: ChatFormat, tokenizer: Any, prompt: Chat, response: str,
                    prompt_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Prompt ids (ending with the generation prompt) and the response's ids (up to its end-of-turn token);
    `prompt_ids`, when given, are the prompt's encoding already computed for another response."""
    if prompt_ids is None:
        prompt_ids, _ = fmt.encode(tokenizer, prompt, add_generation_prompt=True)
    ids, mask = fmt.encode(tokenizer, [*prompt, {"role": "assistant", "content": response}])
    if ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template does not render the prompt as a prefix of the answered conversation")
    last = max(i for i, m in enumerate(mask) if m)
    return prompt_ids, ids[len(prompt_ids):last + 1]


def encode_pairs(fmt: ChatFormat, tokenizer: Any, pairs: Sequence[PreferencePair], max_prompt: int,
                 max_response: int) -> list[EncodedPair]:
    """Encode pairs keeping the last `max_prompt` prompt tokens and the first `max_response` response tokens;
    pairs whose truncated responses are identical are dropped (they carry no preference)."""
    out = []
    for pair in pairs:
        prompt, chosen = encode_response(fmt, tokenizer, pair.prompt, pair.chosen)
        _, rejected = encode_response(fmt, tokenizer, pair.prompt, pair.rejected, prompt)
        prompt, chosen, rejected = prompt[-max_prompt:], chosen[:max_response], rejected[:max_response]
        if chosen == rejected:
            continue
        out.append(EncodedPair(*(Example(tuple(prompt + r), (0,) * len(prompt) + (1,) * len(r))
                                 for r in (chosen, rejected))))
    return out


# ------------------------------------------------------------------------------------------------ batching
def pad_batch(examples: Sequence[Example], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded inputs (B, T-1) and next-token targets (B, T-1), IGNORE where the mask is 0 or padding."""
    t = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        mask[i, :len(e.mask)] = torch.tensor(e.mask, dtype=torch.bool)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)
    return ids[:, :-1], targets


def pack_examples(examples: Sequence[Example], row_len: int, pad_id: int) -> list[Example]:
    """Greedily concatenate examples into rows of at most `row_len` tokens (an example is never split; padding
    fills what is left). Tokens of one row attend to the earlier examples in it, as in pre-training."""
    rows: list[Example] = []
    ids: list[int] = []
    mask: list[int] = []
    for e in examples:
        if len(e.ids) > row_len:
            raise ValueError(f"an example of {len(e.ids)} tokens does not fit a row of {row_len}")
        if len(ids) + len(e.ids) > row_len:
            rows.append(Example(tuple(ids + [pad_id] * (row_len - len(ids))), tuple(mask + [0] * (row_len - len(ids)))))
            ids, mask = [], []
        ids += e.ids
        mask += e.mask
    if ids:
        rows.append(Example(tuple(ids + [pad_id] * (row_len - len(ids))), tuple(mask + [0] * (row_len - len(ids)))))
    return rows


def mask_fraction(batches: Sequence[Example]) -> float:
    """Fraction of the tokens in `batches` that carry loss (the rest are prompts, padding)."""
    return sum(sum(e.mask) for e in batches) / max(1, sum(len(e.ids) for e in batches))


class BatchLoader:
    """Seeded epochs over a list of items, `batch_size` per rank, collated by `collate(items)` (@sec-finetune-sft).

    With `length`, each run of `group` batches is sorted by length before being cut into batches (then the batches
    are shuffled), so a batch holds items of similar length and padding wastes little compute, as `transformers`'
    `group_by_length`. Has the trainer's loader shape: `next_batch()` and a `state_dict` that resumes exactly.
    """

    def __init__(self, items: Sequence, batch_size: int, collate: Callable[[list], Any], seed: int = 0,
                 rank: int = 0, world_size: int = 1, length: Callable[[Any], int] | None = None,
                 group: int = 32) -> None:
        if len(items) < batch_size * world_size:
            raise ValueError(f"{len(items)} items cannot fill one batch of {batch_size} x {world_size} ranks")
        self.items, self.batch_size, self.collate = list(items), batch_size, collate
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.lengths = [length(x) for x in self.items] if length else None
        self.group = group
        self.epoch, self.pos = 0, 0
        self._batches: list[list[int]] = []
        self._shuffle()

    def _shuffle(self) -> None:
        """This epoch's global batches (lists of item indices), in order."""
        rng = random.Random(f"{self.seed}-{self.epoch}")
        order = list(range(len(self.items)))
        rng.shuffle(order)
        step = self.batch_size * self.world_size
        order = order[:len(order) - len(order) % step]
        if self.lengths is not None:
            span = step * self.group
            order = [i for k in range(0, len(order), span)
                     for i in sorted(order[k:k + span], key=self.lengths.__getitem__)]
        self._batches = [order[k:k + step] for k in range(0, len(order), step)]
        if self.lengths is not None:
            rng.shuffle(self._batches)

    def next_batch(self):
        if self.pos >= len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._shuffle()
        chunk = self._batches[self.pos][self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        self.pos += 1
        return self.collate([self.items[i] for i in chunk])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._shuffle()


def sft_loaders(train: Sequence[Example], val: Sequence[Example], batch_size: int, pad_id: int,
                pack: bool = False, row_len: int = 0):
    """The trainer's loader factory `(split, rank, world_size, seed) -> BatchLoader` for SFT examples.

    Padded batches group examples of similar length; with `pack`, examples are instead packed into rows of
    `row_len` tokens (+1 for the shifted targets).
    """
    def make(split: str, rank: int, world_size: int, seed: int) -> BatchLoader:
        items = train if split == "train" else val
        if pack:
            items = pack_examples(items, row_len + 1, pad_id)
        return BatchLoader(items, batch_size, lambda batch: pad_batch(batch, pad_id), seed=seed, rank=rank,
                           world_size=world_size, length=None if pack else lambda e: len(e.ids))
    return make
