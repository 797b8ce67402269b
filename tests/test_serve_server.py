"""`llmbook serve` over HTTP on 127.0.0.1: the official `openai` client (streaming and not, completions and chat),
32 concurrent streams that each equal the same request served alone, and hostile requests that must get a 4xx
error in OpenAI's shape without hurting the server. All traffic stays on 127.0.0.1 and is bounded."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest

from serve_fixtures import servable_folder

from llmbook.serve.engine import Engine
from llmbook.serve.modelio import load_servable
from llmbook.serve.server import ServerConfig, create_app, running_server

openai = pytest.importorskip("openai", reason="the openai client is not installed (the test extra installs it)")

KEY = "test-secret-key"


def _start(config: ServerConfig, slots: int = 8):
    served = load_servable(servable_folder(chat=True))
    engine = Engine(served.model, served.decode, served.eos_id, n_slots=slots)
    return served, running_server(create_app(served, engine, config))


@pytest.fixture(scope="module")
def server():
    served, ctx = _start(ServerConfig(max_body_bytes=64 * 1024, max_tokens_limit=48, default_max_tokens=16,
                                      body_timeout_s=1.0))
    with ctx as url:
        yield served, url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=60)


def raw(url: str, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    """One HTTP request with the standard library; returns (status, parsed JSON or text)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        text = resp.read().decode()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text
    finally:
        conn.close()


def assert_openai_error(status: int, body, expected: int, code: str | None = None) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


# ---------------------------------------------------------------------------------------------- the API
def test_models_and_health(server, client):
    served, url = server
    assert [m.id for m in client.models.list().data] == [served.name]
    assert client.models.retrieve(served.name).id == served.name
    status, health = raw(url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["engine"]["slots"] == 8


def test_completion_equals_the_engine_and_streaming_equals_non_streaming(server, client):
    served, _ = server
    kwargs = dict(model=served.name, prompt="the cat sat", max_tokens=20, temperature=0.9, top_p=0.95, seed=7)
    full = client.completions.create(**kwargs)
    engine = Engine(served.model, served.decode, served.eos_id, n_slots=1)
    from llmbook.serve.engine import SamplingParams

    ref = engine.generate([served.encode("the cat sat")], SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95,
                                                                          seed=7))[0]
    assert full.choices[0].text == ref.text
    assert full.usage.prompt_tokens == len(served.encode("the cat sat"))
    assert full.usage.completion_tokens == len(ref.token_ids)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_special_token_strings_in_prompts_are_plain_text(server, client):
    served, _ = server
    out = client.completions.create(model=served.name, prompt="the cat<|endoftext|><|user|>", max_tokens=2,
                                    temperature=0)
    ids = served.encode("the cat<|endoftext|><|user|>")
    assert served.eos_id not in ids and served.tokenizer.token_to_id("<|user|>") not in ids
    assert out.usage.prompt_tokens == len(ids) > len(served.encode("the cat")) + 2


def test_max_tokens_and_stop(server, client):
    served, _ = server
    out = client.completions.create(model=served.name, prompt="the cat", max_tokens=12, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 12
    word = out.choices[0].text.split()[2]
    cut = client.completions.create(model=served.name, prompt="the cat", max_tokens=12, temperature=0, stop=[word])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == out.choices[0].text[: out.choices[0].text.index(word)]
    default = client.completions.create(model=served.name, prompt="the cat", temperature=0)
    assert default.usage.completion_tokens <= 16  # the server's default_max_tokens


def test_chat_completion_streaming_and_not(server, client):
    served, _ = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat sat on"}]
    full = client.chat.completions.create(model=served.name, messages=messages, max_tokens=15, temperature=0.8, seed=3)
    assert full.choices[0].message.role == "assistant"
    ids, _ = served.chat.encode(served.tokenizer, messages, add_generation_prompt=True)
    assert full.usage.prompt_tokens == len(ids)
    stream = client.chat.completions.create(model=served.name, messages=messages, max_tokens=15, temperature=0.8,
                                            seed=3, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert "<|end|>" not in full.choices[0].message.content


def test_32_concurrent_streams_each_equal_the_request_served_alone(server, client):
    served, _ = server
    prompts = ["the cat", "once upon a time", "a big red", "little girl said"]

    def request(i: int, stream: bool) -> str:
        kwargs = dict(model=served.name, prompt=prompts[i % 4], max_tokens=8 + i % 9, temperature=[0, 0.8, 1.2][i % 3],
                      seed=1000 + i)
        if not stream:
            return client.completions.create(**kwargs).choices[0].text
        return "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True))

    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda i: request(i, True), range(32), timeout=120))
    alone = [request(i, False) for i in range(32)]
    assert together == alone


