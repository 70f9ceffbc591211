"""Gated DeltaNet: chunked == recurrent == naive, gradients, extreme gates, conv tail, placement, training."""

import pytest
import torch
import torch.nn.functional as F

from nanochat_ternary.config import ModelConfig, TrainingConfig
from nanochat_ternary.model.deltanet import (
    GatedDeltaNet, causal_conv, causal_conv_step, chunk_gated_delta_rule, deltanet_layers, gated_delta_step, naive_gated_delta_rule,
)
from nanochat_ternary.model.gpt import GPT
from nanochat_ternary.train.loss import compute_loss
from nanochat_ternary.train.optim import build_optimizers


def _inputs(B, H, T, dk, dv, seed=0, g_range=(-3.0, 0.0), beta_range=(0.0, 1.0)):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, dk, generator=gen), dim=-1) * dk**-0.5
    k = F.normalize(torch.randn(B, H, T, dk, generator=gen), dim=-1)
    v = torch.randn(B, H, T, dv, generator=gen)
    lo, hi = g_range
    g = lo + (hi - lo) * torch.rand(B, H, T, generator=gen)
    blo, bhi = beta_range
    beta = blo + (bhi - blo) * torch.rand(B, H, T, generator=gen)
    return q, k, v, g, beta


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _recurrent(q, k, v, g, beta, state):
    outs = []
    for t in range(q.shape[2]):
        o, state = gated_delta_step(q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], beta[:, :, t], state)
        outs.append(o)
    return torch.stack(outs, 2), state


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_chunked_equals_recurrent_equals_naive(T):
    q, k, v, g, beta = _inputs(3, 2, T, 16, 8, seed=T)
    s0 = torch.randn(3, 2, 16, 8, generator=torch.Generator().manual_seed(1))
    o_n, s_n = naive_gated_delta_rule(q, k, v, g, beta, s0)
    o_c, s_c = chunk_gated_delta_rule(q, k, v, g, beta, s0)
    o_r, s_r = _recurrent(q, k, v, g, beta, s0.clone())  # the step updates its state in place
    for o, s in ((o_c, s_c), (o_r, s_r)):
        assert _rel(o, o_n) < 1e-4 and _rel(s, s_n) < 1e-4
    # two chunked calls carrying the state == one call (the engine's chunked prefill)
    cut = T // 2
    o1, s1 = chunk_gated_delta_rule(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], g[:, :, :cut], beta[:, :, :cut], s0)
    o2, s2 = chunk_gated_delta_rule(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], g[:, :, cut:], beta[:, :, cut:], s1)
    assert _rel(torch.cat([o1, o2], 2), o_n) < 1e-4 and _rel(s2, s_n) < 1e-4


def test_gradients_match_autograd_through_naive():
    inputs = _inputs(2, 2, 70, 8, 8, seed=3)
    s0 = torch.randn(2, 2, 8, 8)
    weights = torch.randn(2, 2, 70, 8)

    def grads(fn):
        xs = [x.clone().requires_grad_(True) for x in inputs]
        s = s0.clone().requires_grad_(True)
        o, sT = fn(*xs, s)
        ((o * weights).sum() + sT.square().sum()).backward()
        return [x.grad for x in xs] + [s.grad]

    for a, b in zip(grads(chunk_gated_delta_rule), grads(naive_gated_delta_rule)):
        assert _rel(a, b) < 1e-4


@pytest.mark.parametrize("g_range,beta_range", [((-1e-6, 0.0), (1 - 1e-6, 1.0)), ((-20.0, -19.9), (0.0, 1e-6)),
                                                ((-20.0, 0.0), (0.0, 1.0)), ((-1e-6, 0.0), (0.0, 1e-6))])
def test_extreme_gates_stay_finite(g_range, beta_range):
    q, k, v, g, beta = _inputs(2, 2, 130, 16, 16, seed=5, g_range=g_range, beta_range=beta_range)
    xs = [x.clone().requires_grad_(True) for x in (q, k, v, g, beta)]
    o, s = chunk_gated_delta_rule(*xs)
    (o.sum() + s.sum()).backward()
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert all(torch.isfinite(x.grad).all() for x in xs)
    o_n, _ = naive_gated_delta_rule(q, k, v, g, beta)
    assert (o - o_n).abs().max() < 1e-4


