"""The LM head's losses over chunks of tokens, never holding the whole batch's logits.

At the nano shape one [B, T, V] float32 logits tensor is 8 x 2048 x 32000 x 4 B = 2 GB, and the
loss needs several (main head, entropy term, every MTP head, and their gradients). Here the
hidden states are cut into chunks of `chunk_tokens` rows; each chunk's logits, log-softmax and
sums are computed under activation checkpointing (torch.utils.checkpoint, non-reentrant), so the
forward keeps only the chunk's inputs and the backward recomputes one chunk's logits at a time.
Peak memory is one chunk's logits and their temporaries; the price is one more head matmul per
token in backward. The sums are exactly the full-logits ones, up to float32 summation order.
A batch that fits in one chunk (the tiny configs) is not checkpointed: the recomputed logits would
be alive at the same moment as the kept ones (the head's backward runs first, with every trunk
activation still held), so checkpointing one chunk costs a head matmul and saves no peak memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .ce_entropy import cross_entropy_entropy

# Default chunk: about 2^23 logits (32 MB in float32) whatever the vocabulary: 262 tokens at a
# 32,000-token vocabulary; the tiny configs (1,024 tokens) fit their whole batch in one chunk.
CHUNK_LOGITS = 1 << 23


def default_chunk_tokens(vocab_size: int) -> int:
    return max(1, CHUNK_LOGITS // vocab_size)


def _chunk_sums(head: Callable, h: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    return cross_entropy_entropy(head(h), targets, with_entropy)


def head_sums(head: Callable, h: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False,
              chunk_tokens: int | None = None, vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(target), sum of the predictive entropy) over the rows of h [N, D].

    `head` maps hidden states to logits (the tied LM head). Each chunk's work is checkpointed
    when gradients are on; without them it simply runs chunk by chunk. `chunk_tokens` 0: the
    loss as it was before chunking (all rows at once, logits kept for the backward), for
    measuring what chunking saves (memory_estimate.py's `full_logits`).
    """
    n = h.shape[0]
    chunk = chunk_tokens or default_chunk_tokens(vocab_size or 1)
    if chunk_tokens == 0 or n <= chunk:
        return _chunk_sums(head, h, targets, with_entropy)
    nll = h.new_zeros((), dtype=torch.float32)
    ent = h.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk):
        hc, tc = h[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled():
            a, b = checkpoint(_chunk_sums, head, hc, tc, with_entropy, use_reentrant=False)
        else:
            a, b = _chunk_sums(head, hc, tc, with_entropy)
        nll = nll + a
        ent = ent + b
    return nll, ent
