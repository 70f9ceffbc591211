"""`nanochat bench load`: the real server under overload, hostile input and clients that vanish.

Why this module exists: a server that is only measured with well-behaved clients at a
comfortable load says nothing about what happens when it is full. This drives a real server on
loopback (started as a child process, as `bench serve` does, or any running one given by URL)
with more concurrent clients than it has room for (by default 32 clients against 8 batch slots +
8 queue places, twice its capacity), mixing streamed and plain requests to both endpoints, with a
share of malformed requests (bad JSON, wrong types, missing fields, oversize bodies, wrong
method or path) and of streams the client drops after the first chunk. It stops after a request
count or a time limit, whichever comes first, and checks what the server promises:

- no 5xx (nor an error event inside a stream, nor a connection it broke or left hanging);
- every malformed request answered 4xx in OpenAI's error shape {"error": {"message", "type"}};
- every 429 carries Retry-After;
- in-flight generations back to 0 once the clients are done (dropped streams freed their slots);
- memory: the server's RSS after the first 100 requests vs after the last ones.

The clients speak raw HTTP/1.1 over asyncio (bench.py's reasoning: a client library would cost
more CPU than the server on a small machine), so they can also send what no library would.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import NanochatError
from .bench import DEFAULT_PROMPT, read_chunked

MALFORMED = ("bad_json", "wrong_type", "missing_field", "oversize", "wrong_method", "wrong_path")
REQUEST_TIMEOUT_S = 60.0  # a request not answered by then counts as a hang


@dataclass
class Planned:
    kind: str  # "chat", "completion", "stream_chat", "stream_completion", "drop", or a MALFORMED name
    method: str
    path: str
    body: bytes


@dataclass
class Outcome:
    kind: str
    status: int | None = None  # None: no HTTP answer (see problem)
    seconds: float = 0.0
    retry_after: str | None = None
    problem: str | None = None  # what broke a promise, in words


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    rss_first_mb: float | None = None


def plan_request(rng: random.Random, model: str, max_tokens: int, malformed: float, drop: float, max_body_bytes: int) -> Planned:
    """One request of the mix, drawn from `rng`."""
    chat_body = {"model": model, "messages": [{"role": "user", "content": DEFAULT_PROMPT}], "max_tokens": max_tokens,
                 "temperature": 0.8, "seed": rng.randrange(1 << 30)}
    roll = rng.random()
    if roll < malformed:
        kind = rng.choice(MALFORMED)
        path, body = "/v1/chat/completions", chat_body
        raw = {"bad_json": b'{"model": "x", "messages": [', "oversize": b" " * (max_body_bytes + 1024)}.get(kind)
        if kind == "wrong_type":
            key = rng.choice(["max_tokens", "temperature", "messages", "stream", "n"])
            body = {**chat_body, key: rng.choice(["ten", [1], {"a": 1}] + ([] if key == "stream" else [True]))}
        elif kind == "missing_field":
            body = {k: v for k, v in chat_body.items() if k != rng.choice(["model", "messages"])}
        elif kind == "wrong_path":
            path = rng.choice(["/v1/chat/complete", "/v2/completions", "/v1/models/../../etc/passwd", "/admin"])
        method = "GET" if kind == "wrong_method" else "POST"
        return Planned(kind, method, path, raw if raw is not None else json.dumps(body).encode())
    stream = roll < malformed + drop or rng.random() < 0.5
    kind = "drop" if roll < malformed + drop else ("stream_" if stream else "") + rng.choice(["chat", "completion"])
    if kind.endswith("completion"):
        body = {k: v for k, v in chat_body.items() if k != "messages"} | {"prompt": "pub fn"}
        path = "/v1/completions"
    else:
        body, path = chat_body, "/v1/chat/completions"
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    return Planned(kind, "POST", path, json.dumps(body).encode())


def _openai_error(body: bytes) -> bool:
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)


def _stream_problem(body: bytes) -> str | None:
    events = [e[6:] for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    for payload in events:
        if payload != b"[DONE]" and b'"error"' in payload and json.loads(payload).get("error"):
            return f"error event in the stream: {payload[:200]!r}"
    return None if events and events[-1] == b"[DONE]" else "the stream did not end with data: [DONE]"


async def _exchange(host: str, port: int, req: Planned, auth: bytes) -> Outcome:
    """Send one request over a fresh connection and judge the answer."""
    out = Outcome(req.kind)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % (req.method.encode(), req.path.encode(), host.encode(), port, auth, len(req.body)))
        writer.write(req.body)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # a server may answer an oversize body (413) and close before reading all of it
        line = await reader.readline()
        if not line:
            out.problem = "the server closed the connection without an answer"
            return out
        out.status = int(line.split()[1])
        headers = {}
        while (h := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = h.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        out.retry_after = headers.get("retry-after")
        chunked = headers.get("transfer-encoding") == "chunked"
        if req.kind == "drop" and out.status == 200 and chunked:
            async for _ in read_chunked(reader):
                break  # the first chunk came: vanish without a goodbye
            writer.transport.abort()
            return out
        if chunked:
            body = b"".join([piece async for piece in read_chunked(reader)])
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
        out.problem = _judge(req, out, body)
        return out
    finally:
        writer.close()


def _judge(req: Planned, out: Outcome, body: bytes) -> str | None:
    status = out.status or 0
    if status >= 500:
        return f"HTTP {status}: {body[:200]!r}"
    if req.kind in MALFORMED:
        if not 400 <= status < 500:
            return f"a malformed request ({req.kind}) got HTTP {status}"
        return None if _openai_error(body) else f"the {status} answer is not in OpenAI's error shape: {body[:200]!r}"
    if status == 429:
        return None if out.retry_after else "a 429 without Retry-After"
    if status != 200:
        return f"a valid request got HTTP {status}: {body[:200]!r}"
    if req.kind.startswith("stream_") or req.kind == "drop":
        return _stream_problem(body)
    try:
        ok = bool(json.loads(body)["choices"])
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"a 200 answer without choices: {body[:200]!r}"


def server_rss_mb(pid: int | None) -> float | None:
    """Resident memory of process `pid` and its child processes (the engine's, serve/engine_process.py)
    (Linux /proc), None where unknown."""
    if pid is None:
        return None
    try:
        total = 0
        children = Path(f"/proc/{pid}/task/{pid}/children")
        for p in [pid, *(int(c) for c in (children.read_text().split() if children.exists() else []))]:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return round(total / 1024, 1)
    except OSError:
        return None


def _health(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=timeout) as r:
        return json.loads(r.read())


def wait_in_flight_zero(url: str, timeout: float = 10.0) -> tuple[int | None, float]:
    """(in-flight count, seconds waited): polls /health until nothing is queued or running."""
    t0 = time.perf_counter()
    value = None
    while True:
        try:
            value = int(_health(url)["in_flight"])
        except (OSError, ValueError, KeyError):
            value = None
        if value == 0 or time.perf_counter() - t0 > timeout:
            return value, round(time.perf_counter() - t0, 3)
        time.sleep(0.02)


async def _drive(host: str, port: int, auth: bytes, plans: list[Planned], clients: int, time_limit_s: float,
                 retry_wait_s: float, pid: int | None, progress) -> Tally:
    """Each client takes the next planned request and sends it; after a 429 it waits and sends
    the same request again. Every attempt counts towards len(plans)."""
    tally, deadline, next_i, sent = Tally(), time.perf_counter() + time_limit_s, 0, 0
    rng = random.Random(len(plans))

    async def client() -> None:
        nonlocal next_i, sent
        req = None
        while sent < len(plans) and time.perf_counter() < deadline:
            if req is None:
                req, next_i = plans[next_i], next_i + 1
            sent += 1
            t0 = time.perf_counter()
            try:
                out = await asyncio.wait_for(_exchange(host, port, req, auth), REQUEST_TIMEOUT_S)
            except asyncio.TimeoutError:
                out = Outcome(req.kind, problem=f"no answer within {REQUEST_TIMEOUT_S:.0f} s")
            except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                out = Outcome(req.kind, problem=f"connection failed: {type(e).__name__}: {e}")
            out.seconds = time.perf_counter() - t0
            tally.outcomes.append(out)
            if len(tally.outcomes) == min(100, len(plans)):
                tally.rss_first_mb = server_rss_mb(pid)
            progress(1)
            if out.status != 429 or req.kind in MALFORMED:
                req = None
                continue
            try:  # back off as Retry-After says (capped at retry_wait_s), with jitter, then retry
                wait = min(float(out.retry_after or 0), retry_wait_s)
            except ValueError:
                wait = retry_wait_s
            await asyncio.sleep(wait * rng.uniform(0.5, 1.0))

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def load_test(url: str, model: str, *, requests: int = 1000, clients: int = 32, time_limit_s: float = 300.0,
              max_tokens: int = 16, malformed: float = 0.05, drop: float = 0.05, max_body_bytes: int = 1_000_000,
              retry_wait_s: float = 1.0, seed: int = 0, api_key: str | None = None, pid: int | None = None,
              capacity: int | None = None, progress: bool = True) -> dict:
    """Run the mix against the server at `url` (`pid`: its process, for RSS) and report."""
    from tqdm import tqdm

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise NanochatError(f"bench load needs a plain http://HOST:PORT URL, got {url!r}")
    rng = random.Random(seed)
    plans = [plan_request(rng, model, max_tokens, malformed, drop, max_body_bytes) for _ in range(requests)]
    auth = f"Authorization: Bearer {api_key}\r\n".encode() if api_key else b""
    t0 = time.perf_counter()
    with tqdm(total=requests, desc="bench load", disable=not progress, leave=False) as bar:
        tally = asyncio.run(_drive(parts.hostname, parts.port, auth, plans, clients, time_limit_s, retry_wait_s, pid, bar.update))
    wall = time.perf_counter() - t0
    in_flight, waited = wait_in_flight_zero(url)
    outs = tally.outcomes
    status = Counter(str(o.status) if o.status is not None else "none" for o in outs)
    problems = [f"{o.kind}: {o.problem}" for o in outs if o.problem]
    malformed_outs = [o for o in outs if o.kind in MALFORMED]
    answered = [o.seconds for o in outs if o.status is not None and o.kind != "drop"]
    served = [o.seconds for o in outs if o.status == 200 and o.kind != "drop"]
    report: dict[str, Any] = {
        "url": url, "requests": len(outs), "planned": requests, "clients": clients, "capacity": capacity,
        "wall_s": round(wall, 2), "max_tokens": max_tokens,
        "status_counts": dict(sorted(status.items())),
        "kinds": dict(sorted(Counter(o.kind for o in outs).items())),
        "five_xx": sum(1 for o in outs if (o.status or 0) >= 500),
        "malformed": len(malformed_outs),
        "malformed_answered_4xx_openai": sum(1 for o in malformed_outs if o.problem is None),
        "too_many_requests": status.get("429", 0),
        "too_many_requests_without_retry_after": sum(1 for o in outs if o.status == 429 and not o.retry_after),
        "dropped_streams": sum(1 for o in outs if o.kind == "drop" and o.status == 200),
        "latency_ms": {"p50": _pct(answered, 50), "p90": _pct(answered, 90), "p99": _pct(answered, 99)},  # every answer
        "latency_ms_200": {"p50": _pct(served, 50), "p90": _pct(served, 90), "p99": _pct(served, 99)},  # whole generations
        "rss_mb_after_first_100": tally.rss_first_mb, "rss_mb_at_end": server_rss_mb(pid),
        "in_flight_at_end": in_flight, "in_flight_drain_s": waited,
        "problems": len(problems), "problem_examples": problems[:10],
    }
    report["ok"] = (report["five_xx"] == 0 and not problems and in_flight == 0
                    and report["malformed_answered_4xx_openai"] == report["malformed"])
    return report


def report_table(r: dict) -> str:
    """The report as a short human-readable table."""
    def yes(ok: bool) -> str:
        return "ok" if ok else "FAIL"

    lat = r["latency_ms"]
    rows = [
        ("requests (clients, capacity)", f"{r['requests']} ({r['clients']} clients, capacity {r['capacity']})", ""),
        ("wall time", f"{r['wall_s']} s", ""),
        ("status codes", ", ".join(f"{k}: {v}" for k, v in r["status_counts"].items()), ""),
        ("5xx", r["five_xx"], yes(r["five_xx"] == 0)),
        ("malformed -> 4xx, OpenAI shape", f"{r['malformed_answered_4xx_openai']}/{r['malformed']}",
         yes(r["malformed_answered_4xx_openai"] == r["malformed"])),
        ("429 without Retry-After", f"{r['too_many_requests_without_retry_after']}/{r['too_many_requests']}",
         yes(r["too_many_requests_without_retry_after"] == 0)),
        ("dropped streams", r["dropped_streams"], ""),
        ("latency p50/p90/p99, all", f"{lat['p50']} / {lat['p90']} / {lat['p99']} ms", ""),
        ("latency p50/p90/p99, 200s", " / ".join(str(r["latency_ms_200"][q]) for q in ("p50", "p90", "p99")) + " ms", ""),
        ("server RSS first 100 -> end", f"{r['rss_mb_after_first_100']} -> {r['rss_mb_at_end']} MB", ""),
        ("in flight at end", f"{r['in_flight_at_end']} (after {r['in_flight_drain_s']} s)", yes(r["in_flight_at_end"] == 0)),
        ("other problems", r["problems"], yes(r["problems"] == 0)),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{name:<{width}}  {value!s:<44} {verdict}".rstrip() for name, value, verdict in rows]
    lines += [f"  {p}" for p in r["problem_examples"]]
    return "\n".join(lines)
