"""mHC: doubly stochastic H_res by construction, composite gain <= 1, n = 1 is a plain residual."""

import pytest
import torch

from nanochat_ternary.config import ModelConfig
from nanochat_ternary.model.gpt import GPT, Block
from nanochat_ternary.model.mhc import MHC, composite_gain, permutation_matrices, res_matrix, res_weights


@pytest.mark.parametrize("n", [2, 4])
def test_h_res_doubly_stochastic_for_random_parameters(n):
    gen = torch.Generator().manual_seed(n)
    perms = permutation_matrices(n)
    for _ in range(50):
        logits = torch.randn(1 if n == 2 else 24, generator=gen) * 5
        h = res_matrix(logits, perms)
        assert (h >= 0).all()
        assert torch.allclose(h.sum(0), torch.ones(n), atol=1e-6)
        assert torch.allclose(h.sum(1), torch.ones(n), atol=1e-6)


def test_permutations_are_distinct_and_identity_first():
    p = permutation_matrices(4)
    assert p.shape == (24, 4, 4)
    assert torch.equal(p[0], torch.eye(4))
    assert len({tuple(m.flatten().tolist()) for m in p}) == 24


@pytest.mark.parametrize("n", [2, 4])
def test_composite_gain_over_28_random_layers(n):
    torch.manual_seed(0)
    mats = []
    for _ in range(28):
        m = MHC(n)
        with torch.no_grad():
            m.res_logits.normal_(0, 3)
        mats.append(m.h_res())
    gain = composite_gain(mats)
    assert gain <= 1 + 1e-6
    assert gain >= 1 - 1e-4  # products of doubly stochastic matrices keep sums at exactly 1


def test_near_identity_init():
    m = MHC(4)
    assert abs(float(res_weights(m.res_logits, 4)[0]) - 0.9) < 1e-5  # identity permutation
    assert abs(float(res_weights(MHC(2).res_logits, 2)[0]) - 0.9) < 1e-5
    assert torch.diag(m.h_res()).min() > 0.9
    assert torch.allclose(m.h_pre().sum(), torch.tensor(1.0)) and int(m.h_pre().argmax()) == 0
    assert int(MHC(4, layer_idx=5).h_pre().argmax()) == 1  # block l reads mostly from stream l mod n
    # block l writes mostly into the stream block l + 1 reads; the mean over streams stays 1
    for n, layer in ((2, 0), (2, 1), (4, 3)):
        post = MHC(n, layer_idx=layer).h_post()
        assert int(post.argmax()) == (layer + 1) % n and abs(float(post.mean()) - 1) < 1e-6


def _tiny(**kw):
    base = dict(vocab_size=300, hidden_dim=256, num_layers=2, num_heads=4, num_kv_heads=2, ffn_mult=1.0, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def test_n1_is_exactly_the_plain_residual():
    torch.manual_seed(0)
    cfg = _tiny(mhc_n_streams=1)
    block = Block(cfg)
    assert block.mhc is None
    x = torch.randn(2, 8, 256)
    cos, sin = GPT(cfg).rope_cos[:8], GPT(cfg).rope_sin[:8]
    h = x + block.attn(block.attn_norm(x), cos, sin)
    expected = h + block.ffn(block.ffn_norm(h))
    assert torch.equal(block(x, cos, sin), expected)


def test_symmetric_write_multi_stream_model_equals_single_stream():
    """With H_post = 1 on every stream (model.mhc_post_main = 1.0), the streams stay equal copies, so n = 2 and n = 4 compute
    the plain residual network: the routing maths adds nothing of its own.
    (Dense weights: with BitLinear, float rounding of the stream mix can flip an int8 activation level.)"""
    torch.manual_seed(0)
    m1 = GPT(_tiny(mhc_n_streams=1, use_bitlinear=False))
    m1.init_weights(0)
    idx = torch.randint(0, 300, (2, 16))
    for n in (2, 4):
        mn = GPT(_tiny(mhc_n_streams=n, use_bitlinear=False, mhc_post_main=1.0))
        mn.init_weights(0)  # keeps the configured H_post init
        assert all(torch.allclose(b.mhc.h_post(), torch.ones(n)) for b in mn.blocks)
        missing, unexpected = mn.load_state_dict(m1.state_dict(), strict=False)
        assert not unexpected and all("mhc" in k for k in missing)
        assert torch.allclose(mn(idx), m1(idx), atol=1e-4)
        lopsided = GPT(_tiny(mhc_n_streams=n, use_bitlinear=False))
        lopsided.load_state_dict(m1.state_dict(), strict=False)
        assert not torch.allclose(lopsided(idx), m1(idx), atol=1e-4)


@pytest.mark.parametrize("n", [2, 4])
def test_fresh_streams_differ_and_the_readout_sums_every_block_once(n):
    """The lopsided init: the streams differ from block 0 on, yet the mean stream (the readout) is
    still the embedding plus each block's output once, as in a plain residual network."""
    torch.manual_seed(0)
    model = GPT(_tiny(mhc_n_streams=n, num_layers=3, use_bitlinear=False))
    model.init_weights(0)
    outs = []
    for b in model.blocks:
        for sub in (b.attn, b.ffn):
            sub.register_forward_hook(lambda mod, args, out: outs.append(out))
    idx = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        z = model.trunk(idx)
        first = model.blocks[0](model.embed(idx).unsqueeze(0).expand(n, -1, -1, -1).contiguous(),
                                model.rope_cos[:16], model.rope_sin[:16])
    assert torch.allclose(z, model.embed(idx) + sum(outs[:2 * 3]), atol=1e-5)
    assert (first[0] - first[1]).abs().max() > 1e-3  # block 0 already wrote the streams unequally


def test_streams_diverge_and_all_mhc_parameters_learn():
    """From the fresh init, with no nudge, the mHC parameters learn, H_res included: the lopsided
    write makes the streams differ from block 0 on. With a symmetric write (H_post = 1) the middle
    block's H_res got 1e-4 of its H_post's gradient, float rounding; now about 0.04.
    Two are structurally idle: block 0 reads n identical copies of the embedding (its H_pre and
    H_res cannot matter), and the last block's H_res feeds only the readout, the mean over the
    streams, which a doubly stochastic mix leaves unchanged."""
    torch.manual_seed(0)
    model = GPT(_tiny(mhc_n_streams=4, num_layers=3))
    model.init_weights(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    idx = torch.randint(0, 300, (2, 8))
    seen = {id(p): 0.0 for b in model.blocks for p in b.mhc.parameters()}
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        for b in model.blocks:
            for p in b.mhc.parameters():
                seen[id(p)] += float(p.grad.abs().sum())
        opt.step()
    for b in model.blocks:
        assert seen[id(b.mhc.post_logits)] > 1e-3
    for b in model.blocks[1:]:
        assert seen[id(b.mhc.pre_logits)] > 1e-3
    mid, last = model.blocks[1].mhc, model.blocks[-1].mhc
    assert seen[id(mid.res_logits)] > 1e-2 * seen[id(mid.post_logits)]
    assert seen[id(last.res_logits)] < 1e-6 * seen[id(last.post_logits)]
    assert model.mhc_composite_gain() <= 1 + 1e-6
