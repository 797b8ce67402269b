"""A synthetic instruction set with checkable answers, so a tiny model's gain from fine-tuning is measurable
(@sec-finetune-data).

Each task family generates `(prompt, reference answer)` pairs from a seeded generator and has a checker that says
whether a model's response is right: exact match for arithmetic, string manipulation and formatting, a rule for the
short story requests (the sentence must name the character and the animal, and end with a full stop). Held-out
items come from another seed and never share a prompt with the training items.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ANIMALS = ("cat", "dog", "bird", "fish", "frog", "duck", "bear", "bunny", "mouse", "horse")
NAMES = ("Tom", "Lily", "Sam", "Mia", "Ben", "Anna", "Max", "Sue", "Tim", "Lucy", "Jack", "Emma")
WORDS = ("ball", "tree", "sun", "cake", "car", "hat", "box", "park", "book", "star", "boat", "apple", "toy", "moon")
PLACES = ("park", "garden", "house", "forest", "pond", "school")


@dataclass(frozen=True)
class Item:
    """One instruction: the family it comes from, the user prompt and the reference answer."""

    family: str
    prompt: str
    answer: str

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]:
        """The item as a chat: the user turn, and the assistant's reference answer when `with_answer`."""
        out = [{"role": "user", "content": self.prompt}]
        return out + [{"role": "assistant", "content": self.answer}] if with_answer else out


def normalize(text: str) -> str:
    """Compare answers after trimming and collapsing runs of spaces (newlines are kept: they are formatting)."""
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.strip().splitlines())


@dataclass(frozen=True)
class Family:
    """A task family: `make(rng) -> (prompt, answer)` and `check(item, response) -> bool`."""

    name: str
    make: Callable[[random.Random], tuple[str, str]]
    check: Callable[[Item, str], bool] = field(
        default=lambda item, response: normalize(response) == normalize(item.answer))


# Several phrasings per family: a held-out prompt is new text, though for small operands it may ask a fact that a
# training prompt asks in other words (single-digit addition has only 100 facts).
ADD = ("What is {a} + {b}?", "Add {a} and {b}.")
SUB = ("What is {a} - {b}?", "Subtract {b} from {a}.")
REPEAT = ("Repeat the word {w} {n} times.", "Say {w} {n} times.")
LAST = ("What is the last word of: {words}", "Which word comes last in: {words}")
BULLETS = ("Make a list of: {words}", "Write these as a bulleted list: {words}")
COUNT = ("Count from {a} to {b}.", "List the numbers from {a} to {b}.")
STORY = ("Write a sentence about a {animal} named {name}.", "Tell me one sentence about {name} the {animal}.")


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(10), rng.randrange(10)
    return rng.choice(ADD).format(a=a, b=b), str(a + b)


def _sub(rng: random.Random) -> tuple[str, str]:
    a = rng.randrange(20)
    b = rng.randrange(a + 1)
    return rng.choice(SUB).format(a=a, b=b), str(a - b)


def _add2(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(10, 50), rng.randrange(10, 50)
    return rng.choice(ADD).format(a=a, b=b), str(a + b)


def _repeat(rng: random.Random) -> tuple[str, str]:
    word, n = rng.choice(WORDS), rng.randrange(2, 5)
    return rng.choice(REPEAT).format(w=word, n=n), " ".join([word] * n)


def _last_word(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 3)
    return rng.choice(LAST).format(words=" ".join(words)), words[-1]


def _bullets(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randrange(2, 4))
    return rng.choice(BULLETS).format(words=", ".join(words)), "\n".join(f"- {w}" for w in words)


def _count(rng: random.Random) -> tuple[str, str]:
    start = rng.randrange(1, 31)
    stop = start + rng.randrange(2, 4)
    return rng.choice(COUNT).format(a=start, b=stop), ", ".join(str(i) for i in range(start, stop + 1))


def _story(rng: random.Random) -> tuple[str, str]:
    name, animal, place = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(PLACES)
    return rng.choice(STORY).format(animal=animal, name=name), f"{name} the {animal} played in the {place}."


def _story_ok(item: Item, response: str) -> bool:
    """A story answer is right when it names the character and the animal, is one short line and ends with '.'."""
    name, _, animal = item.answer.split()[:3]  # the reference reads "{name} the {animal} played in the {place}."
    text = response.strip()
    words = re.findall(r"\w+", text)
    return name in words and animal in words and text.endswith(".") and "\n" not in text and len(words) <= 25


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("add", _add), Family("sub", _sub), Family("add2", _add2), Family("repeat", _repeat),
    Family("last_word", _last_word), Family("bullets", _bullets), Family("count", _count),
    Family("story", _story, _story_ok),
)}


def generate(n: int, seed: int, families: Sequence[str] = tuple(FAMILIES), exclude: Sequence[Item] = (),
             unique: bool = False) -> list[Item]:
    """`n` items cycling through `families`, drawn from `random.Random(seed)`, none with a prompt in `exclude`
    (and, with `unique`, no prompt twice)."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; choose from {sorted(FAMILIES)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    banned = {item.prompt for item in exclude}
    items: list[Item] = []
    tries = 0
    while len(items) < n:
        family = families[len(items) % len(families)]
        prompt, answer = FAMILIES[family].make(rng)
        tries += 1
        if tries > 100 * (n + 10):
            raise ValueError(f"could not draw {n} items of {list(families)} outside the excluded prompts")
        if prompt in banned:
            continue
        if unique:
            banned.add(prompt)
        items.append(Item(family, prompt, answer))
    return items


def split(n_train: int, n_test: int, seed: int = 0, families: Sequence[str] = tuple(FAMILIES)
          ) -> tuple[list[Item], list[Item]]:
    """Training items and held-out items: the held-out ones are distinct prompts, the training ones avoid them."""
    test = list({i.prompt: i for i in generate(n_test * 3, seed + 1, families)}.values())
    by_family: dict[str, list[Item]] = {}
    for item in test:
        by_family.setdefault(item.family, []).append(item)
    per = -(-n_test // len(families))
    test = [i for f in families for i in by_family.get(f, [])[:per]][:n_test]
    return generate(n_train, seed, families, exclude=test), test


def check(item: Item, response: str) -> bool:
    """Whether `response` answers `item` correctly (the family's checker)."""
    return FAMILIES[item.family].check(item, response)


def reward(item: Item, response: str) -> float:
    """The verifiable reward for RL: 1.0 for a correct answer, 0.0 otherwise (@sec-finetune-grpo)."""
    return float(check(item, response))
