"""Tests for building a dataset end to end (nanochat_ternary.data.prepare)."""

import json

import numpy as np
import pytest

from nanochat_ternary.data.prepare import prepare_dataset, split_documents
from nanochat_ternary.data.shards import ShardReader
from nanochat_ternary.data.synthetic import generate_programs
from nanochat_ternary.data.tokenizer import Tokenizer
from nanochat_ternary.errors import DataError


def _docs_in(reader: ShardReader, tok: Tokenizer) -> list[str]:
    ids = reader.get(0, reader.total_tokens)
    assert ids[0] == tok.eos_id  # the separator comes before each document
    cuts = list(np.flatnonzero(ids == tok.eos_id)) + [len(ids)]
    return [tok.decode(ids[a + 1:b].tolist()) for a, b in zip(cuts, cuts[1:])]


def test_prepare_synthetic(tmp_path):
    out = prepare_dataset("synthetic", tmp_path / "ds", vocab_size=300, seed=2, n_programs=60, val_fraction=0.1,
                          progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train", "val"]
    assert not list(tmp_path.glob(".ds.*"))  # temp folder renamed away
    meta = json.loads((out / "meta.json").read_text())
    tok = Tokenizer.load(out / "tokenizer.json")
    assert meta["tokenizer_vocab_size"] == tok.vocab_size == 300 and meta["dtype"] == "uint16"
    train, val = ShardReader(out / "train"), ShardReader(out / "val")
    train_docs, val_docs = _docs_in(train, tok), _docs_in(val, tok)
    programs = generate_programs(60, seed=2)
    assert sorted(train_docs + val_docs) == sorted(set(programs))  # every document, exactly once
    assert len(val_docs) == 6 and not set(train_docs) & set(val_docs)
    c = meta["counts"]
    assert c["train"]["docs"] == len(train_docs) and c["val"]["tokens"] == val.total_tokens
    assert c["train"]["bytes"] == sum(len(d.encode()) for d in train_docs)
    assert meta["bytes_per_token"] == pytest.approx(c["train"]["bytes"] / (train.total_tokens - len(train_docs)))
    assert 1.2 < meta["bytes_per_token"] < 6  # only 41 merges at vocab 300


def test_prepare_is_idempotent_and_rebuilds_on_change(tmp_path):
    kwargs = dict(vocab_size=280, n_programs=30, progress=False)
    out = prepare_dataset("synthetic", tmp_path / "ds", **kwargs)
    stamp = (out / "meta.json").stat().st_mtime_ns
    shard = (out / "train" / "shard_00000.bin").read_bytes()
    prepare_dataset("synthetic", out, **kwargs)
    assert (out / "meta.json").stat().st_mtime_ns == stamp  # reused, not recomputed
    prepare_dataset("synthetic", out, **{**kwargs, "n_programs": 40})
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["n_programs"] == 40 and meta["counts"]["train"]["docs"] + meta["counts"]["val"]["docs"] == 40
    assert (out / "train" / "shard_00000.bin").read_bytes() != shard
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp or old folders left


def test_prepare_from_directory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    programs = generate_programs(12, seed=9)
    for i, p in enumerate(programs):
        (src / f"f{i:02d}.rs").write_text(p)
    (src / "dup.rs").write_text(programs[0])  # exact duplicates are dropped
    out = prepare_dataset(str(src), tmp_path / "ds", vocab_size=270, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == str(src.resolve())
    assert meta["counts"]["train"]["docs"] + meta["counts"]["val"]["docs"] == 12


def test_prepare_errors(tmp_path):
    with pytest.raises(DataError, match="val_fraction"):
        prepare_dataset("synthetic", tmp_path / "a", vocab_size=300, val_fraction=1.0, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(str(tmp_path / "missing"), tmp_path / "b", vocab_size=300, progress=False)
    with pytest.raises(DataError, match="vocab_size"):
        prepare_dataset("synthetic", tmp_path / "c", vocab_size=100, n_programs=10, progress=False)
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.*"))  # failure leaves nothing
    user = tmp_path / "user"
    user.mkdir()
    (user / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="user.*not a prepared dataset"):
        prepare_dataset("synthetic", user, vocab_size=300, n_programs=10, progress=False)
    assert (user / "precious.txt").read_text() == "keep me"


def test_split_documents_deterministic():
    docs = [f"d{i}" for i in range(100)]
    train, val = split_documents(docs, 0.05, seed=1)
    assert (train, val) == split_documents(docs, 0.05, seed=1)
    assert len(val) == 5 and sorted(train + val) == sorted(docs)
    assert split_documents(docs, 0.05, seed=2)[1] != val
    assert sorted(split_documents(["a", "b"], 0.0, seed=0)[0]) == ["a", "b"]
    assert len(split_documents(["a", "b"], 0.9, seed=0)[0]) == 1  # train keeps at least one
