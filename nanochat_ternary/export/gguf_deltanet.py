"""The GGUF layout of Gated DeltaNet layers: tensor names, encodings, shapes and metadata keys.

Why this module exists: the exporter (gguf_tensors.py) and the engine's reader
(infer/gguf_model.py) must agree on how a hybrid model's DeltaNet layers are stored; this is the
one place that says it. A hybrid model is always written under the project's architecture
("nanochat"); llama.cpp has no Gated DeltaNet for the `bitnet` architecture.

Metadata (only in files with DeltaNet layers; a file without the keys has none):
  nanochat.deltanet.layers        array of uint32: the block indices that are DeltaNet layers
  nanochat.deltanet.head_count    H (the model's num_heads)
  nanochat.deltanet.key_length    d_k (head_dim)
  nanochat.deltanet.value_length  d_v (head_dim)
  nanochat.deltanet.conv_kernel   K (4)

Tensors of a DeltaNet block i (instead of attn_q/k/v/attn_sub_norm/attn_output; attn_norm, the
FFN tensors and the .mhc entry are those of any block). C = 2 H d_k + H d_v conv channels.
  blk.{i}.dn_q.weight        [H d_k, D]   ternary (TQ2_0/TQ1_0) like every BitLinear
  blk.{i}.dn_k.weight        [H d_k, D]   ternary
  blk.{i}.dn_v.weight        [H d_v, D]   ternary
  blk.{i}.dn_gate.weight     [H d_v, D]   ternary, the output gate g
  blk.{i}.dn_output.weight   [D, H d_v]   ternary, o_proj
  blk.{i}.dn_a.weight        [H, D]       F32, decay input a (full precision in training too)
  blk.{i}.dn_b.weight        [H, D]       F32, write strength b (beta = sigmoid(b x))
  blk.{i}.dn_conv.weight     [C, K]       F32, depthwise causal conv over q|k|v
  blk.{i}.dn_a_log           [H]          F32, decay g = -exp(A_log) softplus(a x + dt_bias)
  blk.{i}.dn_dt_bias         [H]          F32
  blk.{i}.dn_norm.weight     [d_v]        F32, per-head RMSNorm of the read-out
"""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import FormatError
from ..model.deltanet import CONV_KERNEL, deltanet_layers

# state-dict suffix under blocks.{i}.attn. -> GGUF suffix under blk.{i}., and the kind:
# "proj" (ternary/F16 projection), "float" (an F32 matrix stored 2-D), "norm" (an F32 vector)
TENSORS = [
    ("q_proj.weight", "dn_q.weight", "proj"),
    ("k_proj.weight", "dn_k.weight", "proj"),
    ("v_proj.weight", "dn_v.weight", "proj"),
    ("g_proj.weight", "dn_gate.weight", "proj"),
    ("a_proj.weight", "dn_a.weight", "float"),
    ("b_proj.weight", "dn_b.weight", "float"),
    ("conv.weight", "dn_conv.weight", "float"),
    ("A_log", "dn_a_log", "norm"),
    ("dt_bias", "dn_dt_bias", "norm"),
    ("o_norm.weight", "dn_norm.weight", "norm"),
    ("o_proj.weight", "dn_output.weight", "proj"),
]
# the attention tensors a DeltaNet block does not have (GGUF suffixes)
REPLACES = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_sub_norm.weight", "attn_output.weight")
KEY = "nanochat.deltanet."


def layers_of(cfg: ModelConfig) -> list[int]:
    return deltanet_layers(cfg.num_layers, cfg.deltanet_ratio)


def add_metadata(writer, cfg: ModelConfig) -> None:
    """Write the nanochat.deltanet.* keys (only for a model that has DeltaNet layers)."""
    layers = layers_of(cfg)
    if not layers:
        return
    writer.add_array(KEY + "layers", layers)
    writer.add_uint32(KEY + "head_count", cfg.num_heads)
    writer.add_uint32(KEY + "key_length", cfg.head_dim)
    writer.add_uint32(KEY + "value_length", cfg.head_dim)
    writer.add_uint32(KEY + "conv_kernel", CONV_KERNEL)


def shapes(H: int, dk: int, dv: int, K: int, dim: int) -> dict[str, tuple[int, ...]]:
    """GGUF suffix -> shape [rows, cols] (or [n]) of every DeltaNet tensor."""
    C = 2 * H * dk + H * dv
    return {"dn_q.weight": (H * dk, dim), "dn_k.weight": (H * dk, dim), "dn_v.weight": (H * dv, dim),
            "dn_gate.weight": (H * dv, dim), "dn_output.weight": (dim, H * dv), "dn_a.weight": (H, dim),
            "dn_b.weight": (H, dim), "dn_conv.weight": (C, K), "dn_a_log": (H,), "dn_dt_bias": (H,), "dn_norm.weight": (dv,)}


def read_hparams(meta, hp) -> None:
    """Fill hp.dn_* from the nanochat.deltanet.* keys of a GGUF (`meta`: gguf_model._Meta), checked."""
    layers = meta.get(KEY + "layers", list, [], required=False)
    if not layers:
        return
    if any(not isinstance(i, int) or not 0 <= i < hp.n_layers - 1 for i in layers) or len(set(layers)) != len(layers):
        raise FormatError(f"{meta.path}: {KEY}layers {layers} must be distinct block indices below the last block")
    hp.dn_layers = tuple(int(i) for i in layers)
    hp.dn_heads, hp.dn_dk, hp.dn_dv, hp.dn_conv = (meta.get(KEY + k, int) for k in ("head_count", "key_length", "value_length", "conv_kernel"))
    if min(hp.dn_heads, hp.dn_dk, hp.dn_dv) <= 0 or not 1 <= hp.dn_conv <= 16:
        raise FormatError(f"{meta.path}: DeltaNet heads/key/value lengths must be positive and conv_kernel in 1..16")
    if hp.arch != "nanochat":
        raise FormatError(f"{meta.path}: a '{hp.arch}' file cannot have Gated DeltaNet layers")


def tensor_names(hp, i: int) -> tuple[list[tuple[str, object]], list[tuple[str, tuple[int, int]]]]:
    """For the reader: DeltaNet block i's (name, shape) lists, projections and vectors (an int
    shape is a vector, a pair a projection) and full-precision matrices."""
    sh = shapes(hp.dn_heads, hp.dn_dk, hp.dn_dv, hp.dn_conv, hp.dim)
    names, floats = [], []
    for _, suffix, kind in TENSORS:
        name = f"blk.{i}.{suffix}"
        if kind == "float":
            floats.append((name, sh[suffix]))
        else:
            names.append((name, sh[suffix][0] if kind == "norm" else sh[suffix]))
    return names, floats
