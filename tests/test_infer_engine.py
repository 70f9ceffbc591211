"""Engine parity with the training model, KV cache, batching, speculative decoding, states."""

from __future__ import annotations

import gc

import pytest
import torch

from infer_helpers import export_snapped, one_thread, training_greedy  # noqa: F401 (fixture)
from nanochat_ternary.errors import ConfigError
from nanochat_ternary.infer.engine import Engine, EngineInputError
from nanochat_ternary.infer.speculative import greedy_generate, speculative_generate

VARIANTS = {
    "n1": {},
    "n2": {"mhc_n_streams": 2},
    "n4_mtp": {"mhc_n_streams": 4, "use_mtp": True, "mtp_n_tokens": 3},
    "n1_mtp": {"use_mtp": True, "mtp_n_tokens": 2},
    "dense": {"use_bitlinear": False},
    "dense_n2_mtp": {"use_bitlinear": False, "mhc_n_streams": 2, "use_mtp": True, "mtp_n_tokens": 2},
    "group256": {"group_size": 256},
}
PROMPT = "fn main() {\n    let x = "
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            g, m, model, tok = export_snapped(tmp_path_factory.mktemp(name), **VARIANTS[name])
            cache[name] = (Engine.load(g, m), model, tok)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_training_model(built, name):
    """Bound: 5% of the largest |logit| (max) and 0.5% (mean). The engine computes each
    projection as an exact integer sum where the training model sums floats, so a pre-
    quantization activation can land 1 ulp on the other side of an int8 rounding boundary;
    one such flip moves one activation by 1/127 of its row's absmax, i.e. logits by ~1% of
    their spread. Logits outside the top 64 also carry the int8 head's error (~1%). A wrong
    weight, norm, RoPE, mHC matrix or head instead gives errors of the order of the logits."""
    engine, model, tok = built(name)
    tokens = tok.encode(PROMPT + "a + b;\n    let y = x * 2;\n}\n")[:48]
    with torch.no_grad():
        ref, ref_mtp = model.forward_with_mtp(torch.tensor([tokens]))
    ref = ref[0]
    out = engine.forward_logits(tokens)
    scale = ref.abs().max().item()
    diff = (out - ref).abs()
    assert diff.max().item() <= 0.05 * scale, (name, diff.max().item(), scale)
    assert diff.mean().item() <= 0.005 * scale, (name, diff.mean().item(), scale)
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    if engine.n_mtp:
        state = engine.new_state()
        _, z = engine.verify(state, tokens)
        mtp = engine.net.mtp_logits(z)
        for k, r in enumerate(ref_mtp):
            assert (mtp[:, k] - r[0]).abs().max().item() <= 0.05 * scale
            assert torch.equal(mtp[:, k].argmax(-1), r[0].argmax(-1))


@pytest.mark.parametrize("name", ["n1", "n2", "n4_mtp", "dense", "n1_mtp"])
def test_greedy_64_tokens_cache_nocache_training(built, name):
    engine, model, tok = built(name)
    prompt = tok.encode(PROMPT)
    cached = greedy_generate(engine, prompt, 64)
    seq = list(prompt)  # without the cache: a full forward over the growing sequence each step
    for _ in range(64):
        seq.append(int(engine.forward_logits(seq)[-1].argmax()))
    assert cached == seq[len(prompt):]
    assert cached == training_greedy(model, prompt, 64)


