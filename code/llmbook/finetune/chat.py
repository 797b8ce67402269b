"""The chat format: a Jinja chat template, its special tokens, and the encoder shared by SFT and serving
(@sec-finetune-chat).

A conversation is a list of `{"role", "content"}` messages. `ChatFormat.render` turns it into text with a Jinja
template, rendered exactly as `transformers`' `apply_chat_template` renders it (same sandboxed environment, same
options, same `{% generation %}` tag marking what the assistant says). `ChatFormat.encode` turns it into token ids
plus an assistant-token mask for the loss. Special tokens (role markers, end of turn) come only from the
template's own text, never from message content: a user who types `<|assistant|>` gets the characters, not the
token. The template is stored next to `tokenizer.json` as `chat_template.jinja`, the file `transformers` reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import regex

from llmbook.fileio import atomic_write

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLES = ("system", "user", "assistant")
EOS = "<|endoftext|>"
TEMPLATE_FILE = "chat_template.jinja"

# One line per role; `{% generation %}` marks the tokens the model is trained to produce (the answer and its
# end-of-turn token), exactly the span `transformers` returns as `assistant_masks`.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{ message['content'] }}<|end|>{{ '\\n' }}"
    "{%- elif message['role'] == 'user' -%}<|user|>{{ message['content'] }}<|end|>{{ '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

# Private-use characters that mark message content and generation spans while the template is rendered for
# encoding; real content never passes through that render, so text containing them changes nothing.
_CONTENT_OPEN, _CONTENT_CLOSE, _GEN_OPEN, _GEN_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_MARKS = regex.compile(f"{_CONTENT_OPEN}(\\d+){_CONTENT_CLOSE}|{_GEN_OPEN}|{_GEN_CLOSE}")


def validate_messages(messages: Any, allow_empty_assistant: bool = True) -> list[dict[str, str]]:
    """Check a conversation and return plain `{"role", "content"}` copies; ValueError names the message and field."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ValueError(f"messages: expected a list of {{'role', 'content'}} objects, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages: the conversation is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"message {i}: expected an object with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"message {i}: missing field {key!r}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"message {i} field 'role': {role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"message {i} field 'content': expected a string, got {type(content).__name__}")
        if role == "assistant" and not allow_empty_assistant and not content.strip():
            raise ValueError(f"message {i} field 'content': the assistant turn is empty")
        out.append({"role": role, "content": content})
    return out


def _backend(tokenizer: Any) -> Any:
    """The object that does the work: a `transformers` fast tokenizer's `tokenizers.Tokenizer`, else itself."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def special_tokens(tokenizer: Any) -> dict[str, int]:
    """Special-token strings and ids of a book `BPETokenizer` or a `tokenizers.Tokenizer` (added tokens)."""
    tok = _backend(tokenizer)
    if hasattr(tok, "get_added_tokens_decoder"):
        return {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    if isinstance(getattr(tok, "special_tokens", None), dict):
        return dict(tok.special_tokens)
    raise TypeError(f"unsupported tokenizer type {type(tokenizer).__name__}: expected llmbook BPETokenizer or "
                    "tokenizers.Tokenizer")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` as plain text: special-token strings inside it stay characters (@sec-finetune-chat).

    For a `tokenizers.Tokenizer` this runs its normalizer, pre-tokenizer and BPE model directly, skipping the
    added-token matcher (the same ids as `encode` with `encode_special_tokens=True`, without mutating a
    tokenizer other threads may share); a book `BPETokenizer` already treats special strings as text.
    """
    tok = _backend(tokenizer)
    if hasattr(tok, "get_added_tokens_decoder"):
        if not text:
            return []
        normalized = tok.normalizer.normalize_str(text) if tok.normalizer is not None else text
        pieces = tok.pre_tokenizer.pre_tokenize_str(normalized) if tok.pre_tokenizer is not None else [(normalized, None)]
        return [t.id for piece, _ in pieces for t in tok.model.tokenize(piece)]
    if isinstance(getattr(tok, "special_tokens", None), dict):
        return tok.encode(text, allowed_special="none")
    raise TypeError(f"unsupported tokenizer type {type(tokenizer).__name__}: expected llmbook BPETokenizer or "
                    "tokenizers.Tokenizer")


