"""Prometheus metrics for the server, written by hand in the text exposition format.

Why this module exists: operators scrape `GET /metrics` to see load and latency. The format is
small (https://prometheus.io/docs/instrumenting/exposition_formats/), so we write it ourselves
instead of adding a dependency: counters, two latency histograms, and gauges read live from
the scheduler when scraped.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import Any

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: le buckets, +Inf, _sum, _count)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines, running = [], 0
        for bound, n in zip(list(self.buckets) + [float("inf")], self.counts):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{le="{le}"}} {running}')
        lines += [f"{name}_sum {self.sum!r}", f"{name}_count {self.count}"]
        return lines


class Metrics:
    """All server metrics; safe to update from the event loop and read from a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()  # (path, status code) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.token_latency = Histogram(TOKEN_BUCKETS)

    def count_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, str(status))] += 1

    def count_tokens(self, prompt: int, generated: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generated_tokens += generated

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def observe_token_latency(self, seconds: float) -> None:
        with self._lock:
            self.token_latency.observe(seconds)

    def render(self, scheduler: Any) -> str:
        """The exposition text; gauges are read from `scheduler` now."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])

        with self._lock:
            family("nanochat_requests_total", "counter", "HTTP requests by path and status code.")
            for (path, code), n in sorted(self.requests.items()):
                out.append(f'nanochat_requests_total{{path="{path}",code="{code}"}} {n}')
            family("nanochat_prompt_tokens_total", "counter", "Prompt tokens of finished requests.")
            out.append(f"nanochat_prompt_tokens_total {self.prompt_tokens}")
            family("nanochat_generated_tokens_total", "counter", "Generated tokens of finished requests.")
            out.append(f"nanochat_generated_tokens_total {self.generated_tokens}")
            family("nanochat_time_to_first_token_seconds", "histogram", "Time from request to first generated token.")
            out.extend(self.ttft.render("nanochat_time_to_first_token_seconds"))
            family("nanochat_time_per_output_token_seconds", "histogram", "Time between consecutive generated tokens of a request.")
            out.extend(self.token_latency.render("nanochat_time_per_output_token_seconds"))
        family("nanochat_requests_in_flight", "gauge", "Generations (one per choice) queued or running.")
        out.append(f"nanochat_requests_in_flight {scheduler.in_flight}")
        family("nanochat_requests_queued", "gauge", "Requests waiting for a batch slot.")
        out.append(f"nanochat_requests_queued {scheduler.queued}")
        family("nanochat_batch_size", "gauge", "Sequences in the current decode batch.")
        out.append(f"nanochat_batch_size {scheduler.batch_size}")
        family("nanochat_decode_steps_total", "counter", "Batched decode steps run by the engine.")
        out.append(f"nanochat_decode_steps_total {scheduler.decode_steps_total}")
        return "\n".join(out) + "\n"
