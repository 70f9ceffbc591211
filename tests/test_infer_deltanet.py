"""Gated DeltaNet hybrids after export: GGUF layout, engine parity, prefill forms, batching,
per-sequence state, and the server answering (streaming too) from a hybrid model."""

from __future__ import annotations

import pytest
import torch
from gguf import GGUFReader
from openai import OpenAI

from infer_helpers import export_snapped, one_thread, training_greedy  # noqa: F401 (fixture)
from nanochat_ternary.errors import FormatError
from nanochat_ternary.export.gguf_deltanet import TENSORS
from nanochat_ternary.infer.engine import Engine, EngineInputError
from nanochat_ternary.infer.gguf_model import read_gguf_model
from nanochat_ternary.infer.speculative import greedy_generate, speculative_generate

# 3 layers at ratio 0.5: DeltaNet blocks 0 and 1, attention block 2; mHC n = 2 and an MTP head
HYBRID = {"deltanet_ratio": 0.5, "num_layers": 3, "mhc_n_streams": 2, "use_mtp": True, "mtp_n_tokens": 1}
TEXT = "fn main() {\n    let x = a + b;\n    let y = x * 2;\n}\n" * 4
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    g, m, model, tok = export_snapped(tmp_path_factory.mktemp("hybrid"), **HYBRID)
    return Engine.load(g, m), model, tok, g


def test_gguf_layout(built):
    engine, _, _, path = built
    r = GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "nanochat"
    assert r.fields["nanochat.deltanet.layers"].contents() == [0, 1]
    assert r.fields["nanochat.deltanet.conv_kernel"].contents() == 4
    names = {t.name for t in r.tensors}
    for i in (0, 1):
        assert {f"blk.{i}.{s}" for _, s, _ in TENSORS} <= names
        assert f"blk.{i}.attn_q.weight" not in names and f"blk.{i}.attn_norm.weight" in names
    assert "blk.2.attn_q.weight" in names and "blk.2.dn_q.weight" not in names
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    assert kinds["blk.0.dn_q.weight"] == "TQ2_0" and kinds["blk.0.dn_output.weight"] == "TQ2_0"
    assert kinds["blk.0.dn_a.weight"] == "F32" and kinds["blk.0.dn_conv.weight"] == "F32"
    assert engine.hp.dn_layers == (0, 1) and engine.pool.n_layers == 1  # a KV cache for block 2 only


def test_logits_match_training_model_over_two_chunks(built):
    engine, model, tok, _ = built
    tokens = tok.encode(TEXT)[:100]
    assert len(tokens) > 64  # the chunked prefill crosses a chunk boundary
    with torch.no_grad():
        ref = model(torch.tensor([tokens]))[0]
    out = engine.forward_logits(tokens)
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 0.05 * scale
    assert (out - ref).abs().mean().item() <= 0.005 * scale
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


def test_greedy_tokens_equal_training_prefill_whole_or_token_by_token(built):
    engine, model, tok, _ = built
    prompt = tok.encode(TEXT)[:70]
    expected = training_greedy(model, prompt, 24)
    assert greedy_generate(engine, prompt, 24) == expected  # one chunked prefill, then decode

    def continue_greedy(state, logits, n):
        out = []
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = engine.decode([state], [out[-1]])[0]
        return out

    s = engine.new_state()
    for t in prompt:  # token by token
        logits = engine.prefill(s, [t])
    assert continue_greedy(s, logits, 24) == expected
    s = engine.new_state()
    engine.prefill(s, prompt[:33])  # in two pieces, carrying the state
    assert continue_greedy(s, engine.prefill(s, prompt[33:]), 24) == expected


