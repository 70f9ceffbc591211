"""The `.mhc` sidecar file: the mHC routing parameters of every layer, next to the GGUF.

Why this module exists: llama.cpp's GGUF architectures have no notion of n residual streams, so
the mHC parameters (see nanochat_ternary/model/mhc.py) travel in a small file of their own. The
exporter writes it and the inference engine reads it; both use only this module. The GGUF records
the file's checksum under `nanochat.mhc.checksum`, so a GGUF is never paired with the wrong file.

Binary layout, little endian:

    b"MHC1"                 magic
    u32 version             FORMAT_VERSION (1)
    u32 n_streams           2 or 4
    u32 n_layers
    u32 n_res               logits per layer for H_res: 1 (n = 2) or 24 (n = 4)
    f32 res_logits[n_layers, n_res]
    f32 pre_logits[n_layers, n_streams]
    f32 post_logits[n_layers, n_streams]
    32 bytes                sha256 of everything above (the "payload")

The checksum returned by `write_mhc` / `read_mhc` is the hex form of that sha256.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from ..fsutil import atomic_write_bytes

MAGIC = b"MHC1"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sIIII")  # magic, version, n_streams, n_layers, n_res
_DIGEST_BYTES = 32


def n_res_logits(n_streams: int) -> int:
    """Logits per layer for H_res: n = 2 uses one sigmoid logit, n = 4 one logit per permutation."""
    return 1 if n_streams == 2 else math.factorial(n_streams)


@dataclass
class MhcParams:
    n_streams: int
    res_logits: np.ndarray  # [n_layers, 1 (n=2) or 24 (n=4)] float32
    pre_logits: np.ndarray  # [n_layers, n] float32
    post_logits: np.ndarray  # [n_layers, n] float32

    @property
    def n_layers(self) -> int:
        return int(self.res_logits.shape[0])

    def validate(self, where: str = "<mhc params>") -> None:
        """Raise FormatError unless the shapes agree with n_streams and with each other."""
        n = self.n_streams
        if n not in (2, 4):
            raise FormatError(f"{where}: n_streams must be 2 or 4, got {n}")
        L = self.n_layers
        want = {"res_logits": (L, n_res_logits(n)), "pre_logits": (L, n), "post_logits": (L, n)}
        for name, shape in want.items():
            got = tuple(np.shape(getattr(self, name)))
            if got != shape:
                raise FormatError(f"{where}: {name} has shape {got}, expected {shape} for n_streams={n}")
            if not np.all(np.isfinite(getattr(self, name))):
                raise FormatError(f"{where}: {name} contains NaN or infinite values")


def _payload(params: MhcParams) -> bytes:
    params.validate()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, params.n_streams, params.n_layers, n_res_logits(params.n_streams))
    arrays = [np.ascontiguousarray(a, dtype="<f4").tobytes() for a in (params.res_logits, params.pre_logits, params.post_logits)]
    return header + b"".join(arrays)


def write_mhc(path: str | os.PathLike, params: MhcParams) -> str:
    """Write `params` atomically (temp file + rename); return the hex sha256 of the payload."""
    path = Path(path)
    payload = _payload(params)
    digest = hashlib.sha256(payload).digest()
    atomic_write_bytes(path, payload + digest)
    return digest.hex()


def read_mhc(path: str | os.PathLike) -> tuple[MhcParams, str]:
    """Read and verify a .mhc file; returns (params, hex checksum). FormatError names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: .mhc file not found") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read .mhc file ({e})") from None
    if len(data) < 4 or data[:4] != MAGIC:
        raise FormatError(f"{path}: not a .mhc file (magic {data[:4]!r}, expected {MAGIC!r})")
    if len(data) < _HEADER.size + _DIGEST_BYTES:
        raise FormatError(f"{path}: truncated .mhc file ({len(data)} bytes)")
    _, version, n, n_layers, n_res = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise FormatError(f"{path}: unsupported .mhc version {version} (this build reads version {FORMAT_VERSION})")
    if n not in (2, 4):
        raise FormatError(f"{path}: n_streams must be 2 or 4, got {n}")
    if n_res != n_res_logits(n):
        raise FormatError(f"{path}: n_res is {n_res}, expected {n_res_logits(n)} for n_streams={n}")
    n_floats = n_layers * (n_res + 2 * n)
    expected = _HEADER.size + 4 * n_floats + _DIGEST_BYTES
    if len(data) < expected:
        raise FormatError(f"{path}: truncated .mhc file ({len(data)} bytes, expected {expected})")
    if len(data) > expected:
        raise FormatError(f"{path}: {len(data) - expected} unexpected trailing bytes in .mhc file")
    payload, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.sha256(payload).digest() != digest:
        raise FormatError(f"{path}: .mhc checksum mismatch (file is corrupted)")
    floats = np.frombuffer(payload, dtype="<f4", offset=_HEADER.size).astype(np.float32)
    a, b = n_layers * n_res, n_layers * n_res + n_layers * n
    params = MhcParams(
        n_streams=n,
        res_logits=floats[:a].reshape(n_layers, n_res),
        pre_logits=floats[a:b].reshape(n_layers, n),
        post_logits=floats[b:].reshape(n_layers, n),
    )
    params.validate(str(path))
    return params, digest.hex()


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def mhc_params_from_state_dict(state: dict, n_layers: int, n_streams: int) -> MhcParams:
    """Collect `blocks.{i}.mhc.{res,pre,post}_logits` (see model/gpt.py) into MhcParams."""
    rows: dict[str, list[np.ndarray]] = {"res": [], "pre": [], "post": []}
    for i in range(n_layers):
        for kind in rows:
            key = f"blocks.{i}.mhc.{kind}_logits"
            if key not in state:
                raise FormatError(f"state dict has no '{key}' (expected mHC parameters for n_streams={n_streams})")
            rows[kind].append(_as_numpy(state[key]).reshape(-1))
    try:
        params = MhcParams(
            n_streams=n_streams,
            res_logits=np.stack(rows["res"]) if n_layers else np.zeros((0, n_res_logits(n_streams)), np.float32),
            pre_logits=np.stack(rows["pre"]) if n_layers else np.zeros((0, n_streams), np.float32),
            post_logits=np.stack(rows["post"]) if n_layers else np.zeros((0, n_streams), np.float32),
        )
    except ValueError as e:  # ragged rows
        raise FormatError(f"state dict mHC parameters have inconsistent shapes ({e})") from None
    params.validate("state dict")
    return params
