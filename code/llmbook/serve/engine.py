"""Continuous batching: requests join and leave a running decode batch, one slot of a preallocated KV cache each
(@sec-inference-batching).

Serving requests one at a time reads every weight once per generated token of *one* request. A decode step
for a batch of B requests reads the weights once for B tokens, and at batch sizes where decoding is
memory-bound it costs about the same as a step for one request. Static batching (wait for B requests, run them
to the end together) wastes the slots of requests that finish early; *continuous* (iteration-level) batching,
introduced by Orca [@yu2022orca], reschedules at every step: a finished request frees its slot at once and a
waiting one is prefilled into it while the others keep decoding.

`Engine.step()` is one scheduler iteration: drop cancelled requests, prefill waiting requests into free slots
(each prefill yields its first token), then run one batched decode step for every running request. Each
request samples with its own seeded generator, so its output does not depend on what else is in the batch (up
to floating-point rounding: a matrix product over B rows may round differently from one over a single row, which
can flip a token only where two are within rounding of each other).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llmbook.model import GPT
from llmbook.model.model import GREEDY_BELOW, truncate_logits
from llmbook.serve.kvcache import SlotKVCache, forward_slots
from llmbook.serve.text import TextStream

log = logging.getLogger("llmbook.serve")


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded; the fields and their meaning follow OpenAI's completions API."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # besides end-of-text, e.g. the chat template's end-of-turn token

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k <= 0):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2^63), got {self.seed!r}")


@dataclass
class Event:
    """What the engine reports for a request after a step: new final text, the token, and why it ended."""

    request_id: int
    text: str
    token_id: int | None = None
    finish_reason: str | None = None  # None while running, then "stop", "length", "cancelled" or "error"


@dataclass
class Completion:
    """A finished request, as `Engine.generate` returns it."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    ttft_s: float  # time to first token, from submission
    latency_s: float


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    callback: Callable[[Event], None] | None
    generator: torch.Generator
    stream: TextStream
    submitted: float
    slot: int = -1
    out: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    finish_reason: str | None = None


