"""Turning one step's logits into one token: temperature, top-k, top-p, repetition penalty.

Why this module exists: the scheduler samples every request on its own (its own parameters and
its own seeded generator), so a request with a `seed` produces the same text whether it ran
alone or batched with others. Sampling draws exactly one uniform number per step from the
request's generator and inverts the CDF in float64, so the random stream a request consumes
does not depend on anything but its own step count.
"""

from __future__ import annotations

import random

import torch

from .requests import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, history: list[int], penalty: float) -> torch.Tensor:
    """CTRL's penalty (https://arxiv.org/abs/1909.05858, sec. 4.1), as in HF transformers:
    each token already seen has a positive logit divided by `penalty`, a negative one multiplied."""
    if penalty == 1.0 or not history:
        return logits
    ids = torch.tensor(sorted(set(history)), dtype=torch.long)
    ids = ids[ids < logits.shape[-1]]
    seen = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling distribution after temperature, top-k and top-p (nucleus,
    https://arxiv.org/abs/1904.09751): (probabilities in float64, their token ids), sorted by
    decreasing probability, renormalised to sum to 1. Requires temperature > 0."""
    scaled = logits.double() / params.temperature
    probs, ids = torch.sort(torch.softmax(scaled, dim=-1), descending=True)
    if params.top_k > 0:
        probs, ids = probs[: params.top_k], ids[: params.top_k]
    if params.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p: token i stays if the mass before it < top_p
        before = torch.cumsum(probs, dim=0) - probs
        keep = int((before < params.top_p).sum().item())
        probs, ids = probs[: max(keep, 1)], ids[: max(keep, 1)]
    return probs / probs.sum(), ids


class Sampler:
    """Samples tokens for one request; owns a random.Random seeded from `params.seed`.

    Python's Mersenne Twister, not a torch.Generator: a draw is one C call (about 0.05 us, where
    torch.rand(..., generator=g).item() took about 4 us, paid per request per token in a server's
    batched step) with the same 53-bit uniform doubles."""

    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        # no seed: random.Random seeds itself from the OS; a seed is folded into 64 bits as before
        self.rng = random.Random(None if params.seed is None else params.seed % (2**64))

    def uniform(self) -> float:
        """This request's next uniform draw in [0, 1) (exactly one per sampled token)."""
        return self.rng.random()

    def __call__(self, logits: torch.Tensor, history: list[int]) -> int:
        """Next token id from float logits [vocab]; `history` is the prompt plus tokens so far."""
        if logits.dim() != 1:
            raise ValueError(f"Sampler expects logits of shape [vocab], got {tuple(logits.shape)}")
        return sample_batch([self], logits.unsqueeze(0), [history])[0]


def sample_batch(samplers: list[Sampler], logits: torch.Tensor, histories: list[list[int]]) -> list[int]:
    """One token per row of `logits` [B, vocab], row i drawn by `samplers[i]`.

    The rows that need no sorting (greedy, or temperature alone) are sampled together: one
    softmax, one cumsum and one searchsorted for the whole batch instead of one each, which is
    most of the per-token sampling cost in a batched server. Each row still draws its own
    uniform number from its own generator, and every row's result is the same as when it is
    sampled alone (row-wise kernels), so a seed reproduces its text however it was batched."""
    if logits.dim() != 2 or logits.shape[0] != len(samplers):
        raise ValueError(f"sample_batch expects logits [{len(samplers)}, vocab], got {tuple(logits.shape)}")
    logits = logits.float()
    penalised = [i for i, s in enumerate(samplers) if s.params.repetition_penalty != 1.0 and histories[i]]
    if penalised:
        logits = logits.clone()
        for i in penalised:
            logits[i] = apply_repetition_penalty(logits[i], histories[i], samplers[i].params.repetition_penalty)
    out = [0] * len(samplers)
    greedy, plain, filtered = [], [], []
    for i, s in enumerate(samplers):
        p = s.params
        (greedy if p.temperature == 0 else plain if p.top_k == 0 and p.top_p >= 1.0 else filtered).append(i)
    if greedy:
        for i, t in zip(greedy, torch.argmax(logits[greedy], dim=-1).tolist()):
            out[i] = t
    if plain:
        # inverse-CDF sampling with one uniform draw per step (see the module docstring); no
        # filtering, so no sort: walk the CDF in token-id order (as valid, and cheaper)
        u = torch.tensor([samplers[i].uniform() for i in plain], dtype=torch.float64)
        temps = [samplers[i].params.temperature for i in plain]
        rows = logits if len(plain) == len(samplers) else logits[plain]  # no gather when every row is plain
        # one temperature (the usual case) divides by a float: the same quotients, one op fewer
        t = temps[0] if len(set(temps)) == 1 else torch.tensor(temps, dtype=torch.float64)[:, None]
        cdf = torch.softmax(rows.double() / t, dim=-1).cumsum_(dim=-1)
        index = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        for i, t in zip(plain, index.clamp_max(cdf.shape[-1] - 1).tolist()):
            out[i] = t
    for i in filtered:
        u = samplers[i].uniform()
        probs, ids = filtered_probs(logits[i], samplers[i].params)
        index = int(torch.searchsorted(torch.cumsum(probs, dim=0), torch.tensor([u], dtype=torch.float64), right=True).item())
        out[i] = int(ids[min(index, ids.numel() - 1)].item())
    return out
