"""Speculative decoding in continuous batching (infer/speculative_batch.py) on a real tiny GGUF
with two MTP heads: the acceptance rule is lossless, the scheduler's sampled output has the plain
model's distribution, greedy output is identical with and without, and the HTTP switch works.

Distribution checks use Pearson's chi-square against the exact distribution, with the threshold
at the (1 - 1e-5) quantile (Wilson-Hilferty approximation): each fails by chance with probability
about 1e-5.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter

import httpx
import pytest
import torch
from helpers import make_tiny_gguf
from openai import OpenAI

from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.infer.sampling import Sampler, SamplingParams, filtered_probs
from nanochat_ternary.infer.scheduler import GenerationRequest, Scheduler
from nanochat_ternary.infer.spec_policy import EXPLORE, SpecPolicy
from nanochat_ternary.infer.speculative_batch import Draft, accept, distribution, draft_count, draw
from nanochat_ternary.serve.app import create_app
from nanochat_ternary.serve.server import ServerThread

Z_1E5 = 4.265  # standard normal quantile at 1 - 1e-5


def chi2_threshold(df: int) -> float:
    """(1 - 1e-5) quantile of chi-square with df degrees of freedom (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + Z_1E5 * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: Counter, probs: dict, n: int) -> tuple[float, int]:
    """Pearson's statistic of observed `counts` against `probs`; outcomes outside probs count fully."""
    stat = sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in probs.items() if p > 0)
    stray = sum(c for k, c in counts.items() if probs.get(k, 0) <= 0)
    return (math.inf if stray else stat), sum(1 for p in probs.values() if p > 0) - 1


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_flush_denormal(True)
    gguf, mhc, _ = make_tiny_gguf(tmp_path_factory.mktemp("spec_batch"), use_mtp=True, mtp_n_tokens=2)
    return Engine.load(gguf, mhc)


def _prompt(engine, text: str) -> list[int]:
    return [engine.tokenizer.bos_id] + engine.tokenizer.encode(text)


def run(engine, requests: list[GenerationRequest], max_batch: int = 16, **kw):
    """Submit all at once and wait: ([token ids per request], the scheduler)."""
    sched = Scheduler(engine, max_batch=max_batch, max_queue=len(requests), **kw).start()

    async def main():
        handles = [sched.submit(r) for r in requests]
        outs = []
        for h in handles:
            ids = []
            while (ev := await asyncio.wait_for(h.queue.get(), 60)).finish_reason is None:
                ids.append(ev.token_id)
            assert ev.finish_reason != "error", ev.error
            outs.append((ids + [ev.token_id], ev.finish_reason, ev.tokens))
        return outs

    try:
        return asyncio.run(main()), sched
    finally:
        sched.stop()


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.9, seed=1), SamplingParams(temperature=1.3, top_k=4, seed=2),
                                    SamplingParams(temperature=0.8, top_p=0.7, repetition_penalty=1.3, seed=3)])
def test_acceptance_rule_gives_the_target_distribution(params):
    """Whatever the draft distribution q, the first emitted token is distributed as p (Leviathan et al.)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 8, generator=g) * 1.5  # rows: after x, after the draft
    draft_logits = target[0] + torch.randn(8, generator=g)  # a related but different q
    sampler, history = Sampler(params), [1, 5]
    p = distribution(target[0], sampler, history)
    q = distribution(draft_logits, sampler, history)
    assert (q - p).abs().sum() > 0.2  # the test needs a q that differs from p
    n, counts, accepted = 6000, Counter(), 0
    for _ in range(n):
        d = draw(q, sampler.uniform())
        out = accept(target, Draft([d], [q]), sampler, history)
        counts[out[0]] += 1
        accepted += len(out) == 2
    stat, df = chi2(counts, {t: float(p[t]) for t in range(8)}, n)
    assert stat < chi2_threshold(df), (stat, df)
    assert 0 < accepted < n  # both branches ran


def test_sampled_requests_keep_the_models_distribution(engine):
    """Three tokens, top_k=3 (27 outcomes): the first from the prefill, the next two from one or two
    speculative steps; the counts match the exact plain-sampling distribution enumerated from
    the engine's own logits."""
    params = SamplingParams(temperature=1.0, top_k=3)
    prompt = _prompt(engine, "fn main() {")
    exact: dict[tuple, float] = {}

    def probs_after(seq):
        probs, ids = filtered_probs(engine.forward_logits(seq)[-1], params)
        return dict(zip(ids.tolist(), probs.tolist()))

    for a, pa in probs_after(prompt).items():
        for b, pb in probs_after(prompt + [a]).items():
            for c, pc in probs_after(prompt + [a, b]).items():
                exact[a, b, c] = pa * pb * pc
    n = 1500
    reqs = [GenerationRequest(prompt, 3, SamplingParams(temperature=1.0, top_k=3, seed=i), ignore_eos=True) for i in range(n)]
    outs, sched = run(engine, reqs, speculative=True)
    assert 0 < sched.spec.accepted < sched.spec.drafted  # accepted and rejected drafts both occurred
    assert all(tokens == 3 for _, _, tokens in outs)  # usage counts: exactly max_tokens
    stat, df = chi2(Counter(tuple(ids) for ids, _, _ in outs), exact, n)
    assert stat < chi2_threshold(df), (stat, df)