def add_chat_tokens(tokenizer: Any, tokens: Sequence[str] = CHAT_TOKENS) -> Any:
    """A copy of `tokenizer` with the chat special tokens appended after its last id (@sec-finetune-chat).

    Existing ids are unchanged, so a model's embedding table only grows (`llmbook.finetune.sft.resize_vocab`).
    Tokens the tokenizer already has are kept where they are. Works for the from-scratch `BPETokenizer`
    (`llmbook.tokenizer.bpe`) and for `tokenizers.Tokenizer` (`llmbook.tokenizer.hf`, or `tok.backend_tokenizer`
    of a `transformers` fast tokenizer); the input is not modified.
    """
    from llmbook.tokenizer.bpe import BPETokenizer

    have = special_tokens(tokenizer)
    new = [t for t in dict.fromkeys(tokens) if t not in have]
    if isinstance(tokenizer, BPETokenizer):
        out = BPETokenizer(tokenizer.merges, [*tokenizer.special_tokens, *new], tokenizer.pattern)
        out.merge_counts = list(tokenizer.merge_counts)
        return out
    from tokenizers import Tokenizer

    tok = _backend(tokenizer)
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"unsupported tokenizer type {type(tokenizer).__name__}")
    out = Tokenizer.from_str(tok.to_str())
    for t in new:
        if out.token_to_id(t) is not None:
            raise ValueError(f"{t!r} is already an ordinary token of this tokenizer; it cannot become a special token")
    start = out.get_vocab_size(with_added_tokens=True)
    out.add_special_tokens(new)
    for i, t in enumerate(new):
        if out.token_to_id(t) != start + i:
            raise ValueError(f"special token {t!r} got id {out.token_to_id(t)}, expected {start + i}")
    return out


