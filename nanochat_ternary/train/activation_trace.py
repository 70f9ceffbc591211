"""What autograd keeps for the backward of each block and of the heads, traced on meta tensors.

memory_estimate.py needs the activation bytes of a config without running it. They are not
guessed from a formula: the model's own forward runs on meta tensors (shapes only, no memory)
under `saved_tensors_hooks`, and every tensor autograd keeps for the backward is counted once per
storage. So a new layer type (DeltaNet, MoE) is counted by what its code saves, with no change
here. Corrections to that trace:

- Tensors that exist anyway are not activations: the parameters (which F.linear saves as they
  are in float32; under bf16 autocast it saves a bf16 copy, which is counted) and the RoPE tables.
- On the meta device `scaled_dot_product_attention` falls back to its math path, which keeps the
  T x T attention matrix that no real kernel (flash / memory-efficient, on CPU and CUDA) keeps;
  the trace runs the flash kernel's meta function instead (output + log-sum-exp).
- With bf16 autocast (CUDA) most saved tensors are bf16: the trace then runs the model in bf16.
- A float32 CPU step runs model/native_ops.py's autograd Functions, which save less than the
  PyTorch ops (the tiny config: 24 MB against 32): with `native` the trace takes their graph
  (native_ops.meta_trace), and the CPU flash kernel's GQA reads k / v unexpanded.
- MoE routing is data-dependent (per-expert counts), which meta tensors cannot give: the trace
  runs each MoE layer with balanced routing, N k / E rows per expert (what the load-balancing
  loss aims at; capacity lets one expert take up to expert_capacity_factor times that).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import native_ops
from ..model.gpt import GPT


@dataclass
class Saved:
    """Bytes autograd keeps for one traced call, and the largest single storage among them."""

    total: int = 0
    largest: int = 0


def _flash_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                expand_gqa=True):
    """What a fused SDPA kernel saves (out, log-sum-exp), in meta shapes; k/v expanded for GQA
    unless the kernel reads them as they are (`expand_gqa` False: the CPU one)."""
    if expand_gqa and enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=is_causal)[0]


@contextlib.contextmanager
def _saved_bytes_counter(sizes: dict, exclude: set, native: bool):
    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in exclude:
            sizes[storage._cdata] = max(sizes.get(storage._cdata, 0), storage.nbytes())
        return t

    real_sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = functools.partial(_flash_sdpa, expand_gqa=not native)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                native_ops.meta_trace() if native else contextlib.nullcontext():
            yield
    finally:
        F.scaled_dot_product_attention = real_sdpa


def _balanced_moe_forward(self, x: torch.Tensor) -> torch.Tensor:
    """model/moe.py's MoE.forward in meta shapes: the same modules and ops, balanced routing."""
    shape, D = x.shape, x.shape[-1]
    x = x.reshape(-1, D)
    N, E, k = x.shape[0], self.num_experts, self.top_k
    probs = torch.softmax(F.linear(x.float(), self.router.weight.float()), dim=-1)
    top_p, _ = probs.topk(k, dim=-1)
    per = -(-N * k // E)
    token = torch.zeros(per * E, dtype=torch.long, device=x.device)
    rows = x[token]
    weight = (top_p / top_p.sum(-1, keepdim=True)).reshape(-1)[:1].expand(per * E)
    y = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, rows.split(per))]) * weight.to(x.dtype)[:, None]
    self.aux_loss, self.stats = None, {}
    return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype)).view(shape)


@contextlib.contextmanager
def _meta_moe():
    from ..model.moe import MoE

    real = MoE.forward
    MoE.forward = _balanced_moe_forward
    try:
        yield
    finally:
        MoE.forward = real


def _traced(fn, exclude: set, native: bool, *args) -> tuple[Saved, object]:
    sizes: dict = {}
    with _saved_bytes_counter(sizes, exclude, native), _meta_moe():
        out = fn(*args)
    return Saved(sum(sizes.values()), max(sizes.values(), default=0)), out


def trace_activations(model: GPT, batch: int, seq: int, dtype: torch.dtype, native: bool = False) -> dict:
    """{"blocks": [Saved per block], "block_input": bytes of one block's input, "heads": Saved of
    the final norm and the MTP heads}. `model` is on the meta device, in `dtype`, in train mode.
    `native`: the graph of a float32 CPU step with the native kernels."""
    cfg = model.cfg
    n, D = cfg.mhc_n_streams, cfg.hidden_dim
    x = torch.zeros((n, batch, seq, D) if n > 1 else (batch, seq, D), device="meta", dtype=dtype, requires_grad=True)
    cos, sin = model.rope_cos[:seq].to(dtype), model.rope_sin[:seq].to(dtype)
    exclude = {cos.untyped_storage()._cdata, sin.untyped_storage()._cdata}
    if dtype == torch.float32:  # no autocast: a saved weight is the parameter itself
        exclude |= {p.untyped_storage()._cdata for p in model.parameters()}
    per_block, by_kind = [], {}
    for block in model.blocks:
        # blocks of one kind (token mixer, FFN) save the same shapes: trace one of each (meta
        # ops run through Python references, ~1 ms each, so a 28-layer MoE would take ~30 s)
        kind = (type(block.attn), type(block.ffn))
        if kind not in by_kind:
            by_kind[kind], x = _traced(block, exclude, native, x, cos, sin)
        per_block.append(by_kind[kind])
    z = x.mean(dim=0) if n > 1 else x
    heads, _ = _traced(lambda z: [model.norm(z)] + [m(z) for m in model.mtp], exclude, native, z)
    return {"blocks": per_block, "block_input": x.numel() * x.element_size(), "heads": heads}