@pytest.mark.parametrize("name", ["n1", "n4_mtp", "dense"])
def test_batched_decode_equals_one_by_one(built, name):
    engine, _, tok = built(name)
    prompts = [tok.encode(p) for p in ("fn a() {", "struct Point { x: i32, y: i32 }\nimpl Point {", "let", "enum E { A, B }\n")]
    steps = 12

    def alone(p):
        s = engine.new_state()
        logits = [engine.prefill(s, p)]
        for i in range(steps):
            logits.append(engine.decode([s], [(3 * i + len(p)) % 400 + 3])[0])
        return torch.stack(logits)

    expected = [alone(p) for p in prompts]
    # a busy slot in front, so the batch's slots are not 0..3 in order
    blocker = engine.new_state()
    engine.prefill(blocker, [5, 6])
    states = [engine.new_state() for _ in prompts][::-1]
    got = [[engine.prefill(s, p)] for s, p in zip(states, prompts)]
    for i in range(steps):
        rows = engine.decode(states, [(3 * i + len(p)) % 400 + 3 for p in prompts])
        for j in range(len(prompts)):
            got[j].append(rows[j])
    for e, g in zip(expected, got):
        if engine.backend == "torch":  # MKL's float matmuls may sum differently per batch size
            assert torch.allclose(e, torch.stack(g), rtol=1e-4, atol=1e-4)
        else:  # native kernels: batching does not change a token's maths, bitwise
            assert torch.equal(e, torch.stack(g))


@pytest.mark.parametrize("name", ["n4_mtp", "n1_mtp", "dense_n2_mtp"])
def test_speculative_equals_greedy(built, name):
    engine, _, tok = built(name)
    prompt = tok.encode(PROMPT)
    plain = greedy_generate(engine, prompt, 64)
    for k in (1, engine.n_mtp):
        spec, stats = speculative_generate(engine, prompt, 64, draft_tokens=k)
        assert spec == plain
        assert stats.generated == 64 and stats.drafted > 0
        assert 0.0 <= stats.acceptance_rate <= 1.0
        assert stats.steps + stats.accepted in (63, 64)  # a verify emits 1 + accepted tokens


