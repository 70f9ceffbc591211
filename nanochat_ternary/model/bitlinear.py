"""BitLinear: ternary weights and low-bit activations, trained with a straight-through estimator.

BitNet b1.58 (Ma et al., 2024, https://arxiv.org/abs/2402.17764). The optimizer keeps latent
full-precision weights W. The forward pass uses

    W_q = round_clip(W / s, -1, 1) * s,       s = mean(|W|)  (absmean; per tensor, or per row and
                                                              group of `group_size` input columns)
    x_q = round_clip(x * Q / a, -Q-1, Q) * a / Q,   a = max(|x|) per token, Q = 2^(bits-1) - 1

and the backward pass treats both roundings as the identity (straight-through estimator,
Bengio et al., 2013), written as `x + (q(x) - x).detach()`.

Scales per row and group of 256 columns map one to one onto the fp16 block scale of GGUF's
TQ2_0/TQ1_0 blocks, so export is exact up to fp16 rounding of the scale.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native_ops


def weight_scale(w: torch.Tensor, group_size: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """Absmean scale, broadcastable to `w` ([out, in]): a scalar, or [out, in // group_size, 1]."""
    if group_size:
        out_f, in_f = w.shape
        return w.detach().abs().reshape(out_f, in_f // group_size, group_size).mean(-1, keepdim=True).clamp_min(eps)
    return w.detach().abs().mean().clamp_min(eps)


# The quantizers below run every step on every BitLinear input and weight. Each allocates one
# result and rounds, clamps and rescales it in place: on a CPU at the tiny config's widths the
# out-of-place chain (one new tensor per operation) cost as much again in allocation and memory
# traffic. The values are the same as the out-of-place chain's, bit for bit. On a CPU in float32
# quantize_weight and quantize_activation are one native call each (native_ops.py), again with
# the same values bit for bit.

def ternarize(w: torch.Tensor, group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (t, scale) with t in {-1, 0, +1} (same dtype as w) and W_q = t * scale."""
    scale = weight_scale(w, group_size)
    if group_size:
        out_f, in_f = w.shape
        t = w.reshape(out_f, in_f // group_size, group_size).div(scale).round_().clamp_(-1, 1)
        return t.reshape(out_f, in_f), scale
    return w.div(scale).round_().clamp_(-1, 1), scale


def quantize_weight(w: torch.Tensor, group_size: int = 0) -> torch.Tensor:
    """Ternary fake-quantisation of `w` (values t * scale), without gradient plumbing."""
    if native_ops.usable(w):
        return native_ops.ternary_fake(w, weight_scale(w, group_size), group_size)
    t, scale = ternarize(w, group_size)
    if group_size:
        out_f, in_f = w.shape
        return t.reshape(out_f, in_f // group_size, group_size).mul_(scale).reshape(out_f, in_f)
    return t.mul_(scale)


def quantize_activation(x: torch.Tensor, bits: int = 8, eps: float = 1e-5) -> torch.Tensor:
    """Per-token absmax fake-quantisation to signed `bits`-bit integers."""
    if native_ops.usable(x):
        return native_ops.quantize_activation(x, bits, eps)
    q = 2 ** (bits - 1) - 1
    x0 = x.detach()
    # max |x| = max(max x, -min x), without an |x| copy (linalg.vector_norm(inf) was 10x slower)
    absmax = torch.maximum(x0.amax(dim=-1, keepdim=True), x0.amin(dim=-1, keepdim=True).neg_())
    scale = q / absmax.clamp_min_(eps)
    return x.mul(scale).round_().clamp_(-q - 1, q).div_(scale)


class _STE(torch.autograd.Function):
    """Straight-through estimator as one autograd node: forward quantizes, backward is identity.

    Same gradients as `x + (q(x) - x).detach()`, without the two extra elementwise passes in the
    forward and their nodes in the backward (the quantizers are cheap but not free on a CPU)."""

    @staticmethod
    def forward(ctx, x, quantize, arg):
        return quantize(x, arg)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def ste(x: torch.Tensor, quantize, arg) -> torch.Tensor:
    """`quantize(x, arg)` in the forward pass, the identity in the backward pass."""
    return _STE.apply(x, quantize, arg)


class BitLinear(nn.Linear):
    """A bias-free nn.Linear whose forward uses ternary weights and quantized activations."""

    def __init__(self, in_features: int, out_features: int, activation_bits: int = 8, group_size: int = 0):
        super().__init__(in_features, out_features, bias=False)
        self.activation_bits = activation_bits
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_q = ste(self.weight, quantize_weight, self.group_size)
        x_q = ste(x, quantize_activation, self.activation_bits)
        return F.linear(x_q, w_q)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation_bits={self.activation_bits}, group_size={self.group_size}"


def shared_input_linear(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    """`torch.cat([layer(x) for layer in layers], -1)` for linears that read the same input
    (q/k/v, gate/up); callers split it.

    One matmul against the stacked weights instead of one per layer, and for BitLinear one
    activation quantisation instead of one per layer (each weight keeps its own scale): on a CPU
    at small widths the per-call overhead and the repeated quantisers cost as much as the matmuls.
    The results equal the separate calls' up to float summation order."""
    if all(type(m) is BitLinear for m in layers) and len({m.activation_bits for m in layers}) == 1:
        x = ste(x, quantize_activation, layers[0].activation_bits)
        w = torch.cat([ste(m.weight, quantize_weight, m.group_size) for m in layers])
    elif all(type(m) is nn.Linear and m.bias is None for m in layers):
        w = torch.cat([m.weight for m in layers])
    else:
        return torch.cat([m(x) for m in layers], dim=-1)
    return F.linear(x, w)


def make_linear(in_features: int, out_features: int, cfg) -> nn.Linear:
    """A BitLinear when the model is ternary (`cfg.use_bitlinear`), else a dense bias-free Linear."""
    if cfg.use_bitlinear:
        return BitLinear(in_features, out_features, cfg.activation_bits, cfg.group_size)
    return nn.Linear(in_features, out_features, bias=False)
