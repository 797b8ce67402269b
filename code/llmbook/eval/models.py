"""One small model interface for evaluation, in the spirit of lm-evaluation-harness (@sec-evaluation-interface).

Every evaluator talks to a `CausalLM`: `loglikelihood` scores continuations given contexts,
`loglikelihood_rolling` scores whole documents with sliding windows, and `generate` decodes greedily (or by
sampling) until a stop string. Subclasses only say how to tokenize and how to get logits, so a
`transformers` model and a book-trained `llmbook` model are scored by the very same code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmbook.progress import progress_bar


@dataclass(frozen=True)
class TokenScore:
    """Log-probability of a target token span and whether greedy decoding would have produced it."""

    logprob: float
    is_greedy: bool
    n_tokens: int


class CausalLM:
    """Base class: tokenization + a logits function give loglikelihood, rolling loglikelihood and generation."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], eot_id: int,
                 max_length: int, batch_size: int = 8, device: str = "cpu"):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encode, self.decode, self.eot_id = encode, decode, eot_id
        self.max_length, self.batch_size, self.device = max_length, batch_size, device

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for token ids (B, T); subclasses implement it."""
        raise NotImplementedError

    # ---- scoring -------------------------------------------------------------------------------------
    def score_tokens(self, requests: Sequence[tuple[list[int], list[int]]], batch_size: int | None = None
                     ) -> list[TokenScore]:
        """Score each (context ids, target ids): sum of log p(target | context), truncated to max_length.

        Distinct model inputs are sorted longest first and right-padded into batches; with causal attention
        the padding sits after every scored position, so it cannot change any score. Requests with the same
        input (e.g. the single-token choices " A".." D" of one MMLU question) share one forward pass, and
        the softmax is taken only at the scored positions (@sec-evaluation-interface).
        """
        batch_size = batch_size or self.batch_size
        inputs: dict[tuple[int, ...], list[int]] = {}  # model input -> indices of the requests it serves
        spans = []
        for i, (ctx, tgt) in enumerate(requests):
            if not tgt:
                raise ValueError("a request has an empty continuation")
            if not ctx:
                raise ValueError("a request has an empty context (prepend the end-of-text token)")
            if len(tgt) > self.max_length:
                raise ValueError(f"a continuation of {len(tgt)} tokens exceeds max_length={self.max_length}")
            inp = tuple((ctx + tgt)[-(self.max_length + 1):-1])
            inputs.setdefault(inp, []).append(i)
            spans.append((len(inp) - len(tgt), len(inp)))
        unique = sorted(inputs, key=len, reverse=True)
        out: list = [None] * len(requests)
        for start in progress_bar(range(0, len(unique), batch_size), desc="scoring", unit="batch", leave=False):
            chunk = unique[start : start + batch_size]
            batch = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
            for b, inp in enumerate(chunk):
                batch[b, : len(inp)] = torch.tensor(inp)
            with torch.no_grad():
                logits = self.logits(batch.to(self.device))
            served = [i for inp in chunk for i in inputs[inp]]
            rows = torch.cat([torch.full((spans[i][1] - spans[i][0],), b) for b, inp in enumerate(chunk) for i in inputs[inp]])
            cols = torch.cat([torch.arange(*spans[i]) for i in served])
            targets = torch.cat([torch.tensor(requests[i][1]) for i in served])
            # one softmax over every scored position of the batch, then split back into requests
            logp = F.log_softmax(logits[rows.to(logits.device), cols.to(logits.device)].float(), dim=-1)
            token_lp = logp.gather(1, targets.to(logp.device)[:, None])[:, 0].cpu()
            hit = (logp.argmax(-1).cpu() == targets)
            pos = 0
            for i in served:
                n = spans[i][1] - spans[i][0]
                out[i] = TokenScore(float(token_lp[pos : pos + n].sum()), bool(hit[pos : pos + n].all()), n)
                pos += n
        return out

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokenize like lm-evaluation-harness: trailing spaces move to the continuation, which is whole[len(ctx):]."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        if not context:
            return [self.eot_id], self.encode(continuation)
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) for each (context, continuation) string pair."""
        scores = self.score_tokens([self.encode_pair(c, x) for c, x in requests])
        return [(s.logprob, s.is_greedy) for s in scores]

    def rolling_windows(self, tokens: list[int], stride: int | None = None) -> list[tuple[list[int], list[int]]]:
        """Sliding windows that score every token once, each with up to max_length - stride tokens of context.

        The sequence is prefixed with the end-of-text token so the first token is predicted too. With
        stride = max_length the windows are disjoint (lm-evaluation-harness's default), and tokens early
        in a window see little context; a smaller stride gives every token more context at more cost.
        """
        stride = stride or self.max_length
        if not 1 <= stride <= self.max_length:
            raise ValueError(f"stride must be in [1, max_length={self.max_length}], got {stride}")
        seq = [self.eot_id] + list(tokens)
        windows = []
        for start in range(1, len(seq), stride):
            end = min(start + stride, len(seq))
            ctx_start = max(0, end - 1 - self.max_length)
            windows.append((seq[ctx_start:start], seq[start:end]))
        return windows

    def loglikelihood_rolling(self, texts: Sequence[str], stride: int | None = None) -> list[TokenScore]:
        """Total log-likelihood of each whole text (for perplexity), scored in batched sliding windows."""
        windows, owner = [], []
        for i, text in enumerate(texts):
            for w in self.rolling_windows(self.encode(text), stride):
                windows.append(w)
                owner.append(i)
        scores = self.score_tokens(windows)
        totals = [[0.0, True, 0] for _ in texts]
        for i, s in zip(owner, scores):
            totals[i][0] += s.logprob
            totals[i][1] &= s.is_greedy
            totals[i][2] += s.n_tokens
        return [TokenScore(lp, g, n) for lp, g, n in totals]

    # ---- generation ----------------------------------------------------------------------------------
    def next_token_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits of the token after `ids` (the last max_length tokens are used)."""
        ids = ids[-self.max_length:]
        with torch.no_grad():
            return self.logits(torch.tensor([ids], device=self.device))[0, -1].float().cpu()

    def greedy_ids(self, ids: list[int], max_tokens: int, stop: Sequence[str] = ()) -> list[int] | None:
        """Fast greedy continuation (e.g. with a KV cache) if the backend has one, else None."""
        return None

    @staticmethod
    def _cut(text: str, stop: Sequence[str]) -> str:
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        return text[:cut] if cut >= 0 else text

    def generate(self, prompt: str, stop: Sequence[str] = (), max_tokens: int = 128, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> str:
        """Continue `prompt` until a stop string, end-of-text or max_tokens; temperature 0 is greedy decoding.

        A prompt longer than max_length - max_tokens keeps its last tokens (with a warning), so the answer fits.
        """
        ids = self.encode(prompt) or [self.eot_id]
        keep = max(1, self.max_length - max_tokens)
        if len(ids) > keep:
            warnings.warn(f"prompt of {len(ids)} tokens cut to its last {keep} to leave room for {max_tokens} "
                          f"new tokens in a {self.max_length}-token window", RuntimeWarning, stacklevel=2)
            ids = ids[-keep:]
        max_tokens = min(max_tokens, self.max_length - len(ids))
        if temperature == 0:
            fast = self.greedy_ids(ids, max_tokens, stop)
            if fast is not None:
                fast = fast[: fast.index(self.eot_id)] if self.eot_id in fast else fast
                return self._cut(self.decode(fast), stop)
        new: list[int] = []
        text = ""
        for _ in range(max_tokens):
            logits = self.next_token_logits(ids + new)
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=generator))
            else:
                tok = int(logits.argmax())
            if tok == self.eot_id:
                break
            new.append(tok)
            text = self.decode(new)
            if any(s in text for s in stop):
                return self._cut(text, stop)
        return text


class HFCausalLM(CausalLM):
    """Adapter for any `transformers` causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, max_length: int | None = None, batch_size: int = 8, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        if eot is None:
            raise ValueError("the tokenizer has neither an eos nor a bos token to use as end-of-text")
        max_length = max_length or getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions")
        super().__init__(lambda s: tokenizer.encode(s, add_special_tokens=False), tokenizer.decode, eot,
                         max_length, batch_size, device)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits

    def greedy_ids(self, ids: list[int], max_tokens: int, stop: Sequence[str] = ()) -> list[int]:
        if max_tokens <= 0:
            return []
        from transformers import GenerationConfig

        # stop strings end generation early where transformers supports them; generate() also cuts post hoc
        kw = {"stop_strings": list(stop), "tokenizer": self.tokenizer} if (
            stop and hasattr(GenerationConfig(), "stop_strings")) else {}
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids], device=self.device), max_new_tokens=max_tokens,
                                      do_sample=False, eos_token_id=self.eot_id, pad_token_id=self.eot_id,
                                      attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                                      **kw)
        return out[0, len(ids):].tolist()


class LLMBookLM(CausalLM):
    """Adapter for a book-trained `llmbook.model.GPT` and its tokenizer.

    The tokenizer is a `tokenizers.Tokenizer` (what the trainer saves with every checkpoint) or any object whose
    `encode(str)` returns a list of ids and `decode(ids)` a string (a `transformers` tokenizer).
    """

    def __init__(self, model, tokenizer, eot_id: int, batch_size: int = 8, device: str = "cpu",
                 max_length: int | None = None):
        from tokenizers import Tokenizer

        block = model.config.block_size
        if max_length is not None and max_length > block:
            raise ValueError(f"max_length={max_length} exceeds the model's block_size={block}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        if isinstance(tokenizer, Tokenizer):
            encode = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
        else:
            encode = tokenizer.encode
        super().__init__(encode, tokenizer.decode, eot_id, max_length or block, batch_size, device)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[0]

    def greedy_ids(self, ids: list[int], max_tokens: int, stop: Sequence[str] = ()) -> list[int]:
        if max_tokens <= 0:
            return []
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids], device=self.device), max_tokens, temperature=0.0,
                                      stop=self.eot_id)
        return out[0, len(ids):].tolist()
