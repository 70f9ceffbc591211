"""Tests for nanochat_ternary.infer.sampling: greedy, temperature, top-k/top-p, penalty, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from nanochat_ternary.errors import ConfigError
from nanochat_ternary.infer.sampling import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    filtered_probs,
    sample_batch,
)


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    s = Sampler(SamplingParams(temperature=0.0, seed=1))
    assert s(logits, []) == 1
    assert s(logits, [0, 2]) == 1


def test_repetition_penalty_matches_ctrl_rule():
    logits = torch.tensor([2.0, -1.0, 0.5, 4.0])
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 4.0]
    assert logits.tolist() == [2.0, -1.0, 0.5, 4.0]  # input untouched
    # with a strong penalty greedy stops repeating the top token
    s = Sampler(SamplingParams(temperature=0.0, repetition_penalty=10.0))
    assert s(torch.tensor([1.0, 3.0, 2.0]), [1]) == 2


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs, ids = filtered_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert ids.tolist() == [0, 1]
    assert math.isclose(probs.sum().item(), 1.0)
    assert math.isclose(probs[0].item(), 0.5 / 0.8, rel_tol=1e-6)
    _, ids = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert ids.tolist() == [0, 1]
    _, ids = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.81))
    assert ids.tolist() == [0, 1, 2]
    _, ids = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.01))
    assert ids.tolist() == [0]  # always at least one token


def test_samples_follow_the_distribution_and_respect_top_k():
    target = torch.tensor([0.4, 0.3, 0.2, 0.1])
    s = Sampler(SamplingParams(temperature=1.0, seed=123))
    counts = torch.zeros(4)
    n = 4000
    for _ in range(n):
        counts[s(torch.log(target), [])] += 1
    # each frequency within 4 standard deviations of its expectation
    sd = torch.sqrt(n * target * (1 - target))
    assert torch.all((counts - n * target).abs() < 4 * sd), counts
    s2 = Sampler(SamplingParams(temperature=5.0, top_k=2, seed=5))
    assert {s2(torch.log(target), []) for _ in range(300)} == {0, 1}


def test_low_temperature_concentrates():
    logits = torch.tensor([1.0, 1.5, 0.0])
    s = Sampler(SamplingParams(temperature=0.05, seed=0))
    assert all(s(logits, []) == 1 for _ in range(50))


def test_seed_reproduces_and_differs():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))

    def run(seed):
        s = Sampler(SamplingParams(temperature=1.0, top_p=0.95, seed=seed))
        return [s(logits, []) for _ in range(40)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(-3) == run(-3)  # negative seeds are accepted
    assert run(2**70) == run(2**70)  # so are seeds beyond 64 bits


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_params_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Sampler(SamplingParams(**kwargs))


def test_rejects_batched_logits():
    with pytest.raises(ValueError, match="vocab"):
        Sampler(SamplingParams(seed=0))(torch.zeros(2, 3), [])


def test_batched_sampling_matches_each_row_alone():
    """The server samples a whole decode batch in one call; every row must get exactly the token
    its own Sampler would have drawn alone (so a seed reproduces however requests are batched),
    and a failing row must not pass silently."""
    torch.manual_seed(0)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=1),
              SamplingParams(temperature=1.3, seed=2), SamplingParams(temperature=0.7, top_k=5, seed=3),
              SamplingParams(temperature=1.0, top_p=0.9, seed=4), SamplingParams(temperature=0.9, repetition_penalty=1.5, seed=5),
              SamplingParams(temperature=0.5, seed=6)]
    alone = [Sampler(p) for p in params]
    batched = [Sampler(p) for p in params]
    history = [3, 7, 7, 11]
    for _ in range(50):
        logits = torch.randn(len(params), 64) * 3
        want = [s(row, history) for s, row in zip(alone, logits)]
        assert sample_batch(batched, logits, [history] * len(params)) == want
    with pytest.raises(ValueError, match="expects logits"):
        sample_batch(batched, torch.randn(2, 64), [history] * 2)