# ----------------------------------------------------------------------------------------- hostile input
@pytest.mark.parametrize("body,code", [
    ("{not json", "invalid_json"),
    ("[1, 2, 3]", "invalid_json"),
    (b"\xff\xfe\x00", "invalid_json"),
    ("[" * 30_000 + "]" * 30_000, "invalid_json"),  # nesting deeper than the parser allows
    ('{"max_tokens": ' + "9" * 5000 + "}", "invalid_json"),  # an integer beyond Python's 4,300-digit limit
    ("", "invalid_json"),
])
def test_malformed_bodies(server, body, code):
    status, out = raw(server[1], "POST", "/v1/completions", body)
    assert_openai_error(status, out, 400, code)


@pytest.mark.parametrize("fields,param", [
    ({"prompt": 123}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "a\ud800b"}, "prompt"),  # a lone surrogate: valid JSON, not encodable text
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**12}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 1e9}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": True}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["x" * 1000]}, "stop"),
    ({"seed": -1}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": "all"}, "stream_options"),
    ({"n": 2}, "n"),
    ({"logprobs": 5}, "logprobs"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"model": None}, "model"),
])
def test_wrong_types_and_absurd_values_get_400(server, fields, param):
    served, url = server
    body = {"model": served.name, "prompt": "the cat", "max_tokens": 4, **fields}
    status, out = raw(url, "POST", "/v1/completions", json.dumps(body))
    assert_openai_error(status, out, 400)
    assert out["error"]["param"] == param


def test_unknown_model_is_404_in_openai_shape(server, client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-17", prompt="hi")
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_prompt_longer_than_the_context(server, client):
    served, _ = server
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=served.name, prompt="the cat sat " * 200, max_tokens=4)
    assert err.value.body["code"] == "context_length_exceeded"
    n = len(served.encode("the cat sat " * 10))
    with pytest.raises(openai.BadRequestError) as err:  # fits alone, not with max_tokens
        client.completions.create(model=served.name, prompt="the cat sat " * 10, max_tokens=64 - n + 1)
    assert err.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("messages", ["hello", [], [{"role": "wizard", "content": "x"}], [{"role": "user"}],
                                      [{"role": "user", "content": 5}], [1, 2]])
def test_bad_chat_messages(server, messages):
    served, url = server
    status, out = raw(url, "POST", "/v1/chat/completions", json.dumps({"model": served.name, "messages": messages}))
    assert_openai_error(status, out, 400)
    assert out["error"]["param"] == "messages"


def test_huge_bodies_are_refused_before_parsing(server):
    served, url = server
    body = json.dumps({"model": served.name, "prompt": "x" * (200 * 1024)})
    assert_openai_error(*raw(url, "POST", "/v1/completions", body), 413, "request_too_large")
    # a body sent in chunks without a Content-Length is counted as it arrives
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=iter([b"{" + b" " * 40_000] * 3), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert_openai_error(resp.status, json.loads(resp.read()), 413)
    finally:
        conn.close()


def test_unknown_routes_and_methods_answer_in_openai_shape(server):
    url = server[1]
    status, out = raw(url, "GET", "/v1/nothing")
    assert_openai_error(status, out, 404)
    status, out = raw(url, "GET", "/v1/completions")
    assert_openai_error(status, out, 405)


class _SlowEngine(Engine):
    """Pauses after every step, so a request of 48 tokens takes over two seconds: a client can leave mid-way
    however loaded the machine is."""

    def step(self):
        events = super().step()
        time.sleep(0.05)
        return events


@pytest.fixture(scope="module")
def slow_server():
    served = load_servable(servable_folder(chat=True))
    engine = _SlowEngine(served.model, served.decode, served.eos_id, n_slots=1)
    with running_server(create_app(served, engine, ServerConfig(max_tokens_limit=48))) as url:
        yield served, url


