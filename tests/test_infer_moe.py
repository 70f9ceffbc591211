"""MoE end to end after training: GGUF layout, engine parity with the training model, batched
expert calls, and the server answering from an MoE model."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from gguf import GGUFReader

from infer_helpers import export_snapped, one_thread, training_greedy  # noqa: F401 (fixture)
from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.infer.speculative import greedy_generate

MOE = {"use_moe": True, "num_experts": 4, "num_active_experts": 2, "expert_ffn_mult": 1.0}
VARIANTS = {
    "moe": MOE,
    "moe_n2_interval2": {**MOE, "mhc_n_streams": 2, "num_layers": 4, "moe_layer_interval": 2},
    "moe_dense": {**MOE, "use_bitlinear": False},
}
PROMPT = "fn main() {\n    let x = "
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            g, m, model, tok = export_snapped(out, **VARIANTS[name])
            # a decisive router (init logits are ~0: every top-k would be a near tie), exported again
            with torch.no_grad():
                for b in model.blocks:
                    if hasattr(b.ffn, "router"):
                        b.ffn.router.weight.mul_(40)
            from nanochat_ternary.export.gguf_export import export_model
            export_model(model, tok, g, m)
            cache[name] = (Engine.load(g, m), model, tok, g)
        return cache[name]

    return get


def test_gguf_holds_stacked_experts_in_llama_cpp_naming(built):
    _, model, _, path = built("moe_n2_interval2")
    r = GGUFReader(path)
    names = {t.name: t for t in r.tensors}
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "nanochat"
    assert (field("nanochat.expert_count"), field("nanochat.expert_used_count"), field("nanochat.expert_feed_forward_length")) == (4, 2, 256)
    assert field("nanochat.moe.layer_interval") == 2 and field("nanochat.expert_weights_norm") is True
    for i in (1, 3):  # MoE layers
        assert list(names[f"blk.{i}.ffn_gate_exps.weight"].shape) == [256, 256, 4]
        assert list(names[f"blk.{i}.ffn_down_exps.weight"].shape) == [256, 256, 4]
        assert names[f"blk.{i}.ffn_up_exps.weight"].tensor_type.name == "TQ2_0"
        assert names[f"blk.{i}.ffn_gate_inp.weight"].tensor_type.name == "F32"
        assert list(names[f"blk.{i}.ffn_sub_norm_exps.weight"].shape) == [256, 4]
        assert f"blk.{i}.ffn_gate.weight" not in names
        router = np.asarray(names[f"blk.{i}.ffn_gate_inp.weight"].data)
        assert np.array_equal(router, model.blocks[i].ffn.router.weight.detach().numpy())
    for i in (0, 2):  # dense layers
        assert f"blk.{i}.ffn_gate.weight" in names and f"blk.{i}.ffn_gate_exps.weight" not in names


@pytest.mark.parametrize("name", list(VARIANTS))
def test_engine_greedy_tokens_equal_training_model(built, name):
    engine, model, tok, _ = built(name)
    prompt = tok.encode(PROMPT)
    tokens = tok.encode(PROMPT + "a + b;\n    let y = x * 2;\n}\n")[:40]
    with torch.no_grad():
        ref = model(torch.tensor([tokens]))[0]
    out = engine.forward_logits(tokens)
    assert (out - ref).abs().max().item() <= 0.05 * ref.abs().max().item()
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    assert greedy_generate(engine, prompt, 32) == training_greedy(model, prompt, 32)


def test_batched_decode_calls_each_chosen_expert_once(built):
    engine, _, tok, _ = built("moe")
    moe = engine.net.layers[0].moe
    calls = []

    def counting(e, fn):
        def call(x, *a, **kw):
            calls.append((e, x.shape[0]))
            return fn(x, *a, **kw)
        return call

    original = moe.experts
    moe.experts = [(counting(e, gu), down) for e, (gu, down) in enumerate(original)]
    try:
        prompts = [tok.encode(p) for p in ("fn a() {", "struct P {", "let", "enum E { A, B }\n", "impl", "use std")]
        states = [engine.new_state() for _ in prompts]
        alone = []
        for s, p in zip(states, prompts):
            engine.prefill(s, p)
        snapshot = [s.length for s in states]
        calls.clear()
        rows = engine.decode(states, [7] * len(states))
        experts = [e for e, _ in calls]
        assert len(experts) == len(set(experts)) and sum(n for _, n in calls) == 2 * len(states)
        for s, n in zip(states, snapshot):  # the same tokens one sequence at a time give the same rows
            engine.truncate(s, n)
        for s in states:
            alone.append(engine.decode([s], [7])[0])
        if engine.backend != "torch":
            assert all(torch.equal(a, b) for a, b in zip(alone, rows))
    finally:
        moe.experts = original


def test_server_answers_from_an_moe_model(built):
    from nanochat_ternary.serve.app import create_app
    from nanochat_ternary.serve.server import ServerThread

    engine, _, _, _ = built("moe")
    with ServerThread(create_app(engine, max_batch=2)) as srv:
        r = httpx.post(srv.url + "/v1/completions", json={"model": engine.name, "prompt": "fn", "max_tokens": 8,
                                                          "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] > 0 and isinstance(body["choices"][0]["text"], str)


def test_reader_rejects_bad_moe_files_naming_the_field(built, tmp_path):
    from test_infer_badfiles import _rewrite
    from nanochat_ternary.errors import FormatError
    from nanochat_ternary.infer.gguf_model import read_gguf_model

    _, _, _, path = built("moe")
    router = next(np.array(t.data) for t in GGUFReader(path).tensors if t.name == "blk.0.ffn_gate_inp.weight")
    assert router.shape == (4, 256)
    with pytest.raises(FormatError, match=r"blk.0.ffn_gate_inp.weight.*nanochat.expert_count = 8"):
        read_gguf_model(_rewrite(path, tmp_path / "count.gguf", fields={"nanochat.expert_count": 8}))
    with pytest.raises(FormatError, match=r"nanochat.expert_used_count = 5 \(must be 1..expert_count\)"):
        read_gguf_model(_rewrite(path, tmp_path / "used.gguf", fields={"nanochat.expert_used_count": 5}))
    # the right number of values in the wrong shape ([D, E]: a transposed router)
    with pytest.raises(FormatError, match=r"blk.0.ffn_gate_inp.weight' has shape \[256, 4\], expected \[4, 256\]"):
        read_gguf_model(_rewrite(path, tmp_path / "shape.gguf", tensors={"blk.0.ffn_gate_inp.weight": np.ascontiguousarray(router.T)}))
    with pytest.raises(FormatError, match=r"blk.0.ffn_gate_inp.weight' has shape \[2, 256\]"):
        read_gguf_model(_rewrite(path, tmp_path / "short.gguf", tensors={"blk.0.ffn_gate_inp.weight": router[:2].copy()}))