class Engine:
    """A continuous-batching decoder over `n_slots` cache slots for a `GPT` and its tokenizer.

    `decode(ids) -> str` is the tokenizer's decoder; `eos_id` (None: no end-of-text token) ends a sequence. Use
    `submit`/`cancel` from any thread and `step()` from one (or `start()` a background thread that steps while
    there is work).
    """

    def __init__(self, model: GPT, decode: Callable[[list[int]], str], eos_id: int | None, n_slots: int = 8,
                 max_len: int | None = None) -> None:
        self.model = model.eval()
        self.decode, self.eos_id = decode, eos_id
        self.cache = SlotKVCache(model, n_slots, max_len)
        self.device = self.cache.k.device
        self.max_len, self.n_slots = self.cache.max_len, n_slots
        self._slots: list[_Request | None] = [None] * n_slots
        self._waiting: deque[_Request] = deque()
        self._cancel: set[int] = set()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.counters = {"completed": 0, "cancelled": 0, "tokens": 0, "steps": 0, "errors": 0}

    # ---------------------------------------------------------------- requests
    def submit(self, prompt: Sequence[int], params: SamplingParams,
               callback: Callable[[Event], None] | None = None) -> int:
        """Queue a request; returns its id. Raises ValueError when prompt + max_tokens does not fit the context."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt has no tokens")
        if len(prompt) + params.max_tokens > self.max_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens and max_tokens is {params.max_tokens}: "
                             f"together more than the context of {self.max_len} tokens")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        req = _Request(next(self._ids), prompt, params, callback, gen, TextStream(self.decode, params.stop),
                       time.perf_counter())
        with self._cond:
            self._waiting.append(req)
            self._cond.notify()
        return req.id

    def cancel(self, request_id: int) -> None:
        """Stop a request (e.g. its client disconnected); its slot is freed at the next step."""
        with self._cond:
            self._cancel.add(request_id)
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        with self._cond:
            running = sum(r is not None for r in self._slots)
            return {"slots": self.n_slots, "running": running, "free": self.n_slots - running,
                    "waiting": len(self._waiting), **self.counters}

    def has_work(self) -> bool:
        with self._cond:
            return bool(self._waiting or self._cancel or any(r is not None for r in self._slots))

    # ---------------------------------------------------------------- scheduling
    @torch.no_grad()
    def step(self) -> list[Event]:
        """One iteration: drop cancelled requests, prefill waiting ones into free slots, one batched decode step."""
        events: list[tuple[_Request, Event]] = []
        with self._cond:
            cancel, self._cancel = self._cancel, set()
            for req in [r for r in self._waiting if r.id in cancel]:  # left while waiting: counted and reported too
                self._waiting.remove(req)
                self._finish(req, "cancelled", events)
            admitted = []
            for slot in range(self.n_slots):
                if self._slots[slot] is not None and self._slots[slot].id in cancel:
                    self._finish(self._slots[slot], "cancelled", events)
                if self._slots[slot] is None and self._waiting:
                    req = self._waiting.popleft()
                    req.slot, self._slots[slot] = slot, req
                    admitted.append(req)
        running = [r for r in self._slots if r is not None and r not in admitted]
        try:
            for req in admitted:  # prefill: the whole prompt in one forward pass, its last logits give token 1
                n = len(req.prompt)
                logits = forward_slots(self.model, self.cache, torch.tensor([req.slot], device=self.device),
                                       torch.tensor([req.prompt], device=self.device),
                                       torch.arange(n, device=self.device)[None], span=n)[:, -1]
                self._advance(req, self._sample(logits, [req])[0], events)
            if running:  # decode: one new token for every running request, in one forward pass
                lengths = [len(r.prompt) + len(r.out) for r in running]  # in Python: no device sync for the span
                pos = torch.tensor([[n - 1] for n in lengths], device=self.device)
                logits = forward_slots(self.model, self.cache, torch.tensor([r.slot for r in running], device=self.device),
                                       torch.tensor([[r.out[-1]] for r in running], device=self.device), pos,
                                       span=max(lengths))[:, -1]
                for req, tok in zip(running, self._sample(logits, running)):
                    self._advance(req, tok, events)
        finally:  # also when a pass fails: requests that finished before it are told
            self._emit(events)
        self.counters["steps"] += 1
        return [ev for _, ev in events]

    def _sample(self, logits: Tensor, reqs: list[_Request]) -> list[int]:
        """One token per row, each with its own request's settings and generator, in one batched draw.

        Each sampled row draws one uniform number u from its request's generator and takes the first token whose
        cumulative probability exceeds u (inverse-CDF sampling): the same draw whatever else is in the batch.
        """
        out = logits.argmax(dim=-1)
        rows = [i for i, r in enumerate(reqs) if r.params.temperature >= GREEDY_BELOW]
        if rows:
            index = torch.tensor(rows, device=logits.device)
            temps = torch.tensor([reqs[i].params.temperature for i in rows], device=logits.device)[:, None]
            scaled = logits[index].float() / temps
            for j, i in enumerate(rows):  # truncation only for the rows that ask for it
                p = reqs[i].params
                if p.top_k is not None or p.top_p < 1:
                    scaled[j] = truncate_logits(scaled[j: j + 1], p.top_k, p.top_p if p.top_p < 1 else None)[0]
            cdf = scaled.softmax(dim=-1).cumsum(dim=-1)
            u = torch.stack([torch.rand((), generator=reqs[i].generator, device=self.device) for i in rows])
            pick = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1])[:, None], right=True)[:, 0]
            out[index] = pick.clamp(max=logits.shape[-1] - 1)
        return out.tolist()

    def _advance(self, req: _Request, token: int, events: list[tuple[_Request, Event]]) -> None:
        req.out.append(token)
        self.counters["tokens"] += 1
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        if token == self.eos_id or token in req.params.stop_token_ids:
            self._finish(req, "stop", events, token, req.stream.finish())
            return
        delta = req.stream.push(token)
        if req.stream.stopped:
            self._finish(req, "stop", events, token, delta)
        elif len(req.out) >= req.params.max_tokens or len(req.prompt) + len(req.out) >= self.max_len:
            self._finish(req, "length", events, token, delta + req.stream.finish())
        else:
            events.append((req, Event(req.id, delta, token)))

    def _finish(self, req: _Request, reason: str, events: list[tuple[_Request, Event]], token: int | None = None,
                text: str = "") -> None:
        req.finish_reason = reason
        with self._cond:
            if 0 <= req.slot < self.n_slots and self._slots[req.slot] is req:
                self._slots[req.slot] = None
        self.counters["cancelled" if reason == "cancelled" else "completed"] += 1
        events.append((req, Event(req.id, text, token, reason)))

    @staticmethod
    def _emit(events: list[tuple[_Request, Event]]) -> None:
        for req, ev in events:
            if req.callback is not None:
                try:
                    req.callback(ev)
                except Exception as err:  # a consumer that went away (e.g. a closed event loop) must not stop others
                    log.warning(json.dumps({"event": "callback_failed", "request": req.id, "error": repr(err)}))

    # ---------------------------------------------------------------- helpers around step()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[Completion]:
        """Serve every prompt through the running batch (synchronously) and return the completions in order."""
        if self._thread is not None:
            raise RuntimeError("generate() steps the engine itself; it cannot run while start() is stepping it")
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        done: dict[int, Event] = {}

        def record(ev: Event) -> None:
            if ev.finish_reason is not None:
                done[ev.request_id] = ev

        ids = [self.submit(prompt, p, record) for prompt, p in zip(prompts, params, strict=True)]
        reqs = {r.id: r for r in self._waiting if r.id in ids}
        while len(done) < len(ids):
            self.step()
        out = []
        for rid in ids:
            r = reqs[rid]
            stopped = r.out and (r.out[-1] == self.eos_id or r.out[-1] in r.params.stop_token_ids)
            tokens = r.out[:-1] if stopped else r.out
            out.append(Completion(r.stream.text, tokens, r.finish_reason or "error", len(r.prompt),
                                  (r.first_token_at or r.submitted) - r.submitted, time.perf_counter() - r.submitted))
        return out

    def start(self) -> None:
        """Step in a background thread whenever there is work (what the HTTP server uses)."""
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._loop, name="llmbook-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not (self._waiting or self._cancel or any(self._slots)):
                    self._cond.wait()
                if self._closing:
                    return
            try:
                self.step()
            except Exception as err:  # a failed step must not take the server down: fail its requests, go on
                self._fail_all(f"{type(err).__name__}: {err}")

    def _fail_all(self, message: str) -> None:
        log.error(json.dumps({"event": "step_failed", "error": message}))
        events: list[tuple[_Request, Event]] = []
        self.counters["errors"] += 1
        for req in [r for r in self._slots if r is not None]:
            self._finish(req, "error", events, text="")
        self._emit(events)
