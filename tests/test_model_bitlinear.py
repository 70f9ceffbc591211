"""BitLinear: ternary weights, per-token activation quantization, straight-through gradients."""

import torch

from nanochat_ternary.model.bitlinear import BitLinear, quantize_activation, quantize_weight, shared_input_linear, ternarize


def test_weights_take_three_values_per_tensor():
    w = torch.randn(64, 512)
    wq = quantize_weight(w)
    scale = w.abs().mean()
    values = torch.unique(wq / scale)
    assert set(values.round().tolist()) <= {-1.0, 0.0, 1.0}
    assert len(values) == 3
    assert torch.allclose(values, values.round(), atol=1e-6)


def test_weights_take_three_values_per_group():
    w = torch.randn(8, 512)
    w[:, 256:] *= 10  # the second group has a much larger scale
    t, scale = ternarize(w, group_size=256)
    assert scale.shape == (8, 2, 1)
    assert set(torch.unique(t).tolist()) == {-1.0, 0.0, 1.0}
    wq = quantize_weight(w, group_size=256).reshape(8, 2, 256)
    for r in range(8):
        for g in range(2):
            assert len(torch.unique(wq[r, g])) <= 3
    assert torch.allclose(scale[0, 1, 0], w[0, 256:].abs().mean())


def test_activation_quantization_is_per_token_int8():
    x = torch.randn(3, 5, 256) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1)
    xq = quantize_activation(x, bits=8)
    step = x.abs().amax(-1, keepdim=True) / 127
    levels = xq / step
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max() <= 128
    assert (xq - x).abs().max() <= (step / 2 + 1e-6).max()


def test_straight_through_gradient():
    torch.manual_seed(0)
    layer = BitLinear(256, 16)
    x = torch.randn(4, 256, requires_grad=True)
    g = torch.randn(4, 16)
    (layer(x) * g).sum().backward()
    # STE: d/dx = g @ W_q, d/dW = g^T @ x_q (the roundings are treated as identity)
    wq = quantize_weight(layer.weight.detach())
    xq = quantize_activation(x.detach())
    assert torch.allclose(x.grad, g @ wq, atol=1e-5)
    assert torch.allclose(layer.weight.grad, g.t() @ xq, atol=1e-4)


def test_forward_uses_quantized_operands():
    torch.manual_seed(1)
    layer = BitLinear(256, 8)
    x = torch.randn(2, 256)
    expected = quantize_activation(x) @ quantize_weight(layer.weight).t()
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_shared_input_linear_equals_the_separate_layers_and_their_gradients():
    """q/k/v and gate/up run as one matmul on one quantised input: same outputs, same gradients."""
    torch.manual_seed(0)
    for make in (lambda i, o: BitLinear(i, o, 8, 0), lambda i, o: BitLinear(i, o, 8, 64),
                 lambda i, o: torch.nn.Linear(i, o, bias=False)):
        layers = [make(128, 96), make(128, 32), make(128, 32)]
        x = torch.randn(2, 5, 128, requires_grad=True)
        fused = shared_input_linear(x, layers)
        grad = torch.randn_like(fused)
        fused.backward(grad)
        got = [x.grad.clone()] + [m.weight.grad.clone() for m in layers]
        x.grad = None
        for m in layers:
            m.weight.grad = None
        separate = torch.cat([m(x) for m in layers], dim=-1)
        separate.backward(grad)
        assert fused.shape == (2, 5, 160)
        torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-5)
        for a, b in zip(got, [x.grad] + [m.weight.grad for m in layers]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
