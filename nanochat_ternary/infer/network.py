"""The transformer forward of the inference engine, built from a decoded GGUF (no training code).

Why this module exists: the engine needs the same maths as model/gpt.py (pre-norm blocks, GQA
attention with NEOX RoPE and sub-norms, SwiGLU with a sub-norm, mHC stream routing, tied head,
MTP heads) on rows of tokens [N, D] instead of [B, T, D], with ternary projections on the fast
kernels and attention delegated to the KV cache. Projections that read the same input are fused
(q|k|v and gate|up) so one kernel call reads both weight sets.

Numerics follow the training model: RMSNorm (fused into the ternary kernel on the native
back-end, F.rms_norm otherwise), activations entering a ternary projection quantized per token
exactly like bitlinear.quantize_activation, mHC's H matrices from model/mhc.py, and a tied head
whose top logits are exact float32 products with the F16 embedding (see tied_head).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.mhc import permutation_matrices, res_matrix
from .deltanet_mixer import DeltaNetMixer
from .gguf_model import GGUFModel, Projection
from .kv_cache import KVPool
from .kernels import dense_matmul, gather_dot, int8_matmul, make_dense, make_int8, make_ternary, quantize_activations, scratch_buffer, ternary_matmul, topk_indices
from .moe import MoEFFN, is_moe_layer

# attention(layer, qkv [N, (H + 2 kv) * hd] before RoPE) -> [N, H * hd] (RoPE, cache, attention)
Attend = Callable[[int, torch.Tensor], torch.Tensor]


class Linear:
    """One (possibly fused) projection: ternary on the kernels, or dense (F16/F32)."""

    def __init__(self, parts: list[Projection], bits: int, use_bitlinear: bool, lib: ctypes.CDLL | None):
        self.lib, self.bits = lib, bits
        self.splits = [p.n_out for p in parts]
        ternary = all(p.t is not None for p in parts)
        if ternary and len({p.scales.shape[1] for p in parts}) == 1:  # fusable: same scale groups
            self.ternary = make_ternary(torch.cat([p.t for p in parts]), torch.cat([p.scales for p in parts]), lib)
            self.dense = None
        elif ternary:  # different scale groups: fall back to per-block scales for all parts
            scales = [p.scales.repeat_interleave(p.n_in // 256 // p.scales.shape[1], dim=1) for p in parts]
            self.ternary, self.dense = make_ternary(torch.cat([p.t for p in parts]), torch.cat(scales), lib), None
        else:
            w = torch.cat([p.dense if p.dense is not None else _dequant(p) for p in parts])
            self.ternary, self.dense = None, make_dense(w, lib)
        # a BitLinear stored as plain floats still quantizes its input activations
        self.fake_quant = self.dense is not None and use_bitlinear

    def __call__(self, x: torch.Tensor, norm: torch.Tensor | None = None, eps: float = 1e-5, glu: bool = False) -> torch.Tensor:
        """Project x [M, K] (or gate|up [M, 2K] with `glu`: silu(gate) * up), after an optional
        RMSNorm with gain `norm`; the native ternary kernel fuses those steps."""
        if self.ternary is not None:
            return ternary_matmul(x, self.ternary, self.bits, self.lib, norm, eps, glu)
        if glu:
            gate, up = x.split(x.shape[-1] // 2, dim=-1)
            x = F.silu(gate) * up
        if norm is not None:
            x = F.rms_norm(x, (x.shape[-1],), norm, eps)
        if self.fake_quant:
            xq, scale = quantize_activations(x, self.bits)
            x = xq.float() / scale
        return dense_matmul(x, self.dense, self.lib)

    def nbytes(self) -> int:
        return (self.ternary or self.dense).nbytes()


def native_trunk_plan(layers: list[Layer], lib: ctypes.CDLL | None) -> torch.Tensor | None:
    """The int64 table nc_trunk runs the layers from (native/csrc/nc_trunk.c: per layer four norm gains,
    qkv, o, gate_up, down as packed weights, scales, N, K, G, then mHC's H_pre, H_res, H_post), or
    None when a layer is not an attention + SwiGLU layer of ternary projections on the native
    kernels (DeltaNet, MoE, dense weights): those models run trunk() op by op."""
    if lib is None:
        return None
    rows = []
    for L in layers:
        projs = (L.qkv, L.o, L.gate_up, L.down)
        if L.mixer is not None or L.moe is not None or any(p is None or p.ternary is None or p.ternary.packed is None for p in projs):
            return None
        floats = (L.attn_norm, L.attn_sub_norm, L.ffn_norm, L.ffn_sub_norm, L.h_pre, L.h_res, L.h_post)
        if any(t is not None and (t.dtype != torch.float32 or not t.is_contiguous()) for t in floats):
            return None
        row = [0 if t is None else t.data_ptr() for t in floats[:4]]
        for p in projs:
            w = p.ternary
            row += [w.packed.data_ptr(), w.scales.data_ptr(), w.n_out, w.n_in, w.groups]
        rows.append(row + [0 if t is None else t.data_ptr() for t in floats[4:]])
    return torch.tensor(rows, dtype=torch.int64)


def _dequant(p: Projection) -> torch.Tensor:
    g = p.scales.shape[1]
    return (p.t.float().reshape(p.n_out, g, -1) * p.scales[..., None]).reshape(p.n_out, p.n_in)


@dataclass
class Layer:
    attn_norm: torch.Tensor
    attn_sub_norm: torch.Tensor
    ffn_norm: torch.Tensor
    ffn_sub_norm: torch.Tensor
    qkv: Linear
    o: Linear
    gate_up: Linear
    down: Linear
    h_pre: torch.Tensor | None = None  # [1, n]
    h_res: torch.Tensor | None = None  # [n, n]
    h_post: torch.Tensor | None = None  # [n, 1]
    mixer: DeltaNetMixer | None = None  # a Gated DeltaNet layer (qkv, o, attn_sub_norm are None)
    moe: MoEFFN | None = None  # an MoE layer's FFN (gate_up, down and ffn_sub_norm are then None)


@dataclass
class MTPHead:
    norm_in: torch.Tensor
    proj: Linear
    norm_out: torch.Tensor


RESCORE_TOP = 64  # logits recomputed exactly after the int8 head
# heads up to this many weights (an F16 table of 1 MiB) are computed exactly: on such small
# tables the F16 product costs less than the int8 pass + top-k + rescoring (0.6x at 1024 x 256,
# even at 1024 x 768 and 2048 x 256; the int8 path wins from 4096 x 256 up, measured)
EXACT_HEAD_MAX_WEIGHTS = 1 << 19


class Network:
    def __init__(self, gm: GGUFModel, lib: ctypes.CDLL | None, exact_head: bool | None = None):
        hp = self.hp = gm.hp
        self.lib = lib
        self.eps = hp.norm_eps
        self.n_q, self.n_kv, self.hd = hp.n_heads, hp.n_kv_heads, hp.head_dim
        # the embedding table doubles as the tied head: lookups use it as is; the head reads an
        # int8 copy (half the bytes of F16; see head()), or the F16 table through the F16 kernel
        # (float32 accumulation), or a float32 copy on the torch back-end. exact_head: True forces
        # the F16 table, False the int8 copy, None picks by size (EXACT_HEAD_MAX_WEIGHTS)
        self.embed_table = gm.embed
        if exact_head is None:
            exact_head = hp.vocab_size * hp.dim <= EXACT_HEAD_MAX_WEIGHTS
        self.head_i8 = make_int8(gm.embed) if lib is not None and not exact_head and hp.dim % 64 == 0 else None
        self.head_weight = None if self.head_i8 is not None else make_dense(gm.embed, lib)
        self.out_norm = gm.norms["output_norm.weight"]
        lin = lambda names: Linear([gm.projections[n] for n in names], hp.activation_bits, hp.use_bitlinear, lib)  # noqa: E731
        perms = permutation_matrices(hp.n_streams) if hp.n_streams > 1 else None
        self.layers: list[Layer] = []
        # attention layers use KV-cache layers 0, 1, ... in order; DeltaNet layers have none
        self.kv_index = {i: j for j, i in enumerate(i for i in range(hp.n_layers) if i not in hp.dn_layers)}
        for i in range(hp.n_layers):
            b = f"blk.{i}."
            dn = i in hp.dn_layers
            moe = MoEFFN(gm, i, lin) if is_moe_layer(hp, i) else None  # its experts replace gate_up/down
            layer = Layer(
                gm.norms[b + "attn_norm.weight"], None if dn else gm.norms[b + "attn_sub_norm.weight"], gm.norms[b + "ffn_norm.weight"],
                gm.norms.get(b + "ffn_sub_norm.weight"), None if dn else lin([b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"]),
                None if dn else lin([b + "attn_output.weight"]), None if moe else lin([b + "ffn_gate.weight", b + "ffn_up.weight"]),
                None if moe else lin([b + "ffn_down.weight"]), mixer=DeltaNetMixer(gm, i, lin) if dn else None, moe=moe,
            )
            if perms is not None:  # mHC: H_pre = softmax, H_res = sum_k w_k P_k, H_post = 2 sigmoid
                m = gm.mhc
                layer.h_pre = torch.softmax(torch.from_numpy(m.pre_logits[i].copy()), dim=0)[None, :]
                layer.h_res = res_matrix(torch.from_numpy(m.res_logits[i].copy()), perms)
                layer.h_post = (2 * torch.sigmoid(torch.from_numpy(m.post_logits[i].copy())))[:, None]
            self.layers.append(layer)
        self.mtp = [MTPHead(gm.norms[f"mtp.{k}.norm_in.weight"], lin([f"mtp.{k}.proj.weight"]), gm.norms[f"mtp.{k}.norm_out.weight"])
                    for k in range(hp.n_mtp)]
        self.plan = native_trunk_plan(self.layers, lib)
        # nc_trunk's scratch for one row (its 64 bytes of alignment slack included): M rows need
        # at most M times that, as each region is rounded up to 64 bytes and M rounded-up regions
        # hold one region of M rows; asked once here rather than through ctypes every step
        self.plan_row_bytes = 0 if self.plan is None else lib.nc_trunk_scratch_bytes(1, hp.n_streams, len(self.layers), self.plan.data_ptr())

    def weight_bytes(self) -> dict:
        """In-memory bytes of the projection weights and of the embedding/head."""
        proj = sum(lin.nbytes() for L in self.layers for lin in (L.qkv, L.o, L.gate_up, L.down, L.mixer) if lin is not None)
        proj += sum(L.moe.nbytes() for L in self.layers if L.moe is not None)
        proj += sum(h.proj.nbytes() for h in self.mtp)
        return {"projections": proj, "embedding": self.embed_table.numel() * self.embed_table.element_size()}

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)

    def _attention(self, i: int, L: Layer, x: torch.Tensor, attend: Attend, recur=None) -> torch.Tensor:
        if L.mixer is not None:  # Gated DeltaNet: `recur` holds the rows' recurrent states
            return L.mixer(x, L.attn_norm, recur)
        y = attend(self.kv_index[i], L.qkv(x, L.attn_norm, self.eps))
        return L.o(y, L.attn_sub_norm, self.eps)

    def _ffn(self, L: Layer, x: torch.Tensor) -> torch.Tensor:
        if L.moe is not None:
            return L.moe(x, L.ffn_norm, self.eps)
        return L.down(L.gate_up(x, L.ffn_norm, self.eps), L.ffn_sub_norm, self.eps, glu=True)

    def trunk(self, ids: torch.Tensor, attend: Attend, recur=None) -> torch.Tensor:
        """Token ids [N] -> trunk state z [N, D] (streams averaged, pre-norm); `attend` knows
        each row's cache slot and position, `recur` (recurrent_state.Recurrence) the rows'
        DeltaNet states (hybrid models only)."""
        x = self.embed_table[ids].float()
        n = self.hp.n_streams
        if n == 1:
            for i, L in enumerate(self.layers):
                x = x + self._attention(i, L, x, attend, recur)
                x = x + self._ffn(L, x)
            return x
        X = self._streams(x)
        for i, L in enumerate(self.layers):
            # broadcast multiply + sum over the n streams (not matmul: tiny GEMMs cost more in
            # dispatch and threads than the maths, and their results may depend on N)
            h = (L.h_pre[:, :, None] * X).sum(1)
            a = self._attention(i, L, h, attend, recur)
            f = self._ffn(L, h + a)
            X = (L.h_res[None, :, :, None] * X[:, None]).sum(2) + L.h_post * (a + f).unsqueeze(1)
        return X.mean(dim=1)

    def _streams(self, x: torch.Tensor) -> torch.Tensor:
        """mHC's n residual streams [N, n, D] of the embeddings x [N, D]: they start as copies."""
        return x.unsqueeze(1).expand(-1, self.hp.n_streams, -1).contiguous()

    def trunk_native(self, ids: torch.Tensor, pool: KVPool, slots: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """trunk() in one call to the native kernels (native/csrc/nc_trunk.c; the same bits), for the
        models native_trunk_plan accepts."""
        x = self.embed_table[ids].float()
        m, n, lib = x.shape[0], self.hp.n_streams, self.lib
        X = x if n == 1 else self._streams(x)
        buf = scratch_buffer(m * self.plan_row_bytes)
        lib.nc_trunk(m, n, len(self.layers), self.plan.data_ptr(), pool.kv_ptrs.data_ptr(), self.n_q, self.n_kv, self.hd,
                     pool.capacity, slots.data_ptr(), pos.data_ptr(), pool.cos.data_ptr(), pool.sin.data_ptr(), self.eps,
                     2 ** (self.hp.activation_bits - 1) - 1, pool.f16, X.data_ptr(), buf.data_ptr())
        return X if n == 1 else X.mean(dim=1)

    def tied_head(self, h: torch.Tensor) -> torch.Tensor:
        """Normalised states [N, D] -> logits [N, V] = h @ E^T.

        Small tables (EXACT_HEAD_MAX_WEIGHTS) are used as they are: every logit exact. With the
        int8 copy of E, all logits are first computed approximately (per-row int8
        weights, per-token int8 activations: error ~1% of the logits' spread), then the
        RESCORE_TOP largest of each row are recomputed exactly in float32 from the F16 table.
        So the tokens that greedy / top-k / top-p decoding can pick carry exact logits, and the
        head reads 1 byte per weight instead of 2 (the head is the largest matrix of a small model)."""
        if self.head_i8 is None:
            return dense_matmul(h, self.head_weight, self.lib)
        logits = int8_matmul(h, self.head_i8, self.lib)
        top = topk_indices(logits, RESCORE_TOP, self.lib)  # [N, k]
        return logits.scatter_(1, top, gather_dot(h, self.embed_table, top, self.lib))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Trunk state [N, D] -> logits [N, V] (final norm, tied head)."""
        return self.tied_head(self._norm(z, self.out_norm))

    def mtp_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Trunk state [N, D] -> MTP logits [N, n_mtp, V]; head k predicts the token 2 + k ahead."""
        outs = [self._norm(z + m.proj(z, m.norm_in, self.eps), m.norm_out) for m in self.mtp]
        h = torch.stack(outs, dim=1)  # [N, n_mtp, D]
        return self.tied_head(h.reshape(-1, h.shape[-1])).reshape(h.shape[0], len(self.mtp), -1)
