"""What a caller hands the scheduler and what it gets back: sampling parameters, a generation
request, its events, and the two refusals.

Why this module exists: the HTTP server process imports these, and so does the engine process
(serve/engine_process.py), which pickles them between the two. Keeping them free of PyTorch lets
the server process run without loading it (about 200 MB and a second at startup) while the engine
and its scheduler live in the child.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError, NanochatError


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 -> greedy (argmax)
    top_k: int = 0  # 0 -> off
    top_p: float = 1.0  # 1 -> off
    repetition_penalty: float = 1.0  # 1 -> off
    seed: int | None = None  # None -> a fresh random seed

    def validate(self) -> "SamplingParams":
        """Raise ConfigError naming the field when a value is out of range; return self."""

        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"sampling parameter {name}={getattr(self, name)!r}: {rule}")

        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise bad("temperature", "must be a finite number >= 0")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
            raise bad("top_k", "must be an integer >= 0 (0 turns it off)")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise bad("top_p", "must be in (0, 1]")
        rp = self.repetition_penalty
        if not (isinstance(rp, (int, float)) and math.isfinite(rp) and rp > 0):
            raise bad("repetition_penalty", "must be a finite number > 0")
        if self.seed is not None and not (isinstance(self.seed, int) and not isinstance(self.seed, bool)):
            raise bad("seed", "must be an integer or None")
        return self


class QueueFull(NanochatError):
    """The wait queue is full; the client should retry later (HTTP 429)."""


class EngineUnavailable(NanochatError):
    """The engine cannot take requests any more (its process exited, or the scheduler loop failed): HTTP 503."""


@dataclass
class GenerationRequest:
    prompt: list[int]  # token ids, at least one
    max_tokens: int  # >= 1
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)  # stop strings (excluded from the output)
    ignore_eos: bool = False  # keep going through stop tokens (benchmarks want fixed lengths)
    speculative: bool | None = None  # draft with the MTP heads (None: the scheduler's default)


@dataclass(frozen=True)
class Event:
    """One generated token of one request; the last one has `finish_reason` set."""

    index: int  # the caller's tag (the choice index for n > 1)
    text: str  # text safe to emit now; may be "" (a partial character or a possible stop prefix)
    tokens: int  # completion tokens generated so far
    finish_reason: str | None = None  # "stop", "length" or "error"
    error: str | None = None  # message when finish_reason == "error"
    token_id: int = -1  # the token this event is for (-1 when none, e.g. an error)
