"""Seeded byte-level mutations for the fuzz harness.

Why this module exists: the harness must be reproducible (a failing case is named by its seed
and index, and rerunning that pair rebuilds the exact file), run without extra dependencies, and
aim at the fields that matter (counts, lengths, types, offsets) rather than only at random
bytes, which mostly hit tensor data. So mutations are small pure functions of a `random.Random`
and the original bytes; format modules choose where to aim them.
"""

from __future__ import annotations

import random
import struct

# values that break length arithmetic: zero, one, sign bits, powers of two, all ones, near-wrap
INTERESTING = [0, 1, 2, 7, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40,
               1 << 60, (1 << 63) - 1, 1 << 63, (1 << 64) - 32, (1 << 64) - 1]
_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def put_uint(data: bytes, pos: int, width: int, value: int) -> bytes:
    """`data` with the little-endian unsigned integer of `width` bytes at `pos` replaced."""
    value &= (1 << (8 * width)) - 1
    return data[:pos] + struct.pack(_FORMATS[width], value) + data[pos + width:]


def get_uint(data: bytes, pos: int, width: int) -> int:
    return struct.unpack_from(_FORMATS[width], data, pos)[0]


def lie(rng: random.Random, original: int) -> int:
    """A wrong value for a count or length: an interesting constant or a small step away."""
    if rng.random() < 0.5:
        return rng.choice(INTERESTING)
    return max(0, original + rng.choice([-3, -2, -1, 1, 2, 3, 8, 1000, -1000]))


def flip_bytes(rng: random.Random, data: bytes, lo: int, hi: int, max_changes: int = 8) -> bytes:
    """Overwrite / bit-flip up to `max_changes` bytes in [lo, hi)."""
    if hi <= lo:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, max_changes)):
        i = rng.randrange(lo, hi)
        out[i] = out[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    """A strict prefix of `data` (possibly empty)."""
    return data[: rng.randrange(len(data))]


def splice(rng: random.Random, data: bytes) -> bytes:
    """Delete, duplicate or insert a short run of bytes somewhere (shifts everything after it)."""
    i = rng.randrange(len(data))
    n = rng.randint(1, 16)
    kind = rng.randrange(3)
    if kind == 0:
        return data[:i] + data[i + n:]
    if kind == 1:
        return data[:i] + data[i:i + n] + data[i:]
    return data[:i] + bytes(rng.randrange(256) for _ in range(n)) + data[i:]
