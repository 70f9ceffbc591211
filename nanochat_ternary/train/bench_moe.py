"""The MoE pair of `nanochat bench train --moe` (and `bench infer --moe`): 8x2 MoE vs dense.

Why this module exists: an MoE model is worth its routing cost only if a step costs about what a
dense model with the same *active* parameters costs. This module builds that pair from a config's
width: the MoE has 8 experts, 2 active, each of hidden size F_e = expert_ffn_mult (default
ffn_mult / 2) x hidden_dim rounded to 256; the dense model's FFN hidden size is exactly 2 x F_e,
so both run the same matmul sizes per token (plus the MoE's router) and differ only in routing,
gathering and the per-expert calls.
"""

from __future__ import annotations

import math

from ..config import QK_K, ModelConfig

N_EXPERTS, N_ACTIVE = 8, 2


def moe_pair(m: ModelConfig) -> dict[str, dict]:
    """Model-config overrides {variant name: overrides} of the active-parameter-matched pair."""
    expert_mult = m.expert_ffn_mult or m.ffn_mult / N_ACTIVE
    expert_hidden = int(math.ceil(expert_mult * m.hidden_dim / QK_K) * QK_K)
    return {
        "dense_active_matched": {"use_moe": False, "ffn_mult": N_ACTIVE * expert_hidden / m.hidden_dim},
        "moe_8x2": {"use_moe": True, "num_experts": N_EXPERTS, "num_active_experts": N_ACTIVE,
                    "expert_ffn_mult": expert_hidden / m.hidden_dim, "moe_layer_interval": 1},
    }


def moe_ratios(variants: dict) -> dict:
    """MoE step time over the dense model's (1.0: routing is free)."""
    return {"moe_vs_dense_step_time": round(variants["moe_8x2"]["step_time_s"] / variants["dense_active_matched"]["step_time_s"], 3)}
