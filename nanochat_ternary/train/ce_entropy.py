"""Cross-entropy and predictive entropy of a block of logits, as one autograd node.

Written out by hand because autograd's version of `nll(log_softmax(z))` and `-(p * log p).sum()`
runs about ten passes over the [N, V] logits and allocates as many [N, V] temporaries (log-softmax
and its backward, the one-hot fill of nll's backward, exp, the products of the entropy term and
their gradients). With p = softmax(z), row entropy H = -sum_j p_j log p_j and target y:

    d/dz_j  sum_rows -log p_y  =  p_j - [j = y]
    d/dz_j  sum_rows H         = -p_j (log p_j + H)

so the gradient of g_nll * NLL + g_ent * ENT is p * (g_nll - g_ent (log p + H)) - g_nll [j = y]:
two [N, V] temporaries and in-place passes over them. The forward keeps log p only (p is exp of
it). Values equal the autograd composition up to float32 summation order.

On the CPU (float32, the native library built) both passes are native calls instead
(native/csrc/nc_train.c nc_ce_fwd / nc_ce_bwd): two passes over the logits forward, one backward,
saving the logits and three floats a row. Besides the passes it saves, this avoids PyTorch's CPU
exp and log_softmax, which leave their vector path for arguments below about -87: a language
model's logits span that much within a few steps (the tiny config's did after 7), and then the
loss took 13 ms of a 55 ms step instead of about 1.
"""

from __future__ import annotations

import torch

from ..model import native_ops


class _CrossEntropyEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
        ctx.native = native_ops.usable(logits)
        if ctx.native:
            return _native_forward(ctx, logits, targets, with_entropy)
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        nll = -logp.gather(1, targets.unsqueeze(1)).sum()
        row_ent = -torch.linalg.vecdot(logp.exp(), logp) if with_entropy else None  # [N]
        ent = row_ent.sum() if with_entropy else logp.new_zeros(())
        ctx.save_for_backward(logp, targets, row_ent)
        ctx.logits_dtype = logits.dtype
        return nll, ent

    @staticmethod
    def backward(ctx, g_nll: torch.Tensor, g_ent: torch.Tensor):
        if ctx.native:
            return _native_backward(ctx, g_nll, g_ent), None, None
        logp, targets, row_ent = ctx.saved_tensors
        p = logp.exp()
        if row_ent is None:
            grad = p.mul_(g_nll)
        else:
            grad = (logp + row_ent.unsqueeze(1)).mul_(-g_ent).add_(g_nll).mul_(p)
        grad.scatter_add_(1, targets.unsqueeze(1), (-g_nll).expand(targets.shape[0], 1))
        return grad.to(ctx.logits_dtype), None, None


def _native_forward(ctx, logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    z, y = logits.detach().contiguous(), targets.contiguous().to(torch.int64)
    n, v = z.shape
    if n and (int(y.min()) < 0 or int(y.max()) >= v):  # the C reads z[row, target] unchecked
        raise IndexError(f"cross-entropy targets must be in [0, {v}), got {int(y.min())}..{int(y.max())}")
    rows = torch.empty(4 if with_entropy else 3, n)  # max, log-sum-exp of the shifted row, nll, entropy
    if n:
        native_ops.library().nc_ce_fwd(n, v, z.data_ptr(), y.data_ptr(), rows[0].data_ptr(), rows[1].data_ptr(),
                                       rows[2].data_ptr(), rows[3].data_ptr() if with_entropy else None)
    ctx.save_for_backward(z, y, rows)
    ctx.with_entropy = with_entropy
    return rows[2].sum(), rows[3].sum() if with_entropy else z.new_zeros(())


def _native_backward(ctx, g_nll: torch.Tensor, g_ent: torch.Tensor) -> torch.Tensor:
    z, y, rows = ctx.saved_tensors
    n, v = z.shape
    grad = torch.empty_like(z)
    if n:
        native_ops.library().nc_ce_bwd(n, v, z.data_ptr(), y.data_ptr(), rows[0].data_ptr(), rows[1].data_ptr(),
                                       rows[3].data_ptr() if ctx.with_entropy else None, float(g_nll),
                                       float(g_ent) if ctx.with_entropy else 0.0, grad.data_ptr())
    return grad


def cross_entropy_entropy(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool = True):
    """(sum over rows of -log p(target), sum over rows of the entropy of p) for logits [N, V] and
    targets [N]; the entropy is 0 (and gets no gradient) when `with_entropy` is False."""
    return _CrossEntropyEntropy.apply(logits, targets, with_entropy)
