"""`nanochat bench serve`: throughput and latency of the real HTTP server under concurrency.

Why this module exists: continuous batching is only worth its complexity if N concurrent clients
get much more than 1 client's throughput. This drives a server (`nanochat serve` started as a
child process on a free loopback port, or any running one given by URL) with 1, 4, 8, ...
concurrent streaming clients (each runs a bounded number of requests, and no new request starts
after a per-level time limit), with `ignore_eos` so every request generates exactly
`max_tokens`. Metrics follow vLLM's serving benchmark: TTFT (time to the first streamed text),
TPOT (time per output token after the first, per request) and ITL (gaps between streamed
chunks). The levels run in interleaved rounds and each reports its best. With `speculative`
(False, True) every level runs both ways, requests sending "speculative": false / true, and the
report gives the speculative/plain tokens/s ratio per level (speculative_batch.py).

The server runs in its own process, as deployed: clients in the server's process would share
its interpreter lock and measure themselves as much as the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from ..errors import NanochatError

DEFAULT_PROMPT = "Write a Rust function that adds two numbers."


async def read_chunked(reader: asyncio.StreamReader):
    """Yield the pieces of an HTTP/1.1 chunked body as they arrive."""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)  # CRLF after each chunk
        yield data


# a non-empty "content" (chat) or "text" (completions) string, not part of an escaped string
_CONTENT = re.compile(rb'"(?:content|text)":\s*"(?!")')
_NO_USAGE = re.compile(rb'"usage":\s*null')
_NOT_FINISHED = re.compile(rb'"finish_reason":\s*null')


def plain_content(payload: bytes) -> bool:
    """Whether an SSE event is a chunk that carries generated text and nothing else the bench
    reads (no usage, no error, no finish reason): found with a few byte searches instead of
    json.loads, about 5 us of the client's CPU a token, which on a small machine is the server's."""
    return (_CONTENT.search(payload) is not None and b'"error"' not in payload
            and (b'"usage"' not in payload or _NO_USAGE.search(payload) is not None)
            and _NOT_FINISHED.search(payload) is not None)


async def _one_request(host: str, port: int, body: bytes, auth: bytes = b"") -> dict[str, Any]:
    """Stream one chat completion over a raw HTTP/1.1 connection; return timings and tokens.

    A hand-rolled client: on a machine with few cores the clients share the CPU with the server,
    and a full HTTP client library costs more CPU per streamed token than the server does, which
    would measure the client instead of the server."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     b"%sContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), port, auth, len(body), body))
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if status != 200 or headers.get("transfer-encoding") != "chunked":
            raise NanochatError(f"bench request failed: HTTP {status}: {(await reader.read()).decode(errors='replace')[:500]}")
        chunk_times: list[float] = []
        tokens, buffer = 0, b""
        async for data in read_chunked(reader):
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            now = time.perf_counter()
            for event in events:
                payload = event[6:] if event.startswith(b"data: ") else b""
                if not payload or payload == b"[DONE]":
                    continue
                if plain_content(payload):  # most events: only their arrival time is needed
                    chunk_times.append(now)
                    continue
                chunk = json.loads(payload)
                if chunk.get("error"):
                    raise NanochatError(f"bench request failed: {chunk['error']['message']}")
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                    chunk_times.append(now)
    finally:
        writer.close()
    return {"t0": t0, "chunks": chunk_times, "tokens": tokens}


async def _level(host: str, port: int, clients: int, body: bytes, requests_per_client: int, time_limit_s: float, bar: tqdm,
                 auth: bytes = b"") -> dict:
    deadline = time.perf_counter() + time_limit_s
    results: list[dict] = []

    async def client_loop() -> None:
        for _ in range(requests_per_client):
            if time.perf_counter() > deadline:
                return
            results.append(await _one_request(host, port, body, auth))
            bar.update(1)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    report = _summarise(clients, results, time.perf_counter() - start)
    report["client_cpu_s"] = round(time.process_time() - cpu, 3)  # the benchmark's own CPU time
    return report