def test_causal_conv_with_tail_continues_the_sequence():
    x = torch.randn(2, 11, 6)
    w = torch.randn(6, 1, 4)
    full = causal_conv(x, w)
    first = causal_conv(x[:, :5], w)
    rest = causal_conv(x[:, 5:], w, tail=x[:, 2:5])
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-6)
    for t in range(3, 11):  # the decode step (one position from its window) == the full conv
        assert torch.allclose(causal_conv_step(x[:, t - 3 : t + 1], w), full[:, t], atol=1e-6)


@pytest.mark.parametrize("L,r", [(20, 0.2), (28, 0.3), (12, 0.5), (2, 0.5), (4, 0.99), (1, 0.5), (12, 0.0)])
def test_placement_by_ratio_last_layer_attention(L, r):
    idx = deltanet_layers(L, r)
    assert len(idx) == min(round(r * L), L - 1) and len(set(idx)) == len(idx)
    assert all(0 <= i < L - 1 for i in idx) and idx == sorted(idx)
    if len(idx) > 1:  # spread evenly: gaps differ by at most one
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        assert max(gaps) - min(gaps) <= 1
    assert deltanet_layers(20, 0.2) == [2, 7, 11, 16]


def _cfg(**kw):
    base = dict(vocab_size=300, hidden_dim=256, num_layers=3, num_heads=4, num_kv_heads=2, ffn_mult=1.0, max_seq_len=160,
                deltanet_ratio=0.34)
    base.update(kw)
    return ModelConfig(**base)


def test_hybrid_model_blocks_and_causality():
    model = GPT(_cfg(mhc_n_streams=2))
    model.init_weights(0)
    kinds = [type(b.attn).__name__ for b in model.blocks]
    assert kinds == ["Attention", "GatedDeltaNet", "Attention"]  # round(1.02) = 1 layer, in the middle
    model.eval()
    idx = torch.randint(0, 300, (2, 100))
    base = model(idx)
    changed = idx.clone()
    changed[:, 70] = (changed[:, 70] + 1) % 300
    out = model(changed)
    assert torch.equal(out[:, :70], base[:, :70]) and not torch.allclose(out[:, 70:], base[:, 70:])
    layer = model.blocks[1].attn
    A = layer.A_log.exp()
    assert (A > 0).all() and (A <= 16).all()
    dt = F.softplus(layer.dt_bias)
    assert (dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all()


def test_a_log_and_dt_bias_get_no_weight_decay():
    model = GPT(_cfg())
    opts = build_optimizers(model, TrainingConfig(lion_weight_decay=0.1))
    no_decay = {id(p) for o in opts for grp in o.param_groups if grp["weight_decay"] == 0.0 for p in grp["params"]}
    dn = model.blocks[1].attn
    assert isinstance(dn, GatedDeltaNet)
    assert {id(dn.A_log), id(dn.dt_bias)} <= no_decay
    # vectors (norm gains) are not decayed either (train/optim.py); the embedding matrix is
    assert id(dn.o_norm.weight) in no_decay and id(model.embed.weight) not in no_decay


def test_tiny_hybrid_model_loss_falls():
    torch.manual_seed(0)
    model = GPT(_cfg(num_layers=2, deltanet_ratio=0.5, max_seq_len=64))
    model.init_weights(0)
    assert isinstance(model.blocks[0].attn, GatedDeltaNet)
    a_log0 = model.blocks[0].attn.A_log.detach().clone()
    opts = build_optimizers(model, TrainingConfig(learning_rate=0.02))
    tokens = torch.randint(0, 300, (4, 33), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(12):
        loss, _ = compute_loss(model, tokens, 0.0, 0.0)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.5, losses
    assert not torch.equal(model.blocks[0].attn.A_log.detach(), a_log0)  # the decay is trained too
