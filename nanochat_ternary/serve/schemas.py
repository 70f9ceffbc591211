"""Request bodies of the OpenAI-compatible endpoints, validated strictly.

Why this module exists: a request with a wrong type (`"temperature": "hot"`, `"n": true`) must be
a 400 naming the field, never silently coerced and never a 500. The models run in pydantic's
strict mode (ints are accepted where floats are expected, nothing else is converted), ignore
fields we do not implement (clients send many), and accept `null` as "use the default", as
OpenAI does.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError, validation_message


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class GenerationFields(_Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=16)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None  # vLLM / llama.cpp extension: generate through stop tokens
    speculative: bool | None = None  # our extension: draft with the MTP heads (null: the server's --speculative)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 16:
            raise APIError(400, f"Invalid value for 'stop': at most 16 stop strings, got {len(stops)}.", "invalid_value", "stop")
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationFields):
    prompt: str | list[str] | list[int]


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def parse_body(raw: bytes, model: type[_Strict]) -> _Strict:
    """JSON bytes -> validated request; APIError 400 naming the problem otherwise."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}).", "invalid_json") from e
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, got {type(data).__name__}.", "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        message, param, code = validation_message(e.errors(include_url=False))
        raise APIError(400, message, code, param) from e
