"""Looking inside a trained model: tokens, next-token distributions, attention maps and the logit lens, written
into one self-contained HTML page (`llmbook explore`, @sec-architecture-explorer)."""

from llmbook.explore.page import (DEFAULT_PROMPTS, MAX_PROMPTS, MAX_TOKENS, MAX_TOP_K, Embedded, encode_prompts,
                                  explorer_data, iframe, render_html, write_explorer)
from llmbook.explore.plots import plot_attention_and_lens
from llmbook.explore.tokens import readable, token_bytes, token_piece
from llmbook.explore.trace import Trace, logit_lens, trace

__all__ = ["DEFAULT_PROMPTS", "MAX_PROMPTS", "MAX_TOKENS", "MAX_TOP_K", "Embedded", "Trace", "encode_prompts",
           "explorer_data", "iframe", "logit_lens", "plot_attention_and_lens", "readable", "render_html",
           "token_bytes", "token_piece", "trace", "write_explorer"]
