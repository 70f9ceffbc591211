"""The KV cache: a pool of per-sequence slots, and attention over it for prefill and batched decode.

Why this module exists: a batched decode step must attend each sequence over its own history,
and those histories have different lengths. Copying every cache into a padded batch each step
costs O(batch x length) memory traffic per layer, so instead every sequence owns a *slot* of one
preallocated tensor per layer, [slots, kv_heads, capacity, head_dim]. A decode step writes each
new key/value at (slot, position) and attends with a boolean length mask; when the batch's slots
are a contiguous range (the usual case: slots are handed out lowest first) the keys are a view,
with no copy at all. Both dimensions grow by doubling on demand (up to the context length), so
a tiny test uses little memory and a server pays for the contexts it actually uses.

The cache holds float32 (the default: the engine then computes what the training model does, to
the tokens) or, with `kv_cache="f16"`, float16 keys (after RoPE) and values, as llama.cpp does by
default: half the memory and half the bytes a decode step reads, which with the per-score
arithmetic bounds long contexts (nano at 1,536 positions reads 36 MB of float32 cache a sequence
and token; f16 made that decode 1.10-1.16x faster). Attention
computes in float32 either way. F16 rounding moves the logits by 2e-3 of their spread on average
(the random test models, 120 tokens; up to 1.4% where it flips an activation's int8 rounding).

A `SeqState` holds one slot; dropping the state (garbage collection) returns the slot.
"""

from __future__ import annotations

import ctypes
import heapq
import weakref

import torch

from ..cli_args import KV_CACHE_TYPES
from ..errors import ConfigError
from ..model.rope import rope_tables


# the cache's element types by the name users give (--kv-cache, cli_args.KV_CACHE_TYPES)
KV_DTYPES = dict(zip(KV_CACHE_TYPES, (torch.float32, torch.float16)))


def kv_dtype(name: str) -> torch.dtype:
    if name not in KV_DTYPES:
        raise ConfigError(f"kv_cache must be one of {', '.join(KV_DTYPES)} (got {name!r})")
    return KV_DTYPES[name]


class SeqState:
    """One sequence's cache: `length` tokens held so far. Dropping it frees its slot."""

    def __init__(self, pool: "KVPool", slot: int):
        self.length = 0
        self.slot = slot
        self.last_z: torch.Tensor | None = None  # trunk state of the last token (for MTP drafts)
        self.recurrent = None  # Gated DeltaNet state (infer/recurrent_state.py), hybrid models only
        self._finalizer = weakref.finalize(self, pool.free, slot)

    def release(self) -> None:
        """Free the slot now (also happens automatically when the state is dropped)."""
        self.recurrent = None
        self._finalizer()


class KVPool:
    def __init__(self, n_layers: int, n_heads: int, n_kv: int, head_dim: int, n_ctx: int, rope_theta: float, lib: ctypes.CDLL | None,
                 dtype: torch.dtype = torch.float32):
        self.n_layers, self.n_heads, self.n_kv, self.head_dim, self.n_ctx = n_layers, n_heads, n_kv, head_dim, n_ctx
        self.dtype = dtype
        self.cos, self.sin = rope_tables(head_dim, n_ctx, rope_theta)
        self.lib = lib
        self.slots, self.capacity = 0, 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._free: list[int] = []
        self._next = 0
        self._resize(4, min(n_ctx, 64))

    @property
    def f16(self) -> int:
        """The native kernels' flag: 1 when the cache holds float16."""
        return int(self.dtype == torch.float16)

    # ---- slots ---------------------------------------------------------------------------
    def alloc(self) -> int:
        slot = heapq.heappop(self._free) if self._free else self._next
        if slot == self._next:
            self._next += 1
        if slot >= self.slots:
            self._resize(2 * self.slots, self.capacity)
        return slot

    def free(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def in_use(self) -> int:
        return self._next - len(self._free)

    def ensure_length(self, length: int) -> None:
        """Make room for `length` positions in every slot (doubling, capped at n_ctx)."""
        if length > self.capacity:
            cap = self.capacity
            while cap < length:
                cap *= 2
            self._resize(self.slots, min(cap, self.n_ctx))

    def _resize(self, slots: int, capacity: int) -> None:
        shape = (slots, self.n_kv, capacity, self.head_dim)
        new_k = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.n_layers)]
        new_v = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.n_layers)]
        for old, new in ((self.k, new_k), (self.v, new_v)):
            for o, n in zip(old, new):
                n[: o.shape[0], :, : o.shape[2]] = o
        self.k, self.v, self.slots, self.capacity = new_k, new_v, slots, capacity
        # the caches' addresses [layers, 2] for nc_trunk (kernels take raw pointers; they move here)
        self.kv_ptrs = torch.tensor([[k.data_ptr(), v.data_ptr()] for k, v in zip(new_k, new_v)], dtype=torch.int64).reshape(-1, 2)

    # ---- attention -----------------------------------------------------------------------
    def attend(self, layer: int, slots: torch.Tensor, pos: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        """Rows qkv [R, (H + 2 kv) * hd] (before RoPE) at positions pos [R] of cache slots
        slots [R] (int64): apply RoPE, write every row's key/value into the cache, then attend
        each row's query over positions 0..pos of its slot. Returns [R, H * hd].

        Each row runs exactly the same operations whatever the other rows are, so a token's
        result is bitwise independent of batching: cached, uncached, batched and speculative
        greedy decoding give the same tokens."""
        R = qkv.shape[0]
        H, kv, hd = self.n_heads, self.n_kv, self.head_dim
        if self.lib is not None:
            out = torch.empty(R, H * hd)
            qkv = qkv.contiguous()
            self.lib.nc_attention(R, H, kv, hd, self.capacity, qkv.data_ptr(), slots.data_ptr(), pos.data_ptr(), self.cos.data_ptr(),
                                  self.sin.data_ptr(), self.k[layer].data_ptr(), self.v[layer].data_ptr(), self.f16, out.data_ptr())
            return out
        x = qkv.view(R, H + 2 * kv, hd)
        qk = self._rope(x[:, : H + kv], pos)
        self.k[layer][slots, :, pos] = qk[:, H:].to(self.dtype)
        self.v[layer][slots, :, pos] = x[:, H + kv :].to(self.dtype)
        return torch.stack([self._attend_one(layer, int(s), int(p), qk[r, :H]) for r, (s, p) in enumerate(zip(slots, pos))])

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """NEOX rotate-half RoPE (model/rope.py) on x [N, heads, hd] at positions pos [N]."""
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _attend_one(self, layer: int, slot: int, pos: int, q: torch.Tensor) -> torch.Tensor:
        """Softmax attention of one query q [H, hd] over keys 0..pos of `slot` (torch back-end)."""
        H, hd = q.shape
        keys, values = self.k[layer][slot, :, : pos + 1].float(), self.v[layer][slot, :, : pos + 1].float()  # [kv, S, hd]
        qg = q.view(self.n_kv, H // self.n_kv, hd)  # grouped-query: a group's heads share keys
        scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(hd**-0.5)
        return torch.matmul(torch.softmax(scores, dim=-1), values).reshape(H * hd)
