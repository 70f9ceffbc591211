"""SwiGLU feed-forward (Shazeer, 2020, https://arxiv.org/abs/2002.05202) with a sub-norm.

down(sub_norm(silu(gate(x)) * up(x))); the RMSNorm before `down` is BitNet's SubLN
(llama.cpp's `ffn_sub_norm`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native_ops
from .bitlinear import make_linear, shared_input_linear
from .norm import RMSNorm


class SwiGLU(nn.Module):
    def __init__(self, cfg, hidden: int | None = None):
        super().__init__()
        d, h = cfg.hidden_dim, hidden or cfg.ffn_hidden
        self.gate_proj = make_linear(d, h, cfg)
        self.up_proj = make_linear(d, h, cfg)
        self.sub_norm = RMSNorm(h, eps=cfg.norm_eps)
        self.down_proj = make_linear(h, d, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gu = shared_input_linear(x, [self.gate_proj, self.up_proj])
        if native_ops.usable(gu):
            return self.down_proj(self.sub_norm(native_ops.swiglu(gu)))
        gate, up = gu.chunk(2, dim=-1)
        return self.down_proj(self.sub_norm(F.silu(gate) * up))
