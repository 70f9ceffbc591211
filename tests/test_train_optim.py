"""Muon, Lion and the Muon/Lion parameter split (nanochat_ternary/train/{muon,lion,optim}.py)."""

import copy

import pytest
import torch
from torch import nn

from nanochat_ternary.config import TrainingConfig
from nanochat_ternary.model import native_ops
from nanochat_ternary.train.lion import Lion
import nanochat_ternary.train.muon as muon_mod
from nanochat_ternary.train.muon import Muon, newton_schulz, newton_schulz_stacked, ns_dtype, stack_plan
from nanochat_ternary.train.optim import build_optimizers, optimizer_state_bytes, set_lr

torch.set_flush_denormal(True)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48), (8, 128)])
def test_newton_schulz_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x = newton_schulz(g, steps=5)
    assert x.dtype == ns_dtype(g.device) and x.shape == g.shape  # bf16 where native, else fp32
    x = x.float()
    s = torch.linalg.svdvals(x)
    # The tuned quintic leaves singular values roughly in [0.68, 1.2], by design.
    assert s.min() > 0.6 and s.max() < 1.3, (s.min(), s.max())
    # ...with the singular vectors of g: close to U V^T.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (x * (u @ vh)).sum() / (x.norm() * (u @ vh).norm())
    assert cos > 0.98


def test_newton_schulz_rejects_non_matrix():
    for shape in ((5,), (2, 3, 4, 5)):
        with pytest.raises(ValueError, match="matrix"):
            newton_schulz(torch.randn(*shape))


def test_stacked_newton_schulz_equals_one_matrix_at_a_time():
    gen = torch.Generator().manual_seed(3)
    gs = [torch.randn(32, 64, generator=gen), torch.randn(64, 32, generator=gen), torch.randn(32, 64, generator=gen)]
    stacked = newton_schulz_stacked(gs, 3)
    tol = 2e-2 if ns_dtype(gs[0].device) == torch.bfloat16 else 1e-5  # batched vs single matmul rounding
    for g, x in zip(gs, stacked):
        assert x.shape == g.shape
        torch.testing.assert_close(x.float(), newton_schulz(g, 3).float(), atol=tol, rtol=tol)


def test_stack_plan_groups_oriented_shapes_within_the_element_cap(monkeypatch):
    shapes = [(64, 32), (32, 64), (32, 32), (32, 64), (8, 8)]
    assert sorted(map(sorted, stack_plan(shapes))) == [[0, 1, 3], [2], [4]]  # tall and wide together
    monkeypatch.setattr(muon_mod, "STACK_ELEMS", 2 * 64 * 32)
    assert sorted(map(sorted, stack_plan(shapes))) == [[0, 1], [2], [3], [4]]
    monkeypatch.setattr(muon_mod, "STACK_ELEMS", 1)
    assert len(stack_plan(shapes)) == 5  # a matrix over the cap is a stack of its own


def test_muon_steps_a_stack_like_its_matrices_one_by_one():
    torch.manual_seed(4)
    ps = [nn.Parameter(torch.randn(*s)) for s in ((24, 8), (8, 24), (8, 24))]
    alone = [nn.Parameter(p.detach().clone()) for p in ps]
    opts = [Muon([a], lr=0.05, momentum=0.9, weight_decay=0.1) for a in alone]
    opt = Muon(ps, lr=0.05, momentum=0.9, weight_decay=0.1)
    tol = 2e-3 if ns_dtype(torch.device("cpu")) == torch.bfloat16 else 1e-6
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ps]
        for p, a, g in zip(ps, alone, grads):
            p.grad, a.grad = g.clone(), g.clone()
        opt.step()
        for o in opts:
            o.step()
    for p, a in zip(ps, alone):
        torch.testing.assert_close(p.detach(), a.detach(), atol=tol, rtol=tol)


