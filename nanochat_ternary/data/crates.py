"""Find the crates in source folders, and which crate each `.rs` file belongs to.

Why this module exists: a held-out split only measures generalisation when no crate sits on both
sides, so the corpus builder needs to know each file's crate. A crate root is a folder with a
`Cargo.toml`; a file belongs to the outermost crate root above it (a workspace and its members
count as one project), and the crate's name is its `[package] name` (else the folder name with
any `-1.2.3` version suffix removed), so all versions of one crate share a name and a side.
Files under no `Cargo.toml` are grouped by their first folder below the source (or their own
name when they lie directly in it).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

_VERSIONED = re.compile(r"^(?P<name>.+?)-(?P<version>\d+(?:\.\d+)*(?:[-+][0-9A-Za-z.\-+]*)?)$")


@dataclass(frozen=True)
class RustFile:
    path: Path  # absolute
    crate: str  # split key: crate name without version
    version: str  # "" when unknown
    rel_parts: tuple[str, ...]  # path parts below the crate root


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-+]", version)) if version else ()


def _crate_identity(root: Path) -> tuple[str, str]:
    """(name, version) of a crate root from its Cargo.toml, falling back to the folder name."""
    name, version = root.name, ""
    m = _VERSIONED.match(root.name)
    if m:
        name, version = m.group("name"), m.group("version")
    try:
        package = tomllib.loads((root / "Cargo.toml").read_text(encoding="utf-8")).get("package", {})
        if isinstance(package.get("name"), str):
            name = package["name"]
        if isinstance(package.get("version"), str):
            version = package["version"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
    return name.replace("_", "-").lower(), version


def find_rust_files(source: Path) -> list[RustFile]:
    """Every `.rs` file below `source` (symlinked folders not followed) with its crate.

    Order: crates by name, newer versions first, then files by path, so deduplication keeps the
    newest copy of a file. DataError when the folder is missing or holds no `.rs` file.
    """
    source = Path(source).resolve()
    if not source.is_dir():
        raise DataError(f"{source}: source folder does not exist or is not a folder")
    out: list[RustFile] = []
    roots: dict[Path, tuple[Path, str, str]] = {}  # folder -> (outermost crate root, name, version)
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        d = Path(dirpath)
        dirnames.sort()
        parent = roots.get(d.parent) if d != source else None
        if parent is None and "Cargo.toml" in filenames:
            parent = (d, *_crate_identity(d))
        if parent is not None:
            roots[d] = parent
        for name in sorted(filenames):
            if not name.endswith(".rs"):
                continue
            path = d / name
            if parent is not None:
                root, crate, version = parent
            else:  # loose files: group by their first folder below the source
                rel = path.relative_to(source).parts
                root, crate, version = source / rel[0], (rel[0] if len(rel) > 1 else path.stem), ""
            out.append(RustFile(path, crate, version, path.relative_to(root).parts if root != path else (name,)))
    if not out:
        raise DataError(f"{source}: no .rs files found below this folder")
    out.sort(key=keep_order)
    return out


def keep_order(f: RustFile) -> tuple:
    """Sort key: crate name, newest version first, then path (deduplication keeps the first copy)."""
    return (f.crate, tuple(-x for x in _version_key(f.version)), f.version, f.rel_parts, str(f.path))
