"""Turn the `--data` argument into a prepared dataset folder (tokenizer + token shards).

`synthetic` (the embedded default; `synthetic-small` is its narrowed flavour) and folders of `.rs` files are prepared once into a cache
(`$NANOCHAT_DATA_CACHE`, default `~/.cache/nanochat/data`) and reused; a folder that already is a
prepared dataset (it has `meta.json` and `train/`) is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..data.prepare import prepare_dataset
from ..data.synthetic import FLAVOURS
from ..errors import DataError


def cache_root() -> Path:
    return Path(os.environ.get("NANOCHAT_DATA_CACHE", Path.home() / ".cache" / "nanochat" / "data"))


def _check_vocab(path: Path, vocab_size: int) -> None:
    """A dataset tokenised with more ids than the model's vocabulary cannot be trained on."""
    try:
        n = int(json.loads((path / "meta.json").read_text(encoding="utf-8")).get("tokenizer_vocab_size", 0))
    except (OSError, ValueError, TypeError):
        raise DataError(f"{path}/meta.json: unreadable dataset metadata") from None
    if n > vocab_size:
        raise DataError(f"--data {path}: its tokenizer has {n} tokens but model.vocab_size is {vocab_size}; "
                        f"set --set model.vocab_size={n} (or rebuild the data with --vocab-size {vocab_size})")


def resolve_data(data: str, vocab_size: int, seed: int = 0, quiet: bool = False) -> Path:
    if data in FLAVOURS:  # "synthetic" (the default corpus) or "synthetic-small" (the e2e run's)
        return prepare_dataset(data, cache_root() / f"{data}_v{vocab_size}_s{seed}", vocab_size, seed=seed, progress=not quiet)
    path = Path(data)
    if not path.is_dir():
        raise DataError(f"--data {data!r}: expected 'synthetic' or a directory (of .rs files, or a prepared dataset)")
    if (path / "meta.json").exists() and (path / "train").is_dir():
        _check_vocab(path, vocab_size)
        return path
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return prepare_dataset(str(path), cache_root() / f"{path.name}_{digest}_v{vocab_size}_s{seed}", vocab_size, seed=seed, progress=not quiet)
