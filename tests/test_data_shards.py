"""Tests for token shards on disk (nanochat_ternary.data.shards)."""

import json

import numpy as np
import pytest

from nanochat_ternary.data.shards import ShardReader, dtype_for_vocab, write_shards
from nanochat_ternary.errors import DataError


def test_write_and_read_across_shard_boundaries(tmp_path):
    arrays = [np.arange(0, 7), np.arange(7, 8), np.array([], dtype=np.int64), np.arange(8, 30)]
    index = write_shards(arrays, tmp_path, shard_tokens=10)
    assert index["total"] == 30 and index["tokens"] == [10, 10, 10] and index["dtype"] == "uint16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard_00000.bin", "shard_00001.bin",
                                                         "shard_00002.bin"]
    assert (tmp_path / "shard_00001.bin").read_bytes() == np.arange(10, 20, dtype="<u2").tobytes()
    reader = ShardReader(tmp_path)
    assert reader.total_tokens == len(reader) == 30
    full = np.arange(30)
    for start, length in [(0, 30), (3, 9), (9, 2), (10, 10), (19, 11), (29, 1), (5, 0)]:
        np.testing.assert_array_equal(reader.get(start, length), full[start:start + length])
    with pytest.raises(DataError, match="outside"):
        reader.get(25, 6)


def test_uint32_and_range_checks(tmp_path):
    assert dtype_for_vocab(65536) == "uint16" and dtype_for_vocab(65537) == "uint32"
    big = np.array([0, 70000, 2**32 - 1], dtype=np.int64)
    write_shards([big], tmp_path / "u32", dtype="uint32")
    np.testing.assert_array_equal(ShardReader(tmp_path / "u32").get(0, 3), big)
    with pytest.raises(DataError, match="out of range for uint16"):
        write_shards([big], tmp_path / "u16")
    with pytest.raises(DataError, match="dtype"):
        write_shards([big], tmp_path / "x", dtype="int8")


def test_rewrite_replaces_old_shards(tmp_path):
    write_shards([np.arange(50)], tmp_path, shard_tokens=10)
    write_shards([np.arange(5)], tmp_path, shard_tokens=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard_00000.bin"]
    assert ShardReader(tmp_path).total_tokens == 5


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="index.json.*not found"):
        ShardReader(tmp_path)
    write_shards([np.arange(20)], tmp_path, shard_tokens=10)
    index_path = tmp_path / "index.json"
    good = json.loads(index_path.read_text())

    index_path.write_text("{ garbled")
    with pytest.raises(DataError, match="index.json.*not valid JSON"):
        ShardReader(tmp_path)
    index_path.write_text(json.dumps({**good, "total": 99}))
    with pytest.raises(DataError, match="index.json.*garbled"):
        ShardReader(tmp_path)
    index_path.write_text(json.dumps({k: v for k, v in good.items() if k != "dtype"}))
    with pytest.raises(DataError, match="garbled"):
        ShardReader(tmp_path)

    index_path.write_text(json.dumps(good))
    with open(tmp_path / "shard_00001.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match="shard_00001.bin.*21 bytes.*10 tokens"):
        ShardReader(tmp_path)
    (tmp_path / "shard_00001.bin").unlink()
    with pytest.raises(DataError, match="shard_00001.bin.*missing"):
        ShardReader(tmp_path)
