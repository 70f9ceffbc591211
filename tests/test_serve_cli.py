"""`nanochat serve` (a real subprocess on a loopback port) and `nanochat bench serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch
from helpers import make_tiny_gguf

from nanochat_ternary.cli import main
from nanochat_ternary.serve.server import free_port


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    torch.set_flush_denormal(True)
    path, mhc, _ = make_tiny_gguf(tmp_path_factory.mktemp("serve_cli"), mhc_n_streams=2)
    return ["--model", str(path), "--mhc", str(mhc)]  # an mHC model, to cover --mhc too


@pytest.mark.parametrize("mode", ["--engine-process", "--no-engine-process"])
def test_serve_subprocess_with_env_api_key(gguf, mode):
    port = free_port()
    env = {**os.environ, "NANOCHAT_API_KEY": "env-key"}
    proc = subprocess.Popen([sys.executable, "-m", "nanochat_ternary.cli", "serve", *gguf, "--port", str(port),
                             "--max-batch", "2", mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer env-key"}).json()
        name = models["data"][0]["id"]
        r = httpx.post(url + "/v1/completions", headers={"Authorization": "Bearer env-key"}, timeout=30,
                       json={"model": name, "prompt": "fn main", "max_tokens": 5, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        children_file = f"/proc/{proc.pid}/task/{proc.pid}/children"  # Linux
        children = [int(c) for c in open(children_file).read().split()] if os.path.exists(children_file) else None
        if children is not None:
            assert bool(children) == (mode == "--engine-process")  # the engine runs in a child process, or not
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out
    for child in children or []:  # Ctrl-C stopped the engine's process too
        assert not os.path.exists(f"/proc/{child}"), child


def test_bench_client_tells_plain_content_chunks_without_parsing_them():
    """The bench's client skips json.loads for chunks that only carry text: exactly those, in this
    server's JSON (both endpoints, with and without usage) and in other servers' spacing."""
    from nanochat_ternary.infer.sampling import SamplingParams
    from nanochat_ternary.serve.bench import plain_content
    from nanochat_ternary.serve.generation import Job, SSEChunks

    for chat in (True, False):
        for usage in (True, False):
            sse = SSEChunks(Job(chat, "m", [[1]], 1, 5, SamplingParams(), [], False, usage))
            data = lambda event: event.removeprefix("data: ").rstrip().encode()  # noqa: E731
            assert plain_content(data(sse.content(0, "let x")))
            assert plain_content(data(sse.content(0, '"content": ""')))  # quotes inside the text are escaped
            assert not plain_content(data(sse.chunk(0, None, None, role=True)))  # empty content
            assert not plain_content(data(sse.chunk(0, "}", "stop")))  # text and a finish reason
            assert not plain_content(data(sse.usage({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})))
    spaced = {"choices": [{"index": 0, "delta": {"content": "fn"}, "finish_reason": None}], "usage": None}
    assert plain_content(json.dumps(spaced).encode())
    spaced["usage"] = {"completion_tokens": 3}  # usage on every chunk: parse them all
    assert not plain_content(json.dumps(spaced).encode())
    assert not plain_content(json.dumps({"error": {"message": "x", "content": "y"}}).encode())


def test_bench_serve_prints_json(gguf, capsys):
    rc = main(["bench", "serve", *gguf, "--clients", "2,1", "--max-tokens", "6", "--requests-per-client", "2", "--rounds", "2"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine_process"] is True  # the default
    # --speculative both (the default): each client count plain and speculative
    assert sorted((lv["speculative"], lv["clients"]) for lv in report["levels"]) == [(False, 1), (False, 2), (True, 1), (True, 2)]
    for lv in report["levels"]:
        assert lv["requests"] == 2 * lv["clients"]
        assert lv["generated_tokens"] == 6 * lv["requests"]  # ignore_eos: every request runs to max_tokens
        assert lv["tokens_per_s"] > 0 and lv["ttft_p50_ms"] > 0 and lv["tpot_p99_ms"] >= lv["tpot_p50_ms"] > 0
    assert report["throughput_ratio_2_to_1"] > 0


def test_bench_serve_drives_a_running_server_by_url(gguf, capsys):
    from nanochat_ternary.infer.engine import Engine
    from nanochat_ternary.serve.app import create_app
    from nanochat_ternary.serve.server import ServerThread

    engine = Engine.load(gguf[1], gguf[3])
    with ServerThread(create_app(engine, api_key="k", max_batch=2, model_name="remote")) as srv:
        rc = main(["bench", "serve", "--url", srv.url, "--api-key", "k", "--clients", "2", "--max-tokens", "3",
                   "--requests-per-client", "1", "--rounds", "1"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "remote" and report["url"] == srv.url
    assert report["levels"][0]["generated_tokens"] == 2 * 3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["serve", "--model", "/nonexistent/m.gguf"], "--model: file not found"),
        (["bench", "serve", "--model", "/nonexistent/m.gguf"], "--model: file not found"),
        (["bench", "serve", "--model", "x.gguf", "--clients", "1,x"], "--clients"),
        (["bench", "serve", "--model", "x.gguf", "--clients", "0"], "--clients"),
        (["bench", "serve"], "needs --model"),
        (["bench", "serve", "--url", "http://127.0.0.1:9"], "--url: no OpenAI-compatible server"),
        (["serve", "--model", "x.gguf", "--port", "70000"], "--port"),
        (["serve", "--model", "x.gguf", "--max-queue", "-1"], "--max-queue"),
    ],
)
def test_bad_options_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bench_serve_reports_a_server_that_cannot_start(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 60)  # a truncated header: the child server exits at once
    rc = main(["bench", "serve", "--model", str(bad), "--clients", "1", "--rounds", "1"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "the server process exited" in err and "broken.gguf" in err