@pytest.mark.parametrize("oracle", ["right", "wrong"])
def test_speculative_acceptance_logic(built, oracle):
    """Drafts replaced by an oracle (the real heads cannot be made perfect): right drafts are
    all accepted (k + 1 tokens per forward), wrong ones never; the output is greedy's either way."""
    engine, _, tok = built("n4_mtp")
    prompt, n = tok.encode(PROMPT), 40
    plain = greedy_generate(engine, prompt, n)
    emitted: list[int] = []

    def drafts(z):
        k = engine.n_mtp
        want = (plain + [0] * k)[len(emitted) : len(emitted) + k]
        if oracle == "wrong":
            want = [(t + 1) % engine.vocab_size for t in want]
        return torch.nn.functional.one_hot(torch.tensor(want), engine.vocab_size).float()

    engine.mtp_logits = drafts  # instance attribute: shadows the method for this engine only
    try:
        spec, stats = speculative_generate(engine, prompt, n, on_token=emitted.append)
    finally:
        del engine.mtp_logits
    assert spec == plain == emitted
    if oracle == "right":
        assert stats.acceptance_rate == 1.0 and stats.steps <= -(-n // (engine.n_mtp + 1))
    else:
        assert stats.accepted == 0 and stats.steps == n - 1


def test_speculative_stops_at_stop_token_and_context(built):
    engine, _, tok = built("n4_mtp")
    prompt = tok.encode(PROMPT)
    plain = greedy_generate(engine, prompt, 30)
    stop = {plain[10]}
    spec, _ = speculative_generate(engine, prompt, 30, stop_tokens=stop)
    assert spec == greedy_generate(engine, prompt, 30, stop_tokens=stop)
    assert spec[-1] in stop and len(spec) <= 11
    near_end = [3] * (engine.n_ctx - 5)  # 5 positions left: both stop at the context length
    assert speculative_generate(engine, near_end, 50)[0] == greedy_generate(engine, near_end, 50)


def test_states_free_slots_and_errors(built):
    engine, _, _ = built("n1")
    gc.collect()
    before = engine.pool.in_use()
    states = [engine.new_state() for _ in range(6)]
    for s in states:
        engine.prefill(s, [1, 2, 3])
    assert engine.pool.in_use() == before + 6
    assert states[2].length == 3
    del states, s
    gc.collect()
    assert engine.pool.in_use() == before
    st = engine.new_state()
    with pytest.raises(EngineInputError, match="context length"):
        engine.prefill(st, [1] * (engine.n_ctx + 1))
    with pytest.raises(EngineInputError, match="vocabulary"):
        engine.prefill(st, [engine.vocab_size])
    with pytest.raises(EngineInputError, match="no tokens"):
        engine.prefill(st, [])
    with pytest.raises(EngineInputError, match="same sequence"):
        engine.decode([st, st], [1, 2])


def test_engine_metadata(built):
    engine, model, tok = built("n2")
    assert engine.n_ctx == model.cfg.max_seq_len and engine.vocab_size == model.cfg.vocab_size
    assert engine.tokenizer.encode(PROMPT) == tok.encode(PROMPT)
    assert "<|im_start|>" in engine.chat_template
    assert engine.name and engine.bits_per_weight == pytest.approx(2.0625)


def test_torch_backend_matches_native(built, tmp_path):
    engine, model, tok = built("group256")
    g, m, _, _ = export_snapped(tmp_path, **VARIANTS["group256"])
    slow = Engine.load(g, m, backend="torch")
    assert slow.backend == "torch"
    tokens = tok.encode(PROMPT)
    a, b = engine.forward_logits(tokens), slow.forward_logits(tokens)
    assert (a - b).abs().max().item() <= 0.05 * b.abs().max().item()
    assert greedy_generate(engine, tokens, 16) == greedy_generate(slow, tokens, 16)


@pytest.mark.parametrize("quant", ["tq1_0", "f16"])
def test_other_encodings_run_ternary(tmp_path, quant):
    """TQ1_0 and F16 (values t * scale) files decode to the same ternary weights as TQ2_0."""
    g, m, model, tok = export_snapped(tmp_path, quant=quant, group_size=256)
    engine = Engine.load(g, m)
    assert engine.net.layers[0].qkv.ternary is not None  # recognised as ternary, not run dense
    tokens = tok.encode(PROMPT)
    with torch.no_grad():
        ref = model(torch.tensor([tokens]))[0]
    assert (engine.forward_logits(tokens) - ref).abs().max().item() <= 0.05 * ref.abs().max().item()
    assert engine.bits_per_weight == pytest.approx({"tq1_0": 1.6875, "f16": 16.0}[quant])


def test_int8_head_rescores_its_top_logits(built, tmp_path):
    """The int8 head (large vocabularies) against the exact F16 head: its RESCORE_TOP largest
    logits per row are the exact ones, the others within the int8 error, the argmax the same."""
    from nanochat_ternary.infer.network import RESCORE_TOP

    exact, _, tok = built("n1")
    assert exact.net.head_i8 is None  # 512 x 256 weights: small enough to compute exactly
    g, m, _, _ = export_snapped(tmp_path, **VARIANTS["n1"])
    approx = Engine.load(g, m, exact_head=False)
    if approx.backend == "torch":
        pytest.skip("no native kernels (no C compiler)")
    assert approx.net.head_i8 is not None
    tokens = tok.encode(PROMPT + "a + b;\n}\n")
    a, e = approx.forward_logits(tokens), exact.forward_logits(tokens)
    spread = e.abs().max().item()
    top = e.topk(RESCORE_TOP, dim=-1).indices[:, : RESCORE_TOP // 2]  # well inside the candidates
    assert torch.allclose(a.gather(1, top), e.gather(1, top), rtol=0, atol=1e-5 * spread)
    assert (a - e).abs().max().item() <= 0.05 * spread
    assert (a - e).abs().max().item() > 1e-5 * spread  # the rest really is the int8 pass
    assert torch.equal(a.argmax(-1), e.argmax(-1))


def test_head_kind_follows_the_table_size(tmp_path):
    """exact_head=None: the F16 head up to EXACT_HEAD_MAX_WEIGHTS weights, the int8 head above."""
    from nanochat_ternary.infer.network import EXACT_HEAD_MAX_WEIGHTS

    g, m, model, _ = export_snapped(tmp_path, vocab_size=4096)
    assert 4096 * model.cfg.hidden_dim > EXACT_HEAD_MAX_WEIGHTS
    engine = Engine.load(g, m)
    assert (engine.net.head_i8 is not None) == (engine.backend != "torch")


@pytest.mark.parametrize("name", ["n1", "n4_mtp", "dense"])
def test_prefill_batch_equals_one_prefill_each(built, name):
    """Several prompts in one forward: each one's last-token logits and its cache as if prefilled
    alone (the next decode step gives the same logits)."""
    engine, _, tok = built(name)
    prompts = [tok.encode(p) for p in ("fn a() {", "struct Point { x: i32 }", "let")]
    alone = []
    for p in prompts:
        s = engine.new_state()
        alone.append((engine.prefill(s, p), engine.decode([s], [7])[0]))
    states = [engine.new_state() for _ in prompts]
    first = engine.prefill_batch(states, prompts)
    nxt = engine.decode(states, [7] * len(states))
    assert [s.length for s in states] == [len(p) + 1 for p in prompts]
    for j, (a, b) in enumerate(alone):
        if engine.backend == "torch":
            assert torch.allclose(first[j], a, rtol=1e-4, atol=1e-4) and torch.allclose(nxt[j], b, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(first[j], a) and torch.equal(nxt[j], b)


def test_engine_keeps_freed_memory(tmp_path):
    """Loading an engine sets the process's malloc to keep freed pages (cpu_malloc.py), so the
    per-step logits and sampler buffers are not faulted in again every step."""
    from nanochat_ternary import cpu_malloc

    g, m, _, _ = export_snapped(tmp_path, **VARIANTS["n2"])
    cpu_malloc.keep_freed_memory.cache_clear()
    Engine.load(g, m)
    assert cpu_malloc.keep_freed_memory.cache_info().currsize == 1


def test_f16_kv_cache(built, tmp_path):
    """`kv_cache="f16"`: keys and values stored as float16 (half the cache), native attention on
    them close to the PyTorch back-end's on the same cache and to the float32 cache's logits, the
    same greedy tokens here, and batched decode still bit for bit each row alone."""
    _, _, tok = built("n2")
    g, m, _, _ = export_snapped(tmp_path, **VARIANTS["n2"])
    engine, half = Engine.load(g, m), Engine.load(g, m, kv_cache="f16")
    assert half.info()["kv_cache"] == "f16" and half.pool.k[0].dtype == torch.float16
    assert engine.pool.k[0].dtype == torch.float32
    assert sum(t.nbytes for t in half.pool.k + half.pool.v) * 2 == sum(t.nbytes for t in engine.pool.k + engine.pool.v)
    tokens = tok.encode(PROMPT + "a + b;\n    let y = x * 2;\n}\n")[:48]
    ref = engine.forward_logits(tokens)
    got = half.forward_logits(tokens)
    scale = ref.abs().max().item()
    assert 0 < (got - ref).abs().max().item() <= 0.05 * scale  # F16 rounding moves them, a little
    slow = Engine.load(g, m, backend="torch", kv_cache="f16")
    assert (slow.forward_logits(tokens) - got).abs().max().item() <= 0.05 * scale
    assert greedy_generate(half, tok.encode(PROMPT), 16) == greedy_generate(engine, tok.encode(PROMPT), 16)
    prompts = [tok.encode(p) for p in ("fn a() {", "let", "enum E { A, B }\n")]
    alone = []
    for p in prompts:
        s = half.new_state()
        half.prefill(s, p)
        alone.append(torch.stack([half.decode([s], [7 + i])[0] for i in range(6)]))
    states = [half.new_state() for _ in prompts]
    for s, p in zip(states, prompts):
        half.prefill(s, p)
    rows = torch.stack([half.decode(states, [7 + i] * len(prompts)) for i in range(6)], dim=1)
    assert all(torch.equal(rows[j], alone[j]) for j in range(len(prompts)))


def test_kv_cache_name_is_checked(built):
    engine, _, _ = built("n2")
    with pytest.raises(ConfigError, match="kv_cache"):
        Engine.load(engine.model_file, kv_cache="f8")
