"""The chat page at `/` in a real browser: Debian's Chromium driven by Playwright loads it without console errors,
streams an answer to a typed message token by token, keeps the conversation, and shows the model and its
settings. The server runs on 127.0.0.1; Chromium's own background connections are switched off."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from serve_fixtures import servable_folder

from llmbook.serve.engine import Engine, SamplingParams
from llmbook.serve.modelio import load_servable
from llmbook.serve.server import create_app, running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (test extra)")

CHROMIUM = os.environ.get("LLMBOOK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


class SlowEngine(Engine):
    """Pauses after every step, so each token reaches the browser in its own network read (observable streaming)."""

    def step(self):
        events = super().step()
        time.sleep(0.03)
        return events


@pytest.fixture(scope="module")
def page_and_url():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (Debian package 'chromium'; `make sysdeps`)")
    served = load_servable(servable_folder(chat=True))
    engine = SlowEngine(served.model, served.decode, served.eos_id, n_slots=2)
    with running_server(create_app(served, engine)) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            yield served, page, errors
        finally:
            browser.close()


def _expected(served, messages, max_tokens: int, seed: int) -> str:
    ids, _ = served.chat.encode(served.tokenizer, messages, add_generation_prompt=True)
    engine = Engine(served.model, served.decode, served.eos_id, n_slots=1)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=1.0, seed=seed,
                            stop_token_ids=tuple(served.chat.stop_ids(served.tokenizer)))
    return engine.generate([ids], params)[0].text


def _send(page, text: str) -> str:
    """Type `text`, press Enter, wait until the answer bubble (an assistant or an error bubble) is complete."""
    before = page.locator(".msg:not(.user)").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    bubble = page.locator(".msg:not(.user)").nth(before)
    bubble.wait_for()
    page.wait_for_function("n => document.querySelectorAll('.msg:not(.user)')[n].dataset.done === 'true'", arg=before,
                           timeout=60_000)
    return bubble.text_content()


def test_page_loads_without_console_errors_and_shows_the_model(page_and_url):
    served, page, errors = page_and_url
    assert page.title() == "llmbook chat"
    assert page.text_content("#model") == served.name
    assert page.input_value("#temperature") == "0.7" and page.input_value("#max_tokens") == "64"
    assert errors == []


def test_a_typed_message_gets_a_streamed_answer_and_the_conversation_is_kept(page_and_url):
    served, page, errors = page_and_url
    page.fill("#seed", "11")
    page.fill("#max_tokens", "12")
    # count how often the answer bubble changes while it streams
    page.evaluate("""() => { window.updates = 0;
        new MutationObserver(() => { window.updates += 1; })
            .observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true}); }""")
    first = _send(page, "the cat sat")
    assert first == _expected(served, [{"role": "user", "content": "the cat sat"}], 12, 11)
    assert len(first.split()) >= 4 and page.evaluate("window.updates") >= 4  # bubbles, then one update per piece
    second = _send(page, "and then?")
    history = [{"role": "user", "content": "the cat sat"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "and then?"}]
    assert second == _expected(served, history, 12, 11)  # the page sent the whole conversation
    assert page.locator(".msg.user").count() == 2 and errors == []


def test_server_errors_are_shown_not_thrown(page_and_url):
    served, page, errors = page_and_url
    page.fill("#max_tokens", "100000")
    text = _send(page, "hello")
    assert text.startswith("Error:") and "max_tokens" in text
    assert page.locator(".msg.error").count() == 1
    page.fill("#max_tokens", "8")
    page.click("#clear")
    assert page.locator(".msg").count() == 0
    assert [e for e in errors if "400" not in e] == []  # the browser logs the failed request itself; nothing else
