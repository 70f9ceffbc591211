"""The KV cache: a pool of per-sequence slots, and attention over it for prefill and batched decode.

Why this module exists: a batched decode step must attend each sequence over its own history,
and those histories have different lengths. Copying every cache into a padded batch each step
costs O(batch x length) memory traffic per layer, so instead every sequence owns a *slot* of one
preallocated tensor per layer, [slots, kv_heads, capacity, head_dim]. A decode step writes each
new key/value at (slot, position) and attends with a boolean length mask; when the batch's slots
are a contiguous range (the usual case: slots are handed out lowest first) the keys are a view,
with no copy at all. Both dimensions grow by doubling on demand (up to the context length), so
a tiny test uses little memory and a server pays for the contexts it actually uses.

A `SeqState` holds one slot; dropping the state (garbage collection) returns the slot.
"""

from __future__ import annotations

import heapq
import weakref

import torch
import torch.nn.functional as F


class SeqState:
    """One sequence's cache: `length` tokens held so far. Dropping it frees its slot."""

    def __init__(self, pool: "KVPool", slot: int):
        self.length = 0
        self.slot = slot
        self.last_z: torch.Tensor | None = None  # trunk state of the last token (for MTP drafts)
        self._finalizer = weakref.finalize(self, pool.free, slot)

    def release(self) -> None:
        """Free the slot now (also happens automatically when the state is dropped)."""
        self._finalizer()


class KVPool:
    def __init__(self, n_layers: int, n_kv: int, head_dim: int, n_ctx: int):
        self.n_layers, self.n_kv, self.head_dim, self.n_ctx = n_layers, n_kv, head_dim, n_ctx
        self.slots, self.capacity = 0, 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._free: list[int] = []
        self._next = 0
        self._resize(4, min(n_ctx, 64))

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
        new_k = [torch.zeros(shape) for _ in range(self.n_layers)]
        new_v = [torch.zeros(shape) for _ in range(self.n_layers)]
        for old, new in ((self.k, new_k), (self.v, new_v)):
            for o, n in zip(old, new):
                n[: o.shape[0], :, : o.shape[2]] = o
        self.k, self.v, self.slots, self.capacity = new_k, new_v, slots, capacity

    # ---- attention -----------------------------------------------------------------------
    def prefill_attend(self, layer: int, slot: int, start: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Append k, v [T, kv, hd] at positions start.. of `slot`; causal attention of q [T, H, hd]
        over positions 0..start+T-1. Returns [T, H * hd]."""
        T = q.shape[0]
        end = start + T
        K, V = self.k[layer], self.v[layer]
        K[slot, :, start:end] = k.transpose(0, 1)
        V[slot, :, start:end] = v.transpose(0, 1)
        keys, values = K[slot : slot + 1, :, :end], V[slot : slot + 1, :, :end]
        qh = q.transpose(0, 1).unsqueeze(0)  # [1, H, T, hd]
        gqa = q.shape[1] != self.n_kv
        if start == 0:
            y = F.scaled_dot_product_attention(qh, keys, values, is_causal=True, enable_gqa=gqa)
        else:  # query i sits at position start + i and sees keys 0..start + i
            mask = torch.arange(end)[None, :] <= (torch.arange(T) + start)[:, None]
            y = F.scaled_dot_product_attention(qh, keys, values, attn_mask=mask, enable_gqa=gqa)
        return y[0].transpose(0, 1).reshape(T, -1)

    def decode_attend(self, layer: int, slots: list[int], slot_index: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                      q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One new token per sequence: write k, v [B, kv, hd] at (slot, pos) and attend q [B, H, hd]
        over positions 0..pos of each slot; `mask` [B, 1, 1, span] is decode_mask(pos).
        Returns [B, H * hd]."""
        B, H, hd = q.shape
        span = mask.shape[-1]
        K, V = self.k[layer], self.v[layer]
        K[slot_index, :, pos] = k
        V[slot_index, :, pos] = v
        s0 = slots[0]
        if slots == list(range(s0, s0 + B)):  # a contiguous range: a view, no copy
            keys, values = K[s0 : s0 + B, :, :span], V[s0 : s0 + B, :, :span]
        else:
            keys, values = K[slot_index, :, :span], V[slot_index, :, :span]
        # plain softmax attention, grouped-query: the g = H / kv query heads of a group share keys
        # (scaled_dot_product_attention's CPU kernels cost more than the maths for one query)
        qg = q.view(B, self.n_kv, H // self.n_kv, hd)
        scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(hd**-0.5).masked_fill_(mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), values).reshape(B, H * hd)


def decode_mask(pos: torch.Tensor) -> torch.Tensor:
    """True where a key is *hidden* from the query: positions after each sequence's own [B, 1, 1, span]."""
    span = int(pos.max()) + 1
    return (torch.arange(span)[None, :] > pos[:, None])[:, None, None, :]
