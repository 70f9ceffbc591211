"""8-bit optimizer states: one momentum buffer stored as blockwise uint8 codes + float32 absmax.

Muon and Lion each keep one momentum buffer per parameter, as large as the parameter. With
`training.use_8bit_optim` that buffer is kept as 1-byte codes into a 256-entry *signed dynamic*
code map (Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization",
https://arxiv.org/abs/2110.02861), with one float32 absmax per block of 256 values: 1.016 bytes
per value instead of 4. The dynamic map spends its codes on an exponent, so it resolves values
from 1 down to ~1e-7 of the block's absmax; a linear int8 map would round the small EMA
increments of a momentum (`(1 - beta) * g`) to zero.

The quantisation itself is bitsandbytes' (`quantize_blockwise` / `dequantize_blockwise`), which
runs on CPU and CUDA from the same call; it is imported only when 8-bit states are used. Each
optimizer step dequantises one parameter's buffer to float32, updates it, and requantises it
(`load` / `store`), so the float32 copy exists for one parameter at a time.

Tensors under `MIN_8BIT_NUMEL` values (norm weights, gates, mHC logits) stay float32: their
bytes do not matter and their absmax would cost as much as the codes save.

State keys, for a buffer named K: float32 `K`, or 8-bit `K_codes` (uint8, the parameter's shape)
+ `K_absmax` (float32, one per block). Both are plain tensors, so optimizer state_dicts (and the
checkpoints' optimizer.pt) carry the codes and scales as they are, and a resumed run
dequantises exactly what the interrupted run would have. `load` also converts a buffer stored
the other way (a checkpoint saved with the other setting). `Optimizer.load_state_dict` casts
every state tensor to its parameter's dtype, which would turn the codes into float32 (4x their
bytes, for all parameters at once); `keep_codes_on_load` sets them aside around that cast.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

BLOCK_SIZE = 256
MIN_8BIT_NUMEL = 4096
CODES_SUFFIX = "_codes"


@functools.cache
def _bnb():
    import bitsandbytes.functional as bnb_functional  # lazy: only 8-bit runs need the library

    return bnb_functional


@functools.cache
def _code_map(device: torch.device) -> Tensor:
    """bitsandbytes' signed dynamic map: 256 sorted values in [-1, 1], 0 included."""
    return _bnb().create_dynamic_map(signed=True).to(device)


def uses_8bit(p: Tensor, eight_bit: bool) -> bool:
    return eight_bit and p.numel() >= MIN_8BIT_NUMEL


def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """float tensor -> (uint8 codes of x's shape, float32 absmax per block of BLOCK_SIZE)."""
    codes, qstate = _bnb().quantize_blockwise(x.float().contiguous(), code=_code_map(x.device), blocksize=BLOCK_SIZE)
    return codes.view(x.shape), qstate.absmax


def dequantize(codes: Tensor, absmax: Tensor) -> Tensor:
    """(codes, absmax) -> float32 tensor of the codes' shape."""
    out = _bnb().dequantize_blockwise(codes.contiguous(), absmax=absmax.float(), code=_code_map(codes.device),
                                      blocksize=BLOCK_SIZE)
    return out.view(codes.shape)


def load(state: dict, key: str, p: Tensor, eight_bit: bool) -> Tensor:
    """The float32 buffer `key` of parameter `p` (zeros on the first step).

    For a float32 buffer this is the stored tensor itself (update it in place; `store` is then a
    no-op), so the float32 path is exactly the optimizer without this module.
    """
    if uses_8bit(p, eight_bit):
        if key + CODES_SUFFIX in state:
            return dequantize(state[key + CODES_SUFFIX], state[key + "_absmax"])
        if key in state:  # saved as float32 (8-bit switched on at resume)
            return state.pop(key).float()
        return torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
    if key not in state:
        if key + CODES_SUFFIX in state:  # saved as 8-bit (switched off at resume)
            state[key] = dequantize(state.pop(key + CODES_SUFFIX), state.pop(key + "_absmax")).to(p.dtype)
        else:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state[key]


def store(state: dict, key: str, p: Tensor, value: Tensor, eight_bit: bool) -> None:
    """Write the updated buffer back: requantise it when `p` keeps 8-bit state."""
    if uses_8bit(p, eight_bit):
        state[key + CODES_SUFFIX], state[key + "_absmax"] = quantize(value)
    elif state.get(key) is not value:
        state[key] = value


def _set_codes_aside(opt: torch.optim.Optimizer, state_dict: dict) -> dict:
    saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    params = [p for g in opt.param_groups for p in g["params"]]
    aside, state = {}, {}
    for pid, entry in state_dict["state"].items():
        codes = {k: v for k, v in entry.items() if k.endswith(CODES_SUFFIX) and torch.is_tensor(v)}
        state[pid] = {k: v for k, v in entry.items() if k not in codes}
        if codes and pid in saved_ids and saved_ids.index(pid) < len(params):
            aside[saved_ids.index(pid)] = codes
    opt._nanochat_codes_aside = aside
    return {**state_dict, "state": state}  # a copy: the caller's dict is left as it was


def _put_codes_back(opt: torch.optim.Optimizer) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for index, codes in getattr(opt, "_nanochat_codes_aside", {}).items():
        p = params[index]
        for k, v in codes.items():
            opt.state[p][k] = v.to(device=p.device, dtype=torch.uint8)
    opt._nanochat_codes_aside = {}


def keep_codes_on_load(opt: torch.optim.Optimizer) -> None:
    """Make `opt.load_state_dict` keep `*_codes` tensors as uint8 (call once, in __init__)."""
    opt.register_load_state_dict_pre_hook(_set_codes_aside)
    opt.register_load_state_dict_post_hook(_put_codes_back)


def state_bytes(numel: int, eight_bit: bool) -> int:
    """Bytes of one buffer of `numel` values (the memory estimate uses the same rule)."""
    if eight_bit and numel >= MIN_8BIT_NUMEL:
        return numel + 4 * -(-numel // BLOCK_SIZE)
    return 4 * numel
