"""Tests for nanochat_ternary.infer.scheduler with the real Engine on a real tiny GGUF."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from helpers import make_tiny_gguf

from nanochat_ternary.errors import ConfigError
from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.infer.sampling import SamplingParams
from nanochat_ternary.infer import scheduler as scheduler_module
from nanochat_ternary.infer.scheduler import GenerationRequest, QueueFull, Scheduler

SNIPPETS = ["fn main() {", "struct Point {", "impl", "let x = ", "pub fn add(a: i32, b: i32) -> i32 {\n    a + b",
            "enum Shape {", "use std::collections::HashMap;", "#[test]\nfn it_works() {"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_flush_denormal(True)
    gguf, mhc, _ = make_tiny_gguf(tmp_path_factory.mktemp("scheduler"))
    return Engine.load(gguf, mhc)


def _prompt(engine, text: str) -> list[int]:
    return [engine.tokenizer.bos_id] + engine.tokenizer.encode(text)


async def _collect(handle):
    events = []
    while True:
        ev = await asyncio.wait_for(handle.queue.get(), 60)
        events.append(ev)
        if ev.finish_reason is not None:
            return events


def _summary(events):
    return [e.token_id for e in events], "".join(e.text for e in events), events[-1].finish_reason


def run_requests(scheduler: Scheduler, requests: list[GenerationRequest]):
    """Submit all at once (so they batch), wait for all; [(token ids, text, finish_reason)]."""

    async def main():
        handles = [scheduler.submit(r) for r in requests]
        return [_summary(evs) for evs in await asyncio.gather(*(_collect(h) for h in handles))]

    return asyncio.run(main())


@pytest.fixture
def make_scheduler(engine):
    made = []

    def make(**kw):
        s = Scheduler(engine, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_greedy_equals_engine_only_decoding(engine, make_scheduler):
    n = 24
    expected = []
    for text in SNIPPETS[:4]:
        state = engine.new_state()
        logits = engine.prefill(state, _prompt(engine, text))
        ids = []
        for _ in range(n):
            ids.append(int(torch.argmax(logits)))
            logits = engine.decode([state], [ids[-1]])[0]
        expected.append(ids)
    sched = make_scheduler(max_batch=4).start()
    reqs = [GenerationRequest(_prompt(engine, t), n, SamplingParams(temperature=0.0), ignore_eos=True) for t in SNIPPETS[:4]]
    results = run_requests(sched, reqs)
    for (ids, text, finish), want in zip(results, expected):
        assert ids == want
        assert finish == "length"
        assert text == engine.tokenizer.decode_bytes(want).decode("utf-8", errors="replace")


@pytest.mark.parametrize("max_batch", [8, 3])
def test_seeded_requests_reproduce_alone_and_batched(engine, make_scheduler, max_batch):
    reqs = [
        GenerationRequest(_prompt(engine, SNIPPETS[i]), 12 + 4 * i,
                          SamplingParams(temperature=0.9, top_p=0.95, top_k=50, repetition_penalty=1.1, seed=100 + i))
        for i in range(8)
    ]
    alone_sched = make_scheduler(max_batch=1).start()
    alone = [run_requests(alone_sched, [r])[0] for r in reqs]
    sched = make_scheduler(max_batch=max_batch).start()
    batched = run_requests(sched, reqs)
    assert batched == alone
    # they really shared decode steps: far fewer steps than tokens generated
    assert sched.decode_steps_total < 0.6 * sum(len(ids) for ids, _, _ in batched)
    assert len({text for _, text, _ in batched}) == 8


def test_stop_string_and_stop_token(engine, make_scheduler):
    sched = make_scheduler(max_batch=8).start()
    # stop string: take a piece of a greedy continuation, then ask to stop at it
    prompt = _prompt(engine, SNIPPETS[0])
    ids, text, _ = run_requests(sched, [GenerationRequest(prompt, 40, SamplingParams(temperature=0.0), ignore_eos=True)])[0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"no usable stop string in {text!r}"
    _, stopped_text, finish = run_requests(sched, [GenerationRequest(prompt, 40, SamplingParams(temperature=0.0), [stop], ignore_eos=True)])[0]
    assert finish == "stop"
    assert stopped_text == text[: text.index(stop)]
    # stop token: near-uniform sampling (temperature 100) through stop tokens until one of 8 seeds meets
    # one (each misses with p ~ (1 - 2/vocab)^200, all 8 with p < 1%), then rerun that seed without ignore_eos
    stop_ids = {engine.tokenizer.eos_id, engine.tokenizer.im_end_id}
    hot = [GenerationRequest(prompt, 200, SamplingParams(temperature=100.0, seed=s), ignore_eos=True) for s in range(8)]
    runs = run_requests(sched, hot)
    hit = next(i for i, (ids, _, _) in enumerate(runs) if stop_ids & set(ids))
    first = next(j for j, t in enumerate(runs[hit][0]) if t in stop_ids)
    req = GenerationRequest(prompt, 200, SamplingParams(temperature=100.0, seed=hit))
    ids, _, finish = run_requests(sched, [req])[0]
    assert finish == "stop" and ids == runs[hit][0][: first + 1]


def test_context_full_ends_with_length(engine, make_scheduler):
    sched = make_scheduler(max_batch=2).start()
    prompt = _prompt(engine, SNIPPETS[4])
    ids, _, finish = run_requests(sched, [GenerationRequest(prompt, 10_000, SamplingParams(temperature=0.0), ignore_eos=True)])[0]
    assert finish == "length"
    # the last sampled token is never fed back, so the context holds prompt + generated - 1
    assert len(prompt) + len(ids) - 1 == engine.n_ctx


def test_cancellation_frees_the_slot(engine, make_scheduler):
    sched = make_scheduler(max_batch=1, max_queue=4).start()
    prompt = _prompt(engine, SNIPPETS[1])

    async def main():
        long = sched.submit(GenerationRequest(prompt, 200, SamplingParams(seed=1), ignore_eos=True))
        await long.queue.get()  # it is running and holds the only slot
        waiting = sched.submit(GenerationRequest(prompt, 5, SamplingParams(seed=2), ignore_eos=True))
        assert sched.in_flight == 2
        long.cancel()
        events = await _collect(waiting)  # gets the slot although `long` had 195 tokens to go
        deadline = time.monotonic() + 10
        while sched.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return events

    events = asyncio.run(main())
    assert events[-1].finish_reason == "length" and events[-1].tokens == 5
    assert sched.in_flight == 0 and sched.active == 0 and sched.cancelled_total == 1
    assert sched.generated_tokens_total < 100


def test_bounded_queue_raises_queue_full(engine, make_scheduler):
    sched = make_scheduler(max_batch=2, max_queue=1)  # not started: nothing is admitted yet
    prompt = _prompt(engine, SNIPPETS[2])

    async def main():
        handles = [sched.submit(GenerationRequest(prompt, 3, SamplingParams(seed=i))) for i in range(3)]
        with pytest.raises(QueueFull, match="max_queue=1"):
            sched.submit(GenerationRequest(prompt, 3, SamplingParams(seed=9)))
        handles[2].cancel()  # cancelling a waiting request frees its queue place at once
        assert sched.queued == 2
        handles[2] = sched.submit(GenerationRequest(prompt, 3, SamplingParams(seed=2)))
        sched.start()
        return await asyncio.gather(*(_collect(h) for h in handles))

    results = asyncio.run(main())
    assert all(evs[-1].finish_reason in ("stop", "length") for evs in results)
    assert sched.in_flight == 0


def test_invalid_requests_are_refused(engine, make_scheduler):
    sched = make_scheduler()

    async def main():
        with pytest.raises(ValueError, match="at least one token"):
            sched.submit(GenerationRequest([], 3))
        with pytest.raises(ValueError, match="max_tokens"):
            sched.submit(GenerationRequest([1], 0))
        with pytest.raises(ConfigError, match="temperature"):
            sched.submit(GenerationRequest([1], 3, SamplingParams(temperature=-1)))

    asyncio.run(main())
    assert sched.queued == 0


def test_engine_failure_ends_only_that_request(engine, make_scheduler):
    sched = make_scheduler(max_batch=2).start()
    ok = GenerationRequest(_prompt(engine, SNIPPETS[0]), 4, SamplingParams(seed=0), ignore_eos=True)
    bad = GenerationRequest([engine.vocab_size + 5], 4)  # the engine refuses an out-of-vocabulary token

    async def main():
        handles = [sched.submit(bad), sched.submit(ok)]
        return await asyncio.gather(*(_collect(h) for h in handles))

    bad_events, ok_events = asyncio.run(main())
    assert bad_events[-1].finish_reason == "error" and "prefill failed" in bad_events[-1].error
    assert ok_events[-1].finish_reason == "length" and ok_events[-1].tokens == 4
    assert sched.in_flight == 0


def test_admitted_requests_prefill_together_and_a_bad_one_fails_alone(engine, make_scheduler, monkeypatch):
    """Requests admitted in one iteration prefill in one batched forward with the same results as
    alone; when that forward fails (a prompt longer than the context), they prefill one by one
    and only the bad request ends with an error."""
    reqs = [GenerationRequest(_prompt(engine, SNIPPETS[i]), 6, SamplingParams(temperature=0.8, seed=7 + i), ignore_eos=True)
            for i in range(3)]
    alone_sched = make_scheduler(max_batch=1).start()
    alone = [run_requests(alone_sched, [r])[0] for r in reqs]
    calls = []
    real = engine.prefill_batch
    monkeypatch.setattr(engine, "prefill_batch", lambda states, lists: calls.append(len(states)) or real(states, lists))
    too_long = GenerationRequest([5] * (engine.n_ctx + 1), 4)

    def together(requests):
        sched = make_scheduler(max_batch=8)

        async def main():  # all queued before the thread starts: one admission round
            handles = [sched.submit(r) for r in requests]
            sched.start()
            return [_summary(evs) for evs in await asyncio.gather(*(_collect(h) for h in handles))]

        return asyncio.run(main())

    assert together(reqs) == alone
    assert calls == [3]
    calls.clear()
    monkeypatch.setattr(scheduler_module, "PREFILL_GROUP_TOKENS", len(reqs[0].prompt) + len(reqs[1].prompt))
    assert together(reqs) == alone  # groups of at most that many prompt tokens: [0, 1], then [2] alone
    assert calls == [2]
    monkeypatch.undo()
    monkeypatch.setattr(engine, "prefill_batch", lambda states, lists: calls.append(len(states)) or real(states, lists))
    calls.clear()
    got = together([reqs[0], too_long, reqs[1], reqs[2]])
    assert calls == [4]
    assert got[1][2] == "error"
    assert [got[0], got[2], got[3]] == alone


def test_stop_ends_waiting_requests_with_an_error(engine, make_scheduler):
    sched = make_scheduler(max_batch=1)

    async def main():
        handle = sched.submit(GenerationRequest(_prompt(engine, SNIPPETS[0]), 4))
        sched.stop()
        with pytest.raises(QueueFull, match="shutting down"):
            sched.submit(GenerationRequest([1], 1))
        return await _collect(handle)

    events = asyncio.run(main())
    assert events[-1].finish_reason == "error" and "shutting down" in events[-1].error


def test_padded_vocabulary_never_samples_tokens_without_text(tmp_path, make_scheduler):
    # model vocab 1024 > tokenizer vocab 512: ids 512.. exist in the logits but have no text
    gguf, mhc, _ = make_tiny_gguf(tmp_path, vocab_size=1024)
    padded = Engine.load(gguf, mhc)
    assert padded.vocab_size > padded.tokenizer.vocab_size
    sched = Scheduler(padded, max_batch=2).start()
    try:
        prompt = [padded.tokenizer.bos_id] + padded.tokenizer.encode("fn main() {")
        reqs = [GenerationRequest(prompt, 100, SamplingParams(temperature=100.0, seed=s), ignore_eos=True) for s in range(2)]
        for ids, _, finish in run_requests(sched, reqs):  # near-uniform sampling would hit the padding half the time
            assert finish == "length" and max(ids) < padded.tokenizer.vocab_size
    finally:
        sched.stop()
