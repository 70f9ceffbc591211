"""Tests for the resumable, prefetching token loader (nanochat_ternary.data.loader)."""

import json
import threading

import numpy as np
import pytest
import torch

from nanochat_ternary.data.loader import TokenLoader
from nanochat_ternary.data.shards import write_shards
from nanochat_ternary.errors import ConfigError, DataError

N_TOKENS = 3000


@pytest.fixture()
def shard_dir(tmp_path):
    # tokens 0..N-1 across several shards: every window must be a run of consecutive ints
    write_shards([np.arange(N_TOKENS)], tmp_path, shard_tokens=700)
    return tmp_path


def _take(loader: TokenLoader, n: int) -> list[torch.Tensor]:
    return [loader.next_batch() for _ in range(n)]


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("TokenLoader-")]


def test_batches_are_windows(shard_dir):
    with TokenLoader(shard_dir, batch_size=4, seq_len=16, seed=1) as loader:
        batch = loader.next_batch()
        assert batch.shape == (4, 17) and batch.dtype == torch.int64
        diffs = batch[:, 1:] - batch[:, :-1]
        assert bool((diffs == 1).all())  # contiguous windows of the stream
        assert int(batch.min()) >= 0 and int(batch.max()) < N_TOKENS
        starts = {int(row[0]) for batch in _take(loader, 20) for row in batch}
        assert len(starts) > 50  # random positions, not a fixed few


def test_deterministic_and_rank_dependent(shard_dir):
    a = _take(TokenLoader(shard_dir, 2, 8, seed=3), 5)
    b = _take(TokenLoader(shard_dir, 2, 8, seed=3), 5)
    c = _take(TokenLoader(shard_dir, 2, 8, seed=4), 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("align", [None, 0])
def test_ranks_read_slices_of_the_same_global_batch(shard_dir, align):
    # global batch k is the same windows for 1, 2 or 4 ranks; rank r reads its own rows of it
    whole = _take(TokenLoader(shard_dir, 4, 8, seed=3, align_token=align), 5)
    for world in (2, 4):
        parts = [_take(TokenLoader(shard_dir, 4, 8, seed=3, rank=r, world_size=world, align_token=align), 5)
                 for r in range(world)]
        for k in range(5):
            assert all(p[k].shape == (4 // world, 9) for p in parts)
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
    with pytest.raises(ConfigError, match="divisible by world_size"):
        TokenLoader(shard_dir, 3, 8, rank=0, world_size=2)


def test_workers_give_identical_sequence_and_close_cleanly(shard_dir):
    plain = _take(TokenLoader(shard_dir, 3, 12, seed=7), 40)
    before = len(_loader_threads())
    loader = TokenLoader(shard_dir, 3, 12, seed=7, num_workers=3, prefetch_batches=4)
    assert len(_loader_threads()) == before + 3
    threaded = _take(loader, 40)
    assert all(torch.equal(x, y) for x, y in zip(plain, threaded))
    loader.close()
    loader.close()  # idempotent
    assert len(_loader_threads()) == before
    with pytest.raises(DataError, match="after close"):
        loader.next_batch()
    with TokenLoader(shard_dir, 3, 12, num_workers=2, prefetch_batches=0) as ctx:  # close while workers wait
        ctx.next_batch()
    assert len(_loader_threads()) == before


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(shard_dir, workers):
    reference = _take(TokenLoader(shard_dir, 2, 10, seed=5), 12)
    with TokenLoader(shard_dir, 2, 10, seed=5, num_workers=workers, prefetch_batches=3) as first:
        _take(first, 7)
        state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    assert state["batches"] == 7
    with TokenLoader(shard_dir, 2, 10, seed=0, num_workers=workers, prefetch_batches=3) as resumed:
        _take(resumed, 2)  # consumed batches and queued ones are discarded by load_state_dict
        resumed.load_state_dict(state)
        rest = _take(resumed, 5)
    assert all(torch.equal(x, y) for x, y in zip(reference[7:], rest))


def test_errors(shard_dir, tmp_path):
    with pytest.raises(DataError, match="shorter than seq_len"):
        TokenLoader(shard_dir, 1, N_TOKENS)
    TokenLoader(shard_dir, 1, N_TOKENS - 1).next_batch()  # exactly enough
    with pytest.raises(ConfigError, match="batch_size"):
        TokenLoader(shard_dir, 0, 8)
    with pytest.raises(ConfigError, match="rank"):
        TokenLoader(shard_dir, 1, 8, rank=2, world_size=2)
    with pytest.raises(DataError, match="index.json"):
        TokenLoader(tmp_path / "nothing", 1, 8)
    loader = TokenLoader(shard_dir, 1, 8)
    with pytest.raises(DataError, match="malformed"):
        loader.load_state_dict({"version": 1})


def test_aligned_windows_start_at_documents_and_cover_long_ones(tmp_path):
    """With align_token, every window starts at a document start (the token) or at a multiple of
    seq_len inside a document longer than a window; short documents are seen whole."""
    rng = np.random.default_rng(0)
    lengths = [5, 9, 40, 3, 100, 7, 12]  # document bodies; 40 and 100 are longer than a window
    docs = [np.concatenate([[0], rng.integers(5, 1000, n)]) for n in lengths * 3]
    write_shards(docs, tmp_path, shard_tokens=64)  # documents straddle shard boundaries
    stream = np.concatenate(docs)
    doc_starts = np.flatnonzero(stream == 0)
    seq = 16
    want = set(doc_starts.tolist())
    for d, e in zip(doc_starts, np.append(doc_starts[1:], len(stream))):
        want |= set(range(d + seq, e, seq))
    want = {s for s in want if s <= len(stream) - seq - 1}
    with TokenLoader(tmp_path, batch_size=8, seq_len=seq, seed=3, align_token=0) as loader:
        assert set(loader.window_starts.tolist()) == want
        seen = set()
        for batch in _take(loader, 60):
            for row in batch.numpy():
                start = next(s for s in want if np.array_equal(stream[s:s + seq + 1], row))
                seen.add(start)
        assert seen == want  # every aligned start is drawn, nothing else is
    with TokenLoader(tmp_path, batch_size=8, seq_len=seq, seed=3, align_token=0) as a, \
            TokenLoader(tmp_path, batch_size=8, seq_len=seq, seed=3, align_token=0, num_workers=2, prefetch_batches=2) as b:
        assert all(torch.equal(x, y) for x, y in zip(_take(a, 5), _take(b, 5)))


def test_aligned_windows_need_document_starts(shard_dir):
    # the fixture's stream is 0..2999: token 0 occurs once, token 5000 never
    with pytest.raises(DataError, match="no document starts"):
        TokenLoader(shard_dir, batch_size=2, seq_len=16, align_token=5000)