def test_batched_decode_equals_one_by_one_and_state_is_per_sequence(built):
    engine, _, tok, _ = built
    prompts = [tok.encode(p) for p in ("fn a() {", "struct Point { x: i32, y: i32 }\nimpl Point {", "let", "enum E { A, B }\n")]
    feed = [[(5 * i + len(p)) % 400 + 3 for i in range(10)] for p in prompts]

    def alone(p, f):
        s = engine.new_state()
        rows = [engine.prefill(s, p)] + [engine.decode([s], [t])[0] for t in f]
        return torch.stack(rows), s

    expected = [alone(p, f)[0] for p, f in zip(prompts, feed)]
    states = [engine.new_state() for _ in prompts][::-1]
    got = [[engine.prefill(s, p)] for s, p in zip(states, prompts)]
    for i in range(10):
        rows = engine.decode(states, [f[i] for f in feed])
        for j in range(len(prompts)):
            got[j].append(rows[j])
    for e, g in zip(expected, got):  # bit for bit: a sequence's decode does not depend on its batch
        assert torch.equal(e, torch.stack(g))
    # the state is constant in size, and released with the sequence; a reused slot starts fresh
    _, s = alone(prompts[1], feed[1])
    size = s.recurrent.nbytes()
    engine.decode([s], [7])
    assert s.recurrent.nbytes() == size == 2 * (4 * 64 * 64 + 3 * 3 * 256) * 4
    slot = s.slot
    s.release()
    assert s.recurrent is None
    again = engine.new_state()
    assert again.slot == slot
    assert torch.equal(torch.stack([engine.prefill(again, prompts[2])] + [engine.decode([again], [t])[0] for t in feed[2]]), expected[2])


def test_prefill_batch_prefills_one_sequence_at_a_time(built):
    """A hybrid's prefill_batch is one prefill per sequence (the recurrent state is per sequence):
    the same logits as prefilling each alone, and a multi-row verify batch is refused clearly."""
    engine, _, tok, _ = built
    prompts = [tok.encode(TEXT[:40]), tok.encode(TEXT[10:30])]
    alone = [engine.prefill(engine.new_state(), p) for p in prompts]
    got = engine.prefill_batch([engine.new_state() for _ in prompts], prompts)
    for a, b in zip(alone, got):
        assert torch.equal(a, b)
    with pytest.raises(EngineInputError, match="pure-attention"):
        engine.verify_batch([engine.new_state()], [prompts[0]])


def test_rollback_is_refused_clearly(built):
    engine, _, tok, _ = built
    s = engine.new_state()
    engine.prefill(s, tok.encode("fn main() {"))
    with pytest.raises(EngineInputError, match="roll"):
        engine.truncate(s, 1)
    with pytest.raises(EngineInputError, match="roll"):
        speculative_generate(engine, tok.encode("fn main() {"), 8)


def test_reader_rejects_bad_deltanet_files(built, tmp_path):
    from test_infer_badfiles import _rewrite

    _, _, _, path = built
    mhc = path.with_suffix(".mhc")
    with pytest.raises(FormatError, match="nanochat.deltanet.head_count"):
        read_gguf_model(_rewrite(path, tmp_path / "a.gguf", drop={"nanochat.deltanet.head_count"}), mhc)
    with pytest.raises(FormatError, match="blk.1.dn_a_log"):
        read_gguf_model(_rewrite(path, tmp_path / "b.gguf", nan_tensor="blk.1.dn_a_log"), mhc)


def test_server_chat_completions_from_a_hybrid_model(built):
    from nanochat_ternary.serve.app import create_app
    from nanochat_ternary.serve.server import ServerThread

    engine = built[0]
    messages = [{"role": "user", "content": "fn add"}]
    with ServerThread(create_app(engine, api_key="k", max_batch=4)) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=60)
        full = client.chat.completions.create(model=engine.name, messages=messages, max_tokens=12, seed=2,
                                              extra_body={"ignore_eos": True})
        assert full.usage.completion_tokens == 12 and full.choices[0].finish_reason == "length"
        chunks = list(client.chat.completions.create(model=engine.name, messages=messages, max_tokens=12, seed=2, stream=True,
                                                     extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == full.choices[0].message.content
