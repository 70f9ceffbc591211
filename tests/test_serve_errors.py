"""Every error path of the server over real HTTP (raw httpx), plus /health, /metrics and a
client that disconnects mid-stream. Real uvicorn, real Engine on a tiny GGUF."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
import torch
from helpers import make_tiny_gguf

from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.serve.app import create_app
from nanochat_ternary.serve.server import ServerThread

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_flush_denormal(True)
    gguf, mhc, _ = make_tiny_gguf(tmp_path_factory.mktemp("serve_errors"))
    engine = Engine.load(gguf, mhc)
    app = create_app(engine, api_key=KEY, max_batch=2, max_queue=1, max_body_bytes=LIMIT)
    with ServerThread(app) as srv:
        srv.app, srv.engine = app, engine
        yield srv


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def _error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def _metric(http: httpx.Client, name: str) -> float:
    text = http.get("/metrics").text
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def test_health_and_page_need_no_key(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "nanochat" in page.text


@pytest.mark.parametrize("path,method", [("/v1/models", "GET"), ("/metrics", "GET"), ("/v1/chat/completions", "POST"), ("/v1/completions", "POST")])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}])
def test_missing_or_wrong_key_is_401(server, path, method, headers):
    r = httpx.request(method, server.url + path, headers=headers, json={})
    _error(r, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "body,param,code",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "missing_required_parameter"),
        ({"model": "M"}, "messages", "missing_required_parameter"),
        ({"model": "M", "messages": []}, "messages", "invalid_value"),
        ({"model": "M", "messages": [{"role": "user", "content": 5}]}, "messages.0.content", None),
        ({"model": "M", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature", "invalid_value"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature", "invalid_value"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "n": True}, "n", "invalid_value"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop", None),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream", "invalid_value"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 1}},
         "stream_options.include_usage", "invalid_value"),
    ],
)
def test_ill_typed_or_missing_fields_are_400(server, http, body, param, code):
    body = {k: (server.engine.name if v == "M" else v) for k, v in body.items()}
    err = _error(http.post("/v1/chat/completions", json=body), 400, code)
    assert err["param"] is not None and err["param"].startswith(param), err


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(http, raw):
    _error(http.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"}), 400, "invalid_json")


def test_unknown_model_is_404_and_unknown_route_is_404(server, http):
    err = _error(http.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404, "model_not_found", "model")
    assert "gpt-4" in err["message"]
    _error(http.get("/v1/models/gpt-4"), 404, "model_not_found")
    _error(http.get("/v1/nothing"), 404)
    _error(http.get("/v1/completions"), 405)


def test_context_overflow_is_400_with_the_numbers(server, http):
    n_ctx = server.engine.n_ctx
    err = _error(http.post("/v1/completions", json={"model": server.engine.name, "prompt": "fn", "max_tokens": n_ctx}), 400,
                 "context_length_exceeded")
    assert str(n_ctx) in err["message"] and f"{n_ctx} in the completion" in err["message"]
    long_prompt = list(range(3, 3 + n_ctx))  # token ids: exactly the context, no room to generate
    _error(http.post("/v1/completions", json={"model": server.engine.name, "prompt": long_prompt}), 400, "context_length_exceeded")
    _error(http.post("/v1/completions", json={"model": server.engine.name, "prompt": [10**9]}), 400, "invalid_value", "prompt")


def test_body_over_the_limit_is_413(http):
    big = json.dumps({"model": "x", "prompt": "a" * (2 * LIMIT)}).encode()
    _error(http.post("/v1/completions", content=big, headers={"Content-Type": "application/json"}), 413, "request_too_large")

    def chunked():  # no Content-Length: the limit must hold on the bytes actually read
        for _ in range(4):
            yield b" " * LIMIT

    _error(http.post("/v1/completions", content=chunked(), headers={"Content-Type": "application/json"}), 413, "request_too_large")


def test_request_larger_than_the_server_is_400_not_429(server, http):
    # capacity is max_batch (2) + max_queue (1): n = 4 could never be admitted, so retrying cannot help
    body = {"model": server.engine.name, "prompt": "fn", "max_tokens": 2, "n": 4}
    err = _error(http.post("/v1/completions", json=body), 400, "invalid_value", "n")
    assert "4 generations" in err["message"] and "at most 3" in err["message"]
    err = _error(http.post("/v1/completions", json={**body, "n": 2, "prompt": ["fn", "let"]}), 400, "invalid_value", "n")
    assert "2 prompt(s)" in err["message"]
    assert http.post("/v1/completions", json={**body, "n": 3}).status_code == 200  # exactly the capacity is fine


def test_queue_full_is_429_with_retry_after(server):
    # capacity is max_batch (2) + max_queue (1): of 10 simultaneous long requests, 7 must wait in vain
    body = {"model": server.engine.name, "prompt": "fn", "max_tokens": 200, "ignore_eos": True}

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(10)))

    responses = asyncio.run(main())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 3 and statuses.count(429) >= 5 and set(statuses) == {200, 429}, statuses
    for r in responses:
        if r.status_code == 429:
            _error(r, 429, "queue_full")
            assert r.headers["Retry-After"] == "1"


def test_mid_stream_disconnect_frees_the_slot(server, http):
    scheduler = server.app.state.scheduler
    cancelled, generated = scheduler.cancelled_total, scheduler.generated_tokens_total
    body = {"model": server.engine.name, "prompt": "fn", "max_tokens": 220, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        assert _metric(http, "nanochat_requests_in_flight") == 1
    # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while _metric(http, "nanochat_requests_in_flight") != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _metric(http, "nanochat_requests_in_flight") == 0
    assert scheduler.cancelled_total == cancelled + 1
    assert scheduler.generated_tokens_total - generated < 220  # stopped early, not run to the end


def test_metrics_exposition(http, server):
    http.post("/v1/completions", json={"model": server.engine.name, "prompt": "fn", "max_tokens": 3})
    text = http.get("/metrics").text
    assert re.search(r'^nanochat_requests_total\{path="/v1/completions",code="200"\} [1-9]', text, re.M)
    assert re.search(r'^nanochat_requests_total\{path="/v1/completions",code="400"\} [1-9]', text, re.M)
    assert re.search(r"^nanochat_generated_tokens_total [1-9]", text, re.M)
    assert re.search(r"^nanochat_prompt_tokens_total [1-9]", text, re.M)
    assert re.search(r'^nanochat_time_to_first_token_seconds_bucket\{le="\+Inf"\} [1-9]', text, re.M)
    assert re.search(r"^nanochat_time_per_output_token_seconds_count [1-9]", text, re.M)
    assert "# TYPE nanochat_batch_size gauge" in text and "# TYPE nanochat_requests_in_flight gauge" in text
