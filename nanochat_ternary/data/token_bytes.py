"""Bits per byte: the tokenizer-independent loss, shared by validation during training and eval.

Why this module exists: cross-entropy per token cannot be compared across vocabularies (a bigger
vocabulary packs more text per token); bits per byte can. bpb = (sum of nats over the scored
targets) / (ln 2 x UTF-8 bytes of those targets), as in nanochat and "Language Modeling Is
Compression" (https://arxiv.org/abs/2309.10668). Special tokens (`<|endoftext|>`, ChatML markers)
are not text: they count 0 bytes, but their loss is still counted.
"""

from __future__ import annotations

import math

import torch

from .tokenizer import SPECIAL_TOKENS, Tokenizer


def token_byte_lengths(tok: Tokenizer) -> torch.Tensor:
    """int64 [vocab]: UTF-8 bytes each token id stands for (0 for the special tokens)."""
    specials = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
    return torch.tensor([0 if i in specials else len(tok.decode_bytes([i])) for i in range(tok.vocab_size)],
                        dtype=torch.int64)


def bits_per_byte(nats: float, n_bytes: int) -> float:
    return nats / (math.log(2) * n_bytes) if n_bytes else float("nan")
