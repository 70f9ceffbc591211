"""Expected training memory of a config on a GPU: weights, gradients, optimizer states, activations.

Printed by `nanochat params --config FILE` beside the user's budgets (Nano 4 GB, Small 16 GB,
Medium 48 GB). The parameter-sized terms are counted exactly from the model built on the meta
device. Activations are not guessed from a formula: the model's own forward runs on meta tensors
(shapes only, no memory) under `saved_tensors_hooks`, and every tensor autograd keeps for the
backward is counted once per storage. So a new layer type (DeltaNet, MoE) is counted by what its
code saves, with no change here. Two corrections to that trace:

- On the meta device `scaled_dot_product_attention` falls back to its math path, which keeps the
  T x T attention matrix that no real kernel (flash / memory-efficient, on CPU and CUDA) keeps;
  the trace runs the flash kernel's meta function instead (output + log-sum-exp).
- With bf16 autocast (CUDA) most saved tensors are bf16: the trace then runs the model in bf16.
- MoE routing is data-dependent (per-expert counts), which meta tensors cannot give: the trace
  runs each MoE layer with balanced routing, N k / E rows per expert (what the load-balancing
  loss aims at; capacity lets one expert take up to expert_capacity_factor times that).

Terms, in bytes:
  weights    4 P (float32 master weights; autocast keeps them float32)
  gradients  4 P
  optimizer  one momentum per parameter (Muon or Lion): 4 B a value, or 1 B + 4 B per 256 when
             8-bit (state8bit.py); beside it the 8 P of float32 AdamW, for the 86% comparison
  activations  every block's saved tensors; with gradient checkpointing, each block's input plus
             the largest block's saved tensors (recomputed one block at a time in backward)
  loss       the hidden states the loss keeps plus one chunk's logits and their temporaries
             (chunked_head.py); with `full_logits` (chunk_tokens 0: the loss before chunking) every
             head's saved [B T, V] float32 log-probabilities and one head's backward temporaries
  backward   the gradients of one block's intermediates while it is back-propagated (and its
             recomputation with checkpointing): BACKWARD_BLOCKS x the largest block's saved bytes,
             a factor measured on CPU (tiny config: real saved tensors match the trace within 3%,
             and the RSS peak exceeds their sum by ~2.6 blocks at batch 8 x 512)
  peak       the sum of the above, plus the optimizer step's working copy of the largest
             parameter (gradients and activations do not fully overlap in time: this leans high)
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

from ..config import Config
from ..model.gpt import GPT
from . import state8bit
from .chunked_head import default_chunk_tokens
from .optim import split_params

GIB = 2**30
# The user's GPU budgets (SEED.md), by config name prefix.
BUDGETS_GB = {"nano": 4, "small": 16, "medium": 48}
# Float32 [chunk, V] tensors alive in one chunk's backward: logits, log-softmax, its exp, their
# product, and the gradients of two of them.
LOSS_CHUNK_TEMPS = 6
BACKWARD_BLOCKS = 2
# Without chunking: [B T, V] float32 tensors saved per head (log-probabilities; the main head also
# its exp for the entropy term), and those alive in one head's backward.
FULL_LOGITS_SAVED = {"main": 2, "mtp": 1}
FULL_LOGITS_BACKWARD = 3


def _flash_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """What a fused SDPA kernel saves (out, log-sum-exp), in meta shapes; k/v expanded for GQA."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=is_causal)[0]


@contextlib.contextmanager
def _saved_bytes_counter(sizes: dict):
    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        sizes[storage._cdata] = max(sizes.get(storage._cdata, 0), storage.nbytes())
        return t

    real_sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
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


def _traced(fn, *args) -> tuple[int, object]:
    sizes: dict = {}
    with _saved_bytes_counter(sizes), _meta_moe():
        out = fn(*args)
    return sum(sizes.values()), out


def activation_bytes(model: GPT, batch: int, seq: int, dtype: torch.dtype) -> dict:
    """Saved-for-backward bytes of the trunk (per block) and the heads, traced on meta tensors."""
    cfg = model.cfg
    n, D = cfg.mhc_n_streams, cfg.hidden_dim
    x = torch.zeros((n, batch, seq, D) if n > 1 else (batch, seq, D), device="meta", dtype=dtype, requires_grad=True)
    cos, sin = model.rope_cos[:seq].to(dtype), model.rope_sin[:seq].to(dtype)
    per_block, by_kind = [], {}
    for block in model.blocks:
        # blocks of one kind (token mixer, FFN) save the same shapes: trace one of each (meta
        # ops run through Python references, ~1 ms each, so a 28-layer MoE would take ~30 s)
        kind = (type(block.attn), type(block.ffn))
        if kind not in by_kind:
            by_kind[kind], x = _traced(block, x, cos, sin)
        per_block.append(by_kind[kind])
    z = x.mean(dim=0) if n > 1 else x
    heads, _ = _traced(lambda z: [model.norm(z)] + [m(z) for m in model.mtp], z)
    return {"blocks": per_block, "block_input": x.numel() * x.element_size(), "heads": heads}