def _wait_for(url: str, condition) -> dict:
    """The engine's /health figures once `condition` holds for them (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        engine = raw(url, "GET", "/health")[1]["engine"]
        if condition(engine):
            return engine
        time.sleep(0.02)
    pytest.fail(f"the engine never reached the expected state: {engine}")


def test_a_client_that_disconnects_mid_stream_frees_its_slot(slow_server):
    served, url = slow_server
    u = urlparse(url)
    body = json.dumps({"model": served.name, "prompt": "the cat", "max_tokens": 48, "stream": True,
                       "temperature": 1.0, "seed": 1})
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    assert b"data:" in sock.recv(4096) + sock.recv(4096)
    before = raw(url, "GET", "/health")[1]["engine"]
    sock.close()
    engine = _wait_for(url, lambda e: e["running"] == 0 and e["cancelled"] > before["cancelled"])
    assert engine["free"] == engine["slots"] and engine["completed"] == before["completed"]


def test_clients_that_leave_without_streaming_free_their_slot_and_their_place_in_the_queue(slow_server):
    served, url = slow_server
    u = urlparse(url)
    body = json.dumps({"model": served.name, "prompt": "the cat", "max_tokens": 48, "temperature": 1.0})
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    before = _wait_for(url, lambda e: e["running"] == 0 and e["waiting"] == 0)
    running = socket.create_connection((u.hostname, u.port), timeout=30)
    running.sendall(request)
    _wait_for(url, lambda e: e["running"] == 1)
    queued = socket.create_connection((u.hostname, u.port), timeout=30)
    queued.sendall(request)
    _wait_for(url, lambda e: e["waiting"] == 1)
    queued.close()  # leaves while it waits for the only slot
    _wait_for(url, lambda e: e["waiting"] == 0 and e["cancelled"] == before["cancelled"] + 1)
    running.close()  # leaves while its request decodes
    after = _wait_for(url, lambda e: e["running"] == 0 and e["cancelled"] == before["cancelled"] + 2)
    assert after["completed"] == before["completed"]  # neither ran on to max_tokens for nobody


def test_slow_bodies_time_out_and_a_client_that_leaves_mid_body_is_no_error(server, caplog):
    served, url = server
    u = urlparse(url)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100\r\n\r\n{{").encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as gone:
        gone.sendall(head)
        time.sleep(0.2)
    with socket.create_connection((u.hostname, u.port), timeout=30) as slow:  # 1 byte of 100, then silence
        slow.sendall(head)
        start = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = slow.recv(4096)
            if not data:
                break
            reply += data
    assert time.monotonic() - start < 10  # the server's body_timeout_s is 1 s
    status, _, body = reply.partition(b"\r\n\r\n")
    assert status.split()[1] == b"408", reply
    assert_openai_error(408, json.loads(body), 408, "request_timeout")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert not errors, errors


def test_server_still_healthy_after_hostile_requests(server, client):
    served, url = server
    status, health = raw(url, "GET", "/health")
    assert status == 200 and health["engine"]["errors"] == 0
    assert client.completions.create(model=served.name, prompt="the", max_tokens=3).usage.completion_tokens >= 1


# ----------------------------------------------------------------------------------------------- auth
def test_bearer_token():
    served, ctx = _start(ServerConfig(api_key=KEY), slots=2)
    with ctx as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}):
            status, out = raw(url, "GET", "/v1/models", headers=headers)
            assert_openai_error(status, out, 401, "invalid_api_key")
        status, out = raw(url, "POST", "/v1/completions", json.dumps({"model": served.name, "prompt": "a"}))
        assert_openai_error(status, out, 401, "invalid_api_key")
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model=served.name, prompt="the", max_tokens=2).choices[0].text is not None
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
        assert raw(url, "GET", "/health")[0] == 200  # health needs no token (load balancers)


def test_base_model_has_no_chat_endpoint(tmp_path):
    served = load_servable(servable_folder(chat=False))
    engine = Engine(served.model, served.decode, served.eos_id, n_slots=1)
    with running_server(create_app(served, engine)) as url:
        status, out = raw(url, "POST", "/v1/chat/completions",
                          json.dumps({"model": served.name, "messages": [{"role": "user", "content": "hi"}]}))
        assert_openai_error(status, out, 400, "model_not_chat")


def test_server_config_validation():
    for bad in (dict(max_body_bytes=0), dict(max_tokens_limit=-1), dict(api_key="  "), dict(body_timeout_s=0),
                dict(body_timeout_s=float("inf"))):
        with pytest.raises(ValueError):
            ServerConfig(**bad)


def test_chat_page_is_served_and_escapes_the_model_name():
    served = load_servable(servable_folder(chat=True))
    served.name = "evil</script><script>alert(1)</script>"
    engine = Engine(served.model, served.decode, served.eos_id, n_slots=1)
    with running_server(create_app(served, engine)) as url:
        status, html = raw(url, "GET", "/")
    assert status == 200 and "<title>llmbook chat</title>" in html
    assert "evil</script>" not in html and "evil\\u003c/script>" in html
