"""Streaming text out of a stream of token ids: UTF-8 boundaries and stop strings (@sec-inference-server).

A byte-level BPE token can end in the middle of a multi-byte character, and a stop string can straddle
several tokens. `TextStream` decodes the ids seen so far, releases only text that can no longer change
(no trailing replacement character, no tail that could still grow into a stop string), and cuts the output
before the first stop string, as OpenAI's API does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """Incremental detokenizer: `push(token_id)` returns the newly final text and whether a stop string matched."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        self.decode, self.stop = decode, tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # everything released so far
        self.stopped = False

    def _held_back(self, text: str) -> int:
        """How many trailing characters might still change: an incomplete character or a partial stop string."""
        hold = 0
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives
            hold = len(text) - len(text.rstrip("\ufffd"))
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return hold

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (empty while held back). Sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        full = self.decode(self.ids)
        hits = [i for i in (full.find(s, max(0, len(self.text) - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            final = full[: min(hits)]
        else:
            final = full[: len(full) - self._held_back(full)]
        if not final.startswith(self.text):  # the decoder revised released text: never happens for byte-level BPE
            final = self.text
        delta, self.text = final[len(self.text):], final
        return delta

    def finish(self) -> str:
        """At the end of generation, release what was held back (an incomplete character stays as U+FFFD)."""
        if self.stopped or not self.ids:
            return ""
        full = self.decode(self.ids)
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += delta
        return delta
