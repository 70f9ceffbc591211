"""Training batches from token shards: random windows, resumable, optionally prefetched.

Why this module exists: the trainer needs `[batch_size, seq_len + 1]` token windows fast and
reproducibly. Global batch k is a pure function of (seed, k): its `batch_size` window starts
are drawn from `np.random.default_rng([seed, k, 0])`, and with `world_size` ranks rank r reads
only rows [r * b, (r + 1) * b) of it, b = batch_size / world_size. Hence
- resume is exact: the loader's whole state is the number of batches handed out;
- background worker threads may build batches in any order; the consumer still receives them
  in order 0, 1, 2, ... and the sequence is identical to `num_workers=0`;
- data-parallel ranks read disjoint slices of the same global batch without coordinating, and
  1, 2 or 8 ranks see the same windows, so a run can resume on a different number of ranks.
Inputs are `batch[:, :-1]`, targets `batch[:, 1:]`.

Windows start anywhere, or, with `align_token` (the token that opens every document: prepare.py
writes each document as [eos] + tokens), only where a document starts and, inside a document
longer than a window, every `seq_len` tokens after its start, so no part of it is out of reach.
Aligned windows show the model each short document whole: a window that starts mid-document
holds uses of names whose definitions lie before it, so copying them cannot be learned from it.
For the tiny model of scripts/validate_e2e.sh (same seed, steps and time) that took the share of
generated programs that compile from 38 to 100 of 128; nanochat aligns its rows to BOS for the
same reason.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .shards import ShardReader

STATE_VERSION = 1


def aligned_starts(reader: ShardReader, token: int, seq_len: int) -> np.ndarray:
    """Window starts at each `token` (a document start) and every `seq_len` tokens inside longer
    documents; only those with a whole window of `seq_len + 1` tokens after them."""
    docs = reader.positions_of(token)
    if len(docs) == 0:
        raise DataError(f"{reader.dir}: no document starts (token {token}) to align windows to; "
                        "prepare the data with this project, or set training.align_windows = false")
    ends = np.append(docs[1:], reader.total_tokens)
    long = np.flatnonzero(ends - docs > seq_len)
    extra = [np.arange(docs[i] + seq_len, ends[i], seq_len) for i in long]
    starts = np.sort(np.concatenate([docs, *extra])) if extra else docs
    starts = starts[starts <= reader.total_tokens - (seq_len + 1)]
    if len(starts) == 0:
        raise DataError(f"{reader.dir}: no aligned window of {seq_len + 1} tokens fits the data")
    return starts


class TokenLoader:
    """Random `[batch_size, seq_len + 1]` windows of a shard folder (see module docstring).

    With `num_workers > 0`, worker threads build batches ahead of the consumer: at most
    `prefetch_batches` finished batches plus one in progress per worker.
    """

    def __init__(self, shard_dir: Path, batch_size: int, seq_len: int, seed: int = 0, num_workers: int = 0,
                 prefetch_batches: int = 0, rank: int = 0, world_size: int = 1, align_token: int | None = None):
        for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1), ("seed", seed, 0),
                                 ("num_workers", num_workers, 0), ("prefetch_batches", prefetch_batches, 0),
                                 ("rank", rank, 0), ("world_size", world_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"TokenLoader: {name} must be an integer >= {low}, got {value!r}")
        if rank >= world_size:
            raise ConfigError(f"TokenLoader: rank {rank} must be < world_size {world_size}")
        if batch_size % world_size:
            raise ConfigError(f"TokenLoader: the global batch_size {batch_size} must be divisible by world_size {world_size}")
        self.reader = ShardReader(shard_dir)
        if self.reader.total_tokens < seq_len + 1:
            raise DataError(f"{shard_dir}: {self.reader.total_tokens} tokens is shorter than seq_len + 1 = {seq_len + 1}")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.window_starts = None if align_token is None else aligned_starts(self.reader, align_token, seq_len)
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.prefetch_batches = num_workers, prefetch_batches
        self._pos = 0  # index of the next batch to hand out
        self._closed = False
        self._cond = threading.Condition()
        self._ready: dict[int, torch.Tensor | BaseException] = {}
        self._claim = 0  # next batch index a worker will build
        self._generation = 0  # bumped by load_state_dict so stale in-flight batches are dropped
        self._threads = [threading.Thread(target=self._work, name=f"TokenLoader-{i}", daemon=True)
                         for i in range(num_workers)]
        for t in self._threads:
            t.start()

    # ---- batch construction ---------------------------------------------------------------
    def build_batch(self, k: int) -> torch.Tensor:
        """This rank's rows of global batch number k (pure function of seed, k, rank, world_size)."""
        rng = np.random.default_rng([self.seed, k, 0])  # the 0 keeps the windows of earlier 1-rank runs
        span = self.seq_len + 1
        if self.window_starts is None:
            starts = rng.integers(0, self.reader.total_tokens - span + 1, size=self.batch_size)
        else:
            starts = self.window_starts[rng.integers(0, len(self.window_starts), size=self.batch_size)]
        per_rank = self.batch_size // self.world_size
        starts = starts[self.rank * per_rank: (self.rank + 1) * per_rank]
        rows = np.stack([self.reader.get(int(s), span) for s in starts]).astype(np.int64)
        return torch.from_numpy(rows)

    def _work(self) -> None:
        capacity = self.prefetch_batches + self.num_workers
        while True:
            with self._cond:
                while not self._closed and self._claim >= self._pos + capacity:
                    self._cond.wait()
                if self._closed:
                    return
                k, generation = self._claim, self._generation
                self._claim += 1
            try:
                batch: torch.Tensor | BaseException = self.build_batch(k)
            except BaseException as e:  # handed to the consumer, re-raised in next_batch
                batch = e
            with self._cond:
                if generation == self._generation and not self._closed:
                    self._ready[k] = batch
                    self._cond.notify_all()

    def next_batch(self) -> torch.Tensor:
        """This rank's rows of the next global batch: `[batch_size / world_size, seq_len + 1]` int64."""
        if self._closed:
            raise DataError("TokenLoader: next_batch() after close()")
        if not self._threads:
            batch = self.build_batch(self._pos)
            self._pos += 1
            return batch
        with self._cond:
            while self._pos not in self._ready:
                if self._closed:
                    raise DataError("TokenLoader: closed while waiting for a batch")
                self._cond.wait()
            batch = self._ready.pop(self._pos)
            self._pos += 1
            self._cond.notify_all()
        if isinstance(batch, BaseException):
            raise batch
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ---- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable position: the batches handed out so far and the seed."""
        return {"version": STATE_VERSION, "batches": self._pos, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`; the next batch is the one that followed it.

        Only the seed and the batch count are restored; this loader keeps its own rank and
        world size, so a state saved by rank 0 resumes every rank, on any number of ranks.
        """
        try:
            if state["version"] != STATE_VERSION:
                raise DataError(f"TokenLoader state version {state['version']} is not {STATE_VERSION}")
            pos, seed = state["batches"], state["seed"]
        except (KeyError, TypeError) as e:
            raise DataError(f"TokenLoader state is malformed (missing {e})") from e
        if not isinstance(pos, int) or pos < 0 or not isinstance(seed, int) or seed < 0:
            raise DataError(f"TokenLoader state has invalid batches={pos!r} seed={seed!r}")
        with self._cond:
            self._generation += 1
            self._ready.clear()
            self.seed, self._pos, self._claim = seed, pos, pos
            self._cond.notify_all()

    # ---- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and join the worker threads; safe to call twice."""
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        self._threads = []

    def __enter__(self) -> "TokenLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
