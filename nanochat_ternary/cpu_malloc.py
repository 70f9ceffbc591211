"""Keep freed tensor memory in the process on CPU, so each training step does not page-fault its
activations back in.

glibc serves a large allocation (over its mmap threshold, which starts at 128 KiB and rises with
what is freed) with a fresh mmap and unmaps it when it is freed, and it trims the heap top beyond
2x that threshold. A CPU training step allocates and frees the same tensors every step (logits,
activations, gradients), so their pages went back to the kernel and were faulted in again on the
next first touch: on this KVM machine a [512, 1024] float32 fill took 2.4 ms, 5x its memory
bandwidth. Whether the dynamic threshold had risen far enough depended on the order of the
first frees, which made the tiny step bimodal (70 or 90 ms, run to run). Fixing the threshold at
glibc's maximum and keeping a generous heap top removes the slow mode (65-70 ms, every run).

This is what a caching allocator (jemalloc, tcmalloc, PyTorch's own on CUDA) does; mallopt is
glibc's switch for it and needs no extra library. Elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 << 20  # free memory the heap top may keep before it is returned
TOP_PAD = 64 << 20  # extra heap grown at each brk, so a step's first allocations fault less


def mallopt(option: int, value: int) -> bool:
    """glibc's mallopt(option, value); False where it failed or there is no glibc."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(option, value) == 1
    except (OSError, AttributeError):
        return False


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory (once per process); True where it took effect."""
    return all(mallopt(opt, val) for opt, val in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
