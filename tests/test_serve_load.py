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
    assert r["server"] == {"max_batch": 8, "max_queue": 8, "max_body_bytes": 65536, "threads": 1}
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
