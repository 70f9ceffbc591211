"""Per-sequence Gated DeltaNet state for the engine, and the recurrence over a forward's rows.

Why this module exists: a DeltaNet layer keeps no KV cache; what a sequence carries forward is,
per DeltaNet layer, the state S [heads, d_k, d_v] and the last K - 1 inputs of the causal conv
(its tail). Both live on the sequence's `SeqState` (attribute `recurrent`), so they are freed
with it (`SeqState.release()` or garbage collection) and a reused cache slot never sees an old
sequence's state. Memory per sequence is constant in the context length.

A forward's rows are either one sequence's consecutive tokens (prefill / verify: the chunked
form of model/deltanet.py, starting from the stored state, so prefill may come in pieces) or one
token for each of several sequences (a batched decode step: the recurrent form on the stacked
states). The engine builds a `Recurrence` for each forward and the network calls it per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.deltanet import causal_conv, causal_conv_step, chunk_gated_delta_rule, gated_delta_step, qkv_heads


@dataclass
class DeltaSpec:
    layers: tuple  # block indices of the DeltaNet layers
    heads: int
    dk: int
    dv: int
    conv: int

    @property
    def channels(self) -> int:
        return 2 * self.heads * self.dk + self.heads * self.dv


class RecurrentState:
    """One sequence's state: S [n_dn, H, dk, dv] and conv tails [n_dn, K - 1, C], float32."""

    def __init__(self, spec: DeltaSpec):
        n = len(spec.layers)
        self.S = torch.zeros(n, spec.heads, spec.dk, spec.dv)
        self.tail = torch.zeros(n, spec.conv - 1, spec.channels)

    def nbytes(self) -> int:
        return self.S.nbytes + self.tail.nbytes


class Recurrence:
    """The DeltaNet part of one forward over `states` (one per row in decode, or one in total)."""

    def __init__(self, spec: DeltaSpec, states: list, single: bool):
        self.spec, self.single = spec, single
        self.index = {layer: j for j, layer in enumerate(spec.layers)}
        self.states = []
        for st in states:
            if getattr(st, "recurrent", None) is None or st.length == 0:  # a new (or emptied) sequence
                st.recurrent = RecurrentState(spec)
            self.states.append(st.recurrent)

    def __call__(self, layer: int, mixed: torch.Tensor, conv_w: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """mixed [N, C] (q|k|v before the conv), conv_w [C, 1, K], g, beta [N, H] -> o [N, H, dv]."""
        j, sp = self.index[layer], self.spec
        if self.single:  # N consecutive tokens of one sequence: chunked form
            st = self.states[0]
            x = torch.cat([st.tail[j], mixed], dim=0)
            conv = causal_conv(mixed[None], conv_w, st.tail[j][None])[0]
            st.tail[j] = x[-(sp.conv - 1):] if sp.conv > 1 else x[:0]
            q, k, v = (t.transpose(0, 1)[None] for t in qkv_heads(conv, sp.heads, sp.dk, sp.dv))  # [1, H, N, d]
            o, S = chunk_gated_delta_rule(q, k, v, g.t()[None], beta.t()[None], st.S[j][None])
            st.S[j] = S[0]
            return o[0].transpose(0, 1)
        one = len(self.states) == 1  # batch-1 decode works on the sequence's own state in place
        tails = self.states[0].tail[j][None] if one else torch.stack([st.tail[j] for st in self.states])  # [N, K - 1, C]
        window = torch.cat([tails, mixed[:, None]], dim=1)  # [N, K, C]
        q, k, v = qkv_heads(causal_conv_step(window, conv_w), sp.heads, sp.dk, sp.dv)  # [N, H, d]
        S = self.states[0].S[j][None] if one else torch.stack([st.S[j] for st in self.states])
        o, S = gated_delta_step(q, k, v, g, beta, S)
        for r, st in enumerate(self.states):
            st.tail[j] = window[r, 1:]
            if not one:
                st.S[j] = S[r]
        return o
