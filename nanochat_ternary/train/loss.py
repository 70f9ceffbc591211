"""The training objective: cross-entropy, an entropy (confidence) term, the MTP and MoE losses.

    loss = CE - entropy_weight * H(p) + mtp_weight * mean_k CE_k + moe_aux

H(p) is the mean predictive entropy of the next-token distribution; subtracting it penalises
over-confident predictions (Pereyra et al., 2017, https://arxiv.org/abs/1701.06548). CE_k is the
cross-entropy of MTP head k predicting token t + 1 + k (Gloeckle et al., 2024,
https://arxiv.org/abs/2404.19737). moe_aux is the MoE layers' load-balancing (+ z) loss, already
weighted by the model's config (model/moe.py). Every term is returned on its own for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.gpt import GPT
from ..model.moe import moe_aux_loss


def compute_loss(model: GPT, tokens: torch.Tensor, entropy_weight: float = 0.0, mtp_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """tokens: [B, T + 1] (inputs are [:, :-1], next-token targets [:, 1:])."""
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    logits, mtp_logits = model.forward_with_mtp(idx)
    logits = logits.float()
    V = logits.shape[-1]
    logp = F.log_softmax(logits, dim=-1)  # computed once, for both the CE and the entropy
    ce = F.nll_loss(logp.reshape(-1, V), targets.reshape(-1))
    entropy = -(logp.exp() * logp).sum(-1).mean()
    loss = ce - entropy_weight * entropy
    parts = {"ce": ce.detach(), "entropy": entropy.detach()}
    if mtp_logits:
        T = idx.shape[1]
        mtp_losses = []
        for k, lk in enumerate(mtp_logits, start=1):
            # head k at position t predicts tokens[t + 1 + k] = targets[:, t + k]
            if T - k <= 0:
                continue
            mtp_losses.append(F.cross_entropy(lk[:, : T - k].float().reshape(-1, V), targets[:, k:].reshape(-1)))
        if mtp_losses:
            mtp = torch.stack(mtp_losses).mean()
            loss = loss + mtp_weight * mtp
            parts["mtp"] = mtp.detach()
    aux = moe_aux_loss(model)  # of the forward above
    if aux is not None:
        loss = loss + aux
        parts["moe_aux"] = aux.detach()
    parts["total"] = loss.detach()
    return loss, parts
