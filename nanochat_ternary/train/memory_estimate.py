"""Expected peak training memory of a config on one device: the largest of a step's phases.

Printed by `nanochat params --config FILE` beside the user's budgets (Nano 4 GB, Small 16 GB,
Medium 48 GB), and by `nanochat bench train` beside its measured peaks. It counts live tensor
bytes (what CUDA's `max_memory_allocated` reports); the CUDA context (~0.5 GB) and a process's
own baseline (libraries, Python) are not in it. The parameter-sized terms are counted exactly
from the model built on the meta device; activations come from activation_trace.py.

Always resident (bytes; P parameters):
  weights    4 P (float32 master weights; autocast keeps them float32)
  optimizer  one momentum per parameter (Muon or Lion): 4 B a value, or 1 B + 4 B per 256 when
             8-bit (state8bit.py); beside it the 8 P of float32 AdamW, for the 86% comparison

Then the step passes through phases that do not overlap in time, and the peak is the largest:
  loss       end of the forward, start of the backward: every saved activation (each block's
             saved tensors, or with gradient checkpointing only each block's input), the heads'
             saved tensors, the loss inputs (each head's hidden states, the MTP heads' shifted
             copies), one chunk's logits and their backward temporaries (LOSS_CHUNK_TEMPS float32
             [chunk, V] tensors; chunked_head.py), and the gradient of the tied embedding, which
             the head's backward writes first. `full_logits` (chunk_tokens 0): every head's
             saved [B T, V] log-probabilities and one head's backward temporaries instead; so
             too a batch of at most one chunk, which chunked_head.py does not checkpoint.
  blocks     block i's backward, i = L-1 .. 0: the activations still saved for blocks < i, block
             i's saved tensors (recomputed, with checkpointing), its backward working set (the
             gradient in and out, 2 x the block input, and the gradients of its widest saved
             tensor, 2 x that tensor), and the gradients written so far (the heads' and those of
             blocks >= i). The saved tensors of a block are freed as its backward consumes them,
             while its gradients appear: the two are counted at once, so this leans high.
  optimizer  all gradients (the trainer steps every optimizer, then frees the gradients) plus
             one parameter's working copies: Muon's Newton-Schulz (MUON_TEMPS x the largest
             stack of same-shape matrices it orthogonalises at once, muon.stack_plan), Lion's update direction (1 x the largest other parameter); with 8-bit
             states, one dequantised float32 momentum more.
With gradient accumulation (micro-batches < the batch) the gradients of the earlier micro-batches
are held through every phase, so each phase counts all of them.

Checked against tensor bytes on CPU (`nanochat bench train`, whose child process returns freed
tensors to the OS so that its RSS follows the live bytes): 1.03-1.06x on the tiny config at
4 x 128 (all four variants), on nano at 1 x 512 0.94x without checkpointing and 1.00-1.02x with
it (README, "Out of memory?").
"""

from __future__ import annotations

import copy

import torch

from ..config import Config
from ..model.gpt import GPT
from . import state8bit
from .activation_trace import trace_activations
from .chunked_head import default_chunk_tokens
from .distributed import accumulation_steps
from .muon import stack_plan
from .optim import split_params

GIB = 2**30
# The user's GPU budgets (SEED.md), by config name prefix.
BUDGETS_GB = {"nano": 4, "small": 16, "medium": 48}
# Float32 [chunk, V] tensors alive in one chunk's backward: logits, log-softmax, its exp, their
# product, and the gradients of two of them.
LOSS_CHUNK_TEMPS = 6
# Without chunking: [B T, V] float32 tensors saved per head (log-probabilities; the main head also
# its exp for the entropy term), and those alive in one head's backward.
FULL_LOGITS_SAVED = {"main": 2, "mtp": 1}
FULL_LOGITS_BACKWARD = 3
# The same counts where the loss is native (CPU, float32: ce_entropy.py's nc_ce_fwd / nc_ce_bwd):
# each head saves its logits only, and a backward adds their gradient.
NATIVE_CHUNK_TEMPS, NATIVE_SAVED, NATIVE_BACKWARD = 2, 1, 1
# Float32 copies of one matrix alive in Muon's step: the Nesterov update, its normalised copy,
# the polynomial times x, and the new x (muon.py newton_schulz); for a stack of same-shape
# matrices (muon.stack_plan) one more: the updates and their stacked copy are both alive.
MUON_TEMPS = 4


def _loss_bytes(m, B: int, T: int, elem: int, full_logits: bool, native: bool = False) -> int:
    n_heads = 1 + (m.mtp_n_tokens if m.use_mtp else 0)
    inputs = (2 * n_heads - 1) * B * T * m.hidden_dim * elem  # hidden states, MTP shifted copies
    if full_logits or B * T <= default_chunk_tokens(m.vocab_size):  # one chunk: not checkpointed
        if native:
            saved, backward = n_heads * NATIVE_SAVED, NATIVE_BACKWARD
        else:
            saved, backward = FULL_LOGITS_SAVED["main"] + (n_heads - 1) * FULL_LOGITS_SAVED["mtp"], FULL_LOGITS_BACKWARD
        return inputs + (saved + backward) * B * T * m.vocab_size * 4
    chunk = min(default_chunk_tokens(m.vocab_size), B * T)
    return inputs + (NATIVE_CHUNK_TEMPS if native else LOSS_CHUNK_TEMPS) * chunk * m.vocab_size * 4


