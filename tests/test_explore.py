"""The model explorer (@sec-architecture-explorer): what `trace` captures, the page's data, `llmbook explore`,
and the page itself in a real browser (Debian's Chromium driven by Playwright).

Tolerances: captured attention and logit-lens values against recomputations and `transformers`, 1e-5
absolute (float32, different summation order); numbers on the page against Python, the page's rounding:
probabilities to 3 significant digits (relative error at most 0.5%), attention weights to 0.001.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from llmbook.cli import main
from llmbook.explore import (DEFAULT_PROMPTS, MAX_PROMPTS, MAX_TOKENS, Embedded, encode_prompts, explorer_data, iframe,
                             plot_attention_and_lens, readable, render_html, token_bytes, token_piece, trace,
                             write_explorer)
from llmbook.explore.trace import previous_token_scores
from llmbook.model import GPT, GPTConfig
from llmbook.train import checkpoint as ckpt
from train_fixtures import config_text, synthetic_texts

EOS = "<|endoftext|>"
TINY = dict(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=32)
VARIANTS = {
    "gpt2": {},
    "llama-gqa-rope": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_weights=False),
    "mqa-alibi": dict(pos_emb="alibi", n_kv_head=1),
    "post-norm-sinusoidal": dict(norm_position="post", pos_emb="sinusoidal"),
    "sliding-window": dict(pos_emb="rope", sliding_window=5),
}
UNICODE = ["Caf\u00e9 cr\u00e8me, na\u00efve \u00fcber.", "\u65e5\u672c\u8a9e\u306e\u6587\u3002",
           "Snow \u2603 and tea \U0001f375."]
PROMPTS = [DEFAULT_PROMPTS[0], "the cat sat on a mat and the dog sat on the mat", UNICODE[0] + " " + UNICODE[2],
           "line one\nline two\twith a tab"]
PROB_REL = 5e-3  # 3 significant digits
ATTN_ABS = 5e-4 + 1e-6  # thousandths


def tiny(sharp: bool = False, **kw) -> GPT:
    """A seeded random model; `sharp` scales the initial weights up so attention and predictions are peaked."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, **kw})).eval()
    if sharp:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2:
                    p.mul_(8.0 if "c_attn" in name else 3.0)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    from llmbook.tokenizer import train_hf_tokenizer

    return train_hf_tokenizer(synthetic_texts() + UNICODE * 3, TINY["vocab_size"], special_tokens=(EOS,))


# ------------------------------------------------------------------------------------------------ trace
def recompute_attention(model: GPT, residuals: torch.Tensor) -> torch.Tensor:
    """Each block's attention probabilities from its weights and its input (the residual stream), written out
    here independently of the model's code: projections, RoPE, ALiBi, causal and window masks, softmax."""
    cfg, hd = model.config, model.config.head_dim
    t = residuals.shape[1]
    pos = torch.arange(t)
    out = []
    for layer, block in enumerate(model.blocks):
        x = residuals[layer][None]
        h = block.ln_1(x) if cfg.norm_position == "pre" else x
        q, k, _ = block.attn.c_attn(h).split([cfg.n_head * hd, cfg.n_kv_head * hd, cfg.n_kv_head * hd], dim=-1)
        q = q.view(1, t, cfg.n_head, hd).transpose(1, 2)
        k = k.view(1, t, cfg.n_kv_head, hd).transpose(1, 2).repeat_interleave(cfg.n_head // cfg.n_kv_head, dim=1)
        if cfg.pos_emb == "rope":  # rotate each pair (i, i + d/2) by pos * base^(-2i/d)
            angle = pos[:, None].float() * cfg.rope_base ** (-torch.arange(0, hd, 2).float() / hd)
            cos, sin = angle.cos(), angle.sin()

            def rotate(v):
                a, b = v[..., : hd // 2], v[..., hd // 2:]
                return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
            q, k = rotate(q), rotate(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if cfg.pos_emb == "alibi":  # n_head is a power of two here: slopes 2^(-8(h+1)/H)
            slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / cfg.n_head) for i in range(cfg.n_head)])
            scores = scores - slopes[:, None, None] * (pos[:, None] - pos[None, :]).float()
        allowed = pos[None, :] <= pos[:, None]
        if cfg.sliding_window:
            allowed &= pos[None, :] > pos[:, None] - cfg.sliding_window
        out.append(scores.masked_fill(~allowed, float("-inf")).softmax(-1)[0])
    return torch.stack(out)


