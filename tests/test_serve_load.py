"""`nanochat bench load` against a real server process on loopback: 32 clients at twice its
capacity, malformed requests and dropped streams; no 5xx, OpenAI-shaped 4xx, 429 + Retry-After,
in-flight back to 0, and the report's figures present."""

import json

from helpers import make_tiny_gguf
from nanochat_ternary.cli import main


def test_bench_load_overload_mix(tmp_path, capsys):
    gguf, _, _ = make_tiny_gguf(tmp_path)
    out = tmp_path / "load.json"
    rc = main(["bench", "load", "--model", str(gguf), "--requests", "150", "--threads", "1", "--output", str(out),
               "--time-limit", "120", "--retry-wait", "0.2"])
    table = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert rc == 0 and r["ok"], (table, r["problem_examples"])
    assert r["requests"] == 150 and r["clients"] == 32 and r["capacity"] == 16
    assert r["server"] == {"max_batch": 8, "max_queue": 8, "max_body_bytes": 65536, "threads": 1, "engine_process": True}
    assert r["five_xx"] == 0 and r["problems"] == 0
    assert r["status_counts"]["200"] > 0 and r["too_many_requests"] > 0  # past its capacity the server says 429...
    assert r["too_many_requests_without_retry_after"] == 0  # ...with Retry-After
    assert r["malformed"] > 0 and r["malformed_answered_4xx_openai"] == r["malformed"]
    assert {"400", "405"} <= set(r["status_counts"]) or "404" in r["status_counts"]
    assert r["dropped_streams"] > 0 and r["in_flight_at_end"] == 0  # dropped streams freed their slots
    assert r["rss_mb_after_first_100"] > 0 and r["rss_mb_at_end"] > 0
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
    for words in ("5xx", "malformed -> 4xx, OpenAI shape", "429 without Retry-After", "in flight at end", "latency p50/p90/p99, 200s"):
        assert words in table


def test_bench_load_argument_errors(capsys):
    for argv, words in ((["bench", "load"], "bench load needs --model"),
                        (["bench", "load", "--model", "/nonexistent/m.gguf"], "--model: file not found"),
                        (["bench", "load", "--model", "x.gguf", "--malformed", "0.8", "--drop", "0.5"], "--malformed and --drop")):
        assert main(argv) == 2
        assert words in capsys.readouterr().err


def test_server_rss_counts_the_engine_process():
    """The server's RSS in the report includes its child processes (the engine's, in its own
    process by default): this process plus a child holding ~100 MB."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from nanochat_ternary.serve.loadtest import server_rss_mb

    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        import pytest

        pytest.skip("no /proc/PID/task/PID/children here")
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(100 << 20); print(1, flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        time.sleep(0.1)
        alone, both = server_rss_mb(child.pid), server_rss_mb(os.getpid())
        own = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:")) / 1024
        assert alone > 100 and both >= own + alone - 5
    finally:
        child.kill()
        child.wait()
