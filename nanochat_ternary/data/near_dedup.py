"""Near-duplicate detection for source files: MinHash signatures and LSH banding.

Why this module exists: across crate versions (Debian ships several of many crates) and forks,
most files repeat with small edits; training on each copy wastes compute and leaks validation
text into training. Each file becomes a set of shingles (hashes of 3 consecutive non-blank,
whitespace-normalised lines: code changes by lines, and this is far cheaper than token shingles),
then a MinHash signature (Broder 1997, https://doi.org/10.1109/SEQUEN.1997.666900) whose
agreement rate estimates the Jaccard similarity of two files. LSH banding (Leskovec, Rajaraman,
Ullman, Mining of Massive Datasets ch. 3, http://www.mmds.org/) finds candidate pairs without
comparing all pairs; a candidate is a duplicate when its estimated Jaccard reaches `threshold`.

Written with numpy rather than `datasketch` because datasketch hashes each shingle in Python one
by one; here one matrix operation hashes all of a file's shingles under all permutations.
"""

from __future__ import annotations

import zlib

import numpy as np

NUM_PERM = 128
BANDS, ROWS = 16, 8  # NUM_PERM = BANDS * ROWS; candidates from Jaccard ~0.7 up
DEFAULT_THRESHOLD = 0.8
_PRIME = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(20240601)  # fixed: signatures must agree between runs and workers
_A = _rng.integers(1, 1 << 31, NUM_PERM, dtype=np.uint64)
_B = _rng.integers(0, 1 << 31, NUM_PERM, dtype=np.uint64)


def shingles(text: str) -> np.ndarray:
    """CRC32 (uint64) of each run of 3 consecutive non-blank lines, whitespace collapsed."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 3:
        grams = ["\n".join(lines)]
    else:
        grams = ["\n".join(lines[i:i + 3]) for i in range(len(lines) - 2)]
    return np.fromiter((zlib.crc32(g.encode("utf-8")) for g in set(grams)), dtype=np.uint64)


def signature(text: str) -> np.ndarray:
    """The file's MinHash signature: NUM_PERM uint32 minima of (a*h + b) mod (2^61 - 1)."""
    h = shingles(text)
    # a < 2^31 and h < 2^32 keep a*h + b below 2^64: no overflow in uint64
    hashed = (_A[:, None] * h[None, :] + _B[:, None]) % _PRIME
    return (hashed.min(axis=1) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


class NearDuplicateIndex:
    """Add signatures in keep order; `add` returns the index of an earlier near-duplicate or -1."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        self.threshold = threshold
        self._buckets: dict[tuple[int, bytes], int] = {}
        self._sigs: list[np.ndarray] = []

    def add(self, sig: np.ndarray) -> int:
        keys = [(b, sig[b * ROWS:(b + 1) * ROWS].tobytes()) for b in range(BANDS)]
        seen = set()
        for key in keys:
            j = self._buckets.get(key)
            if j is not None and j not in seen:
                seen.add(j)
                if float(np.mean(self._sigs[j] == sig)) >= self.threshold:
                    return j
        idx = len(self._sigs)
        self._sigs.append(sig)
        for key in keys:
            self._buckets.setdefault(key, idx)
        return -1
