"""A Gated DeltaNet layer of the inference network, built from a decoded GGUF.

Why this module exists: network.py runs attention blocks; a hybrid model's DeltaNet blocks need
the same maths as model/deltanet.py on rows [N, D]: q|k|v|gate as one fused ternary projection
(one kernel call reads all four weight sets), a and b in float32, the decay and beta, the
recurrence (recurrent_state.Recurrence, which owns the per-sequence state), the per-head RMSNorm
times SiLU(gate), and o_proj. Tensor names: export/gguf_deltanet.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.deltanet import decay_and_beta
from .gguf_model import GGUFModel
from .recurrent_state import DeltaSpec


def spec_of(gm: GGUFModel) -> DeltaSpec | None:
    hp = gm.hp
    return DeltaSpec(tuple(hp.dn_layers), hp.dn_heads, hp.dn_dk, hp.dn_dv, hp.dn_conv) if hp.dn_layers else None


class DeltaNetMixer:
    def __init__(self, gm: GGUFModel, i: int, make_linear):
        """`make_linear(names)` builds network.Linear over the named (fused) projections."""
        hp, b = gm.hp, f"blk.{i}."
        self.layer, self.H, self.dv, self.eps = i, hp.dn_heads, hp.dn_dv, hp.norm_eps
        self.channels = 2 * hp.dn_heads * hp.dn_dk + hp.dn_heads * hp.dn_dv
        self.proj = make_linear([b + "dn_q.weight", b + "dn_k.weight", b + "dn_v.weight", b + "dn_gate.weight"])
        self.ab = torch.cat([gm.norms[b + "dn_a.weight"], gm.norms[b + "dn_b.weight"]]).contiguous()  # [2H, D]
        self.conv = gm.norms[b + "dn_conv.weight"][:, None, :].contiguous()  # [C, 1, K]
        self.A_log, self.dt_bias = gm.norms[b + "dn_a_log"], gm.norms[b + "dn_dt_bias"]
        self.norm = gm.norms[b + "dn_norm.weight"]
        self.o = make_linear([b + "dn_output.weight"])

    def nbytes(self) -> int:
        return self.proj.nbytes() + self.o.nbytes() + self.ab.nbytes + self.conv.nbytes

    def __call__(self, x: torch.Tensor, norm: torch.Tensor, recur) -> torch.Tensor:
        """x [N, D] (block input, before attn_norm) -> mixer output [N, D]; `recur(layer, mixed,
        conv, g, beta)` runs the conv and the recurrence with the rows' sequence states."""
        N = x.shape[0]
        xn = F.rms_norm(x, (x.shape[-1],), norm, self.eps)
        p = self.proj(xn)
        mixed, gate = p[:, : self.channels], p[:, self.channels :]
        # a broadcast multiply + row sums, not a matmul: GEMM kernels for 1 row and for several add
        # in other orders, and a sequence's decode must not depend on its batch
        a, b = (xn[:, None, :] * self.ab).sum(-1).split(self.H, dim=-1)
        g, beta = decay_and_beta(a, b, self.A_log, self.dt_bias)
        o = recur(self.layer, mixed, self.conv, g, beta)  # [N, H, dv]
        o = F.rms_norm(o, (self.dv,), self.norm, self.eps) * F.silu(gate.view(N, self.H, self.dv))
        return self.o(o.reshape(N, self.H * self.dv))
