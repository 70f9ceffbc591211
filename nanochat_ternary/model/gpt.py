"""The decoder-only ternary transformer: blocks, mHC streams, tied head, MTP heads, counts.

Pre-norm blocks `x + attn(norm(x))`, then `+ ffn(norm(.))`; with mHC (n > 1 streams) the block's
residual branch F(x) = attn + ffn is routed by `MHC` (see mhc.py). The embedding and the LM head
share one full-precision matrix (`embed.weight`); every projection inside the blocks and the MTP
heads is a BitLinear when `use_bitlinear`.

State-dict names (the export contract):
  embed.weight                      [V, D]
  blocks.{i}.attn_norm.weight       [D]
  blocks.{i}.attn.{q,k,v,o}_proj.weight, blocks.{i}.attn.sub_norm.weight [D]
  blocks.{i}.attn.{q,k,v,g,o}_proj.weight, .a_proj/.b_proj.weight [H, D], .conv.weight [C, 1, 4],
      .A_log [H], .dt_bias [H], .o_norm.weight [hd]   (instead, on Gated DeltaNet layers: deltanet.py)
  blocks.{i}.ffn_norm.weight        [D]
  blocks.{i}.ffn.{gate,up,down}_proj.weight, blocks.{i}.ffn.sub_norm.weight [F]
    (MoE layers instead: blocks.{i}.ffn.router.weight [E, D], blocks.{i}.ffn.experts.{e}.*; moe.py)
  blocks.{i}.mhc.{res,pre,post}_logits   (only when mhc_n_streams > 1)
  norm.weight                       [D]
  mtp.{k}.norm_in.weight, mtp.{k}.proj.weight [D, D], mtp.{k}.norm_out.weight  (when use_mtp)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .attention import Attention
from .bitlinear import make_linear
from .deltanet import GatedDeltaNet, deltanet_layers
from .mhc import MHC, composite_gain
from .moe import is_moe_layer, make_ffn, moe_param_counts
from .norm import RMSNorm
from .rope import rope_tables


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        # the token mixer: full attention, or a Gated DeltaNet on the layers deltanet_layers picks
        self.attn = GatedDeltaNet(cfg) if layer_idx in deltanet_layers(cfg.num_layers, cfg.deltanet_ratio) else Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        self.ffn = make_ffn(cfg, layer_idx)  # dense SwiGLU or an MoE (moe.py)
        self.mhc = MHC(cfg.mhc_n_streams, layer_idx, cfg.mhc_post_main) if cfg.mhc_n_streams > 1 else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.mhc is None:  # n = 1: exactly the plain residual
            x = x + self.attn(self.attn_norm(x), cos, sin)
            return x + self.ffn(self.ffn_norm(x))
        h = self.mhc.read(x)
        a = self.attn(self.attn_norm(h), cos, sin)
        f = self.ffn(self.ffn_norm(h + a))
        return self.mhc.write(x, a + f)


class MTPHead(nn.Module):
    """Predicts token t + 1 + k from the trunk state at t: norm_out(z + proj(norm_in(z)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_in = RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        self.proj = make_linear(cfg.hidden_dim, cfg.hidden_dim, cfg)
        self.norm_out = RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm_out(z + self.proj(self.norm_in(z)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gradient_checkpointing = False
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        self.mtp = nn.ModuleList(MTPHead(cfg) for _ in range(cfg.mtp_n_tokens)) if cfg.use_mtp else nn.ModuleList()
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2 style init: N(0, 0.02), output projections scaled by 1/sqrt(2 * layers)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        out_std = 0.02 / math.sqrt(2 * self.cfg.num_layers)
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in self.modules():
            if isinstance(m, nn.RMSNorm):
                m.weight.fill_(1.0)
            if isinstance(m, MHC):  # back to the near-identity init
                m.__init__(m.n, m.layer_idx, m.post_main)
            if isinstance(m, GatedDeltaNet):  # decay/dt gates and conv: fla's init, seeded
                m.reset_gates(gen)

    def trunk(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> trunk state z [B, T, D] (streams averaged, before the final norm)."""
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.embed(idx)
        n = self.cfg.mhc_n_streams
        if n > 1:
            x = x.unsqueeze(0).expand(n, -1, -1, -1).contiguous()  # [n, B, T, D]: n copies
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        return x.mean(dim=0) if n > 1 else x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Tied LM head: logits = h @ embed^T."""
        return h @ self.embed.weight.t()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.trunk(idx)))

    def forward_with_mtp(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Main logits and, per MTP head k (k = 1..), logits predicting token t + 1 + k."""
        z = self.trunk(idx)
        return self.head(self.norm(z)), [self.head(m(z)) for m in self.mtp]

    def hidden_with_mtp(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """What `forward_with_mtp` feeds the head: final-norm states and each MTP head's states.

        The loss applies the head to these in chunks (train/chunked_head.py) instead of holding
        all logits.
        """
        z = self.trunk(idx)
        return self.norm(z), [m(z) for m in self.mtp]

    def h_res_matrices(self) -> list[torch.Tensor]:
        return [b.mhc.h_res() for b in self.blocks if b.mhc is not None]

    @torch.no_grad()
    def mhc_composite_gain(self) -> float:
        return composite_gain([h.float().cpu() for h in self.h_res_matrices()])


def count_params(model: GPT) -> dict:
    """Parameter counts: total (all), embedding (tied, counted once), MTP heads, non-embedding trunk,
    and `active`: the parameters one token uses (total minus the E - k unchosen experts of MoE layers)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel()
    mtp = sum(p.numel() for p in model.mtp.parameters())
    ternary = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return {
        "total": total,
        "non_embedding": total - embedding - mtp,
        "embedding": embedding,
        "mtp": mtp,
        "linear_weights": ternary,
        "active": total - moe_param_counts(model)["inactive"],
    }


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * matmul params + attention scores (Kaplan et al. 2020 / PaLM)."""
    d, f, L = cfg.hidden_dim, cfg.ffn_hidden, cfg.num_layers
    kv = cfg.num_kv_heads * cfg.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f
    n_moe = sum(is_moe_layer(cfg, i) for i in range(L))
    moe_ffn = cfg.num_active_experts * 3 * d * cfg.expert_ffn_hidden + d * cfg.num_experts  # active experts + router
    n_matmul = L * per_layer + n_moe * (moe_ffn - 3 * d * f) + cfg.vocab_size * d + (cfg.mtp_n_tokens * (d * d + cfg.vocab_size * d) if cfg.use_mtp else 0)
    return 6 * n_matmul + 12 * L * d * seq_len