@pytest.mark.parametrize("name", VARIANTS)
def test_trace_attention_equals_a_recomputation_and_the_lens_ends_at_the_logits(name):
    model = tiny(sharp=True, **VARIANTS[name])
    ids = torch.randint(0, 300, (11,), generator=torch.Generator().manual_seed(1)).tolist()
    t = trace(model, ids)
    cfg = model.config
    assert t.attention.shape == (cfg.n_layer, cfg.n_head, 11, 11)
    assert t.residuals.shape == (cfg.n_layer + 1, 11, cfg.n_embd)
    assert t.lens_logits.shape == (cfg.n_layer + 1, 11, cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(t.attention, recompute_attention(model, t.residuals), atol=1e-5, rtol=0)
        torch.testing.assert_close(t.logits, model(torch.tensor([ids]))[0][0], atol=1e-5, rtol=0)
        # every lens layer is the final norm and the unembedding of that layer's residual stream
        torch.testing.assert_close(t.lens_logits[1], model.lm_head(model.ln_f(t.residuals[1])), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(cfg.n_layer, cfg.n_head, 11))
    assert t.attention.triu(1).abs().max() == 0


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_trace_matches_transformers_attentions_and_hidden_states(kind):
    """`transformers` with eager attention returns the same attention probabilities and hidden states."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from llmbook.model import from_hf

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                         eos_token_id=0, activation_function="gelu_pytorch_tanh")
        cls = GPT2LMHeadModel
    else:
        cfg = LlamaConfig(vocab_size=300, max_position_embeddings=64, hidden_size=32, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                          eos_token_id=0)
        cls = LlamaForCausalLM
    cfg._attn_implementation = "eager"  # the implementation that returns attention probabilities
    hf = cls(cfg).eval()
    ours = from_hf(hf)
    ids = torch.randint(0, 300, (1, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids, output_attentions=True, output_hidden_states=True)
    t = trace(ours, ids[0].tolist())
    torch.testing.assert_close(t.attention, torch.cat(ref.attentions), atol=1e-5, rtol=0)
    # transformers' hidden states: the embeddings, after each block but the last, then the last after the final norm
    torch.testing.assert_close(t.residuals[:-1], torch.cat(ref.hidden_states[:-1]), atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(ours.ln_f(t.residuals[-1]), ref.hidden_states[-1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(t.logits, ref.logits[0], atol=1e-4, rtol=0)


def test_trace_leaves_the_model_as_it_found_it():
    model = tiny(dropout=0.1)
    model.train()
    ids = [1, 2, 3, 4, 5]
    trace(model, ids)
    assert model.training
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)
    model.eval()
    first, second = trace(model, ids), trace(model, ids)  # eval mode inside: no dropout, deterministic
    assert torch.equal(first.lens_logits, second.lens_logits)
    with pytest.raises(ValueError, match="causal"):
        trace(tiny(causal=False), ids)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 300\)"):
        trace(model, [1, 300])
    with pytest.raises(ValueError, match="at least one"):
        trace(model, [])


def test_previous_token_scores():
    t = 6
    attention = torch.zeros(1, 2, t, t)
    attention[0, 0, 0, 0] = 1
    attention[0, 0, torch.arange(1, t), torch.arange(t - 1)] = 1  # a previous-token head
    attention[0, 1] = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]  # uniform over the visible tokens
    scores = previous_token_scores(attention)
    assert scores[0, 0].item() == 1
    assert scores[0, 1].item() == pytest.approx(sum(1 / (q + 1) for q in range(1, t)) / (t - 1))
    with pytest.raises(ValueError, match="at least two tokens"):
        previous_token_scores(torch.ones(1, 1, 1, 1))


# ----------------------------------------------------------------------------------------------- tokens
def test_pieces_show_the_tokens_bytes(tokenizer):
    for text in UNICODE + PROMPTS:
        ids = tokenizer.encode(text).ids
        assert b"".join(token_bytes(tokenizer, i) for i in ids) == text.encode("utf-8")
    eos = tokenizer.token_to_id(EOS)
    assert token_bytes(tokenizer, eos) is None and token_piece(tokenizer, eos) == EOS
    assert readable(b" a\n\tb") == "\u2423a\u21b5\u21e5b"
    assert readable("\u2603".encode()[:2]) == "\\xe2\\x98"  # part of a UTF-8 character
    assert readable(b"\x00\x7f") == "\\x00\\x7f"
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        token_bytes(tokenizer, 10_000)


# --------------------------------------------------------------------------------------------- page data
def test_page_data_is_the_trace_rounded(tokenizer):
    model = tiny(sharp=True, **VARIANTS["llama-gqa-rope"])
    data = explorer_data(model, tokenizer, PROMPTS, top_k=7, name="tiny", step=3)
    info = data["model"]
    assert info["n_layer"] == 2 and info["params"] == model.num_params() and info["step"] == 3
    for text, entry in zip(PROMPTS, data["prompts"]):
        ids = tokenizer.encode(text).ids
        assert entry["ids"] == ids and entry["text"] == text
        t = trace(model, ids)
        probs = t.logits.softmax(-1)
        top = probs.topk(7, dim=-1)
        assert entry["next"]["ids"] == top.indices.tolist()
        for row, ref in zip(entry["next"]["p"], top.values.tolist()):
            assert row == pytest.approx(ref, rel=PROB_REL)
            assert all(len(f"{p:.6e}".split("e")[0].rstrip("0").replace(".", "").lstrip("0")) <= 3 for p in row)
        actual = [probs[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        assert entry["actual"] == pytest.approx(actual, rel=PROB_REL)
        for layer in range(2):
            for head in range(4):
                rows = entry["attn"][layer][head]
                assert [len(r) for r in rows] == list(range(1, len(ids) + 1))
                for q, r in enumerate(rows):
                    assert all(isinstance(w, int) for w in r)
                    ref = t.attention[layer, head, q, : q + 1].tolist()
                    assert max(abs(w / 1000 - x) for w, x in zip(r, ref)) <= ATTN_ABS
        lens = t.lens_logits.softmax(-1).topk(5, dim=-1)
        assert entry["lens"]["ids"] == lens.indices.tolist()
        assert entry["lens"]["ids"][-1] == [row[:5] for row in entry["next"]["ids"]]  # the last layer: the output
    pieces = {i: token_piece(tokenizer, i) for e in data["prompts"] for i in e["ids"]}
    assert all(data["vocab"][str(i)][0] == p for i, p in pieces.items())
    the = tokenizer.token_to_id("\u0120the")  # " the" in GPT-2's byte-to-character map
    assert the in pieces and data["vocab"][str(the)] == ["\u2423the", "20 74 68 65"]


def test_prompts_are_checked(tokenizer):
    with pytest.raises(ValueError, match="no prompts"):
        encode_prompts(tokenizer, [], 64)
    with pytest.raises(ValueError, match="prompt 2: empty prompt"):
        encode_prompts(tokenizer, ["a cat", "   "], 64)
    long = " the" * (MAX_TOKENS + 1)  # one token per " the"
    with pytest.raises(ValueError, match=f"here.txt line 7: {MAX_TOKENS + 1} tokens; the explorer takes at most "
                                         f"{MAX_TOKENS}"):
        encode_prompts(tokenizer, [long], 1024, where=["here.txt line 7"])
    with pytest.raises(ValueError, match="at most 16 .*model context 16"):
        encode_prompts(tokenizer, [" the" * 17], 16)
    with pytest.raises(ValueError, match=f"at most {MAX_PROMPTS}"):
        encode_prompts(tokenizer, ["a"] * (MAX_PROMPTS + 1), 64)
    with pytest.raises(ValueError, match="top_k must be between 1 and 50"):
        explorer_data(tiny(), tokenizer, ["a cat"], top_k=0)


def test_static_figure_shows_the_page_data(tokenizer):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = explorer_data(tiny(sharp=True), tokenizer, PROMPTS[:2])
    fig = plot_attention_and_lens(data, 1, layer=1, head=2)
    attn_ax, lens_ax = fig.axes[:2]  # then the colour bar
    entry = data["prompts"][1]
    shown = attn_ax.images[0].get_array().filled(np.nan)
    for q, row in enumerate(entry["attn"][1][2]):
        assert shown[q, : q + 1].tolist() == [w / 1000 for w in row] and np.isnan(shown[q, q + 1:]).all()
    assert lens_ax.images[0].get_array().tolist() == [[cell[0] for cell in layer] for layer in entry["lens"]["p"]]
    pieces = [data["vocab"][str(i)][0] for i in entry["ids"]]
    assert [t.get_text() for t in lens_ax.get_xticklabels()] == pieces
    assert [t.get_text() for t in lens_ax.texts][: len(pieces)] == [
        data["vocab"][str(layer0[0])][0] for layer0 in entry["lens"]["ids"][0]]
    plt.close(fig)


HOSTILE = "</script><img src=x onerror=pwned=1>{{DATA}}"  # within MAX_TOKENS of the near-byte-level test vocabulary


def test_page_is_one_file_that_loads_nothing(tokenizer):
    page = render_html(explorer_data(tiny(), tokenizer, PROMPTS[:2] + [HOSTILE]))
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I), "the page refers to a network address"
    head, rest = page.split('<script type="application/json" id="explorer-data">')
    payload, tail = rest.split("</script>", 1)  # every "<" in the data is escaped, so only this tag closes it
    assert not re.search(r"\b(src|href)\s*=|@import|url\(", head + tail), "the page loads a resource"
    assert page.count("</script>") == 2 and "</" not in payload
    assert json.loads(payload)["prompts"][2]["text"] == HOSTILE
    frame = Embedded(page, "Explorer")._repr_html_()
    assert frame == iframe(page, "Explorer") and frame.startswith("<iframe ") and 'sandbox="allow-scripts"' in frame
    assert page not in frame and "&lt;/script&gt;" in frame  # the page is escaped into the srcdoc attribute


# -------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    """A 6-step run of the book's trainer on BPE shards, with the tokenizer in every checkpoint."""
    from llmbook.data.pack import write_shards
    from llmbook.train import Trainer, load_config

    tmp = tmp_path_factory.mktemp("explore-run")
    texts = synthetic_texts() + UNICODE * 3
    write_shards(texts, lambda t: tokenizer.encode(t).ids, tmp / "shards", eos_id=tokenizer.token_to_id(EOS),
                 vocab_size=tokenizer.get_vocab_size(), val_fraction=0.1, progress=False)
    tokenizer.save(str(tmp / "shards" / "tokenizer.json"))
    (tmp / "run.toml").write_text(config_text(tmp / "shards", model={"vocab_size": 300, "block_size": 64},
                                              data={"block_size": 64}, checkpoint={"every": 3, "keep": 2},
                                              train={"steps": 6, "eval_every": 0}))
    Trainer(load_config(tmp / "run.toml"), tmp / "run", log=lambda msg: None).fit()
    return tmp / "run"


def test_cli_writes_the_page(run_dir, tmp_path, capsys, tokenizer):
    from llmbook.train.generate import load_model

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on\n\n" + UNICODE[0] + "\n", encoding="utf-8")
    out = tmp_path / "site" / "explorer.html"
    assert main(["explore", "--checkpoint", str(run_dir), "--out", str(out), "--prompts", str(prompts),
                 "--top-k", "5"]) == 0
    assert f"wrote {out} (2 prompts" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    data = json.loads(page.split('id="explorer-data">')[1].split("</script>")[0].replace("\\u003c", "<"))
    model, tok, meta = load_model(run_dir)
    assert data["model"]["step"] == 6 and data["model"]["name"] == f"{run_dir.name} {meta.path.name}"
    assert data == explorer_data(model, tok, ["the cat sat on", UNICODE[0]], top_k=5,
                                 name=data["model"]["name"], step=6)
    assert [p.name for p in out.parent.iterdir()] == ["explorer.html"]  # no temporary file left behind


def test_cli_errors_are_one_line(run_dir, tmp_path, capsys):
    def error(*args, checkpoint=run_dir, out=tmp_path / "e.html"):
        assert main(["explore", "--checkpoint", str(checkpoint), "--out", str(out), *args]) == 2
        message = capsys.readouterr().err
        assert message.startswith("llmbook explore: error: ") and message.count("\n") == 1, message
        return message

    def prompts(content: bytes | str) -> str:
        path = tmp_path / "p.txt"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return str(path)

    assert f"checkpoint {tmp_path / 'nowhere'} does not exist" in error(checkpoint=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no valid checkpoint found in" in error(checkpoint=tmp_path / "empty")
    broken = tmp_path / "broken" / "checkpoints" / ckpt.step_dir_name(6)
    shutil.copytree(run_dir / "checkpoints" / ckpt.step_dir_name(6), broken)
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.warns(UserWarning, match="sha256"):
        assert "no valid checkpoint found in" in error(checkpoint=tmp_path / "broken")
    assert "p.txt has no prompts" in error("--prompts", prompts("\n  \n"))
    assert "p.txt: not UTF-8 text (byte 4" in error("--prompts", prompts(b"cat \xff dog\n"))
    overlong = prompts("a cat\n" + " the" * (MAX_TOKENS + 1) + "\n")
    assert f"p.txt line 2: {MAX_TOKENS + 1} tokens" in error("--prompts", overlong)
    assert f"has {MAX_PROMPTS + 1} prompts" in error("--prompts", prompts("a cat\n" * (MAX_PROMPTS + 1)))
    assert f"prompts file {tmp_path / 'none.txt'} does not exist" in error("--prompts", str(tmp_path / "none.txt"))
    assert "--top-k must be between 1 and 50, got 0" in error("--top-k", "0")
    (tmp_path / "dir.html").mkdir()
    assert "is a directory" in error(out=tmp_path / "dir.html")
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in error(out=tmp_path / "file" / "e.html")
    # a failed run leaves an existing page untouched
    page = tmp_path / "keep.html"
    page.write_text("old page")
    error("--prompts", prompts(""), out=page)
    assert page.read_text() == "old page"


# ---------------------------------------------------------------------------------------------- browser
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        yield browser
        browser.close()


class Page:
    """A browser tab on the explorer, recording console errors and every request the page makes."""

    def __init__(self, browser, path):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready=true]")

    def values(self, selector: str, attribute: str) -> list[str]:
        return self.page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attribute}'))")

    def network(self) -> list[str]:
        return [u for u in self.requests if u != self.url]


