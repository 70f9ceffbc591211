"""One HTTP generation request end to end: prompt tokens, scheduling, the OpenAI response.

Why this module exists: /v1/completions and /v1/chat/completions differ only in how the prompt
is built and how a choice is shaped, so both become a `Job` (prompt token lists, n, sampling
parameters) that runs here: submitted to the Scheduler (one slot per choice), watched for a
client disconnect (which cancels every choice and frees its slot), and turned into either one
JSON response or an SSE stream (https://platform.openai.com/docs/api-reference/chat-streaming).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..infer.requests import EngineUnavailable, Event, GenerationRequest, QueueFull, SamplingParams
from .errors import APIError, error_body
from .metrics import Metrics

if TYPE_CHECKING:  # the server process does not load PyTorch (engine_process.py)
    from ..infer.scheduler import RequestHandle, Scheduler

_DISCONNECTED = object()  # put in the event queue by the disconnect watcher


@dataclass
class Job:
    chat: bool  # chat.completion vs text_completion shapes
    model: str
    prompts: list[list[int]]  # one token list per prompt; choice i uses prompts[i // n]
    n: int
    max_tokens: int
    params: SamplingParams
    stop: list[str]
    ignore_eos: bool
    include_usage: bool
    speculative: bool | None = None  # None: the server's default (--speculative)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


class Generation:
    """The running choices of one Job; iterate `events()`, always `close()` at the end."""

    def __init__(self, job: Job, scheduler: Scheduler, metrics: Metrics, request: Request):
        self.job, self.scheduler, self.metrics, self.request = job, scheduler, metrics, request
        self.queue: asyncio.Queue = asyncio.Queue()
        self.handles: list[RequestHandle] = []
        self.completion_tokens = [0] * (len(job.prompts) * job.n)
        self._start = time.perf_counter()
        self._last: dict[int, float] = {}
        self._watcher: asyncio.Task | None = None
        self.disconnected = False
        self._closed = False

    def submit(self) -> None:
        """Queue every choice; on QueueFull cancel those already queued and answer 429 (503 when
        the engine has stopped for good)."""
        job = self.job
        total, room = len(job.prompts) * job.n, self.scheduler.max_batch + self.scheduler.max_queue
        if total > room:  # could never be admitted: a 429 would send a retrying client round forever
            raise APIError(400, f"This request asks for {total} generations ({len(job.prompts)} prompt(s) x n = {job.n}), but this "
                           f"server holds at most {room} at once (--max-batch {self.scheduler.max_batch} + --max-queue "
                           f"{self.scheduler.max_queue}); send fewer prompts or a smaller n.", "invalid_value", "n")
        for i in range(total):
            params = SamplingParams(**{**job.params.__dict__})
            if params.seed is not None:
                params.seed += i  # distinct, reproducible choices for n > 1
            req = GenerationRequest(job.prompts[i // job.n], job.max_tokens, params, job.stop, job.ignore_eos, job.speculative)
            try:
                self.handles.append(self.scheduler.submit(req, self.queue, index=i))
            except QueueFull as e:
                self.close()
                raise APIError(429, f"The server is busy ({e}); retry shortly.", "queue_full", headers={"Retry-After": "1"}) from e
            except EngineUnavailable as e:
                self.close()
                raise APIError(503, f"The engine is not running ({e}); the server needs a restart.", "engine_unavailable") from e
        self._watcher = asyncio.ensure_future(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        """The body is read already, so the next ASGI message is the client going away."""
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                for h in self.handles:
                    h.cancel()
                self.queue.put_nowait(_DISCONNECTED)
                return

    async def events(self) -> AsyncIterator[Event]:
        """Token events of all choices until each has finished; stops early on a disconnect."""
        pending = len(self.handles)
        while pending:
            item = await self.queue.get()
            if item is _DISCONNECTED:
                self.disconnected = True
                return
            now = time.perf_counter()
            if item.index not in self._last:
                self.metrics.observe_ttft(now - self._start)
            else:
                self.metrics.observe_token_latency(now - self._last[item.index])
            self._last[item.index] = now
            self.completion_tokens[item.index] = item.tokens
            if item.finish_reason is not None:
                pending -= 1
            yield item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for h in self.handles:
            h.cancel()  # a no-op for finished ones: the scheduler already freed them
        if self._watcher is not None:
            self._watcher.cancel()
        self.metrics.count_tokens(self.prompt_tokens(), sum(self.completion_tokens))

    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.job.prompts)

    def usage(self) -> dict[str, int]:
        p, c = self.prompt_tokens(), sum(self.completion_tokens)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _envelope(job: Job, chunk: bool) -> dict[str, Any]:
    if job.chat:
        return {"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk" if chunk else "chat.completion",
                "created": job.created, "model": job.model, "system_fingerprint": None}
    return {"id": f"cmpl-{job.id}", "object": "text_completion", "created": job.created, "model": job.model,
            "system_fingerprint": None}


async def complete(gen: Generation) -> dict[str, Any]:
    """Run to the end and build the non-streaming response body."""
    job = gen.job
    texts = [""] * len(gen.completion_tokens)
    reasons: list[str | None] = [None] * len(texts)
    try:
        async for ev in gen.events():
            texts[ev.index] += ev.text
            if ev.finish_reason == "error":
                raise APIError(500, f"generation failed: {ev.error}", "generation_failed")
            reasons[ev.index] = ev.finish_reason or reasons[ev.index]
    finally:
        gen.close()
    if job.chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None}, "logprobs": None,
                    "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
    else:
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
    return {**_envelope(job, chunk=False), "choices": choices, "usage": gen.usage()}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class SSEChunks:
    """The SSE events of one streamed Job (https://platform.openai.com/docs/api-reference/chat-streaming)."""

    def __init__(self, job: Job):
        self.job = job
        self.base = _envelope(job, chunk=True)
        if job.include_usage:
            self.base["usage"] = None  # OpenAI: null on every chunk but the last
        # the hot path, one content delta per token, is formatted from a pre-serialised envelope
        # rather than by json.dumps of the whole chunk (the same JSON, a fraction of the work)
        self._head = "data: " + json.dumps(self.base, ensure_ascii=False)[:-1] + ',"choices":[{"index":'
        self._field = ',"delta":{"content":' if job.chat else ',"text":'
        self._tail = ("}" if job.chat else "") + ',"logprobs":null,"finish_reason":null}]}\n\n'

    def content(self, index: int, text: str) -> str:
        """A chunk carrying `text` for choice `index` (same JSON as `chunk(index, text, None)`)."""
        return f"{self._head}{index}{self._field}{json.dumps(text, ensure_ascii=False)}{self._tail}"

    def chunk(self, index: int, text: str | None, finish: str | None, role: bool = False) -> str:
        if self.job.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**self.base, "choices": [choice]})

    def usage(self, usage: dict[str, int]) -> str:
        return _sse({**self.base, "choices": [], "usage": usage})


async def stream(gen: Generation) -> AsyncIterator[str]:
    """SSE chunks: deltas per choice, a finish chunk per choice, the usage chunk, [DONE]."""
    job = gen.job
    sse = SSEChunks(job)
    try:
        if job.chat:
            for i in range(len(gen.completion_tokens)):
                yield sse.chunk(i, None, None, role=True)
        parts: list[str] = []  # SSE events not yet written
        async for ev in gen.events():
            if ev.finish_reason == "error":
                yield "".join(parts) + _sse(error_body(500, f"generation failed: {ev.error}", "generation_failed"))
                return
            if ev.text:
                parts.append(sse.content(ev.index, ev.text))
            if ev.finish_reason is not None:
                parts.append(sse.chunk(ev.index, None, ev.finish_reason))
            if parts and gen.queue.empty():  # one write for all events already waiting, not one each
                yield "".join(parts)
                parts.clear()
        if gen.disconnected:
            return
        if parts:
            yield "".join(parts)
        if job.include_usage:
            yield sse.usage(gen.usage())
        yield _sse("[DONE]")
    finally:
        gen.close()
