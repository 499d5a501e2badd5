"""The OpenAI request bodies the built-in server accepts, and the JSON it answers with.

Unknown fields are ignored (clients send many); fields we know but cannot honour (n > 1,
logprobs, penalties, tools, echo) are refused with a 400 that names them rather than silently
ignored. `ignore_eos` is vLLM's extension, accepted here too so latency runs generate a fixed length.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    KIND = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
            500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.KIND.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None

    @field_validator("n")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("this server returns one choice per request (n must be 1)")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0:
            raise ValueError("penalties are not supported by this server (only 0)")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: Any) -> Any:
        if v:
            raise ValueError("logit_bias is not supported by this server")
        return None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> "CompletionRequest":
        if self.echo:
            raise ValueError("echo is not supported by this server")
        if self.logprobs is not None:
            raise ValueError("logprobs is not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("best_of > 1 is not supported by this server")
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise ValueError("one prompt per request (batches are not supported)")
        if p == "" or p == []:
            raise ValueError("prompt must not be empty")
        return self

    def single_prompt(self) -> Union[str, list[int]]:
        p = self.prompt
        return p[0] if isinstance(p, list) and p and isinstance(p[0], (str, list)) else p


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    tools: list | None = None

    @model_validator(mode="after")
    def _supported(self) -> "ChatRequest":
        if self.logprobs:
            raise ValueError("logprobs is not supported by this server")
        if self.tools:
            raise ValueError("tools are not supported by this server")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def validation_error(e: ValidationError) -> ApiError:
    err = e.errors(include_url=False)[0]
    param = ".".join(str(x) for x in err.get("loc", ())) or None
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "required"
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


# -- responses ------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, finish: str | None, use: dict | None,
                    chunk: bool = False) -> dict:
    body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if use is not None or not chunk:
        body["usage"] = use
    return body


def chat_body(rid: str, model: str, text: str, finish: str, use: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": use}


def chat_chunk(rid: str, model: str, delta: dict | None, finish: str | None, use: dict | None = None) -> dict:
    body: dict = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                  "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish}]}
    if use is not None:
        body["usage"] = use
    return body


def usage_chunk(rid: str, model: str, obj: str, use: dict) -> dict:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [], "usage": use}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmquant"}