@pytest.fixture(scope="module")
def explorer(tokenizer, tmp_path_factory):
    model = tiny(sharp=True, **VARIANTS["llama-gqa-rope"])
    path = tmp_path_factory.mktemp("page") / "explorer.html"
    write_explorer(path, explorer_data(model, tokenizer, PROMPTS + [HOSTILE], top_k=8, name="tiny"))
    return model, path


def test_page_in_a_browser_shows_the_python_values(browser, explorer, tokenizer):
    model, path = explorer
    tab = Page(browser, path)
    page = tab.page
    for index, text in enumerate(PROMPTS):
        page.select_option("#prompt-select", str(index))
        ids = tokenizer.encode(text).ids
        t = trace(model, ids)
        # tokenization: the tokenizer's ids, pieces and bytes
        assert [int(i) for i in tab.values("#tokens .tok", "data-id")] == ids
        assert page.locator("#tokens .tok").all_inner_texts() == [token_piece(tokenizer, i) for i in ids]
        assert bytes.fromhex(" ".join(tab.values("#tokens .tok", "data-bytes"))) == text.encode("utf-8")
        # next-token distribution at a few positions
        probs = t.logits.softmax(-1)
        for pos in sorted({0, len(ids) // 2, len(ids) - 1}):
            page.click(f"#tokens .tok[data-pos='{pos}']")
            assert page.get_attribute(f"#tokens .tok[data-pos='{pos}']", "aria-pressed") == "true"
            top = probs[pos].topk(8)
            assert [int(i) for i in tab.values("#next-table tbody tr", "data-id")] == top.indices.tolist()
            shown = [float(x) for x in page.locator("#next-table tbody td.prob").all_inner_texts()]
            assert shown == pytest.approx(top.values.tolist(), rel=PROB_REL)
        # attention: every layer and head of the first prompt, chosen with the selects; one of each other prompt
        pairs = [(layer, head) for layer in range(2) for head in range(4)] if index == 0 else [(1, 3)]
        for layer, head in pairs:
            page.select_option("#layer-select", str(layer))
            page.select_option("#head-select", str(head))
            assert page.get_attribute("#attn-map", "data-layer") == str(layer)
            assert page.get_attribute("#attn-map", "data-head") == str(head)
            q = [int(v) for v in tab.values("#attn-map td[data-w]", "data-q")]
            k = [int(v) for v in tab.values("#attn-map td[data-w]", "data-k")]
            w = [int(v) / 1000 for v in tab.values("#attn-map td[data-w]", "data-w")]
            ref = t.attention[layer, head, q, k].tolist()
            assert len(w) == len(ids) * (len(ids) + 1) // 2
            assert max(abs(a - b) for a, b in zip(w, ref)) <= ATTN_ABS
        # logit lens: the top token and its probability in every cell
        lens = t.lens_logits.softmax(-1).max(-1)
        cells = page.eval_on_selector_all("#lens-map td", "els => els.map(e => [e.dataset.layer, e.dataset.pos, "
                                          "e.dataset.id, e.dataset.p, e.textContent])")
        assert len(cells) == 3 * len(ids)
        for layer, pos, token, p, text_shown in cells:
            layer, pos = int(layer), int(pos)
            assert int(token) == lens.indices[layer, pos].item() and text_shown == token_piece(tokenizer, int(token))
            assert float(p) == pytest.approx(lens.values[layer, pos].item(), rel=PROB_REL)
    assert tab.errors == [] and tab.network() == []
    page.close()


def test_choosing_a_layer_or_head_changes_the_heat_map(browser, explorer):
    tab = Page(browser, explorer[1])
    page = tab.page

    def heat():
        return tab.values("#attn-map td[data-w]", "data-w"), page.eval_on_selector_all(
            "#attn-map td[data-w]", "els => els.map(e => getComputedStyle(e).backgroundColor)")

    first = heat()
    page.select_option("#head-select", "1")
    second = heat()
    assert second[0] != first[0] and second[1] != first[1]  # values and colours
    page.focus("#layer-select")  # keyboard: a native select moves with the arrow keys
    page.keyboard.press("ArrowDown")
    assert page.input_value("#layer-select") == "1" and page.get_attribute("#attn-map", "data-layer") == "1"
    assert heat()[0] != second[0]
    page.check("#show-numbers")
    shown = page.locator("#attn-map td[data-w]").all_inner_texts()
    assert [float("0" + s) for s in shown] == [int(w) / 1000 for w in heat()[0]]
    page.focus("#tokens .tok[data-pos='2']")
    page.keyboard.press("Enter")
    assert page.locator("#attn-map tbody tr.sel th").inner_text().startswith("2 ")
    assert "position 2" in page.inner_text("#attn-summary")
    assert page.locator("label[for=layer-select]").count() == 1 and page.locator("label[for=head-select]").count() == 1
    assert tab.errors == [] and tab.network() == []
    page.close()


def test_typed_prompts_and_hostile_text(browser, explorer):
    tab = Page(browser, explorer[1])
    page = tab.page
    page.fill("#prompt-text", PROMPTS[1])
    assert page.input_value("#prompt-select") == "1"
    page.fill("#prompt-text", "a prompt nobody computed")
    assert "not precomputed" in page.inner_text("#prompt-status")
    page.select_option("#prompt-select", str(len(PROMPTS)))  # the hostile prompt is shown as text, never run
    assert page.evaluate("window.pwned") is None
    assert page.input_value("#prompt-text") == HOSTILE
    assert page.locator("#attn-map img, #tokens img").count() == 0
    assert tab.errors == [] and tab.network() == []
    page.close()


def test_page_works_inside_the_books_sandboxed_iframe(browser, explorer, tmp_path):
    """The HTML book embeds the page as `Embedded` does: an iframe with `srcdoc` and `sandbox="allow-scripts"`."""
    host = tmp_path / "chapter.html"
    page = explorer[1].read_text(encoding="utf-8")
    host.write_text(f"<!DOCTYPE html><html><body><p>Chapter text</p>{Embedded(page, 'Explorer')._repr_html_()}"
                    "</body></html>", encoding="utf-8")
    tab = browser.new_page()
    errors, requests = [], []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("request", lambda r: requests.append(r.url))
    tab.goto(host.as_uri())
    frame = tab.frame_locator("iframe[title=Explorer]")
    frame.locator("body[data-ready=true]").wait_for()
    before = frame.locator("#attn-map td[data-w]").evaluate_all("els => els.map(e => e.dataset.w)")
    frame.locator("#head-select").select_option("3")
    assert frame.locator("#attn-map td[data-w]").evaluate_all("els => els.map(e => e.dataset.w)") != before
    assert errors == [] and requests == [host.as_uri()]
    tab.close()


class CompletionServer(BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible server: answers /v1/completions with top_logprobs, allowing cross-origin calls."""

    received: list = []
    reply: tuple[int, bytes] = (200, b"")

    def _cors(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "content-type")
        self.send_header("Access-Control-Allow-Methods", "POST")
        self.send_header("Access-Control-Allow-Private-Network", "true")

    def do_OPTIONS(self):
        self.send_response(204)
        self._cors()
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        status, payload = type(self).reply
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_live_mode_is_off_until_asked_and_reads_logprobs(browser, explorer):
    from playwright.sync_api import expect

    server = ThreadingHTTPServer(("127.0.0.1", 0), CompletionServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    top = {" the": -0.5, " a": -1.25, "\n": -3.0}
    CompletionServer.reply = (200, json.dumps({"model": "stand-in", "choices": [
        {"text": " the", "logprobs": {"tokens": [" the"], "top_logprobs": [top]}}]}).encode())
    tab = Page(browser, explorer[1])
    page = tab.page
    try:
        assert page.is_disabled("#live-url") and page.is_disabled("#live-run")
        page.check("#live-enable")
        page.fill("#prompt-text", "Once upon a time")
        page.fill("#live-url", "javascript:alert(1)")
        page.click("#live-run")
        assert "Only http and https" in page.inner_text("#live-status") and CompletionServer.received == []
        page.fill("#live-url", base)
        page.click("#live-run")
        page.wait_for_selector("#live-table:not([hidden])")
        assert CompletionServer.received == [("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 1,
                                                                  "temperature": 0, "logprobs": 8})]
        shown = [float(x) for x in page.locator("#live-table td.prob").all_inner_texts()]
        assert shown == pytest.approx([math.exp(v) for v in sorted(top.values(), reverse=True)], rel=PROB_REL)
        assert page.locator("#live-table tbody td.mono").all_inner_texts() == ["\u2423the", "\u2423a", "\u21b5"]
        assert "stand-in" in page.inner_text("#live-status")
        assert tab.errors == [] and tab.network() == [base + "/v1/completions"]
        CompletionServer.reply = (200, b"<html>not json</html>")
        page.click("#live-run")
        # a locator assertion polls without evaluating a string in the page (its CSP forbids eval)
        expect(page.locator("#live-status")).to_contain_text("not JSON")
        assert page.is_hidden("#live-table") and page.evaluate("window.pwned") is None
    finally:
        page.close()
        server.shutdown()
        server.server_close()
