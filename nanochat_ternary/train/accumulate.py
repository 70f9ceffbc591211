"""One step's forward and backward: micro-batches, gradient accumulation, the mean over ranks.

Why this module exists: a step's global batch (training.batch_size) may not fit one forward, and
under torchrun it is spread over ranks. Each rank runs its slice as micro-batches, backpropagates
each loss divided by the number of micro-batches (all hold the same number of tokens, so the sum
of the scaled gradients is the gradient of the slice's mean loss), and the gradients are then
averaged over the ranks (train/distributed.py). The result equals one forward and backward of the
whole global batch up to float rounding.

A non-finite loss on any rank or micro-batch makes the step bad on every rank (the flag travels
with the logged loss terms in one small all-reduce), so all ranks skip the same update and never
wait for each other in a reduction that one of them left out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..device import autocast
from .distributed import DistInfo, average_gradients, mean_over_ranks


def forward_backward(model: torch.nn.Module, tokens: torch.Tensor, micro_batch_size: int, loss_fn: Callable,
                     loss_args: tuple, device: torch.device, dtype: str, params: list[torch.Tensor],
                     info: DistInfo) -> tuple[dict[str, float], bool]:
    """Accumulate the gradient of this rank's `tokens` [rows, T + 1] and average it over the ranks.

    Returns the loss terms (means over the global batch) and whether the step is usable
    (every loss finite). `loss_fn(model, tokens, *loss_args) -> (loss, parts)`.
    """
    chunks = tokens.split(micro_batch_size)
    sums: dict[str, torch.Tensor] = {}
    finite = True
    for chunk in chunks:
        chunk = chunk.to(device, non_blocking=True)
        with autocast(device, dtype):
            loss, parts = loss_fn(model, chunk, *loss_args)
        if not bool(torch.isfinite(loss)):
            finite = False
        elif finite:  # after a bad micro-batch the step is skipped anyway
            (loss / len(chunks)).backward()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
    keys = sorted(sums)
    local = torch.stack([sums[k] / len(chunks) for k in keys] + [torch.tensor(0.0 if finite else 1.0, device=device)])
    total = mean_over_ranks(local.to(device), info).tolist()
    ok = total[-1] == 0.0
    if ok:
        average_gradients(params, info)
    return dict(zip(keys, total[:-1])), ok
