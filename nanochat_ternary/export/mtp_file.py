"""The `.mtp` sidecar: the multi-token-prediction heads of a `bitnet` GGUF, in a file beside it.

Why this module exists: llama.cpp's `bitnet` architecture refuses tensors it does not know, so a
single-stream model trained with MTP heads could load in llama.cpp only without its heads, and
then our engine could not decode speculatively with it. Instead the exporter writes the GGUF as a
plain `bitnet` file and the heads into this sidecar; the engine reads both. The exporter and the
engine use only this module for the sidecar.

Format (version 1): itself a GGUF file (the same container, tensor encodings and reader), with
- `general.architecture` = "nanochat-mtp", `nanochat.mtp_file.version` = FORMAT_VERSION,
- `nanochat.mtp.n_tokens` = the number of heads k, and for each head the tensors
  `mtp.{k}.norm_in.weight`, `mtp.{k}.proj.weight`, `mtp.{k}.norm_out.weight`, encoded as the
  main file encodes norms and projections (gguf_tensors.py).
The main GGUF records the sidecar's sha256 (of the whole file) under `nanochat.mtp.checksum`
and the head count under `nanochat.mtp.n_tokens`, so a GGUF is never paired with the wrong heads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from ..errors import FormatError

ARCH = "nanochat-mtp"
FORMAT_VERSION = 1
CHECKSUM_KEY = "nanochat.mtp.checksum"


def default_mtp_path(gguf: Path) -> Path:
    """`model.gguf` -> `model.mtp`."""
    return Path(gguf).with_suffix(".mtp")


def file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_mtp(path: Path, n_tokens: int, tensors: list[tuple[str, np.ndarray, GGMLQuantizationType]]) -> str:
    """Write the sidecar to `path` (the caller renames it into place); returns its sha256 hex."""
    w = GGUFWriter(str(path), ARCH)
    try:
        w.add_uint32("nanochat.mtp_file.version", FORMAT_VERSION)
        w.add_uint32("nanochat.mtp.n_tokens", n_tokens)
        for name, data, dtype in tensors:
            if dtype in (GGMLQuantizationType.F16, GGMLQuantizationType.F32):
                w.add_tensor(name, data)
            else:
                w.add_tensor(name, data, raw_dtype=dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
    finally:
        w.close()
    return file_checksum(Path(path))


def _field(reader: GGUFReader, key: str, path: Path):
    f = reader.fields.get(key)
    if f is None:
        raise FormatError(f"{path}: not an MTP sidecar (no '{key}')")
    try:
        value = f.contents()
    except Exception as e:  # noqa: BLE001 (a corrupted field)
        raise FormatError(f"{path}: metadata key '{key}' is unreadable ({e})") from None
    return value if isinstance(value, str) else int(value)


def read_mtp(path: Path, n_tokens: int, checksum: str, gguf: Path) -> dict:
    """The sidecar's tensors by name (gguf ReaderTensor), after checking that it is the sidecar
    the GGUF `gguf` recorded (checksum, head count, version). FormatError names the problem."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: MTP sidecar not found (the model {gguf} keeps its {n_tokens} MTP heads there)")
    if file_checksum(path) != checksum:
        raise FormatError(f"{path}: checksum does not match the one recorded in {gguf}: not this model's MTP heads (or corrupted)")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 (the gguf package raises assorted errors on bad files)
        raise FormatError(f"{path}: not a readable GGUF MTP sidecar ({type(e).__name__}: {e})") from None
    if _field(reader, "general.architecture", path) != ARCH:
        raise FormatError(f"{path}: not an MTP sidecar (architecture is not '{ARCH}')")
    version = _field(reader, "nanochat.mtp_file.version", path)
    if version != FORMAT_VERSION:
        raise FormatError(f"{path}: unsupported MTP sidecar version {version} (this build reads version {FORMAT_VERSION})")
    got = _field(reader, "nanochat.mtp.n_tokens", path)
    if got != n_tokens:
        raise FormatError(f"{path}: holds {got} MTP heads but {gguf} expects {n_tokens}")
    return {t.name: t for t in reader.tensors}


def sidecar_tensors(gguf: Path, n_tokens: int, checksum: str, given: str | Path | None) -> tuple[int, dict]:
    """(heads, tensors by name) for a `bitnet` GGUF that records `n_tokens` heads in a sidecar:
    the file `given`, else `model.mtp` beside the GGUF. Without `given` and with no sidecar there,
    the model runs without its heads (no speculative decoding), with a warning; a sidecar that is
    there but wrong is an error."""
    path = Path(given) if given is not None else default_mtp_path(gguf)
    if given is None and not path.exists():
        import warnings

        warnings.warn(f"{gguf}: its {n_tokens} MTP heads are kept in {path}, which is missing: no speculative decoding", stacklevel=2)
        return 0, {}
    return n_tokens, read_mtp(path, n_tokens, checksum, gguf)
