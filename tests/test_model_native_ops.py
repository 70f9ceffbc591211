"""The training step's native row-wise ops (model/native_ops.py) against the PyTorch ops they replace:
the quantisers and RoPE bit for bit, RMSNorm's and SwiGLU's backward to float rounding, a whole
model's gradients."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat_ternary.config import load_config
from nanochat_ternary.model import bitlinear, native_ops
from nanochat_ternary.model.gpt import GPT
from nanochat_ternary.model.norm import RMSNorm
from nanochat_ternary.model.rope import apply_rope, rope_tables
from nanochat_ternary.train.loss import compute_loss

pytestmark = pytest.mark.skipif(native_ops.library() is None, reason="no native kernels (no C compiler here)")


@pytest.fixture
def torch_path(monkeypatch):
    """Run a function with the native ops switched off (the PyTorch ops they replace)."""
    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(native_ops, "library", lambda: None)
            assert not native_ops.usable(torch.zeros(1))
            return fn()
    return run


def _activations():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 33, 250, generator=g) * 3  # 250: not a multiple of the C code's 16 lanes
    x[0, 0] = 0.0  # an all-zero row takes the eps floor
    x[1, 2, 7] = 1e4  # an outlier row
    return [x, torch.randn(512, 256, generator=g), torch.randn(256, 64, generator=g).t()]  # the last: a strided view


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_activation_quantizer_is_bit_for_bit_the_pytorch_one(torch_path, bits):
    for x in _activations():
        assert native_ops.usable(x)
        assert torch.equal(bitlinear.quantize_activation(x, bits), torch_path(lambda: bitlinear.quantize_activation(x, bits)))


@pytest.mark.parametrize("group_size", [0, 256])
def test_weight_quantizer_is_bit_for_bit_the_pytorch_one(torch_path, group_size):
    g = torch.Generator().manual_seed(1)
    for w in (torch.randn(96, 512, generator=g) * 0.02, torch.randn(3, 768, generator=g)):
        w[0, :256] *= 50  # one group with a much larger scale
        assert torch.equal(bitlinear.quantize_weight(w, group_size), torch_path(lambda: bitlinear.quantize_weight(w, group_size)))


def _norm_case(x, affine):
    norm = RMSNorm(x.shape[-1], eps=1e-5, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.rand(x.shape[-1], generator=torch.Generator().manual_seed(2)) + 0.5)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    xa = x.detach().clone().requires_grad_()
    y = norm(xa)
    y.backward(g)
    return norm, xa, y, g


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 37, 100), (600, 256), (2, 5)])  # 600 x 256 takes the threaded path
def test_rmsnorm_forward_is_pytorchs_and_backward_the_analytic_gradient(shape, affine):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 2
    norm, xa, y, g = _norm_case(x, affine)
    assert type(y.grad_fn).__name__ == "_RMSNormBackward"  # the native backward ran
    w = norm.weight
    assert torch.equal(y, F.rms_norm(x, (shape[-1],), w, 1e-5))
    # reference gradients: autograd through F.rms_norm in float64
    x64 = x.double().requires_grad_()
    w64 = w.detach().double().requires_grad_() if affine else None
    F.rms_norm(x64, (shape[-1],), w64, 1e-5).backward(g.double())
    assert torch.allclose(xa.grad.double(), x64.grad, rtol=1e-5, atol=1e-5 * x64.grad.abs().max().item())
    if affine:
        assert torch.allclose(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5 * w64.grad.abs().max().item())


def test_rmsnorm_of_a_strided_view_and_repeatable_gradients():
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(5)).t()  # [64, 256], not contiguous
    grads = []
    for _ in range(2):
        norm, xa, _, _ = _norm_case(x, True)
        grads.append((xa.grad, norm.weight.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])  # deterministic
    ref = nn.RMSNorm(256, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(norm.weight)
    xr = x.detach().clone().requires_grad_()
    ref(xr).backward(torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    assert torch.allclose(grads[0][0], xr.grad, rtol=1e-5, atol=1e-6)


def test_other_dtypes_and_autocast_take_the_pytorch_path():
    assert not native_ops.usable(torch.zeros(2, 4, dtype=torch.float64))
    assert not native_ops.usable(torch.zeros(2, 4), torch.zeros(4, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native_ops.usable(torch.zeros(2, 4))
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    y = RMSNorm(8).double()(x)
    assert type(y.grad_fn).__name__ != "_RMSNormBackward"


def test_swiglu_forward_is_pytorchs_and_backward_the_analytic_gradient():
    g = torch.Generator().manual_seed(6)
    gu = torch.randn(3, 37, 2 * 50, generator=g) * 4
    gu[0, 0, :5] = torch.tensor([95.0, -95.0, 0.0, -30.0, 200.0])  # beyond exp's range both ways
    gh = torch.randn(3, 37, 50, generator=g)
    x = gu.clone().requires_grad_()
    h = native_ops.swiglu(x)
    assert type(h.grad_fn).__name__ == "_SwiGLUBackward"
    gate, up = gu.chunk(2, dim=-1)
    assert torch.equal(h, F.silu(gate) * up)
    h.backward(gh)
    x64 = gu.double().requires_grad_()
    g64, u64 = x64.chunk(2, dim=-1)
    (F.silu(g64) * u64).backward(gh.double())
    assert torch.allclose(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T", [1, 7, 130])  # 130 x 3 rows x 384 takes the threaded path
def test_rope_on_the_qkv_output_is_apply_rope_bit_for_bit(T):
    """native_ops.rope reads q and k in place from the projection's output [B, T, (H + 2 KV) hd]
    and gives apply_rope's values, and its gradient is autograd's through apply_rope, bit for bit."""
    B, H, KV, hd = 3, 4, 2, 64
    cos, sin = rope_tables(hd, 256, 10000.0)
    cos, sin = cos[:T], sin[:T]
    qkv = torch.randn(B, T, (H + 2 * KV) * hd, generator=torch.Generator().manual_seed(7))
    x = qkv.clone().requires_grad_()
    out = native_ops.rope(x[..., : (H + KV) * hd], cos, sin, hd)
    ref_in = qkv.clone().requires_grad_()
    heads = ref_in[..., : (H + KV) * hd].view(B, T, H + KV, hd).transpose(1, 2)
    ref = apply_rope(heads, cos, sin)
    assert torch.equal(out, ref.transpose(1, 2).reshape(B, T, -1))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(8))
    out.backward(g)
    ref.backward(g.view(B, T, H + KV, hd).transpose(1, 2))
    assert torch.equal(x.grad, ref_in.grad)  # v's columns get zeros on both sides


def test_a_models_loss_and_gradients_match_the_pytorch_path(torch_path):
    """The whole tiny model: the same hidden states bit for bit (the forward, roundings included, is
    unchanged), the loss and the gradients to float rounding (the norms', SwiGLU's and the loss's
    backward and the loss's sums run in another order)."""
    cfg = load_config("configs/models/tiny.toml")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    model.init_weights(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            h, mtp = model.hidden_with_mtp(tokens[:, :-1])
        loss, _ = compute_loss(model, tokens, 0.01, 0.2)
        loss.backward()
        return [h, *mtp], loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    h_native, loss_native, g_native = grads()
    h_torch, loss_torch, g_torch = torch_path(grads)
    assert all(torch.equal(a, b) for a, b in zip(h_native, h_torch, strict=True))
    assert torch.allclose(loss_native, loss_torch, rtol=1e-6, atol=0)
    for name, g in g_torch.items():
        err = (g_native[name] - g).norm().item()
        assert err <= 1e-5 * g.norm().item() + 1e-7, (name, err, g.norm().item())
