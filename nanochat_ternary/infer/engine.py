"""The inference Engine: load a GGUF (+ .mhc), prefill and batched decode over per-sequence caches.

Why this module exists: it is the one object the CLI, the server's scheduler and the benchmarks
drive (contract in the engine brief): `Engine.load`, `new_state`, `prefill(state, tokens)` and
`decode(states, tokens)`, which runs every sequence's next token in ONE batched forward (each
projection reads its weights once for the whole batch; attention reads each sequence's own cache
slot, see kv_cache.py). `forward_logits` is the cache-free full forward for parity tests, and
`verify`/`mtp_logits`/`truncate` serve self-speculative decoding (speculative.py).

A token's logits are bitwise the same whether it was decoded alone, in a batch, in a prefill or
in a speculative verify (native back-end): every per-token operation is computed row by row.

Engine methods are not thread-safe: one thread drives an Engine.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from ..cpu_malloc import keep_freed_memory
from ..errors import NanochatError
from .gguf_model import GGUFModel, read_gguf_model
from .kernels import backend_name, native_library
from .kv_cache import KVPool, SeqState, kv_dtype
from .deltanet_mixer import spec_of
from .network import Network
from .recurrent_state import Recurrence

__all__ = ["Engine", "SeqState", "EngineInputError"]


class EngineInputError(NanochatError, ValueError):
    """Bad input to the engine: empty token list, a token outside the vocabulary, or a sequence
    that would exceed the context length."""


class Engine:
    def __init__(self, gm: GGUFModel, backend: str | None = None, exact_head: bool | None = None, kv_cache: str = "f32"):
        torch.set_flush_denormal(True)
        # every step allocates and frees the same buffers (logits [B, V], the sampler's float64
        # rows): keep their pages instead of faulting them in again (sampling 8 rows of a 32K
        # vocabulary took 1.56 ms a step without, 0.51 ms with)
        keep_freed_memory()
        self.model_file = gm.path
        self.hp = gm.hp
        self.lib = None if backend == "torch" else native_library()
        self.backend = backend_name(self.lib)
        self.net = Network(gm, self.lib, exact_head)
        self.tokenizer = gm.tokenizer
        self.chat_template = gm.chat_template
        self.n_ctx = gm.hp.n_ctx
        self.vocab_size = gm.hp.vocab_size
        self.name = gm.hp.name
        self.n_mtp = gm.hp.n_mtp
        self.file_bytes = gm.file_bytes
        proj_params = sum(p.n_out * p.n_in for p in gm.projections.values())
        self.bits_per_weight = 8.0 * sum(p.stored_bytes for p in gm.projections.values()) / max(proj_params, 1)
        hp = gm.hp
        self.deltanet = spec_of(gm)  # Gated DeltaNet layers keep a recurrent state, not a KV cache
        self.kv_cache = kv_cache
        self.pool = KVPool(hp.n_layers - len(hp.dn_layers), hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.n_ctx, hp.rope_theta, self.lib,
                           kv_dtype(kv_cache))

    @classmethod
    def load(cls, gguf_path: str | Path, mhc_path: str | Path | None = None, num_threads: int | None = None,
             backend: str | None = None, exact_head: bool | None = None, kv_cache: str = "f32") -> "Engine":
        """Read a GGUF (+ .mhc; FormatError naming the file on a bad/truncated/mismatched file).

        `backend="torch"` forces the PyTorch kernels (default: native when it compiles);
        `exact_head=True` computes every logit from the F16 table, False first from its int8 copy
        (see network.Network.tied_head); None: exact for small heads, int8 for large ones.
        `kv_cache`: "f32" (default) or "f16" keys and values (kv_cache.py)."""
        if num_threads:
            torch.set_num_threads(int(num_threads))
        kv_dtype(kv_cache)  # a bad name fails before the file is read
        return cls(read_gguf_model(gguf_path, mhc_path), backend, exact_head, kv_cache)

    # ---- states --------------------------------------------------------------------------
    def new_state(self) -> SeqState:
        return SeqState(self.pool, self.pool.alloc())

    def truncate(self, state: SeqState, length: int) -> None:
        """Forget the tokens after the first `length` (speculative decoding's rollback)."""
        if not 0 <= length <= state.length:
            raise EngineInputError(f"cannot truncate a sequence of {state.length} tokens to {length}")
        if self.deltanet is not None and 0 < length < state.length:
            raise EngineInputError("a Gated DeltaNet model cannot roll a sequence back (its state is recurrent); "
                                   "speculative decoding needs a pure-attention model")
        state.length = length

    def _check(self, tokens: list[int], start: int) -> torch.Tensor:
        if not tokens:
            raise EngineInputError("no tokens given")
        if min(tokens) < 0 or max(tokens) >= self.vocab_size:  # on the list: cheaper than tensor ops per step
            raise EngineInputError(f"token id outside the vocabulary 0..{self.vocab_size - 1}")
        if start + len(tokens) > self.n_ctx:
            raise EngineInputError(f"sequence of {start + len(tokens)} tokens exceeds the context length {self.n_ctx}")
        return torch.tensor(tokens, dtype=torch.long)

    # ---- forward passes ------------------------------------------------------------------
    def _trunk(self, ids: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor, recur: Recurrence | None = None) -> torch.Tensor:
        """Rows ids [R] at positions pos of cache slots `slots` -> trunk states z [R, D]: all layers
        in one native call where the model allows (network.native_trunk_plan), else op by op."""
        if self.net.plan is not None:
            return self.net.trunk_native(ids, self.pool, slots, pos)
        return self.net.trunk(ids, lambda i, qkv: self.pool.attend(i, slots, pos, qkv), recur)

    @torch.no_grad()
    def verify(self, state: SeqState, tokens: list[int], all_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `tokens` to `state` in one forward; returns (logits [T, V] or [1, V] for the
        last token only, trunk states z [T, D])."""
        start = state.length
        ids = self._check(tokens, start)
        self.pool.ensure_length(start + len(tokens))
        slots = torch.full((len(tokens),), state.slot, dtype=torch.long)
        pos = torch.arange(start, start + len(tokens))
        recur = Recurrence(self.deltanet, [state], single=True) if self.deltanet else None
        z = self._trunk(ids, slots, pos, recur)
        state.length = start + len(tokens)
        state.last_z = z[-1].clone()
        return self.net.head(z if all_logits else z[-1:]), z

    def prefill(self, state: SeqState, tokens: list[int]) -> torch.Tensor:
        """Append tokens to the state; float32 logits [vocab_size] of the last token."""
        return self.verify(state, tokens, all_logits=False)[0][0]

    @torch.no_grad()
    def decode(self, states: list[SeqState], tokens: list[int]) -> torch.Tensor:
        """Append one token to each state in ONE batched forward; float32 logits [B, vocab_size]."""
        if len(states) != len(tokens):
            raise EngineInputError(f"decode got {len(states)} states but {len(tokens)} tokens")
        if len({s.slot for s in states}) != len(states):
            raise EngineInputError("decode got the same sequence state twice")
        ids = self._check(tokens, 0)
        pos = torch.tensor([s.length for s in states], dtype=torch.long)
        if int(pos.max()) + 1 > self.n_ctx:
            raise EngineInputError(f"a sequence would exceed the context length {self.n_ctx}")
        self.pool.ensure_length(int(pos.max()) + 1)
        slots = torch.tensor([s.slot for s in states], dtype=torch.long)
        recur = Recurrence(self.deltanet, states, single=False) if self.deltanet else None
        z = self._trunk(ids, slots, pos, recur)
        for s, zj in zip(states, z.unbind(0)):  # views of this step's z: one op, not a copy per row
            s.length += 1
            s.last_z = zj
        return self.net.head(z)

    def _rows_forward(self, states: list[SeqState], token_lists: list[list[int]]) -> torch.Tensor:
        """Append token_lists[j] to states[j], every sequence in ONE trunk forward (attention-only
        models: rows of one sequence attend to each other's keys, written before any row attends,
        kv_cache.attend); returns the trunk states z of all rows in order, [sum of lengths, D]."""
        if self.deltanet is not None:
            raise EngineInputError("a batch of multi-token rows needs a pure-attention model (a Gated DeltaNet state is per step)")
        if len(states) != len(token_lists) or len({s.slot for s in states}) != len(states):
            raise EngineInputError("one token list per distinct sequence state is needed")
        ids = torch.cat([self._check(toks, s.length) for s, toks in zip(states, token_lists)])
        slots = torch.cat([torch.full((len(t),), s.slot, dtype=torch.long) for s, t in zip(states, token_lists)])
        pos = torch.cat([torch.arange(s.length, s.length + len(t)) for s, t in zip(states, token_lists)])
        self.pool.ensure_length(int(pos.max()) + 1)
        z = self._trunk(ids, slots, pos)
        end = 0
        for s, toks in zip(states, token_lists):
            end += len(toks)
            s.length += len(toks)
            s.last_z = z[end - 1].clone()
        return z

    @torch.no_grad()
    def verify_batch(self, states: list[SeqState], token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Append token_lists[j] to states[j], every sequence in ONE forward (speculative decoding in
        the server, speculative_batch.py); returns (logits, trunk states z) of all rows in order,
        [sum of lengths, V] and [sum of lengths, D]. Attention-only models."""
        z = self._rows_forward(states, token_lists)
        return self.net.head(z), z

    @torch.no_grad()
    def prefill_batch(self, states: list[SeqState], token_lists: list[list[int]]) -> torch.Tensor:
        """prefill() of several sequences in ONE forward: float32 logits [B, vocab_size] of each
        one's last token, the same bits as one prefill each (native back-end). Gated DeltaNet
        models prefill one sequence at a time (their recurrent state is per sequence)."""
        if self.deltanet is not None or len(states) == 1:
            if len(states) != len(token_lists):
                raise EngineInputError(f"prefill_batch got {len(states)} states but {len(token_lists)} token lists")
            return torch.stack([self.prefill(s, t) for s, t in zip(states, token_lists)])
        z = self._rows_forward(states, token_lists)
        last = torch.tensor(list(itertools.accumulate(len(t) for t in token_lists))) - 1
        return self.net.head(z[last])

    @torch.no_grad()
    def mtp_logits_batch(self, z: torch.Tensor) -> torch.Tensor:
        """MTP head logits [B, n_mtp, V] from trunk states z [B, D], in one call."""
        if not self.n_mtp:
            raise EngineInputError(f"{self.model_file}: the model has no MTP heads")
        return self.net.mtp_logits(z)

    def forward_logits(self, tokens: list[int]) -> torch.Tensor:
        """Full forward over `tokens` from an empty context: float32 logits [T, V]."""
        state = self.new_state()
        try:
            return self.verify(state, tokens)[0]
        finally:
            state.release()

    @torch.no_grad()
    def mtp_logits(self, z: torch.Tensor) -> torch.Tensor:
        """MTP head logits [n_mtp, V] from one trunk state z [D] (head k: the token 2 + k ahead)."""
        if not self.n_mtp:
            raise EngineInputError(f"{self.model_file}: the model has no MTP heads")
        return self.net.mtp_logits(z.reshape(1, -1))[0]

    def info(self) -> dict:
        hp = self.hp
        return {"name": self.name, "arch": hp.arch, "layers": hp.n_layers, "dim": hp.dim, "vocab": hp.vocab_size,
                "n_ctx": hp.n_ctx, "mhc_streams": hp.n_streams, "mtp_heads": hp.n_mtp, "bitlinear": hp.use_bitlinear,
                "backend": self.backend, "threads": torch.get_num_threads(),
                "kv_cache": self.kv_cache}
