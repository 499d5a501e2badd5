"""The built-in OpenAI-compatible server (FastAPI + uvicorn) for any checkpoint `llmquant eval`
reads: `/v1/models`, `/v1/completions`, `/v1/chat/completions`, streaming (SSE) or not.

One generation runs at a time (on a CPU a second one would only halve both); up to `queue`
more wait their turn, and beyond that a request gets 429 at once. Every model call runs on one
worker thread, so the event loop keeps answering (health, 429s) while a generation runs; the
model is best loaded on that same thread too (`model_thread`): torch ops on a thread other than
the one whose OpenMP team did the earlier parallel work ran ~2x slower on the team's 2-core CPU
(bench/results/serve_latency-2026-11-27.md).
Errors are OpenAI-style JSON: 400 bad JSON or parameters, 401 missing/wrong bearer token,
404 unknown model, 413 body too large, 429 queue full, 500 a bug (logged; the server lives on).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admission import Admission, GuardedStream, Ticket
from .openai_api import (
    ApiError, ChatRequest, CompletionRequest, chat_body, chat_chunk, completion_body, model_card, new_id, usage,
    usage_chunk, validation_error,
)
from .textgen import Decoder, SamplingParams, TextStream, make_generator, sample_token

log = logging.getLogger("llmquant")


@dataclass(frozen=True)
class LocalSettings:
    model_name: str
    api_key: str | None = None
    max_tokens: int = 512  # the most a request may ask for
    max_body_bytes: int = 1 << 20
    queue: int = 8  # requests that may wait while one generates
    concurrent: int = 1
    default_completion_tokens: int = 16  # OpenAI's default for /v1/completions


# -- generation ------------------------------------------------------------------------------------


class Generation:
    """One request's generation; `advance` (one forward, one token) runs on the worker thread."""

    def __init__(self, decoder: Decoder, ids: list[int], params: SamplingParams):
        self.decoder, self.ids, self.params = decoder, ids, params
        self.text = TextStream(decoder.tokenizer, params.stop)
        self.rng = make_generator(params.seed)
        self.logits = self.cache = None
        self.last: int | None = None
        self.n = 0
        self.finish: str | None = None

    def advance(self) -> str:
        if self.last is None:
            self.logits, self.cache = self.decoder.prefill(self.ids)
        else:
            self.logits, self.cache = self.decoder.step(self.last, self.cache)
        tok = sample_token(self.logits, self.params.temperature, self.params.top_p, self.rng)
        self.last, self.n = tok, self.n + 1
        if tok in self.decoder.eos and not self.params.ignore_eos:
            self.finish = "stop"
            return self.text.flush()
        delta = self.text.push(tok)
        if self.text.stopped:
            self.finish = "stop"
        elif self.n >= self.params.max_tokens:
            self.finish = "length"
            delta += self.text.flush()
        return delta


