"""When speculative decoding pays in a batch: measured per batch size while serving.

Why this module exists: drafting with the MTP heads saves forwards when a verify step costs
about what a plain step costs (a batch of one on a CPU, bound by reading the weights), and loses
when the batch is full: the verify rows cost more than the accepted drafts save (on the e2e
model, speculative over plain was 1.06-1.18x at one client, 0.98-1.01x at two, 0.86-0.91x at
four and 0.76-0.77x at eight). Where the crossover lies depends on the model and the CPU, so the
scheduler times both kinds of step at each batch size and drafts only where drafting emits
tokens faster. It switches only requests whose output cannot depend on it: greedy ones
(speculation is exact for them) and sampled ones without a seed. A seeded sampled request drafts
whenever it asks to, so its text stays the same however it is batched.

The rule: the first steps at a batch size try each kind; after that the faster one by an
exponential moving average of tokens per second, and every EXPLORE-th step at that size the
other one, so that the estimates follow the machine's load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXPLORE = 32  # one step in this many tries the kind that is currently slower
EMA = 0.2  # weight of the newest step in a rate estimate


@dataclass
class SpecPolicy:
    rates: dict[tuple[int, bool], float] = field(default_factory=dict)  # (batch, drafted) -> tokens/s
    steps: dict[int, int] = field(default_factory=dict)  # decisions taken per batch size

    def draft(self, batch: int) -> bool:
        """Whether a step of `batch` sequences should draft (for the requests it may switch)."""
        n = self.steps[batch] = self.steps.get(batch, 0) + 1
        spec, plain = self.rates.get((batch, True)), self.rates.get((batch, False))
        if spec is None or plain is None:
            return spec is None  # try drafting first, then plain
        faster = spec > plain
        return (not faster) if n % EXPLORE == 0 else faster

    def record(self, batch: int, drafted: bool, tokens: int, seconds: float) -> None:
        """A step of `batch` sequences (drafting or not) emitted `tokens` in `seconds`."""
        if tokens <= 0 or seconds <= 0:
            return
        rate, key = tokens / seconds, (batch, drafted)
        old = self.rates.get(key)
        self.rates[key] = rate if old is None else (1 - EMA) * old + EMA * rate