def _environment(mark_generation: bool):
    """Jinja's sandbox configured as `transformers` configures it for chat templates (trim and lstrip blocks,
    loop controls, `raise_exception`, a JSON `tojson`), plus the `{% generation %}` tag."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body; while encoding, also marks where it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller) -> str:
            text = caller()
            return f"{_GEN_OPEN}{text}{_GEN_CLOSE}" if mark_generation else text

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    return env


@dataclass(frozen=True)
class ChatFormat:
    """A chat template plus the special tokens it uses; renders and encodes conversations (@sec-finetune-chat).

    `end_token` closes every turn and is what generation stops at (`stop_ids`). The default template is the
    book's; any `transformers`-style template that inserts message content verbatim works the same way.
    """

    template: str = CHAT_TEMPLATE
    end_token: str = END
    eos_token: str = EOS

    @cached_property
    def _templates(self):
        import jinja2

        try:
            return _environment(False).from_string(self.template), _environment(True).from_string(self.template)
        except jinja2.TemplateSyntaxError as err:
            raise ValueError(f"chat template line {err.lineno}: {err.message}") from None

    def _render(self, marked: bool, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        import jinja2

        try:
            return self._templates[marked].render(messages=messages, add_generation_prompt=add_generation_prompt)
        except jinja2.TemplateError as err:
            raise ValueError(f"chat template: {err}") from None

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as text, identical to `transformers`' `apply_chat_template(..., tokenize=False)`."""
        return self._render(False, validate_messages(messages), add_generation_prompt)

    def pieces(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
               ) -> list[tuple[str, bool, bool]]:
        """The rendered conversation cut into `(text, is_content, is_generated)` pieces (@sec-finetune-chat).

        The template is rendered with every content replaced by a placeholder, so what lies between the
        placeholders is the template's own text (where special tokens may appear) and the placeholders are
        filled with content as plain text. `is_generated` marks text inside `{% generation %}`.
        """
        messages = validate_messages(messages)
        placeholders = [{**m, "content": f"{_CONTENT_OPEN}{i}{_CONTENT_CLOSE}"} for i, m in enumerate(messages)]
        marked = self._render(True, placeholders, add_generation_prompt)
        out: list[tuple[str, bool, bool]] = []
        generated, pos = False, 0
        for match in _MARKS.finditer(marked):
            if match.start() > pos:
                out.append((marked[pos:match.start()], False, generated))
            if match.group(1) is not None:
                out.append((messages[int(match.group(1))]["content"], True, generated))
            else:
                generated = match.group(0) == _GEN_OPEN
            pos = match.end()
        if pos < len(marked):
            out.append((marked[pos:], False, generated))
        if "".join(text for text, _, _ in out) != self._render(False, messages, add_generation_prompt):
            raise ValueError("the chat template alters or repeats message content (e.g. trims it), so its "
                             "structure cannot be told apart from the content; insert content verbatim")
        return out

    def encode(self, tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
               ) -> tuple[list[int], list[int]]:
        """Token ids of the conversation and a 0/1 mask marking the assistant tokens the loss counts.

        Special-token ids come from the template's text; content is always encoded as plain text
        (`encode_text`). Text is tokenized in maximal runs between special tokens and generation boundaries,
        so for the book's template the ids equal the tokenizer's encoding of `render(...)`, and the mask
        equals `transformers`' `assistant_masks`, whenever the content holds no special-token string.
        """
        specials = special_tokens(tokenizer)
        missing = [t for t in (self.end_token,) if t not in specials]
        if missing:
            raise ValueError(f"the tokenizer has no {missing[0]!r} token; add the chat tokens with add_chat_tokens()")
        split = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
        ids: list[int] = []
        mask: list[int] = []
        run: list[str] = []  # text waiting to be tokenized, all with the same `generated` flag
        run_flag = False

        def flush() -> None:
            if run:
                new = encode_text(tokenizer, "".join(run))
                ids.extend(new)
                mask.extend([int(run_flag)] * len(new))
                run.clear()

        for text, is_content, generated in self.pieces(messages, add_generation_prompt):
            if generated != run_flag:
                flush()
                run_flag = generated
            for part in ([text] if is_content else split.split(text)):
                if not is_content and part in specials:
                    flush()
                    ids.append(specials[part])
                    mask.append(int(generated))
                elif part:
                    run.append(part)
        flush()
        return ids, mask

    def stop_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end an assistant turn: the end-of-turn token, and end-of-text when the tokenizer has it."""
        specials = special_tokens(tokenizer)
        if self.end_token not in specials:
            raise ValueError(f"the tokenizer has no {self.end_token!r} token; add the chat tokens with add_chat_tokens()")
        return [specials[t] for t in (self.end_token, self.eos_token) if t in specials]

    def save(self, folder: str | Path) -> Path:
        """Write the template as `chat_template.jinja` in `folder`, where `transformers` looks for it."""
        return atomic_write(Path(folder) / TEMPLATE_FILE, lambda f: f.write(self.template))

    @classmethod
    def load(cls, folder: str | Path) -> ChatFormat:
        """Read `chat_template.jinja` (or the `chat_template` of `tokenizer_config.json`) from a model folder."""
        folder = Path(folder)
        path = folder / TEMPLATE_FILE
        if path.is_file():
            template = path.read_text(encoding="utf-8")
        elif (folder / "tokenizer_config.json").is_file():
            path = folder / "tokenizer_config.json"
            try:
                template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: malformed JSON: {err}") from None
            if not isinstance(template, str):
                raise ValueError(f"{path}: field 'chat_template' is missing or not a single template string")
        else:
            raise FileNotFoundError(f"{folder} has no {TEMPLATE_FILE} (not a chat model: fine-tune it first)")
        fmt = cls(template)
        try:
            fmt._templates
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return fmt
