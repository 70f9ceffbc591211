"""Mixture-of-experts FFN: a float32 router, top-k routing with capacity, grouped expert compute.

The FFN of an MoE layer is `num_experts` SwiGLU experts (ffn.py; BitLinear projections when the
model is ternary) and a router kept in full precision (Shazeer et al., 2017,
https://arxiv.org/abs/1701.06538; Switch Transformer, Fedus et al., 2021,
https://arxiv.org/abs/2101.03961):

    p = softmax(x W_r^T)   (float32 [N, E])     top-k of p, weights renormalised to sum to 1
    y = sum_{e in top-k} w_e * expert_e(x)

Capacity (training only): each expert takes at most C = ceil(N * k / E * expert_capacity_factor)
of a batch's N * k token assignments; beyond that the assignments with the lowest router
probability are dropped. A dropped assignment adds nothing, so a token whose every choice was
dropped passes through the block's residual unchanged. Eval mode (and so decoding) never drops.

Load balancing (Switch eq. 4): aux = moe_aux_weight * E * sum_i f_i P_i, f_i the share of the
N * k assignments routed to expert i (before capacity), P_i the mean router probability of
expert i. Uniform routing gives exactly moe_aux_weight; collapse onto k experts gives E / k
times that. Optional router z-loss (ST-MoE, Zoph et al., 2022, https://arxiv.org/abs/2202.08906):
moe_z_loss_weight * mean(logsumexp(logits)^2).

Grouped compute: the assignments are sorted by expert and each expert runs ONE batched forward
on its rows (a loop over the E experts, never over tokens); one host sync reads the per-expert
counts to split the rows. The experts stay separate 2-D BitLinear modules rather than one stacked
[E, F, D] tensor fed to torch._grouped_mm: each expert keeps its own absmean scale (what the
GGUF's per-expert ternary blocks store) and Muon orthogonalises each expert's matrix on its own.

State-dict names (the export contract, see export/gguf_moe.py):
  blocks.{i}.ffn.router.weight                     [E, D]   float32
  blocks.{i}.ffn.experts.{e}.{gate,up,down}_proj.weight, blocks.{i}.ffn.experts.{e}.sub_norm.weight
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ffn import SwiGLU


def is_moe_layer(cfg, layer_idx: int) -> bool:
    """Whether block `layer_idx`'s FFN is an MoE: every `moe_layer_interval`-th layer (k-1, 2k-1, ...)."""
    return bool(cfg.use_moe) and (layer_idx + 1) % cfg.moe_layer_interval == 0


def make_ffn(cfg, layer_idx: int) -> nn.Module:
    """The FFN of block `layer_idx`: an MoE or the dense SwiGLU."""
    return MoE(cfg) if is_moe_layer(cfg, layer_idx) else SwiGLU(cfg)


def expert_capacity(n_tokens: int, k: int, n_experts: int, capacity_factor: float) -> int:
    """C = ceil(tokens * k / experts * capacity_factor): assignments one expert takes per batch."""
    return int(math.ceil(n_tokens * k / n_experts * capacity_factor))


@dataclass
class Routing:
    """The kept assignments of a batch, sorted by expert (see route())."""

    token: torch.Tensor  # [M] int64: the token (row) of each kept assignment
    weight: torch.Tensor  # [M] float32: its renormalised router weight
    counts: torch.Tensor  # [E] int64: kept assignments per expert (rows of `token` in expert order)
    routed: torch.Tensor  # [E] int64: assignments per expert before capacity
    dropped: torch.Tensor  # [] int64: assignments dropped by capacity


