"""Checksums of a checkpoint's files, and clear errors when a checkpoint cannot be written.

Why this module exists: a rename makes a checkpoint appear all at once, but nothing stops a file
from being truncated or altered later (a copy cut short, a bad disk, a hand edit). meta.json
records the sha256 of every other file of the checkpoint, so `load_checkpoint` detects any such
change and resume can fall back to the previous checkpoint (resume.py). A save that fails half
way (full disk, read-only folder) leaves the previous checkpoint and `latest` untouched; the
error says so, so that a user knows the run can still be resumed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from ..errors import NanochatError, FormatError

CHECKSUMS_KEY = "checksums"  # meta.json: {file name: hex sha256}


class CheckpointWriteError(NanochatError):
    """A checkpoint could not be written; the previous one is intact."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_checksums(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in names}


def recorded_sizes(meta: dict, meta_file: Path) -> dict[str, int]:
    """meta.json's `checkpoint_files` ({file name: size in bytes}); {} for checkpoints written
    before it existed. FormatError when it is anything else (a list, a string, negative sizes):
    a hand-edited or damaged meta.json must not surface as an AttributeError or TypeError."""
    sizes = meta.get("checkpoint_files")
    if sizes is None:
        return {}
    if not isinstance(sizes, dict) or not all(
            isinstance(k, str) and k and "/" not in k and not k.startswith(".")
            and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in sizes.items()):
        raise FormatError(f"{meta_file}: 'checkpoint_files' must map file names to sizes in bytes, got {json.dumps(sizes)[:80]}")
    return sizes


def verify_checksums(folder: Path, meta: dict) -> None:
    """FormatError naming the file whose content no longer matches meta.json's checksum."""
    sums = meta.get(CHECKSUMS_KEY)
    if sums is None:
        return  # written before checksums existed: sizes are still checked by the loader
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
        raise FormatError(f"{folder / 'meta.json'}: '{CHECKSUMS_KEY}' must map file names to sha256 strings")
    for name, want in sums.items():
        f = folder / name
        if "/" in name or name.startswith(".") or not f.is_file():
            raise FormatError(f"{f}: missing from the checkpoint (listed in meta.json)")
        if sha256_file(f) != want:
            raise FormatError(f"{f}: checksum mismatch (the file was truncated or altered after it was written)")


def _os_errno(err: BaseException) -> int | None:
    """The OS error number behind a failed write: OSError has it; safetensors (SafetensorError:
    "... Os { code: 28, ... }") and torch.save (RuntimeError) only carry it in their message, or
    in the OSError they were raised from."""
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno:
            return e.errno
    m = re.search(r"(?:code: |os error |errno )(\d+)", str(err), re.IGNORECASE)
    return int(m.group(1)) if m else None


def describe_write_error(err: BaseException, folder: Path) -> str:
    """What went wrong, in words a user acts on: "No space left on device (12,288 bytes free)",
    "Read-only file system", "File too large", ... (the OS's own message for the error number)."""
    code = _os_errno(err)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if code is None and free == 0:  # a writer that hid the reason: an empty disk tells it
        code = errno.ENOSPC
    if code is None:
        return getattr(err, "strerror", None) or str(err) or type(err).__name__
    text = os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT) and free is not None:
        text += f" ({free:,} bytes free)"
    return text


def write_failed(err: Exception, tmp: Path, ckdir: Path, name: str, latest: str | None) -> CheckpointWriteError:
    """Remove the partial folder and build the error that tells the user what is still safe."""
    shutil.rmtree(tmp, ignore_errors=True)
    kept = f"the previous checkpoint '{latest}' is intact and '{ckdir / 'latest'}' still points to it" if latest \
        else "no earlier checkpoint exists"
    return CheckpointWriteError(f"cannot write checkpoint {name} in {ckdir}: {describe_write_error(err, ckdir)}; {kept}. "
                                "Free disk space or make the folder writable, then resume with --resume.")
