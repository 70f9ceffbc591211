"""Speculative decoding inside continuous batching: MTP-head drafts, verified for many requests at once.

Why this module exists: `nanochat generate` drafts with the MTP heads (speculative.py), greedy
only and one sequence at a time. The server decodes many sequences per step, and most requests
sample. So here one scheduler step does, for every active sequence that speculates:

1. drafts d_1..d_k from the MTP heads at the trunk state that predicted its pending token x
   (head i predicts the token i + 1 after x): argmax for greedy requests, a draw from
   q_i = the request's sampling transform (temperature, top-k, top-p) of head i's logits for
   sampled ones;
2. ONE batched forward over every sequence's rows ([x, d_1, ..., d_k] for speculating ones,
   [x] for the others: Engine.verify_batch), giving target distributions p_1..p_{k+1};
3. acceptance, per sequence, with its own seeded generator:
   - greedy: accept while d_i equals the argmax of p_i (as speculative.py);
   - sampled: the lossless rule of Leviathan et al. 2023 (https://arxiv.org/abs/2211.17192,
     Algorithm 1; Chen et al. 2023, https://arxiv.org/abs/2302.01318): accept d_i with
     probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw the next token from
     norm(max(0, p_i - q_i)) and stop; when every draft is accepted draw a bonus token from
     p_{k+1}. Each emitted token is then distributed exactly as p_i: P(emit t) =
     q(t) min(1, p(t)/q(t)) + (1 - sum_s min(p(s), q(s))) (p(t) - q(t))^+ / sum_s (p(s) - q(s))^+
     = min(p(t), q(t)) + (p(t) - q(t))^+ = p(t).
   The drafts need not be conditioned on each other (the heads all read x's predecessor state):
   the proof needs only that d_i ~ q_i independently of what was accepted before it.

p_i is the same transform the plain sampler applies (repetition penalty over the history plus
the drafts before position i, then temperature, top-k, top-p; sampling.filtered_probs), so the
output distribution is the non-speculative one. The random stream a request consumes depends on
its own tokens only, so a seed reproduces its text however it was batched (not the same text as
without speculation: the draws are used differently). Hybrid (Gated DeltaNet) models cannot roll
a rejected draft back, and models without MTP heads have nothing to draft with: `supported`
says so and the scheduler then decodes those requests plainly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import Sampler, apply_repetition_penalty, filtered_probs


def supported(engine) -> bool:
    """True when `engine` can speculate: MTP heads, and a KV cache that can be truncated."""
    return bool(getattr(engine, "n_mtp", 0)) and getattr(engine, "deltanet", None) is None and hasattr(engine, "verify_batch")


def draft_count(n_mtp: int, length: int, n_ctx: int, remaining: int) -> int:
    """Drafts for a sequence holding `length` tokens whose pending token x is already emitted,
    with `remaining` tokens still allowed after x. Rows x, d_1..d_k take positions
    length..length+k, and the position after the last draft must stay free (the token chosen there
    is fed at the next step), so a draft never makes a request stop earlier than plain decoding."""
    return max(0, min(n_mtp, n_ctx - length - 2, remaining - 1))


def distribution(logits: torch.Tensor, sampler: Sampler, history: list[int]) -> torch.Tensor:
    """The plain sampler's distribution for one row of logits, over the whole row (float64):
    one-hot at the argmax for greedy requests."""
    params = sampler.params
    logits = apply_repetition_penalty(logits.float(), history, params.repetition_penalty)
    if params.temperature > 0 and params.top_k == 0 and params.top_p >= 1.0:  # no filter: no sort
        return torch.softmax(logits.double() / params.temperature, dim=-1)
    out = torch.zeros(logits.shape[-1], dtype=torch.float64)
    if params.temperature == 0:
        out[int(logits.argmax())] = 1.0
        return out
    probs, ids = filtered_probs(logits, params)
    return out.index_put_((ids,), probs)


def draw(dist: torch.Tensor, u: float) -> int:
    """Inverse-CDF draw from an (unnormalised, non-negative) distribution with uniform u in [0, 1)."""
    cdf = torch.cumsum(dist, dim=0)
    index = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=torch.float64), right=True).item())
    index = min(index, dist.numel() - 1)
    while dist[index] <= 0 and index > 0:  # rounding at the top of the CDF: step back to a real token
        index -= 1
    return index


@dataclass
class Draft:
    """One speculating sequence's proposal: the drafts and (sampled requests) their q_i."""

    tokens: list[int]
    q: list[torch.Tensor] | None  # None for greedy requests (q is one-hot at the draft)


def make_drafts(mtp_logits: torch.Tensor, sampler: Sampler, history: list[int], n: int) -> Draft:
    """Draft n tokens from one sequence's MTP logits [n_mtp, V] (history: the repetition penalty's)."""
    rows = mtp_logits[:n]
    if sampler.params.temperature == 0:
        return Draft([int(t) for t in rows.argmax(dim=-1).tolist()], None)
    qs = [distribution(row, sampler, history) for row in rows]
    return Draft([draw(q, sampler.uniform()) for q in qs], qs)


def accept(target_logits: torch.Tensor, draft: Draft, sampler: Sampler, history: list[int]) -> list[int]:
    """Verify one sequence's drafts against its main-head logits [k + 1, V] (row i: after the pending
    token and the first i drafts). Returns the emitted tokens: the accepted drafts and one more."""
    if draft.q is None and sampler.params.repetition_penalty == 1.0:  # plain greedy: one argmax call
        choices = target_logits.argmax(dim=-1).tolist()
        n = 0
        while n < len(draft.tokens) and draft.tokens[n] == choices[n]:
            n += 1
        return draft.tokens[:n] + [choices[n]]
    seen = list(history)
    out: list[int] = []
    for i, d in enumerate(draft.tokens):
        p = distribution(target_logits[i], sampler, seen)
        if draft.q is None:  # greedy: accept iff the draft is the argmax
            if int(p.argmax()) != d:
                return out + [int(p.argmax())]
        else:
            q = draft.q[i]
            ratio = float(p[d]) / float(q[d])  # q[d] > 0: d was drawn from q
            if sampler.uniform() >= min(1.0, ratio):
                residual = (p - q).clamp_min_(0.0)
                return out + [draw(residual if float(residual.sum()) > 0 else p, sampler.uniform())]
        out.append(d)
        seen.append(d)
    p = distribution(target_logits[len(draft.tokens)], sampler, seen)
    return out + [int(p.argmax()) if draft.q is None else draw(p, sampler.uniform())]


@dataclass
class SpecCounters:
    """Totals for /metrics and the benchmark."""

    steps: int = 0  # sequence-steps that verified at least one draft
    drafted: int = 0
    accepted: int = 0


def step(engine, states: list, last_tokens: list[int], drafts: list[Draft | None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ONE forward for a batch: sequence j feeds [last_tokens[j], *drafts[j].tokens] (or just the
    token when drafts[j] is None). Returns each sequence's (logits [1 + k_j, V], trunk states [1 + k_j, D])."""
    rows = [[t] + (d.tokens if d is not None else []) for t, d in zip(last_tokens, drafts)]
    logits, z = engine.verify_batch(states, rows)
    sizes = [len(r) for r in rows]
    return list(zip(torch.split(logits, sizes), torch.split(z, sizes)))


def rollback(engine, state, start: int, accepted: int, zs: torch.Tensor) -> None:
    """Keep the pending token and the accepted drafts; the trunk state of the last one drafts next."""
    engine.truncate(state, start + 1 + accepted)
    state.last_z = zs[accepted].clone()
