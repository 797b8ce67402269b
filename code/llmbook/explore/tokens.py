"""Token ids as readable pieces: the bytes behind a byte-level BPE token, shown so that spaces, newlines and
partial UTF-8 characters are visible (@sec-architecture-explorer)."""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache

from llmbook.tokenizer.pretokenize import bytes_to_unicode

# Whitespace drawn as visible symbols; everything else that does not print is shown as an escape.
# open box, downwards arrow with corner leftwards, rightwards arrow to bar
VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5"}


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _is_byte_level(tokenizer) -> bool:
    if tokenizer.decoder is None:
        return False
    decoder = json.loads(tokenizer.decoder.__getstate__())
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", [])]
    return "ByteLevel" in kinds


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes a token stands for; None for an added (special) token such as `<|endoftext|>`.

    Byte-level vocabularies store each byte as one printable character (GPT-2's `bytes_to_unicode`), so a
    token may hold part of a UTF-8 character; other tokenizers give the token's decoded text.
    """
    if token_id in tokenizer.get_added_tokens_decoder():
        return None
    token = tokenizer.id_to_token(token_id)
    if token is None:
        raise ValueError(f"token id {token_id} is not in the tokenizer's vocabulary of {tokenizer.get_vocab_size()}")
    byte_of = _byte_of_char()
    if _is_byte_level(tokenizer) and all(c in byte_of for c in token):
        return bytes(byte_of[c] for c in token)
    return tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")


def readable(data: bytes) -> str:
    """Bytes as text a reader can see: spaces as open boxes, newlines and tabs as arrows, control characters
    and bytes that are not (complete) UTF-8 as escapes such as `\\xe2`."""
    text = data.decode("utf-8", errors="backslashreplace")
    out = []
    for ch in text:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif unicodedata.category(ch)[0] == "C":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def token_piece(tokenizer, token_id: int) -> str:
    """How the explorer shows a token: its bytes made readable, or an added token's own text."""
    data = token_bytes(tokenizer, token_id)
    return tokenizer.id_to_token(token_id) if data is None else readable(data)
