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
"""

from __future__ import annotations

import torch


class _CrossEntropyEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        nll = -logp.gather(1, targets.unsqueeze(1)).sum()
        row_ent = -torch.linalg.vecdot(logp.exp(), logp) if with_entropy else None  # [N]
        ent = row_ent.sum() if with_entropy else logp.new_zeros(())
        ctx.save_for_backward(logp, targets, row_ent)
        ctx.logits_dtype = logits.dtype
        return nll, ent

    @staticmethod
    def backward(ctx, g_nll: torch.Tensor, g_ent: torch.Tensor):
        logp, targets, row_ent = ctx.saved_tensors
        p = logp.exp()
        if row_ent is None:
            grad = p.mul_(g_nll)
        else:
            grad = (logp + row_ent.unsqueeze(1)).mul_(-g_ent).add_(g_nll).mul_(p)
        grad.scatter_add_(1, targets.unsqueeze(1), (-g_nll).expand(targets.shape[0], 1))
        return grad.to(ctx.logits_dtype), None, None


def cross_entropy_entropy(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool = True):
    """(sum over rows of -log p(target), sum over rows of the entropy of p) for logits [N, V] and
    targets [N]; the entropy is 0 (and gets no gradient) when `with_entropy` is False."""
    return _CrossEntropyEntropy.apply(logits, targets, with_entropy)