@pytest.mark.skipif(native_ops.library() is None, reason="no native kernels (no C compiler here)")
@pytest.mark.parametrize("kw", [dict(momentum=0.95, weight_decay=0.01), dict(momentum=0.9, nesterov=False)])
def test_muon_native_passes_give_the_pytorch_paths_bits(monkeypatch, kw):
    """On the CPU in float32 each stack's momentum, look-ahead, stacking, decay and update run as
    nc_muon_pre / nc_muon_post: four steps give the PyTorch path's parameters bit for bit, for
    tall (transposed into the stack), wide and square matrices, a stack of one, and sizes that are
    not multiples of the kernels' 16 x 64 tiles."""
    shapes = ((512, 256), (512, 256), (256, 512), (72, 40), (40, 72), (33, 17))

    def run(native):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(*s)) for s in shapes]
        opt = Muon(ps, lr=0.05, **kw)
        gen = torch.Generator().manual_seed(1)
        with monkeypatch.context() as m:
            calls = []
            if native:
                m.setattr(Muon, "_native_stack_step", lambda self, st, g: calls.append(len(st)) or real(self, st, g))
            else:
                m.setattr(Muon, "_native_ok", lambda *a: False)
            for _ in range(4):
                for p in ps:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
        return [p.detach() for p in ps], calls

    real = Muon._native_stack_step
    native, calls = run(True)
    assert sorted(calls) == sorted([3, 2, 1] * 4)  # stacks: the 512 x 256 family, 72 x 40 with 40 x 72, 33 x 17
    torch_path, _ = run(False)
    # PyTorch's vector kernels fuse lerp's multiply-add as the native passes do; its scalar ones
    # (ATEN_CPU_CAPABILITY=default) round twice, and a bf16 Newton-Schulz can amplify that one ulp
    vector_kernels = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    tol = 2e-3 if ns_dtype(torch.device("cpu")) == torch.bfloat16 else 1e-5
    for a, b in zip(native, torch_path):
        assert torch.equal(a, b) if vector_kernels else torch.allclose(a, b, rtol=tol, atol=tol)


def test_muon_with_8bit_momentum_keeps_the_pytorch_path(monkeypatch):
    p = nn.Parameter(torch.randn(64, 32))
    monkeypatch.setattr(Muon, "_native_stack_step", lambda *a: pytest.fail("the native path ran with 8-bit states"))
    p.grad = torch.randn(64, 32)
    Muon([p], lr=0.05, eight_bit=True).step()


def test_muon_first_step_matches_formula():
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(12, 4))  # tall: lr scaled by sqrt(12 / 4)
    p0 = p.detach().clone()
    g = torch.randn(12, 4)
    p.grad = g.clone()
    Muon([p], lr=0.1, momentum=0.9, weight_decay=0.5).step()
    # buf = 0.1 g; nesterov update = 0.1 g + 0.9 * 0.1 g, a multiple of g, and NS is scale-free.
    expected = p0 * (1 - 0.1 * 0.5) - 0.1 * 3**0.5 * newton_schulz(g.lerp(0.1 * g, 0.9)).float()
    torch.testing.assert_close(p.detach(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(p.grad, g)  # the gradient is not modified in place


def test_muon_reduces_least_squares_loss():
    gen = torch.Generator().manual_seed(2)
    x, w_true = torch.randn(64, 32, generator=gen), torch.randn(16, 32, generator=gen)
    y = x @ w_true.T
    w = nn.Parameter(torch.zeros(16, 32))
    opt = Muon([w], lr=0.2)

    def loss_fn():
        return ((x @ w.T - y) ** 2).mean()

    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert loss_fn().item() < losses[0]
    assert losses[1] < losses[0]  # one step already helps
    assert loss_fn().item() < 0.5 * losses[0]


def test_muon_rejects_non_2d_params():
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(5))], lr=0.01)
    opt = Muon([nn.Parameter(torch.zeros(2, 2))], lr=0.01)
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, 2, 2))]})


@pytest.mark.parametrize("make", [lambda ps: Muon(ps, lr=0.02, weight_decay=0.1),
                                  lambda ps: Lion(ps, lr=0.01, weight_decay=0.1)])
def test_state_dict_round_trip_gives_identical_steps(make):
    torch.manual_seed(3)
    params = [nn.Parameter(torch.randn(6, 10)), nn.Parameter(torch.randn(10, 6))]
    opt = make(params)
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    for step in range(2):
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        opt.step()
    clone = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = make(clone)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for step in range(2, 4):
        for a, b, g in zip(params, clone, grads[step]):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    for a, b in zip(params, clone):
        assert torch.equal(a, b)


def test_lion_two_steps_by_hand():
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.2
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    g1 = torch.tensor([0.5, -1.0, 0.0, 2.0])
    g2 = torch.tensor([-3.0, 0.2, 1.0, -0.1])
    w, m = p.detach().clone(), torch.zeros(4)
    for g in (g1, g2):
        p.grad = g
        opt.step()
        c = b1 * m + (1 - b1) * g
        w = w * (1 - lr * wd) - lr * torch.sign(c)
        m = b2 * m + (1 - b2) * g
    # Step 2 by hand: m = 0.01 g1 = [0.005, -0.01, 0, 0.02]; c = 0.9 m + 0.1 g2
    #   = [-0.2955, 0.011, 0.1, 0.008]: signs [-, +, +, +] although g2[3] < 0 (the momentum wins).
    torch.testing.assert_close(p.detach(), w)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m)
    step1 = torch.tensor([1.0, -2.0, 0.5, 3.0]) * 0.98 - 0.1 * torch.tensor([1.0, -1.0, 0.0, 1.0])
    torch.testing.assert_close(p.detach(), step1 * 0.98 - 0.1 * torch.tensor([-1.0, 1.0, 1.0, 1.0]))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.wte2 = nn.Embedding(7, 16)  # an embedding whose name lacks "embed"
        self.proj = nn.Linear(16, 32)
        self.out = nn.Linear(32, 16, bias=False)
        self.norm = nn.RMSNorm(16)
        self.mhc_logits = nn.Parameter(torch.zeros(3))
        self.gain = nn.Parameter(torch.tensor(1.0))  # 0-D
        self.lm_head = nn.Linear(16, 50, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        self.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)


