"""The held-out Rust an eval reads: a prepared dataset's validation split, or any folder of .rs files.

Why this module exists: `eval bpb` and `eval compile` both accept `--data DATA|DIR`. A prepared
dataset (meta.json + val/ shards) stores each document as [eos] + tokens, and byte-level BPE is
lossless, so its validation documents are recovered exactly by decoding the shards with the
dataset's own tokenizer; a plain folder is read with data/corpus.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.corpus import iter_rust_files
from ..data.shards import ShardReader
from ..data.tokenizer import EOS_ID, Tokenizer
from ..errors import DataError


def is_prepared(path: Path) -> bool:
    return (path / "meta.json").exists() and (path / "val" / "index.json").exists()


def validation_documents(data: str | Path, max_docs: int | None = None) -> list[str]:
    """Documents of the validation split of a prepared dataset, or the .rs files of a folder."""
    path = Path(data)
    if not path.is_dir():
        raise DataError(f"--data {data}: not a folder (give a prepared dataset or a folder of .rs files)")
    if not is_prepared(path):
        docs = [text for _, text in iter_rust_files(path)]
        return docs[:max_docs] if max_docs else docs
    tok = Tokenizer.load(path / "tokenizer.json")
    reader = ShardReader(path / "val")
    if len(reader) == 0:
        raise DataError(f"{path}/val: the validation split is empty")
    stream = reader.get(0, len(reader))
    starts = np.flatnonzero(stream == EOS_ID).tolist() + [len(stream)]
    docs = []
    for a, b in zip(starts, starts[1:]):
        if b - a > 1:
            docs.append(tok.decode(stream[a + 1:b].tolist()))
        if max_docs and len(docs) >= max_docs:
            break
    return docs