def test_greedy_identical_with_and_without(engine):
    texts = ["fn main() {", "struct Point {", "impl", "let x = ", "enum Shape {", "use std::collections::HashMap;"]
    long_prompt = (_prompt(engine, "fn f() { let x = 1; }\n") * 40)[: engine.n_ctx - 5]  # runs into the context end
    reqs = [GenerationRequest(_prompt(engine, t), 40, SamplingParams(temperature=0.0)) for t in texts]
    reqs += [GenerationRequest(long_prompt, 40, SamplingParams(temperature=0.0), ignore_eos=True),
             GenerationRequest(_prompt(engine, "impl"), 40, SamplingParams(temperature=0.0, repetition_penalty=1.5))]
    plain, _ = run(engine, reqs, max_batch=4)
    spec, sched = run(engine, reqs, max_batch=4, speculative=True)
    assert spec == plain
    assert plain[-2][1] == "length" and len(plain[-2][0]) == 6  # prefill + 5 fed: the context end
    assert sched.spec.drafted > 0 and sched.spec.accepted > 0
    for s in (True, False):  # the per-request switch overrides the scheduler's default
        per_request = [GenerationRequest(r.prompt, r.max_tokens, r.params, r.stop, r.ignore_eos, speculative=s) for r in reqs]
        outs, sched = run(engine, per_request, max_batch=4, speculative=not s)
        assert outs == plain and (sched.spec.drafted > 0) == s


def test_seeded_speculative_request_reproduces_alone_and_batched_with_stops(engine):
    def req(i):
        return GenerationRequest(_prompt(engine, "fn main() {"), 24, SamplingParams(temperature=0.9, seed=i), stop=["}"],
                                 speculative=True)

    alone = [run(engine, [req(i)], max_batch=1)[0][0] for i in range(4)]
    batched, _ = run(engine, [req(i) for i in range(4)] + [GenerationRequest(_prompt(engine, "x"), 9, speculative=False)])
    assert batched[:4] == alone
    assert all(tokens == len(ids) <= 24 for ids, _, tokens in alone)


def test_spec_policy_drafts_where_drafting_measured_faster():
    p = SpecPolicy()
    assert p.draft(8) is True  # nothing measured: try drafting, then plain
    p.record(8, True, 16, 0.010)  # 1,600 tokens/s
    assert p.draft(8) is False
    p.record(8, False, 8, 0.004)  # 2,000 tokens/s
    choices = [p.draft(8) for _ in range(2 * EXPLORE)]
    assert choices.count(True) == 2  # plain, and drafting again once every EXPLORE steps
    for _ in range(20):  # plain steps at 8 slow down (a busier machine): the estimate follows
        p.record(8, False, 8, 0.010)
    assert [p.draft(8) for _ in range(EXPLORE - 1)].count(True) >= EXPLORE - 2
    p.record(1, True, 2, 0.001)
    p.record(1, False, 1, 0.001)
    assert p.draft(1) is True  # each batch size on its own
    p.record(2, True, 0, 0.001)  # a step that emitted nothing (all cancelled) teaches nothing
    assert (2, True) not in p.rates


def test_policy_switches_only_requests_whose_text_cannot_change(engine, monkeypatch):
    """Where drafting measured slower, greedy requests decode plainly (the same text, no drafts);
    a seeded sampled request still drafts as it asked, so its text does not depend on the batch."""
    monkeypatch.setattr(SpecPolicy, "draft", lambda self, batch: False)
    greedy = [GenerationRequest(_prompt(engine, t), 24, SamplingParams(temperature=0.0), speculative=True) for t in ("fn main() {", "impl")]
    plain, _ = run(engine, [GenerationRequest(r.prompt, r.max_tokens, r.params) for r in greedy])
    outs, sched = run(engine, greedy)
    assert outs == plain and sched.spec.drafted == 0
    seeded = GenerationRequest(_prompt(engine, "fn main() {"), 24, SamplingParams(temperature=0.9, seed=5), speculative=True)
    alone, sched = run(engine, [seeded], max_batch=1)
    assert sched.spec.drafted > 0
    outs, sched = run(engine, [seeded] + greedy)
    assert outs[0] == alone[0] and outs[1:] == plain and sched.spec.drafted > 0


def test_draft_count_never_outruns_limits():
    assert draft_count(3, 10, 256, 50) == 3
    assert draft_count(3, 10, 256, 2) == 1  # one draft + the token after it = the 2 still allowed
    assert draft_count(3, 10, 256, 1) == 0
    assert draft_count(3, 253, 256, 50) == 1  # positions 253, 254 fed; 255 stays for the next token
    assert draft_count(3, 255, 256, 50) == 0


def test_hybrid_model_decodes_plainly(tmp_path):
    gguf, mhc, _ = make_tiny_gguf(tmp_path, deltanet_ratio=0.5, num_layers=3, mhc_n_streams=2, use_mtp=True, mtp_n_tokens=1)
    hybrid = Engine.load(gguf, mhc)
    reqs = [GenerationRequest(_prompt(hybrid, "fn main() {"), 12, SamplingParams(temperature=0.0), speculative=True)]
    plain, _ = run(hybrid, reqs)
    outs, sched = run(hybrid, reqs, speculative=True)
    assert not sched.can_speculate and sched.spec.drafted == 0 and outs == plain


def test_server_switch_gives_the_same_greedy_text(engine):
    app = create_app(engine, max_batch=4)
    with ServerThread(app) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        health = httpx.get(srv.url + "/health").json()
        assert health["speculative"] == {"available": True, "default": False}
        texts = {}
        for s in (False, True):
            r = client.completions.create(model=engine.name, prompt="fn main() {", max_tokens=30, temperature=0,
                                          extra_body={"speculative": s, "ignore_eos": True})
            texts[s] = (r.choices[0].text, r.usage.completion_tokens)
        assert texts[True] == texts[False] and texts[True][1] == 30
        assert app.state.scheduler.spec.drafted > 0  # the true request did speculate
        bad = httpx.post(srv.url + "/v1/completions", json={"model": engine.name, "prompt": "x", "speculative": "yes"})
        assert bad.status_code == 400 and "speculative" in bad.text
