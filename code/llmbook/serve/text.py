"""Streaming text out of a stream of token ids: UTF-8 boundaries and stop strings (@sec-inference-server).

A byte-level BPE token can end in the middle of a multi-byte character, and a stop string can straddle
several tokens. `TextStream` decodes the ids seen so far, releases only text that can no longer change
(no trailing replacement character, no tail that could still grow into a stop string), and cuts the output
before the first stop string, as OpenAI's API does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """Incremental detokenizer: `push(token_id)` returns the newly final text and whether a stop string matched.

    Decoding is incremental, as in production servers: only the last tokens are decoded at each step (the ids since
    the last complete character, with the token before them as context), so a step costs the same at token 1,000
    as at token 1.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        self.decode, self.stop = decode, tuple(stop)
        self.ids: list[int] = []
        self.full = ""  # everything decoded so far (complete characters only)
        self.text = ""  # everything released so far
        self.stopped = False
        self._prefix = self._read = 0  # ids[_prefix:_read] give context; ids[_read:] are not yet in `full`

    def _held_back(self, text: str) -> int:
        """How many trailing characters might still change: a partial stop string at the end."""
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return hold

    def _decode_new(self, final: bool = False) -> None:
        """Append to `full` the text of ids[_read:] once it ends on a complete character (or at the end)."""
        before = self.decode(self.ids[self._prefix:self._read])
        after = self.decode(self.ids[self._prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")) and after.startswith(before):
            self.full += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (empty while held back). Sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        self._decode_new()
        full = self.full
        hits = [i for i in (full.find(s, max(0, len(self.text) - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            final = full[: min(hits)]
        else:
            final = full[: len(full) - self._held_back(full)]
        delta, self.text = final[len(self.text):], final
        return delta

    def finish(self) -> str:
        """At the end of generation, release what was held back (an incomplete character stays as U+FFFD)."""
        if self.stopped or not self.ids:
            return ""
        if self._read < len(self.ids):
            self._decode_new(final=True)
        delta = self.full[len(self.text):]
        self.text = self.full
        return delta