def _phases(acts: dict, block_grads: list[int], head_grads: int, embed_grad: int, grads: int, loss: int,
            opt_step: int, ckpt: bool, accumulating: bool) -> dict:
    blocks, inp = acts["blocks"], acts["block_input"]
    saved = [inp] * len(blocks) if ckpt else [b.total for b in blocks]
    loss_phase = sum(saved) + acts["heads"].total + loss + (grads if accumulating else embed_grad)
    worst_block, worst_ws = 0, 0
    for i, b in enumerate(blocks):
        ws = 2 * inp + 2 * b.largest
        held = grads if accumulating else head_grads + sum(block_grads[i:])
        worst_block = max(worst_block, sum(saved[:i]) + b.total + ws + held)
        worst_ws = max(worst_ws, ws + (b.total if ckpt else 0))
    return {"loss": loss_phase, "blocks": worst_block, "optimizer": grads + opt_step, "_backward": worst_ws}


def estimate_memory(cfg: Config, batch: int | None = None, seq: int | None = None, dtype: str | None = None,
                    gradient_checkpointing: bool | None = None, use_8bit_optim: bool | None = None,
                    full_logits: bool = False, accumulating: bool | None = None, native: bool = False) -> dict:
    """Expected peak training memory (bytes and GiB) of `cfg` on one device; arguments override
    the config. `batch`: rows per forward (default: training.micro_batch_size, or the whole
    training.batch_size when it is 0 or larger). `accumulating`: gradients of earlier micro-batches held
    (default: when those rows are fewer than training.batch_size). `dtype`: float32 or bfloat16
    (default: bfloat16 for hardware.dtype auto, the CUDA path). `full_logits`: the loss without
    chunking (chunk_tokens 0). `native`: a float32 step on the CPU with the native kernels
    (model/native_ops.py, train/ce_entropy.py), whose autograd Functions and loss keep fewer
    tensors than the PyTorch ops.
    """
    m, t = cfg.model, cfg.training
    B, T = batch or accumulation_steps(t.batch_size, t.micro_batch_size, 1)[0], seq or t.seq_length
    if dtype is None:
        dtype = "bfloat16" if cfg.hardware.dtype in ("auto", "bfloat16") else "float32"  # auto: bf16 on CUDA
    ckpt = t.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    eight_bit = t.use_8bit_optim if use_8bit_optim is None else use_8bit_optim
    accumulating = B < t.batch_size if accumulating is None else accumulating
    act_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    with torch.device("meta"):
        model = GPT(m)
    model.train()
    P = sum(p.numel() for p in model.parameters())
    muon, lion = split_params(model)
    optimizer = sum(state8bit.state_bytes(p.numel(), eight_bit) for p in muon + lion)
    native = native and dtype == "float32"
    acts = trace_activations(copy.deepcopy(model).to(act_dtype), B, T, act_dtype, native)
    block_grads = [4 * sum(p.numel() for p in b.parameters()) for b in model.blocks]
    head_grads = 4 * P - sum(block_grads)
    loss = _loss_bytes(m, B, T, torch.finfo(act_dtype).bits // 8, full_logits, native)
    dequant = 1 if eight_bit else 0
    stacks = [[muon[i].numel() for i in idx] for idx in stack_plan([tuple(p.shape) for p in muon])]
    muon_step = max(((MUON_TEMPS + dequant + (len(s) > 1)) * sum(s) for s in stacks), default=0)
    opt_step = 4 * max(muon_step,
                       (1 + dequant) * max((p.numel() for p in lion), default=0))
    phases = _phases(acts, block_grads, head_grads, 4 * model.embed.weight.numel(), 4 * P, loss, opt_step, ckpt, accumulating)
    backward = phases.pop("_backward")
    resident = 4 * P + optimizer
    peak = resident + max(phases.values())
    full = sum(b.total for b in acts["blocks"]) + acts["heads"].total
    checkpointed = len(acts["blocks"]) * acts["block_input"] + acts["heads"].total
    terms = {
        "weights": 4 * P,
        "gradients": 4 * P,
        "optimizer_states": optimizer,
        "activations": checkpointed if ckpt else full,
        "loss": loss,
        "backward": backward,
        "optimizer_step": opt_step,
    }
    out = {
        "micro_batch_size": B, "batch_size": t.batch_size, "seq_length": T, "full_logits": full_logits, "dtype": dtype,
        "gradient_checkpointing": ckpt, "use_8bit_optim": eight_bit, "accumulating": accumulating,
        "params": P, "bytes": terms | {"peak": peak},
        "phases": {name: resident + value for name, value in phases.items()},
        "peak_phase": max(phases, key=phases.get),
        "alternatives": {
            "activations_without_checkpointing": full,
            "activations_with_checkpointing": checkpointed,
            "optimizer_states_fp32": sum(state8bit.state_bytes(p.numel(), False) for p in muon + lion),
            "optimizer_states_8bit": sum(state8bit.state_bytes(p.numel(), True) for p in muon + lion),
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
