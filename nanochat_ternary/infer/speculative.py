"""Self-speculative greedy decoding with the model's own MTP heads as the draft model.

Why this module exists: a decode step of a small model on a CPU costs about the same for one token
as for a handful (the weights are read once either way). The MTP heads (model/gpt.py, MTPHead)
predict tokens t+2, t+3, ... from the trunk state at t at almost no cost, so each step can
propose several tokens and check them all in one forward (Stern et al., 2018, "Blockwise
Parallel Decoding", https://arxiv.org/abs/1811.03115; Gloeckle et al., 2024,
https://arxiv.org/abs/2404.19737, section 3.2):

1. the main head's argmax at the last position gives the next token x (always right: it is what
   greedy decoding would pick); the first k MTP heads give drafts d_1..d_k for the tokens after x;
2. one forward over [x, d_1, ..., d_k] gives the main head's greedy choice after each of them;
3. drafts are accepted while they equal those choices; the choice after the last accepted token
   is the next step's x, and the cache is truncated to the accepted tokens.

The output equals plain greedy decoding token for token: every emitted token is the main head's
argmax given the exact same prefix, and the engine computes each position's logits identically
however many tokens a forward holds (see kv_cache._attend_one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .engine import Engine, EngineInputError


@dataclass
class SpecStats:
    steps: int = 0  # verify forwards
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    generated: int = 0  # tokens emitted
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.generated / self.steps if self.steps else 0.0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "drafted": self.drafted, "accepted": self.accepted, "generated": self.generated,
                "acceptance_rate": round(self.acceptance_rate, 4), "tokens_per_step": round(self.tokens_per_step, 3),
                "tokens_per_s": round(self.generated / self.seconds, 2) if self.seconds else 0.0}


def _argmax(logits) -> int:
    return int(logits.argmax())


def speculative_generate(engine: Engine, prompt_tokens: list[int], max_new_tokens: int, draft_tokens: int | None = None,
                         stop_tokens: set[int] | None = None, on_token=None) -> tuple[list[int], SpecStats]:
    """Greedy generation of up to `max_new_tokens` tokens after the prompt, drafting with the MTP heads.

    `draft_tokens` (default: all MTP heads) caps the drafts per step; `stop_tokens` end the
    generation (the stop token is included in the output, as in plain greedy decoding);
    `on_token(token_id)` is called for each token as soon as it is final (for streaming).
    Returns (tokens, stats) with the acceptance rate in stats.
    """
    if engine.n_mtp == 0:
        raise EngineInputError(f"{engine.model_file}: speculative decoding needs MTP heads and this model has none")
    if getattr(engine, "deltanet", None) is not None:  # a rejected draft must be rolled back
        raise EngineInputError(f"{engine.model_file}: a Gated DeltaNet model cannot roll back rejected drafts; "
                               "speculative decoding needs a pure-attention model")
    k = engine.n_mtp if draft_tokens is None else max(0, min(int(draft_tokens), engine.n_mtp))
    stop = stop_tokens or set()
    stats = SpecStats()
    t0 = time.perf_counter()
    state = engine.new_state()
    out: list[int] = []

    def emit(tok: int) -> bool:
        """Append a token; True when generation must end."""
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        return tok in stop or len(out) >= max_new_tokens

    try:
        if max_new_tokens <= 0:
            return out, stats
        x = _argmax(engine.prefill(state, list(prompt_tokens)))
        z = state.last_z
        while True:
            if emit(x):
                break
            room = engine.n_ctx - state.length - 1  # positions left after x
            n_draft = max(0, min(k, room, max_new_tokens - len(out)))
            drafts = [_argmax(row) for row in engine.mtp_logits(z)[:n_draft]] if n_draft else []
            start = state.length
            logits, zs = engine.verify(state, [x, *drafts])
            stats.steps += 1
            stats.drafted += len(drafts)
            choices = [_argmax(row) for row in logits]  # choices[i]: greedy token after input i
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == choices[accepted]:
                accepted += 1
            stats.accepted += accepted
            engine.truncate(state, start + 1 + accepted)
            z = zs[accepted]
            done = False
            for d in drafts[:accepted]:
                if emit(d):
                    done = True
                    break
            if done:
                break
            x = choices[accepted]
            if state.length >= engine.n_ctx:  # no room to feed x back: emit it and stop
                emit(x)
                break
        return out, stats
    finally:
        stats.generated = len(out)
        stats.seconds = time.perf_counter() - t0
        state.release()


def greedy_generate(engine: Engine, prompt_tokens: list[int], max_new_tokens: int, stop_tokens: set[int] | None = None,
                    on_token=None) -> list[int]:
    """Plain greedy decoding with the KV cache (the reference speculative decoding must match)."""
    stop = stop_tokens or set()
    state = engine.new_state()
    out: list[int] = []
    try:
        if max_new_tokens <= 0:
            return out
        logits = engine.prefill(state, list(prompt_tokens))
        while True:
            tok = _argmax(logits)
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if tok in stop or len(out) >= max_new_tokens or state.length >= engine.n_ctx:
                return out
            logits = engine.decode([state], [tok])[0]
    finally:
        state.release()