def estimate_memory(cfg: Config, batch: int | None = None, seq: int | None = None, dtype: str | None = None,
                    gradient_checkpointing: bool | None = None, use_8bit_optim: bool | None = None,
                    full_logits: bool = False) -> dict:
    """Expected peak training memory (bytes and GiB) of `cfg` on one device; arguments override
    the config. `batch`: rows per forward (default: training.micro_batch_size, or the whole
    training.batch_size when it is 0). `full_logits`: the loss without chunking (chunk_tokens 0)."""
    m, t = cfg.model, cfg.training
    B, T = batch or t.micro_batch_size or t.batch_size, seq or t.seq_length
    if dtype is None:
        dtype = "bfloat16" if cfg.hardware.dtype in ("auto", "bfloat16") else "float32"  # auto: bf16 on CUDA
    ckpt = t.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    eight_bit = t.use_8bit_optim if use_8bit_optim is None else use_8bit_optim
    act_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    with torch.device("meta"):
        model = GPT(m)
    model.train()
    params = [p for p in model.parameters()]
    P = sum(p.numel() for p in params)
    muon, lion = split_params(model)
    optimizer = sum(state8bit.state_bytes(p.numel(), eight_bit) for p in muon + lion)
    acts = activation_bytes(copy.deepcopy(model).to(act_dtype), B, T, act_dtype)
    full = sum(acts["blocks"]) + acts["heads"]
    checkpointed = len(acts["blocks"]) * acts["block_input"] + max(acts["blocks"]) + acts["heads"]
    elem = torch.finfo(act_dtype).bits // 8
    n_heads = 1 + (m.mtp_n_tokens if m.use_mtp else 0)
    # loss inputs: each head's hidden states, and the MTP heads' shifted copies
    loss_inputs = (2 * n_heads - 1) * B * T * m.hidden_dim * elem
    chunk = min(default_chunk_tokens(m.vocab_size), B * T)
    loss = loss_inputs + LOSS_CHUNK_TEMPS * chunk * m.vocab_size * 4
    if full_logits:
        saved = FULL_LOGITS_SAVED["main"] + (n_heads - 1) * FULL_LOGITS_SAVED["mtp"]
        loss = loss_inputs + (saved + FULL_LOGITS_BACKWARD) * B * T * m.vocab_size * 4
    largest = max(p.numel() for p in params)
    optim_step = 3 * 4 * largest  # dequantised / Newton-Schulz working copies of one parameter
    terms = {
        "weights": 4 * P,
        "gradients": 4 * P,
        "optimizer_states": optimizer,
        "activations": checkpointed if ckpt else full,
        "loss": loss,
        "backward": BACKWARD_BLOCKS * max(acts["blocks"]),
        "optimizer_step": optim_step,
    }
    peak = sum(terms.values())
    out = {
        "micro_batch_size": B, "batch_size": t.batch_size, "seq_length": T, "full_logits": full_logits, "dtype": dtype, "gradient_checkpointing": ckpt, "use_8bit_optim": eight_bit,
        "params": P, "bytes": terms | {"peak": peak},
        "alternatives": {
            "activations_without_checkpointing": full,
            "activations_with_checkpointing": checkpointed,
            "optimizer_states_fp32": sum(state8bit.state_bytes(p.numel(), False) for p in params),
            "optimizer_states_8bit": sum(state8bit.state_bytes(p.numel(), True) for p in params),
            "optimizer_states_adamw_fp32": 8 * P,
        },
        "peak_gib": round(peak / GIB, 3),
    }
    budget = budget_gb(cfg.source)
    if budget:
        out["budget_gb"] = budget
        out["fits_budget"] = peak <= budget * 1e9
    return out


def budget_gb(source: str) -> int | None:
    """The user's budget for a config file named nano_* / small_* / medium_* (None for others)."""
    name = source.replace("\\", "/").rsplit("/", 1)[-1].lower()
    return next((gb for prefix, gb in BUDGETS_GB.items() if name.startswith(prefix)), None)
