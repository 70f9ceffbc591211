"""The OpenAI-compatible API, end to end: a real uvicorn server in a thread serving the real
Engine on a tiny GGUF, driven by the official `openai` client."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_gguf
from openai import OpenAI

from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.serve.app import create_app
from nanochat_ternary.serve.server import ServerThread

KEY = "test-key-123"
MESSAGES = [{"role": "system", "content": "You write Rust."}, {"role": "user", "content": "fn add"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_flush_denormal(True)
    gguf, mhc, _ = make_tiny_gguf(tmp_path_factory.mktemp("serve_api"))
    return Engine.load(gguf, mhc)


@pytest.fixture(scope="module")
def client(engine):
    with ServerThread(create_app(engine, api_key=KEY, max_batch=4)) as srv:
        yield OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, engine, **kw):
    return client.chat.completions.create(model=engine.name, messages=kw.pop("messages", MESSAGES), **kw)


def test_models_list_and_retrieve(client, engine):
    assert [m.id for m in client.models.list().data] == [engine.name]
    assert client.models.retrieve(engine.name).id == engine.name


def test_chat_completion_uses_the_gguf_chat_template(client, engine):
    r = chat(client, engine, max_tokens=12, seed=3)
    assert r.object == "chat.completion" and r.model == engine.name and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    # prompt tokens = BOS + the ChatML rendering of the messages with the generation prompt
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in MESSAGES) + "<|im_start|>assistant\n"
    tok = engine.tokenizer
    assert r.usage.prompt_tokens == len([tok.bos_id] + tok.encode(rendered))
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_and_max_completion_tokens(client, engine):
    r = client.completions.create(model=engine.name, prompt="fn main() {", max_tokens=9, seed=1, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 9 and isinstance(r.choices[0].text, str)
    r = chat(client, engine, max_completion_tokens=7, max_tokens=50, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"


def test_streaming_chat_with_usage_matches_non_streaming(client, engine):
    full = chat(client, engine, max_tokens=20, seed=11, temperature=0.8)
    chunks = list(chat(client, engine, max_tokens=20, seed=11, temperature=0.8, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == full.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert reasons == [full.choices[0].finish_reason]


def test_streaming_completion_without_usage(client, engine):
    kw = dict(model=engine.name, prompt="struct Point {", max_tokens=15, seed=4)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)


def test_stop_strings(client, engine):
    base = dict(max_tokens=30, temperature=0.0, extra_body={"ignore_eos": True})
    text = chat(client, engine, **base).choices[0].message.content
    stop = text[10:13]
    assert stop.strip(), f"no usable stop string in {text!r}"
    r = chat(client, engine, stop=[stop, "\x00never"], **base)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[: text.index(stop)]
    r = client.completions.create(model=engine.name, prompt="fn", stop=stop, max_tokens=30, temperature=0.0, extra_body={"ignore_eos": True})
    assert stop not in r.choices[0].text


def test_seed_reproducibility_and_n(client, engine):
    kw = dict(max_tokens=16, temperature=1.0, top_p=0.9, extra_body={"ignore_eos": True, "top_k": 40, "repetition_penalty": 1.1})
    a = chat(client, engine, seed=42, **kw).choices[0].message.content
    assert chat(client, engine, seed=42, **kw).choices[0].message.content == a
    assert chat(client, engine, seed=43, **kw).choices[0].message.content != a
    r = chat(client, engine, seed=42, n=2, **kw)
    assert [c.index for c in r.choices] == [0, 1]
    # choice i is sampled with seed + i, so n=2 reproduces two single requests
    assert r.choices[0].message.content == a
    assert r.choices[1].message.content == chat(client, engine, seed=43, **kw).choices[0].message.content
    assert r.usage.completion_tokens == 32
    streamed = list(chat(client, engine, seed=42, n=2, stream=True, **kw))
    texts = ["".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i) for i in (0, 1)]
    assert texts == [c.message.content for c in r.choices]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_fast_content_chunks_are_the_same_json(chat, include_usage):
    """Streamed tokens are formatted from a pre-serialised envelope; the result must parse to
    exactly the chunk that json.dumps of the whole dict gives, for any text."""
    import json

    from nanochat_ternary.infer.sampling import SamplingParams
    from nanochat_ternary.serve.generation import Job, SSEChunks

    job = Job(chat=chat, model='m "q"', prompts=[[1]], n=2, max_tokens=4, params=SamplingParams(), stop=[],
              ignore_eos=False, include_usage=include_usage)
    sse = SSEChunks(job)
    for text in ["fn", ' "quoted" \\ back', "line\nnext\t", "ünïcødé → 🦀", "</script>"]:
        fast, slow = sse.content(1, text), sse.chunk(1, text, None)
        assert fast.startswith("data: ") and fast.endswith("\n\n")
        assert json.loads(fast[6:]) == json.loads(slow[6:])