def _run(coro: Any) -> Any:
    """asyncio.run on uvloop where it is installed (as the server's event loop is): the clients
    share the server's cores, so their CPU a streamed token is taken from the server's."""
    try:
        import uvloop
    except ImportError:  # Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 3) if values else None


def _summarise(clients: int, results: list[dict], wall: float) -> dict:
    ttft = [r["chunks"][0] - r["t0"] for r in results if r["chunks"]]
    tpot = [(r["chunks"][-1] - r["chunks"][0]) / (r["tokens"] - 1) for r in results if r["chunks"] and r["tokens"] > 1]
    itl = [b - a for r in results for a, b in zip(r["chunks"], r["chunks"][1:])]
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "generated_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": _pct(ttft, 50),
        "tpot_p50_ms": _pct(tpot, 50),
        "tpot_p99_ms": _pct(tpot, 99),
        "itl_p50_ms": _pct(itl, 50),
        "itl_p99_ms": _pct(itl, 99),
    }


def _health(url: str) -> dict:
    """The server's /health body ({} when it has none: then whether it can speculate is unknown)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return {}


def bench_serve(url: str, model: str, clients: list[int], max_tokens: int = 64, requests_per_client: int = 4,
                time_limit_s: float = 60.0, rounds: int = 3, prompt: str = DEFAULT_PROMPT, api_key: str | None = None,
                progress: bool = True, speculative: tuple[bool, ...] = (False,)) -> dict:
    """Run every concurrency level `rounds` times, interleaved, against the server at `url`
    (http://host:port); each level reports its fastest round (background load on a shared
    machine only ever slows a round down, so the best round is the least disturbed one)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise NanochatError(f"bench serve needs a plain http://HOST:PORT URL, got {url!r}")
    host, port = parts.hostname, parts.port
    auth = f"Authorization: Bearer {api_key}\r\n".encode() if api_key else b""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    modes = tuple(dict.fromkeys(speculative)) or (False,)
    runs: dict[tuple[bool, int], list[dict]] = {(m, c): [] for m in modes for c in clients}
    warm = tqdm(total=1, desc="warm-up", disable=not progress, leave=False)
    warm_body = json.dumps({**body, "max_tokens": min(8, max_tokens)}).encode()
    _run(_level(host, port, 1, warm_body, 1, time_limit_s, warm, auth))
    warm.close()
    with tqdm(total=rounds * len(modes) * sum(clients) * requests_per_client, desc="bench serve", disable=not progress,
              leave=False) as bar:
        for _ in range(rounds):
            for m, c in runs:
                level_body = json.dumps({**body, "speculative": m}).encode()
                runs[m, c].append({"speculative": m, **_run(_level(host, port, c, level_body, requests_per_client,
                                                                          time_limit_s, bar, auth))})
    best = {key: max(rs, key=lambda lv: lv["tokens_per_s"] or 0.0) for key, rs in runs.items()}
    levels = list(best.values())
    report: dict[str, Any] = {"model": model, "url": url, "max_tokens": max_tokens, "requests_per_client": requests_per_client,
                              "rounds": rounds, "levels": levels}
    report["speculative_available"] = _health(url).get("speculative", {}).get("available")
    base_mode = modes[0]
    base = best.get((base_mode, 1))
    top = best[base_mode, max(clients)]
    if base and base["tokens_per_s"] and top is not base:
        report[f"throughput_ratio_{top['clients']}_to_1"] = round(top["tokens_per_s"] / base["tokens_per_s"], 2)
    if len(modes) == 2:  # speculative over plain, per level, same rounds
        report["speculative_speedup"] = {str(c): round(best[True, c]["tokens_per_s"] / best[False, c]["tokens_per_s"], 3)
                                         for c in clients if best[False, c]["tokens_per_s"] and best[True, c]["tokens_per_s"]}
    return report
