"""Which model tensors go into the GGUF, under which llama.cpp name, and in which encoding.

Why this module exists: the mapping from our state-dict names (model/gpt.py docstring) to
llama.cpp's tensor names is the heart of the GGUF contract; the exporter writes by it, and the
tests and the engine can check a file against it. Ternary projections are packed as TQ2_0/TQ1_0
with the block scale d equal to the absmean scale of the weights' row-group, which is exact
because every 256-weight block lies inside one scale group (the group size is a multiple of 256).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from ..config import QK_K, ModelConfig
from ..errors import ConfigError, FormatError, NotSupportedError
from ..model.bitlinear import quantize_weight
from . import QUANT_NAMES, gguf_deltanet
from ..model.moe import is_moe_layer
from .gguf_moe import MOE_TENSORS

QUANT_TYPES = dict(zip(QUANT_NAMES, (GGMLQuantizationType.TQ2_0, GGMLQuantizationType.TQ1_0, GGMLQuantizationType.F16)))

# per block: state-dict suffix -> GGUF suffix, and whether it is a projection (else a norm)
_BLOCK_TENSORS = [
    ("attn_norm.weight", "attn_norm.weight", False),
    ("attn.q_proj.weight", "attn_q.weight", True),
    ("attn.k_proj.weight", "attn_k.weight", True),
    ("attn.v_proj.weight", "attn_v.weight", True),
    ("attn.sub_norm.weight", "attn_sub_norm.weight", False),
    ("attn.o_proj.weight", "attn_output.weight", True),
    ("ffn_norm.weight", "ffn_norm.weight", False),
    ("ffn.gate_proj.weight", "ffn_gate.weight", True),
    ("ffn.up_proj.weight", "ffn_up.weight", True),
    ("ffn.sub_norm.weight", "ffn_sub_norm.weight", False),
    ("ffn.down_proj.weight", "ffn_down.weight", True),
]
_MTP_TENSORS = [("norm_in.weight", False), ("proj.weight", True), ("norm_out.weight", False)]
_MHC_KEY = re.compile(r"^blocks\.\d+\.mhc\.(res|pre|post)_logits$")


@dataclass
class TensorSpec:
    gguf_name: str
    state_key: str
    kind: str  # "embed" | "norm" | "proj" | "float" (F32 matrix) | "router" (F32 matrix)


def tensor_plan(cfg: ModelConfig, state_keys: list[str], write_mtp: bool) -> list[TensorSpec]:
    """The GGUF tensors, in file order; refuses state-dict entries it does not know how to write."""
    plan = [TensorSpec("token_embd.weight", "embed.weight", "embed")]
    dn_layers = set(gguf_deltanet.layers_of(cfg))
    for i in range(cfg.num_layers):
        moe = is_moe_layer(cfg, i)
        for ours, theirs, is_proj in _BLOCK_TENSORS[:7] if moe else _BLOCK_TENSORS:
            if i in dn_layers and theirs in gguf_deltanet.REPLACES:
                continue
            plan.append(TensorSpec(f"blk.{i}.{theirs}", f"blocks.{i}.{ours}", "proj" if is_proj else "norm"))
        if i in dn_layers:  # Gated DeltaNet mixer tensors (gguf_deltanet.py)
            plan += [TensorSpec(f"blk.{i}.{theirs}", f"blocks.{i}.attn.{ours}", kind) for ours, theirs, kind in gguf_deltanet.TENSORS]
        if moe:  # the dense FFN tensors give way to the router and the stacked experts (gguf_moe.py)
            plan += [TensorSpec(f"blk.{i}.{theirs}", f"blocks.{i}.{ours}", kind) for ours, theirs, kind in MOE_TENSORS]
    plan.append(TensorSpec("output_norm.weight", "norm.weight", "norm"))
    n_mtp = cfg.mtp_n_tokens if cfg.use_mtp else 0
    if write_mtp:
        for k in range(n_mtp):
            for suffix, is_proj in _MTP_TENSORS:
                plan.append(TensorSpec(f"mtp.{k}.{suffix}", f"mtp.{k}.{suffix}", "proj" if is_proj else "norm"))
    keys = set(state_keys)
    missing = [s.state_key for s in plan if s.state_key not in keys]
    if missing:
        raise FormatError(f"model state dict lacks {missing[:3]} (config and weights disagree)")
    planned = {s.state_key for s in plan}
    for key in state_keys:
        if key in planned or _MHC_KEY.match(key) or (key.startswith("mtp.") and not write_mtp):
            continue
        raise NotSupportedError(f"model tensor '{key}' has no GGUF mapping; export does not support it")
    return plan


def check_quantizable(cfg: ModelConfig, quant: str) -> GGMLQuantizationType:
    """The GGML type for projections, after checking that the ternary scales pack exactly."""
    if quant not in QUANT_TYPES:
        raise ConfigError(f"unknown quant {quant!r} (expected one of {', '.join(QUANT_TYPES)})")
    if not cfg.use_bitlinear:
        return GGMLQuantizationType.F16  # a dense model has no ternary weights to pack
    if cfg.group_size % QK_K:
        raise ConfigError(
            f"model.group_size ({cfg.group_size}) is not a multiple of {QK_K}: its scales cannot be "
            f"stored exactly in GGUF ternary blocks of {QK_K} weights"
        )
    qtype = QUANT_TYPES[quant]
    if qtype != GGMLQuantizationType.F16:
        for name, n_in in (("model.hidden_dim", cfg.hidden_dim), ("FFN hidden size", cfg.ffn_hidden),
                           ("expert hidden size", cfg.expert_ffn_hidden)):
            if n_in % QK_K:
                raise ConfigError(f"{name} ({n_in}) is not a multiple of {QK_K}; cannot pack {quant}")
    return qtype


def encode_tensor(spec: TensorSpec, w: torch.Tensor, cfg: ModelConfig, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """The bytes (or float array) to store for one tensor, and its GGML type.

    Projections of a ternary model hold the effective weights t * scale: packed as TQ2_0/TQ1_0
    (gguf's quantizer takes d = the block's absmax, which is exactly the group's absmean scale
    because every entry is 0 or +-scale), or as F16 values with `--quant f16`. A dense model's
    projections are its raw weights in F16. Norms are F32, the tied embedding F16.
    """
    w = w.detach().float().cpu()
    if spec.kind in ("norm", "router"):
        return w.numpy().astype(np.float32), GGMLQuantizationType.F32
    if spec.kind == "embed":
        return w.numpy().astype(np.float16), GGMLQuantizationType.F16
    if spec.kind == "float":  # a full-precision matrix (DeltaNet's a, b, conv), stored 2-D
        return w.reshape(w.shape[0], -1).numpy().astype(np.float32), GGMLQuantizationType.F32
    if cfg.use_bitlinear:  # stacked experts [E, N, K]: each expert has its own scale
        w = quantize_weight(w, cfg.group_size) if w.ndim == 2 else torch.stack([quantize_weight(x, cfg.group_size) for x in w])
    arr = w.numpy().astype(np.float32)
    if qtype == GGMLQuantizationType.F16:
        return arr.astype(np.float16), qtype
    return quantize(arr, qtype), qtype
