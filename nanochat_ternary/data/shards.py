"""Token shards on disk: flat little-endian uint16/uint32 arrays plus an `index.json`.

Why this module exists: training reads random windows from a token stream far larger than it
wants to hold in Python objects. Tokens are written once as raw arrays (`shard_00000.bin`, ...;
uint16 when the vocabulary fits, else uint32) and read back through read-only `np.memmap`, so
many loader threads and processes share the OS page cache. `index.json` records the dtype, the
shard files and their token counts; it is written last and atomically, so a folder with a valid
index is always complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fsutil import atomic_write_text

INDEX_NAME = "index.json"
INDEX_VERSION = 1
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
DEFAULT_SHARD_TOKENS = 50_000_000  # 100 MB per uint16 shard


def dtype_for_vocab(vocab_size: int) -> str:
    """The smallest shard dtype that can hold every id of a vocabulary of this size."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def write_shards(token_arrays: Iterable[np.ndarray], out_dir: Path, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 dtype: str = "uint16") -> dict:
    """Concatenate `token_arrays` into shards of at most `shard_tokens` tokens; return the index.

    `dtype` is "uint16" (ids < 65536) or "uint32"; an id that does not fit raises DataError.
    Any previous index in `out_dir` is removed first, so readers never pair it with new shards.
    """
    if dtype not in DTYPES:
        raise DataError(f"shard dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be >= 1, got {shard_tokens}")
    np_dtype, limit = DTYPES[dtype], np.iinfo(DTYPES[dtype]).max
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX_NAME).unlink(missing_ok=True)
    for old in out_dir.glob("shard_*.bin"):
        old.unlink()
    files: list[str] = []
    counts: list[int] = []
    current = None
    for arr in token_arrays:
        arr = np.asarray(arr)
        if arr.size and (arr.min() < 0 or arr.max() > limit):
            raise DataError(f"{out_dir}: token id out of range for {dtype} (min {arr.min()}, max {arr.max()})")
        arr = arr.astype(np_dtype, copy=False).ravel()
        pos = 0
        while pos < arr.size:
            if current is None or counts[-1] == shard_tokens:
                if current is not None:
                    current.close()
                files.append(f"shard_{len(files):05d}.bin")
                counts.append(0)
                current = open(out_dir / files[-1], "wb")
            take = min(shard_tokens - counts[-1], arr.size - pos)
            current.write(arr[pos:pos + take].tobytes())
            counts[-1] += take
            pos += take
    if current is not None:
        current.close()
    index = {"version": INDEX_VERSION, "dtype": dtype, "shards": files, "tokens": counts, "total": sum(counts)}
    atomic_write_text(out_dir / INDEX_NAME, json.dumps(index, indent=1))
    return index


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: shard index not found (not a prepared shard folder)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: shard index is not valid JSON ({e})") from e
    try:
        ok = (isinstance(index, dict) and index["dtype"] in DTYPES and isinstance(index["shards"], list)
              and isinstance(index["tokens"], list) and len(index["shards"]) == len(index["tokens"])
              and all(isinstance(n, int) and n >= 0 for n in index["tokens"])
              and all(isinstance(s, str) and "/" not in s and "\\" not in s for s in index["shards"])
              and index["total"] == sum(index["tokens"]))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(f"{path}: shard index is garbled (needs dtype, shards, tokens, total that agree)")
    return index


class ShardReader:
    """Read-only random access to a shard folder as one long token stream."""

    def __init__(self, shard_dir: Path):
        self.dir = Path(shard_dir)
        index = _read_index(self.dir / INDEX_NAME)
        self.dtype = index["dtype"]
        itemsize = DTYPES[self.dtype].itemsize
        self._maps: list[np.memmap] = []
        for name, n in zip(index["shards"], index["tokens"]):
            path = self.dir / name
            try:
                size = path.stat().st_size
            except OSError as e:
                raise DataError(f"{path}: shard listed in {INDEX_NAME} is missing") from e
            if size != n * itemsize:
                raise DataError(f"{path}: shard is {size} bytes but {INDEX_NAME} says {n} tokens ({n * itemsize} bytes)")
            if n:  # np.memmap cannot map an empty file
                self._maps.append(np.memmap(path, dtype=DTYPES[self.dtype], mode="r", shape=(n,)))
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])
        self.total_tokens = int(self._starts[-1])

    def __len__(self) -> int:
        return self.total_tokens

    def positions_of(self, token: int) -> np.ndarray:
        """Every position (int64, ascending) of the stream that holds `token`, shard by shard."""
        found = [np.flatnonzero(m == token) + int(start) for m, start in zip(self._maps, self._starts)]
        return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as a fresh array (copied out of the maps)."""
        if start < 0 or length < 0 or start + length > self.total_tokens:
            raise DataError(f"{self.dir}: window [{start}, {start + length}) is outside 0..{self.total_tokens}")
        out = np.empty(length, dtype=DTYPES[self.dtype])
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < length:
            offset = start + done - int(self._starts[shard])
            take = min(length - done, len(self._maps[shard]) - offset)
            out[done:done + take] = self._maps[shard][offset:offset + take]
            done += take
            shard += 1
        return out
