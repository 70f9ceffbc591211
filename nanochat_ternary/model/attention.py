"""Grouped-query causal self-attention with RoPE and a sub-norm before the output projection.

GQA (Ainslie et al., 2023, https://arxiv.org/abs/2305.13245): `num_kv_heads` key/value heads
shared by groups of query heads. The RMSNorm on the attention output before `o_proj` is BitNet's
SubLN (llama.cpp's `attn_sub_norm`): it keeps the input of a ternary projection well scaled.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native_ops
from .bitlinear import make_linear, shared_input_linear
from .norm import RMSNorm
from .rope import apply_rope


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        d = cfg.hidden_dim
        self.q_proj = make_linear(d, self.n_head * self.head_dim, cfg)
        self.k_proj = make_linear(d, self.n_kv * self.head_dim, cfg)
        self.v_proj = make_linear(d, self.n_kv * self.head_dim, cfg)
        self.sub_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.o_proj = make_linear(d, d, cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        nq, nkv = self.n_head * self.head_dim, self.n_kv * self.head_dim
        qkv = shared_input_linear(x, [self.q_proj, self.k_proj, self.v_proj])
        native = native_ops.usable(qkv, cos, sin)
        if native:  # q and k rotated in one native pass, read in place
            qk, v = qkv.split([nq + nkv, nkv], dim=-1)
            q, k = native_ops.rope(qk, cos, sin, self.head_dim).split([nq, nkv], dim=-1)
        else:
            q, k, v = qkv.split([nq, nkv, nkv], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if not native:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(self.sub_norm(y))
