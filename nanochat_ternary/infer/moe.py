"""Mixture-of-experts FFN of the inference engine: read the stacked experts, route, compute batched.

Why this module exists: an MoE layer (model/moe.py; file layout in export/gguf_moe.py) replaces
the dense SwiGLU of a block. The engine reads its stacked expert tensors into one Projection per
expert, and computes a batch of rows [N, D] as the training model does in eval mode (no capacity,
decoding never drops):

    h = rms_norm(x, ffn_norm);  p = softmax(h W_r^T) (float32);  top-k of p, renormalised
    y = sum over the chosen experts e of w_e * down_e(sub_norm_e(silu(gate_e h) * up_e h))

Batched: the rows' assignments are sorted by expert and each chosen expert runs ONE call of the
native ternary kernels (gate|up fused, then down) on all of its rows, so a decode batch reads
each chosen expert's weights once, however many sequences picked it. The router logits are
computed row by row (multiply + sum, not a GEMM whose blocking depends on N), so a token's
routing, like the rest of the engine, does not depend on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FormatError

# (GGUF suffix, rows, columns) of the stacked expert projections; F = expert hidden, D = model dim
_STACKED = (("ffn_gate_exps", "F", "D"), ("ffn_up_exps", "F", "D"), ("ffn_down_exps", "D", "F"))


def is_moe_layer(hp, i: int) -> bool:
    """Block i's FFN is an MoE (every `moe_interval`-th layer: k-1, 2k-1, ...; model/moe.py)."""
    return hp.n_experts > 0 and (i + 1) % hp.moe_interval == 0


def check_moe_hparams(path, hp) -> None:
    if hp.n_experts == 0:
        return
    if hp.arch != "nanochat":
        raise FormatError(f"{path}: a '{hp.arch}' file cannot have experts (nanochat.expert_count = {hp.n_experts})")
    if not 1 <= hp.n_experts_used <= hp.n_experts or hp.expert_ffn <= 0 or not 1 <= hp.moe_interval <= hp.n_layers:
        raise FormatError(f"{path}: bad MoE hyper-parameters: nanochat.expert_count = {hp.n_experts}, "
                          f"nanochat.expert_used_count = {hp.n_experts_used} (must be 1..expert_count), "
                          f"nanochat.expert_feed_forward_length = {hp.expert_ffn}, nanochat.moe.layer_interval = {hp.moe_interval}")


def read_moe_layer(path, need: Callable, i: int, hp, model, projection: Callable, float_tensor: Callable) -> None:
    """Decode MoE layer i's router, sub-norms and stacked experts into model.norms / model.projections.

    Expert e's projections are named `blk.{i}.ffn_{gate,up,down}_exps.weight.{e}`; the router and
    the sub-norms keep their GGUF names ([E, D] and [E, F], float32)."""
    E, dims = hp.n_experts, {"F": hp.expert_ffn, "D": hp.dim}
    b = f"blk.{i}."
    router = need(b + "ffn_gate_inp.weight")
    if tuple(int(x) for x in router.shape) not in ((hp.dim, E), (E * hp.dim,)):  # innermost first; same count, other shape
        raise FormatError(f"{path}: tensor '{router.name}' has shape {[int(x) for x in router.shape][::-1]}, expected [{E}, {hp.dim}] "
                          f"(nanochat.expert_count = {E}, nanochat.embedding_length = {hp.dim})")
    try:
        model.norms[b + "ffn_gate_inp.weight"] = float_tensor(path, router, (E, hp.dim), False)
        model.norms[b + "ffn_sub_norm_exps.weight"] = float_tensor(path, need(b + "ffn_sub_norm_exps.weight"), (E, hp.expert_ffn), False)
    except FormatError as e:  # a wrong shape here is as likely a lying expert count: name the fields too
        raise FormatError(f"{e} (from nanochat.expert_count = {E}, nanochat.expert_feed_forward_length = {hp.expert_ffn}, "
                          f"nanochat.embedding_length = {hp.dim})") from None
    for name, rows, cols in _STACKED:
        n, k = dims[rows], dims[cols]
        t = need(f"{b}{name}.weight")
        if tuple(int(x) for x in t.shape) != (k, n, E):  # GGUF lists dimensions innermost first
            raise FormatError(f"{path}: tensor '{t.name}' has shape {list(t.shape)[::-1]}, expected [{E}, {n}, {k}]")
        # the E experts as one [E * n, k] matrix (rows are independent), then split per expert
        flat = SimpleNamespace(name=t.name, tensor_type=t.tensor_type, shape=(k, E * n),
                               data=np.asarray(t.data).reshape(E * n, -1))
        p = projection(path, flat, E * n, k, hp)
        for e in range(E):
            rows_e = slice(e * n, (e + 1) * n)
            model.projections[f"{b}{name}.weight.{e}"] = type(p)(
                n, k, t=None if p.t is None else p.t[rows_e], scales=None if p.scales is None else p.scales[rows_e].contiguous(),
                dense=None if p.dense is None else p.dense[rows_e], stored_bytes=p.stored_bytes // E)


class MoEFFN:
    """One MoE layer of the engine; `lin(names)` builds a (fused) Linear from projection names."""

    def __init__(self, gm, i: int, lin: Callable):
        hp, b = gm.hp, f"blk.{i}."
        self.k = hp.n_experts_used
        self.router = gm.norms[b + "ffn_gate_inp.weight"]  # [E, D] float32
        self.sub_norms = gm.norms[b + "ffn_sub_norm_exps.weight"]  # [E, F]
        self.experts = [(lin([f"{b}ffn_gate_exps.weight.{e}", f"{b}ffn_up_exps.weight.{e}"]), lin([f"{b}ffn_down_exps.weight.{e}"]))
                        for e in range(hp.n_experts)]

    def nbytes(self) -> int:
        return sum(gu.nbytes() + down.nbytes() for gu, down in self.experts)

    def __call__(self, x: torch.Tensor, ffn_norm: torch.Tensor, eps: float) -> torch.Tensor:
        h = F.rms_norm(x, (x.shape[-1],), ffn_norm, eps)
        probs = torch.softmax((h[:, None, :] * self.router[None]).sum(-1), dim=-1)  # [N, E], row by row
        top_p, top_e = probs.topk(self.k, dim=-1)
        if x.shape[0] == 1:  # batch-1 decode: no sorting or scatter; the same sums in the same order
            return self._one_row(h, top_e[0].tolist(), (top_p / top_p.sum(-1, keepdim=True))[0], eps)
        weights = (top_p / top_p.sum(-1, keepdim=True)).reshape(-1)
        order = torch.argsort(top_e.reshape(-1), stable=True)  # assignments grouped by expert
        counts = torch.bincount(top_e.reshape(-1), minlength=len(self.experts)).tolist()
        rows, weights = order // self.k, weights[order]
        out = torch.zeros_like(x)
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            r = rows[start:start + c]
            gate_up, down = self.experts[e]
            y = down(gate_up(h[r]), self.sub_norms[e], eps, glu=True)
            out.index_add_(0, r, y * weights[start:start + c, None])
            start += c
        return out

    def _one_row(self, h: torch.Tensor, experts: list, weights: torch.Tensor, eps: float) -> torch.Tensor:
        """One row [1, D]: the chosen experts in ascending order (as the batched path adds them)."""
        out = None
        for j in sorted(range(len(experts)), key=experts.__getitem__):
            gate_up, down = self.experts[experts[j]]
            y = down(gate_up(h), self.sub_norms[experts[j]], eps, glu=True) * weights[j]
            out = y if out is None else out + y
        return out
