"""Gather Rust source files from a directory tree (a checkout, Debian crate sources, ~/.cargo).

Why this module exists: besides the embedded synthetic set, a model can be trained on real Rust
code found on disk. This walks a folder, yields every `.rs` file in a stable (sorted) order and
quietly skips what cannot be used as training text: unreadable files, files that are not UTF-8,
and oversized (usually generated) files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError


def _find_rs(root: Path) -> list[Path]:
    """All `.rs` files below root sorted by path components, not following directory symlinks."""
    found = [Path(dirpath) / name for dirpath, _, filenames in os.walk(root, followlinks=False)
             for name in filenames if name.endswith(".rs")]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def iter_rust_files(root: Path, max_bytes: int = 1_000_000) -> Iterator[tuple[Path, str]]:
    """Yield `(path, text)` for each usable `.rs` file below `root`, sorted by path.

    Raises DataError if `root` does not exist, is not a directory, or holds no `.rs` file at all
    (checked before anything is yielded, so a bad path fails fast).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of .rs files, got a file")
    paths = _find_rs(root)
    if not paths:
        raise DataError(f"{root}: no .rs files found below this folder")
    for path in paths:
        try:
            if path.stat().st_size > max_bytes:
                continue
            raw = path.read_bytes()
        except OSError:  # unreadable, vanished, or a broken symlink
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        yield path, text