def test_build_optimizers_splits_params():
    model = Tiny()
    tcfg = TrainingConfig(learning_rate=0.02, lion_lr_mult=0.05, weight_decay=0.01,
                          lion_weight_decay=0.1, muon_momentum=0.9, lion_betas=(0.8, 0.95))
    muon, lion = build_optimizers(model, tcfg)
    assert isinstance(muon, Muon) and isinstance(lion, Lion)
    ids = lambda opt: [id(p) for g in opt.param_groups for p in g["params"]]  # noqa: E731
    in_muon, in_lion = ids(muon), ids(lion)
    assert set(in_muon) == {id(model.proj.weight), id(model.out.weight)}
    expected_lion = {id(p) for n, p in model.named_parameters() if p.requires_grad} - set(in_muon)
    assert set(in_lion) == expected_lion and id(model.embed.weight) in expected_lion
    assert len(in_muon) + len(in_lion) == len(set(in_muon) | set(in_lion))  # no parameter twice
    assert id(model.frozen) not in in_muon + in_lion
    (mg,), (lg, lk) = muon.param_groups, lion.param_groups
    assert mg["initial_lr"] == mg["lr"] == 0.02 and mg["momentum"] == 0.9 and mg["weight_decay"] == 0.01
    assert lg["initial_lr"] == pytest.approx(0.001) and lg["betas"] == (0.8, 0.95) and lg["weight_decay"] == 0.1
    # only the matrices (embeddings) decay; norm gains, biases, 0-D gains and other vectors do not
    assert {id(p) for p in lg["params"]} == {id(model.embed.weight), id(model.wte2.weight)}
    assert lk["weight_decay"] == 0.0 and lk["initial_lr"] == lg["initial_lr"]
    assert {id(model.norm.weight), id(model.gain), id(model.proj.bias), id(model.mhc_logits)} == {id(p) for p in lk["params"]}

    set_lr([muon, lion], 0.5)
    assert mg["lr"] == 0.01 and lg["lr"] == pytest.approx(0.0005)


def test_mhc_routing_logits_get_their_own_lr_and_no_decay():
    from nanochat_ternary.config import ModelConfig
    from nanochat_ternary.model.gpt import GPT

    model = GPT(ModelConfig(vocab_size=64, hidden_dim=256, num_layers=2, num_heads=4, num_kv_heads=2,
                            max_seq_len=16, mhc_n_streams=2, use_mtp=False))
    tcfg = TrainingConfig(learning_rate=0.02, lion_lr_mult=0.1, lion_weight_decay=0.1, mhc_lr_mult=10.0)
    _, lion = build_optimizers(model, tcfg)
    route = lion.param_groups[-1]
    routing = {id(p) for b in model.blocks for p in b.mhc.parameters()}
    assert {id(p) for p in route["params"]} == routing and len(routing) == 6
    assert route["initial_lr"] == pytest.approx(0.02) and route["weight_decay"] == 0.0
    assert all(id(p) not in routing for g in lion.param_groups[:-1] for p in g["params"])
    # one Lion step moves every routing logit by exactly its lr (sign update), 10x the others' lr
    before = {id(p): p.detach().clone() for b in model.blocks for p in b.mhc.parameters()}
    model(torch.randint(0, 64, (2, 16))).float().logsumexp(-1).mean().backward()
    set_lr([lion], 1.0)
    lion.step()
    moved = [float((p.detach() - before[id(p)]).abs().max()) for b in model.blocks for p in b.mhc.parameters()]
    assert max(moved) == pytest.approx(0.02, rel=1e-4)


def test_optimizer_state_bytes():
    model = Tiny()
    opts = build_optimizers(model, TrainingConfig())
    assert optimizer_state_bytes(opts) == 0
    model.embed(torch.tensor([1, 2])).sum().backward()
    (model.out(model.proj(torch.randn(2, 16)))).sum().backward()
    for opt in opts:
        opt.step()
    # One fp32 buffer per parameter that had a gradient: embed, proj.{weight,bias}, out.
    expected = 4 * (50 * 16 + 32 * 16 + 32 + 16 * 32)
    assert optimizer_state_bytes(opts) == expected