def model_thread() -> ThreadPoolExecutor:
    """The one thread that loads the model and runs every call into it."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmquant-model")


class LocalEngine:
    def __init__(self, decoder: Decoder, pool: ThreadPoolExecutor | None = None):
        self.decoder = decoder
        self.pool = pool or model_thread()

    async def run(self, gen: Generation) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        while gen.finish is None:
            yield await loop.run_in_executor(self.pool, gen.advance)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# -- request handling ------------------------------------------------------------------------------


def check_auth(request: Request, key: str | None) -> None:
    if key is None:
        return
    got = request.headers.get("authorization", "")
    scheme, _, token = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over this server's limit of {limit}",
                       code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over this server's limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class Server:
    """The app's state and handlers (one model)."""

    def __init__(self, decoder: Decoder, settings: LocalSettings, pool: ThreadPoolExecutor | None = None):
        self.decoder, self.s = decoder, settings
        self.engine = LocalEngine(decoder, pool)
        self.admission = Admission(settings.concurrent, settings.queue)
        self.created = int(time.time())

    async def parse(self, request: Request, cls):
        check_auth(request, self.s.api_key)
        data = parse_json(await read_body(request, self.s.max_body_bytes))
        try:
            req = cls.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from None
        if req.model != self.s.model_name:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {self.s.model_name!r}",
                           param="model", code="model_not_found")
        return req

    def params(self, req, n_prompt: int, asked: int | None, default: int) -> SamplingParams:
        limit = self.s.max_tokens
        ctx = self.decoder.max_positions
        if asked is not None and asked > limit:
            raise ApiError(400, f"max_tokens: {asked} is over this server's limit of {limit}", param="max_tokens",
                           code="invalid_value")
        room = (ctx - n_prompt) if ctx else limit
        if room < 1:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; this model's context is {ctx}", param="prompt",
                           code="context_length_exceeded")
        wanted = asked if asked is not None else min(default, room)
        if wanted > room:
            raise ApiError(400, f"this model's maximum context length is {ctx} tokens; the prompt has {n_prompt} and "
                                f"max_tokens asks for {wanted} more", param="max_tokens",
                           code="context_length_exceeded")
        return SamplingParams(max_tokens=wanted, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                              stop=req.stop_strings(), ignore_eos=req.ignore_eos)

    def completion_ids(self, req: CompletionRequest) -> list[int]:
        p = req.single_prompt()
        if isinstance(p, list):
            vocab = self.decoder.vocab
            if any(not 0 <= t < vocab for t in p):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt", code="invalid_value")
            return list(p)
        return list(self.decoder.tokenizer(p).input_ids)

    def chat_ids(self, req: ChatRequest) -> list[int]:
        tok = self.decoder.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, "this model's tokenizer has no chat template; use /v1/completions", code="no_chat_template")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # jinja errors from the model's own template (e.g. role order rules)
            raise ApiError(400, f"messages: the chat template rejects them ({e})", param="messages") from None
        return list(tok(text, add_special_tokens=False).input_ids)

    async def generate_all(self, gen: Generation, ticket: Ticket) -> str:
        try:
            async with ticket:
                return "".join([d async for d in self.engine.run(gen)])
        finally:
            ticket.release()

    # -- endpoints --------------------------------------------------------------------------------
    async def completions(self, request: Request):
        req = await self.parse(request, CompletionRequest)
        ids = self.completion_ids(req)
        params = self.params(req, len(ids), req.max_tokens, self.s.default_completion_tokens)
        gen = Generation(self.decoder, ids, params)
        rid, name = new_id("cmpl"), self.s.model_name
        ticket = self.admission.enter()
        if not req.stream:
            text = await self.generate_all(gen, ticket)
            return completion_body(rid, name, text, gen.finish, usage(len(ids), gen.n))

        async def events() -> AsyncIterator[str]:
            async with ticket:
                async for delta in self.engine.run(gen):
                    yield sse(completion_body(rid, name, delta, gen.finish, None, chunk=True))
                if req.include_usage:
                    yield sse(usage_chunk(rid, name, "text_completion", usage(len(ids), gen.n)))
                yield "data: [DONE]\n\n"

        return GuardedStream(events(), ticket.release)

    async def chat(self, request: Request):
        req = await self.parse(request, ChatRequest)
        ids = self.chat_ids(req)
        params = self.params(req, len(ids), req.token_limit(), self.s.max_tokens)
        gen = Generation(self.decoder, ids, params)
        rid, name = new_id("chatcmpl"), self.s.model_name
        ticket = self.admission.enter()
        if not req.stream:
            text = await self.generate_all(gen, ticket)
            return chat_body(rid, name, text, gen.finish or "stop", usage(len(ids), gen.n))

        async def events() -> AsyncIterator[str]:
            async with ticket:
                yield sse(chat_chunk(rid, name, {"role": "assistant", "content": ""}, None))
                async for delta in self.engine.run(gen):
                    yield sse(chat_chunk(rid, name, {"content": delta} if delta else {}, gen.finish))
                if req.include_usage:
                    yield sse(usage_chunk(rid, name, "chat.completion.chunk", usage(len(ids), gen.n)))
                yield "data: [DONE]\n\n"

        return GuardedStream(events(), ticket.release)


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def create_app(decoder: Decoder, settings: LocalSettings, pool: ThreadPoolExecutor | None = None) -> FastAPI:
    """The app; `pool` is the model thread the decoder was loaded on (model_thread), if any."""
    srv = Server(decoder, settings, pool)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        srv.engine.close()

    app = FastAPI(title="llmquant", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = srv

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return error_response(ApiError(e.status_code, str(e.detail), headers=getattr(e, "headers", None)))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("error while handling %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error ({type(e).__name__}); see the server log"))

    @app.get("/health")
    async def health():
        return {}

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request, settings.api_key)
        return {"object": "list", "data": [model_card(settings.model_name, srv.created)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request):
        check_auth(request, settings.api_key)
        if model_id != settings.model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_card(settings.model_name, srv.created)

    app.add_api_route("/v1/completions", srv.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", srv.chat, methods=["POST"])
    return app
