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

from ..model.gpt import GPT
from ..model.moe import moe_aux_loss
from .chunked_head import head_sums


def compute_loss(model: GPT, tokens: torch.Tensor, entropy_weight: float = 0.0, mtp_weight: float = 0.0,
                 chunk_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """tokens: [B, T + 1] (inputs are [:, :-1], next-token targets [:, 1:]).

    The head runs over chunks of `chunk_tokens` tokens (default: ~2^23 logits a chunk), so the
    full [B, T, V] logits never exist (chunked_head.py).
    """
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    h, mtp_hidden = model.hidden_with_mtp(idx)
    B, T, D = h.shape
    V = model.cfg.vocab_size
    nll, ent = head_sums(model.head, h.reshape(-1, D), targets.reshape(-1), True, chunk_tokens, V)
    ce, entropy = nll / (B * T), ent / (B * T)
    loss = ce - entropy_weight * entropy
    parts = {"ce": ce.detach(), "entropy": entropy.detach()}
    if mtp_hidden:
        mtp_losses = []
        for k, hk in enumerate(mtp_hidden, start=1):
            # head k at position t predicts tokens[t + 1 + k] = targets[:, t + k]
            if T - k <= 0:
                continue
            nll_k, _ = head_sums(model.head, hk[:, : T - k].reshape(-1, D), targets[:, k:].reshape(-1), False, chunk_tokens, V)
            mtp_losses.append(nll_k / (B * (T - k)))
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
