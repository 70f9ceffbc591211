"""The engine in a child process (serve/engine_process.py, `nanochat serve`'s default): the same
tokens as the in-process scheduler thread, cancellation, 429s, a child that cannot load its
model, and a child that dies with requests in flight. Real child processes, a real uvicorn
server on loopback, real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest
import torch
from helpers import make_tiny_gguf

from nanochat_ternary.errors import NanochatError
from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.serve.app import create_app
from nanochat_ternary.serve.engine_process import EngineProcess
from nanochat_ternary.serve.server import ServerThread


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.set_flush_denormal(True)
    gguf, mhc, _ = make_tiny_gguf(tmp_path_factory.mktemp("engine_process"), mhc_n_streams=2, max_seq_len=4096)
    return {"gguf_path": str(gguf), "mhc_path": str(mhc)}


def serve(files, **kw):
    ep = EngineProcess(files, **kw)
    return ServerThread(create_app(ep.info, scheduler=ep, **kw)), ep


def body(name, **kw):
    return {"model": name, "messages": [{"role": "user", "content": "fn add"}], **kw}


def stream_events(response):
    """The JSON events of an SSE response (until [DONE])."""
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_same_tokens_as_the_scheduler_thread_and_the_gauges(files):
    """Seeded sampled requests (n = 2, streamed and not) give the thread's texts; the gauges
    come back to zero."""
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.9, seed=7, n=2, ignore_eos=True)
    engine = Engine.load(files["gguf_path"], files["mhc_path"])
    with ServerThread(create_app(engine, max_batch=4)) as srv:
        want = httpx.post(srv.url + "/v1/chat/completions", json=body(engine.name, **kw), timeout=60).json()
    srv, ep = serve(files, max_batch=4)
    assert ep.info.name == engine.name and ep.info.n_ctx == engine.n_ctx and ep.info.vocab_size == engine.vocab_size
    with srv:
        got = httpx.post(srv.url + "/v1/chat/completions", json=body(engine.name, **kw), timeout=60).json()
        assert [c["message"]["content"] for c in got["choices"]] == [c["message"]["content"] for c in want["choices"]]
        assert got["usage"] == want["usage"]
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body(engine.name, stream=True, **kw), timeout=60) as r:
            chunks = list(stream_events(r))
        texts = ["".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"] and c["choices"][0]["index"] == i)
                 for i in (0, 1)]
        assert texts == [c["message"]["content"] for c in want["choices"]]
        metrics = httpx.get(srv.url + "/metrics").text
        assert "nanochat_requests_in_flight 0" in metrics and "nanochat_decode_steps_total 0" not in metrics
        assert httpx.get(srv.url + "/health").json()["in_flight"] == 0


def test_disconnect_frees_the_slot_and_a_full_server_answers_429(files):
    srv, ep = serve(files, max_batch=2, max_queue=1)
    with srv:
        name = ep.info.name
        steps = ep.decode_steps_total
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body(name, stream=True, max_tokens=4000, ignore_eos=True),
                          timeout=60) as r:
            events = stream_events(r)  # kept: a generator closed early closes the response (the connection)
            next(events)
            assert httpx.get(srv.url + "/health").json()["in_flight"] == 1
        # the client went away: the parent forgets the request, the child drops its sequence
        wait_for(lambda: httpx.get(srv.url + "/health").json()["in_flight"] == 0)
        assert ep.cancelled_total == 1 and ep.decode_steps_total - steps < 3000  # stopped early, not run to the end
        r = httpx.post(srv.url + "/v1/chat/completions", json=body(name, max_tokens=4, ignore_eos=True), timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert ep.last_batch_size == 1  # the child decoded it alone: the cancelled sequence is gone there too

        async def many():  # capacity 2 + 1: of 10 simultaneous long requests, at least 5 must be refused
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                return await asyncio.gather(*(c.post("/v1/chat/completions", json=body(name, max_tokens=200, ignore_eos=True))
                                              for _ in range(10)))

        responses = asyncio.run(many())
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 3 and statuses.count(429) >= 5 and set(statuses) == {200, 429}, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "queue_full" and "too many requests" in refused.json()["error"]["message"]
        assert httpx.get(srv.url + "/health").json()["in_flight"] == 0


def test_a_child_that_cannot_load_its_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(NanochatError, match="broken.gguf"):
        EngineProcess({"gguf_path": str(bad)}, timeout=120)


def test_a_child_that_dies_ends_the_requests_in_flight(files):
    srv, ep = serve(files, max_batch=2)
    with srv:
        name = ep.info.name
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body(name, stream=True, max_tokens=4000, ignore_eos=True),
                          timeout=60) as r:
            events = stream_events(r)
            next(events)
            os.kill(ep._proc.pid, signal.SIGKILL)
            rest = list(events)
        assert rest[-1]["error"]["message"].startswith("generation failed: the engine process exited")
        r = httpx.post(srv.url + "/v1/chat/completions", json=body(name, max_tokens=4), timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert "engine process exited (code -9)" in r.json()["error"]["message"]
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "error" and health.json()["in_flight"] == 0


def test_stop_ends_the_requests_in_flight_and_the_child(files):
    """The app's shutdown (EngineProcess.stop, on the event loop): a running request ends with an
    error event, a new one is refused, and the child process has exited."""
    from nanochat_ternary.infer.sampling import SamplingParams
    from nanochat_ternary.infer.scheduler import GenerationRequest, QueueFull

    ep = EngineProcess(files, max_batch=2)

    async def main():
        ep.start()
        handle = ep.submit(GenerationRequest([5, 6, 7], 4000, SamplingParams(temperature=0.0), ignore_eos=True))
        first = await handle.queue.get()
        ep.stop()
        events = [first]
        while events[-1].finish_reason is None:
            events.append(await handle.queue.get())
        return events

    events = asyncio.run(main())
    assert events[0].finish_reason is None and events[-1].finish_reason == "error"
    assert events[-1].error == "the server is shutting down" and len(events) < 4000
    assert ep._proc.poll() is not None and ep.in_flight == 0
    with pytest.raises(QueueFull, match="shutting down"):
        ep.submit(GenerationRequest([5], 4))


def test_a_failed_scheduler_thread_is_a_503_and_reaches_the_parent(files, monkeypatch):
    """A bug in the scheduler loop (not one request's error) ends every request with an error,
    and further ones are 503s: in a thread (the app's /health says so), and in the child, whose
    command loop (_Pipe.serve, run here in-process over a real socket pair) reports it."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    from nanochat_ternary.infer.sampling import SamplingParams
    from nanochat_ternary.infer.scheduler import GenerationRequest, Scheduler
    from nanochat_ternary.serve.engine_process import _Pipe

    engine = Engine.load(files["gguf_path"], files["mhc_path"])

    def boom(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Scheduler, "_decode_step", boom)
    app = create_app(engine, max_batch=2)
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json=body(engine.name, max_tokens=8), timeout=60)
        assert r.status_code == 500 and "the scheduler failed (RuntimeError: boom)" in r.json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/chat/completions", json=body(engine.name, max_tokens=8), timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert httpx.get(srv.url + "/health").status_code == 503

    ours, theirs = socket.socketpair()
    parent, child = Connection(ours.detach()), Connection(theirs.detach())
    pipe = _Pipe(child, Scheduler(engine, max_batch=2))
    thread = threading.Thread(target=pipe.serve, daemon=True)
    thread.start()
    parent.send(("submit", 7, GenerationRequest([5, 6], 8, SamplingParams()), 0))
    kind, batch, _ = parent.recv()
    assert kind == "events" and batch[0][0] == 7 and batch[0][1].finish_reason == "error"
    assert parent.poll(10) and parent.recv() == ("failed", "the scheduler failed (RuntimeError: boom)")
    thread.join(10)
    assert not thread.is_alive()


def test_the_server_side_does_not_load_pytorch():
    """With the engine in its own process, what the server process imports (the CLI's serve
    command, the app, the engine-process client, uvicorn) leaves PyTorch unloaded: ~200 MB and a
    second at startup that only the engine needs."""
    import subprocess
    import sys

    code = ("import sys, nanochat_ternary.serve.app, nanochat_ternary.serve.engine_process, nanochat_ternary.serve.server; "
            "from nanochat_ternary.cli import build_parser; build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
