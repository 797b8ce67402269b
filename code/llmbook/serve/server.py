"""`llmbook serve`: an OpenAI-compatible HTTP server over the continuous-batching engine (@sec-inference-server).

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (the fine-tuning chapter's chat
template), server-sent-event streaming with `"stream": true`, `GET /health`, and a small chat page at `/`.
Every bad request gets a 4xx JSON error in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`;
bodies are read up to a size limit before they are parsed; an optional bearer token guards the API; each
request is logged as one JSON line. A client that disconnects (mid-stream, or while its request waits or
runs without streaming) cancels its request, which frees its cache slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.requests import Request

from llmbook.serve.engine import Engine, Event, SamplingParams
from llmbook.serve.modelio import Servable

log = logging.getLogger("llmbook.serve")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and options of the HTTP server."""

    api_key: str | None = None  # None: no authentication
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 64  # when a completions request gives none (chat: the rest of the context)
    max_stop: int = 4  # OpenAI's limit on stop sequences
    max_stop_chars: int = 64
    body_timeout_s: float = 30.0  # a body still arriving after this long gets 408 (slow-body clients)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_tokens_limit", "default_max_tokens", "max_stop", "max_stop_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ServerConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.body_timeout_s, bool) or not isinstance(self.body_timeout_s, (int, float)) \
                or not 0 < self.body_timeout_s < float("inf"):
            raise ValueError(f"ServerConfig.body_timeout_s must be a positive number, got {self.body_timeout_s!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("ServerConfig.api_key must be a non-empty string or None")


class APIError(Exception):
    """An error returned to the client as OpenAI's JSON error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# Request fields accepted without effect (or only at their default), and fields that change nothing here.
IGNORED = {"user", "stream_options", "n", "presence_penalty", "frequency_penalty", "logprobs", "echo", "best_of",
           "logit_bias", "suffix", "top_logprobs", "parallel_tool_calls", "response_format", "tool_choice",
           "tools", "metadata", "store", "service_tier", "max_completion_tokens"}
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream"}
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": None, "echo": False, "best_of": 1,
           "logit_bias": None, "suffix": None, "top_logprobs": None, "tools": None, "tool_choice": None,
           "response_format": None, "parallel_tool_calls": None}


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f"'{name}' must be a number, got {json.dumps(value)[:40]}", param=name)
    if not (lo < value if lo_open else lo <= value) or value > hi:
        raise APIError(400, f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}", param=name)
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, got {json.dumps(value)[:40]}", param=name)
    return value


def parse_common(body: dict, allowed: set[str], config: ServerConfig, model_name: str, prompt_tokens: int,
                 context: int, default_max: int | None) -> tuple[SamplingParams, bool, bool]:
    """Validate the sampling fields shared by both endpoints; returns (params, stream, include_usage)."""
    unknown = sorted(set(body) - allowed - COMMON - IGNORED)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] != neutral and not (name == "logprobs" and body[name] is False):
            raise APIError(400, f"'{name}'={json.dumps(body[name])[:40]} is not supported by this server "
                                f"(only {json.dumps(neutral)})", param=name)
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "'model' is required and must be a string", param="model")
    if model != model_name:
        raise APIError(404, f"The model '{model[:80]}' does not exist; this server serves '{model_name}'",
                       param="model", code="model_not_found")
    max_tokens = _integer(body, "max_tokens")
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens")
    if max_tokens is not None and max_tokens <= 0:
        raise APIError(400, f"'max_tokens' must be at least 1, got {max_tokens}", param="max_tokens")
    if max_tokens is not None and max_tokens > config.max_tokens_limit:
        raise APIError(400, f"'max_tokens' is {max_tokens}; this server allows at most {config.max_tokens_limit}",
                       param="max_tokens")
    room = context - prompt_tokens
    if room <= 0 or max_tokens is not None and max_tokens > room:
        asked = max_tokens if max_tokens is not None else 1
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{prompt_tokens + asked} tokens ({prompt_tokens} in the prompt, {asked} for the "
                            f"completion). Please reduce the prompt or the completion length.",
                       param="messages" if "messages" in body else "prompt", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(room, config.max_tokens_limit, default_max or room)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and 0 < len(s) <= config.max_stop_chars
                                             for s in stop) or len(stop) > config.max_stop:
        raise APIError(400, f"'stop' must be a string or a list of at most {config.max_stop} non-empty strings of "
                            f"at most {config.max_stop_chars} characters", param="stop")
    seed = _integer(body, "seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise APIError(400, f"'seed' must be in [0, 2^63), got {seed}", param="seed")
    top_k = _integer(body, "top_k")
    if top_k is not None and top_k <= 0:
        raise APIError(400, f"'top_k' must be positive, got {top_k}", param="top_k")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise APIError(400, "'stream_options' must be an object like {\"include_usage\": true}", param="stream_options")
    params = SamplingParams(max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0, 2),
                            top_p=_number(body, "top_p", 1.0, 0, 1, lo_open=True), top_k=top_k,
                            stop=tuple(stop), seed=seed)
    return params, stream, bool(options.get("include_usage", False))


def create_app(served: Servable, engine: Engine, config: ServerConfig = ServerConfig(), rag=None, rag_k: int = 3):
    """The FastAPI application serving `served` through `engine` (which the app starts and closes).

    With `rag` (a `llmbook.apps.store.RagIndex`) the chat endpoint retrieves before answering: it searches with
    the last user message, screens out passages that look like prompt injections, and gives the model as many
    of the best `rag_k` passages as fit its context, as numbered sources in a system message; the response
    names them in an extra `sources` field (@sec-applications-assistant)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    from llmbook.finetune.chat import ChatFormat

    chat: ChatFormat | None = served.chat
    stop_ids = set(chat.stop_ids(served.tokenizer)) if chat is not None else set()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="llmbook", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        code = "not_found" if err.status_code == 404 else None
        return error_response(APIError(err.status_code, str(err.detail), code=code))

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        log.error(json.dumps({"event": "error", "path": request.url.path, "error": f"{type(err).__name__}: {err}"}))
        return error_response(APIError(500, "internal server error", type="server_error"))

    @app.middleware("http")
    async def _log_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        log.info(json.dumps({"event": "request", "method": request.method, "path": request.url.path,
                             "status": response.status_code, "ms": round(1000 * (time.perf_counter() - start), 2)}))
        return response

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "Incorrect API key provided. Send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > config.max_body_bytes):
            raise APIError(413, f"request body larger than {config.max_body_bytes} bytes", code="request_too_large")
        body = bytearray()

        async def receive() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > config.max_body_bytes:
                    raise APIError(413, f"request body larger than {config.max_body_bytes} bytes",
                                   code="request_too_large")

        try:  # a client that sends its body slowly (or never finishes it) must not hold a connection forever
            await asyncio.wait_for(receive(), config.body_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body did not arrive within {config.body_timeout_s:g} s",
                           code="request_timeout") from None
        except ClientDisconnect:
            raise APIError(400, "the client disconnected before sending the whole body",
                           code="client_disconnected") from None
        try:
            data = json.loads(bytes(body).decode("utf-8"))
        except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON, an integer of over 4,300 digits
            raise APIError(400, f"We could not parse the JSON body of your request ({type(err).__name__}: "
                                f"{str(err)[:80]})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return data

    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def run(prompt_ids: list[int], params: SamplingParams, name: str) -> AsyncIterator[Event]:
        """Submit to the engine and yield its events; cancel the request if the consumer goes away."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        start = time.perf_counter()
        try:
            rid = engine.submit(prompt_ids, params, lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev))
        except ValueError as err:
            raise APIError(400, str(err), code="context_length_exceeded") from None
        reason, n, first = "cancelled", 0, None
        try:
            while True:
                ev = await queue.get()
                n += ev.token_id is not None
                first = first if first is not None or ev.token_id is None else time.perf_counter() - start
                if ev.finish_reason is not None:
                    reason = ev.finish_reason
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            if reason == "cancelled":
                engine.cancel(rid)
            log.info(json.dumps({"event": "generation", "id": name, "prompt_tokens": len(prompt_ids), "tokens": n,
                                 "finish_reason": reason, "ttft_ms": None if first is None else round(1000 * first, 2),
                                 "ms": round(1000 * (time.perf_counter() - start), 2)}))

    async def unless_disconnected(request: Request, work) -> Response:
        """Await `work` (a non-streaming generation), cancelling it, and so its engine request, if the client
        disconnects first. (Streaming responses get the same from Starlette, which listens while it streams.)"""
        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            return await task
        return Response(status_code=499)  # the client closed the connection: nobody reads this

    def generation(prompt_ids: list[int], params: SamplingParams, kind: str, include_usage: bool, stream: bool,
                   extra: dict | None = None):
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if kind == "chat" else "text_completion"
        stamp = int(time.time())

        def choice(text: str, finish: str | None, delta: bool) -> dict:
            if kind == "chat":
                body = {"delta" if delta else "message": {"content": text} if delta else
                        {"role": "assistant", "content": text}}
                return {"index": 0, **body, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        def finish_reason(ev: Event) -> str:
            return "stop" if ev.finish_reason == "stop" else "length"

        events = run(prompt_ids, params, rid)
        if not stream:
            async def collect() -> JSONResponse:
                text, n, reason = [], 0, "length"
                async for ev in events:
                    text.append(ev.text)
                    n += ev.token_id is not None and ev.token_id not in stop_ids and ev.token_id != served.eos_id
                    if ev.finish_reason is not None:
                        if ev.finish_reason == "error":
                            raise APIError(500, "generation failed", type="server_error")
                        reason = finish_reason(ev)
                return JSONResponse({"id": rid, "object": obj, "created": stamp, "model": served.name,
                                     "choices": [choice("".join(text), reason, False)],
                                     "usage": usage(len(prompt_ids), n), **(extra or {})})
            return collect()

        async def sse() -> AsyncIterator[str]:
            chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
            n = 0

            def chunk(choices: list, extra: dict | None = None) -> str:
                data = {"id": rid, "object": chunk_obj, "created": stamp, "model": served.name, "choices": choices,
                        **(extra or {})}
                return f"data: {json.dumps(data)}\n\n"

            if kind == "chat":
                yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}], extra)
            async for ev in events:
                n += ev.token_id is not None and ev.token_id not in stop_ids and ev.token_id != served.eos_id
                if ev.finish_reason == "error":
                    yield f"data: {json.dumps(APIError(500, 'generation failed', type='server_error').body())}\n\n"
                    return
                if ev.text:
                    yield chunk([choice(ev.text, None, True)])
                if ev.finish_reason is not None:
                    last = choice("", finish_reason(ev), True)
                    if kind == "chat":
                        last["delta"] = {}
                    yield chunk([last])
            if include_usage:
                yield chunk([], {"usage": usage(len(prompt_ids), n)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served.name, "engine": engine.stats()}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": created,
                                            "owned_by": "llmbook"}]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request) -> dict:
        authorize(request)
        if model_id != served.name:
            raise APIError(404, f"The model '{model_id[:80]}' does not exist", param="model", code="model_not_found")
        return {"id": served.name, "object": "model", "created": created, "owned_by": "llmbook"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await read_json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be a non-empty string", param="prompt")
        try:
            ids = served.encode(prompt)
        except ValueError as err:  # e.g. a lone surrogate ("\ud800"): valid JSON, not encodable text
            raise APIError(400, f"'prompt' is not valid text ({str(err)[:80]})", param="prompt") from None
        if not ids:
            raise APIError(400, "'prompt' encodes to no tokens", param="prompt")
        params, stream, include_usage = parse_common(body, {"prompt"}, config, served.name, len(ids),
                                                     engine.max_len, config.default_max_tokens)
        response = generation(ids, params, "completion", include_usage, stream)
        return await unless_disconnected(request, response) if not stream else response

    def with_sources(messages, answer_tokens: int):
        """The conversation with retrieved sources that fit the context (the request's answer included)."""
        from llmbook.apps.rag import Passage, fit_sources, last_user_message, screen_passages

        try:
            query = last_user_message(messages)
        except (ValueError, TypeError, AttributeError):
            return messages, []  # malformed: chat.encode names the problem
        found, _ = screen_passages([Passage(c.source, c.text) for c, _ in rag.search(query, rag_k)])

        def length(msgs: list[dict]) -> int:
            return len(chat.encode(served.tokenizer, msgs, add_generation_prompt=True)[0])

        try:
            return fit_sources(messages, found, length, engine.max_len - max(1, answer_tokens))
        except (ValueError, TypeError):
            return messages, []

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request)
        if chat is None:
            raise APIError(400, f"'{served.name}' is a base model without a chat template; use /v1/completions, "
                                "or serve a fine-tuned chat model", param="model", code="model_not_chat")
        messages, sources = body.get("messages"), None
        if rag is not None:
            messages, sources = with_sources(messages, _integer(body, "max_tokens") or config.default_max_tokens)
        try:
            ids, _ = chat.encode(served.tokenizer, messages, add_generation_prompt=True)
        except (ValueError, TypeError) as err:
            raise APIError(400, f"'messages': {err}", param="messages") from None
        params, stream, include_usage = parse_common(body, {"messages"}, config, served.name, len(ids),
                                                     engine.max_len, None)
        params = dataclasses.replace(params, stop_token_ids=tuple(sorted(stop_ids)))
        extra = None if sources is None else {"sources": [{"n": i, "source": p.source}
                                                          for i, p in enumerate(sources, 1)]}
        response = generation(ids, params, "chat", include_usage, stream, extra)
        return await unless_disconnected(request, response) if not stream else response

    model_js = json.dumps(served.name).replace("<", "\\u003c")  # a JS string that cannot close the <script>
    chat_page = resources.files("llmbook.serve").joinpath("chat.html").read_text(encoding="utf-8")
    chat_page = chat_page.replace("__MODEL__", model_js)  # made once, served on every GET /

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(chat_page)

    return app


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Run `app` with uvicorn in a background thread (port 0: any free port); yields the base URL, e.g. for tests."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="llmbook-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def json_logging(level: int = logging.INFO) -> None:
    """Send the server's log records to stderr as one JSON object per line (the records are JSON already)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('{"time": "%(asctime)s", "level": "%(levelname)s", "record": %(message)s}'))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