def route(probs: torch.Tensor, k: int, capacity: int | None) -> Routing:
    """Top-k routing of router probabilities [N, E] with an optional per-expert capacity.

    Within an expert, assignments are ranked by router probability (highest first; ties by
    token order) and those ranked >= capacity are dropped."""
    N, E = probs.shape
    top_p, top_e = probs.topk(k, dim=-1)  # [N, k]
    weights = top_p / top_p.sum(-1, keepdim=True)
    flat_e, flat_p = top_e.reshape(-1), top_p.reshape(-1)
    routed = torch.bincount(flat_e, minlength=E)
    # sort by expert, and inside an expert by descending probability (two stable sorts)
    by_p = torch.argsort(flat_p, descending=True, stable=True)
    order = by_p[torch.argsort(flat_e[by_p], stable=True)]
    if capacity is not None:
        starts = torch.cumsum(routed, 0) - routed
        rank = torch.arange(order.numel(), device=probs.device) - starts[flat_e[order]]
        order = order[rank < capacity]
        counts = routed.clamp(max=capacity)
    else:
        counts = routed
    return Routing(token=order // k, weight=weights.reshape(-1)[order], counts=counts, routed=routed,
                   dropped=routed.sum() - counts.sum())


def load_balance_loss(probs: torch.Tensor, routed: torch.Tensor, weight: float) -> torch.Tensor:
    """Switch loss weight * E * sum_i f_i P_i (f_i: share of assignments, P_i: mean probability)."""
    E = probs.shape[-1]
    f = routed.to(probs.dtype) / routed.sum().clamp_min(1)
    return weight * E * (f * probs.mean(0)).sum()


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_experts, self.top_k = cfg.num_experts, cfg.num_active_experts
        self.capacity_factor = cfg.expert_capacity_factor
        self.aux_weight, self.z_weight = cfg.moe_aux_weight, cfg.moe_z_loss_weight
        self.router = nn.Linear(cfg.hidden_dim, cfg.num_experts, bias=False)  # never a BitLinear
        self.experts = nn.ModuleList(SwiGLU(cfg, cfg.expert_ffn_hidden) for _ in range(cfg.num_experts))
        self.aux_loss: torch.Tensor | None = None  # of the last forward (with its graph)
        self.stats: dict[str, torch.Tensor] = {}  # of the last forward (detached, on the device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N = x.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())  # the router in float32
        probs = torch.softmax(logits, dim=-1)
        capacity = expert_capacity(N, self.top_k, self.num_experts, self.capacity_factor) if self.training else None
        r = route(probs, self.top_k, capacity)

        aux = load_balance_loss(probs, r.routed, self.aux_weight)
        if self.z_weight:
            aux = aux + self.z_weight * torch.logsumexp(logits, dim=-1).square().mean()
        self.aux_loss = aux
        share = r.routed.float() / max(N * self.top_k, 1)
        self.stats = {"dropped_fraction": r.dropped.float() / max(N * self.top_k, 1),
                      "expert_load_max": share.max(), "expert_load_min": share.min()}

        out = torch.zeros_like(x)
        if r.token.numel() == 0:
            return out.view(shape)
        rows = x[r.token]  # [M, D], grouped by expert
        parts = []
        for e, (expert, chunk) in enumerate(zip(self.experts, rows.split(r.counts.tolist()))):
            if chunk.shape[0]:
                parts.append(expert(chunk))
        y = torch.cat(parts) * r.weight.to(x.dtype)[:, None]
        return out.index_add_(0, r.token, y.to(out.dtype)).view(shape)


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The MoE auxiliary loss of the last forward, averaged over the MoE layers (None: no MoE)."""
    losses = [m.aux_loss for m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).mean() if losses else None


@torch.no_grad()
def moe_stats(model: nn.Module) -> dict[str, float]:
    """TensorBoard scalars of the last forward: mean dropped fraction, busiest and idlest expert share."""
    stats = [m.stats for m in moe_layers(model) if m.stats]
    if not stats:
        return {}
    return {"moe/dropped_fraction": float(torch.stack([s["dropped_fraction"] for s in stats]).mean()),
            "moe/expert_load_max": float(torch.stack([s["expert_load_max"] for s in stats]).max()),
            "moe/expert_load_min": float(torch.stack([s["expert_load_min"] for s in stats]).min())}


def moe_param_counts(model: nn.Module) -> dict[str, int]:
    """Expert parameters in total and those a token does not use (E - k experts per MoE layer)."""
    experts = inactive = 0
    for m in moe_layers(model):
        per_expert = sum(p.numel() for p in m.experts[0].parameters())
        experts += per_expert * m.num_experts
        inactive += per_expert * (m.num_experts - m.top_k)
    return {"experts": experts, "inactive": inactive}
