"""Turn the `--data` argument into a prepared dataset folder (tokenizer + token shards).

`synthetic` (the embedded default) and folders of `.rs` files are prepared once into a cache
(`$NANOCHAT_DATA_CACHE`, default `~/.cache/nanochat/data`) and reused; a folder that already is a
prepared dataset (it has `meta.json` and `train/`) is used as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..data.prepare import prepare_dataset
from ..errors import DataError


def cache_root() -> Path:
    return Path(os.environ.get("NANOCHAT_DATA_CACHE", Path.home() / ".cache" / "nanochat" / "data"))


def resolve_data(data: str, vocab_size: int, seed: int = 0, quiet: bool = False) -> Path:
    if data == "synthetic":
        return prepare_dataset("synthetic", cache_root() / f"synthetic_v{vocab_size}_s{seed}", vocab_size, seed=seed, progress=not quiet)
    path = Path(data)
    if not path.is_dir():
        raise DataError(f"--data {data!r}: expected 'synthetic' or a directory (of .rs files, or a prepared dataset)")
    if (path / "meta.json").exists() and (path / "train").is_dir():
        return path
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return prepare_dataset(str(path), cache_root() / f"{path.name}_{digest}_v{vocab_size}_s{seed}", vocab_size, seed=seed, progress=not quiet)
