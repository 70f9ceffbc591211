"""`nanochat bench serve`: throughput and latency of the real HTTP server under concurrency.

Why this module exists: continuous batching is only worth its complexity if N concurrent clients
get much more than 1 client's throughput. This starts the server in-process on a free loopback
port and drives it with 1, 4, 8, ... concurrent streaming clients (each runs a bounded number of
requests, and no new request starts after a per-level time limit), with `ignore_eos` so every
request generates exactly `max_tokens`. Metrics follow vLLM's serving benchmark: TTFT (time to
the first streamed text), TPOT (time per output token after the first, per request) and ITL
(gaps between streamed chunks).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from .app import create_app
from .server import ServerThread

DEFAULT_PROMPT = "Write a Rust function that adds two numbers."


async def _one_request(client: httpx.AsyncClient, body: dict) -> dict[str, Any]:
    """Stream one chat completion; return its timings and token count."""
    t0 = time.perf_counter()
    chunk_times: list[float] = []
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                chunk_times.append(time.perf_counter())
    return {"t0": t0, "chunks": chunk_times, "tokens": tokens}


async def _level(url: str, clients: int, body: dict, requests_per_client: int, time_limit_s: float, bar: tqdm) -> dict:
    deadline = time.perf_counter() + time_limit_s
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in range(requests_per_client):
            if time.perf_counter() > deadline:
                return
            results.append(await _one_request(client, body))
            bar.update(1)

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return _summarise(clients, results, wall)


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


def bench_serve(engine: Any, clients: list[int], max_tokens: int = 64, requests_per_client: int = 4,
                time_limit_s: float = 60.0, prompt: str = DEFAULT_PROMPT, progress: bool = True) -> dict:
    """Run every concurrency level against a fresh in-process server; return the JSON report."""
    app = create_app(engine, max_batch=max(clients), max_queue=max(clients))
    name = engine.name
    body = {"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    levels = []
    with ServerThread(app) as srv:
        warm = tqdm(total=1, desc="warm-up", disable=not progress, leave=False)
        asyncio.run(_level(srv.url, 1, {**body, "max_tokens": min(8, max_tokens)}, 1, time_limit_s, warm))
        warm.close()
        for c in clients:
            with tqdm(total=c * requests_per_client, desc=f"{c} client(s)", disable=not progress, leave=False) as bar:
                levels.append(asyncio.run(_level(srv.url, c, body, requests_per_client, time_limit_s, bar)))
    report: dict[str, Any] = {"model": name, "max_tokens": max_tokens, "requests_per_client": requests_per_client, "levels": levels}
    base = next((lv for lv in levels if lv["clients"] == 1), None)
    top = max(levels, key=lambda lv: lv["clients"])
    if base and base["tokens_per_s"] and top is not base:
        report[f"throughput_ratio_{top['clients']}_to_1"] = round(top["tokens_per_s"] / base["tokens_per_s"], 2)
    return report
