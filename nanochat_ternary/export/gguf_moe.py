"""Mixture-of-experts layers in the GGUF: stacked expert tensors in llama.cpp's naming.

Why this module exists: the training model keeps each expert as its own SwiGLU module
(model/moe.py), llama.cpp stores the experts of a layer as one stacked 3-D tensor per
projection. This module is the one place that maps between the two, for the exporter and for
the engine's reader (infer/gguf_model.py). An MoE model is written under the project's own
architecture name ("nanochat"; llama.cpp has no ternary MoE with sub-norms).

Tensors of an MoE layer i (shapes as [outer, ..., inner]; GGUF lists them innermost first):
  blk.{i}.ffn_gate_inp.weight       [E, D]     F32          the router (kept in full precision)
  blk.{i}.ffn_gate_exps.weight      [E, F, D]  TQ2_0/TQ1_0  the experts' gate projections
  blk.{i}.ffn_up_exps.weight        [E, F, D]  TQ2_0/TQ1_0  the experts' up projections
  blk.{i}.ffn_sub_norm_exps.weight  [E, F]     F32          the experts' sub-norms (ours, no llama.cpp name)
  blk.{i}.ffn_down_exps.weight      [E, D, F]  TQ2_0/TQ1_0  the experts' down projections
(F = the expert hidden size; F16 values instead of ternary blocks for a dense model or --quant f16).
Each expert's ternary weights carry its own absmean scale in the block scales. blk.{i}.ffn_norm
stays as in a dense layer.

Metadata (GGUFWriter puts the standard keys under the architecture prefix "nanochat."):
  nanochat.expert_count, nanochat.expert_used_count, nanochat.expert_feed_forward_length,
  nanochat.expert_weights_norm (true: the top-k weights are renormalised), nanochat.expert_gating_func
  (1: softmax), and nanochat.moe.layer_interval (every k-th layer is MoE: layers k-1, 2k-1, ...).
"""

from __future__ import annotations

import torch
from gguf import ExpertGatingFuncType, GGUFWriter

from ..config import ModelConfig
from ..model.moe import is_moe_layer

# stacked state-dict suffix (built by stack_experts) -> GGUF suffix, kind
MOE_TENSORS = [
    ("ffn.router.weight", "ffn_gate_inp.weight", "router"),
    ("ffn.experts_stacked.gate_proj.weight", "ffn_gate_exps.weight", "proj"),
    ("ffn.experts_stacked.up_proj.weight", "ffn_up_exps.weight", "proj"),
    ("ffn.experts_stacked.sub_norm.weight", "ffn_sub_norm_exps.weight", "norm"),
    ("ffn.experts_stacked.down_proj.weight", "ffn_down_exps.weight", "proj"),
]
_PARTS = ("gate_proj.weight", "up_proj.weight", "sub_norm.weight", "down_proj.weight")


def stack_experts(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict with each MoE layer's per-expert tensors replaced by stacked ones [E, ...]."""
    if not cfg.use_moe:
        return state
    out = dict(state)
    for i in range(cfg.num_layers):
        if not is_moe_layer(cfg, i):
            continue
        for part in _PARTS:
            keys = [f"blocks.{i}.ffn.experts.{e}.{part}" for e in range(cfg.num_experts)]
            if not all(k in out for k in keys):
                continue  # tensor_plan reports the missing stacked tensor
            out[f"blocks.{i}.ffn.experts_stacked.{part}"] = torch.stack([out.pop(k) for k in keys])
    return out


def add_moe_hparams(w: GGUFWriter, cfg: ModelConfig) -> None:
    if not cfg.use_moe:
        return
    w.add_expert_count(cfg.num_experts)
    w.add_expert_used_count(cfg.num_active_experts)
    w.add_expert_feed_forward_length(cfg.expert_ffn_hidden)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX)
    w.add_uint32("nanochat.moe.layer_interval", cfg.moe_layer_interval)
