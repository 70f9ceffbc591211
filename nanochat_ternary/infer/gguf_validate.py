"""Validate a GGUF file's structure before anything trusts it.

Why this module exists: the `gguf` package's reader believes the file. A string array whose
count claims 2^60 elements makes it loop (practically forever), an unknown element type sends it
into odd paths, and a tensor offset of 2^64-32 wraps around in numpy's uint64 arithmetic so that
the "tensor" silently reads bytes of the header. So before `GGUFReader` runs, this module walks
the file itself (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), checking every count
and length against the bytes that remain, every type against the known ones, and every tensor's
dimensions, offset, alignment and size against the data section; it never allocates more than
the file's size. The result (`GGUFLayout`) also feeds the data-driven checks below.

After the reader has parsed the (now safe) file, `check_tensor_table` compares the tensors with
a table of expected shapes built from the hyper-parameters (the loader builds that table, so a
new kind of tensor is one more row), and `check_tokenizer_arrays` checks the tokenizer's arrays
against the vocabulary size. Every failure is a FormatError naming the file and the field.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import FormatError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # the ones gguf's reader supports; v1 used 32-bit counts
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_SCALAR = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
           GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
           GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}
# token types llama.cpp defines (LLAMA_TOKEN_TYPE_*): normal .. byte
TOKEN_TYPES = range(0, 7)


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # as stored: fastest-varying dimension first
    type: GGMLQuantizationType
    offset: int  # relative to the data section
    nbytes: int


@dataclass
class GGUFLayout:
    version: int
    alignment: int
    data_start: int
    file_size: int
    kv_types: dict[str, tuple[GGUFValueType, GGUFValueType | None, int]] = field(default_factory=dict)  # key -> (type, element type, count)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)


class _Cursor:
    """Little-endian reads from a buffer that fail with FormatError instead of running past its end."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: invalid GGUF: {what}")

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.remaining():
            raise self.fail(f"{what} needs {n} bytes but only {self.remaining()} remain at offset {self.pos} (truncated or lying count)")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def string(self, what: str, decode: bool = True) -> str | None:
        n = self.scalar("Q", f"{what} length")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n]) if decode else None
        self.pos += n
        if not decode:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None


def _value_type(cur: _Cursor, raw: int, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cur.fail(f"{what} has unknown value type {raw}") from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str, layout: GGUFLayout, keep: bool):
    """Skip (or read, for small scalars/strings we need) one value; arrays checked against the bytes left."""
    if vtype == GGUFValueType.STRING:
        return cur.string(f"metadata '{key}' string", decode=keep)
    if vtype != GGUFValueType.ARRAY:
        return cur.scalar(_SCALAR[vtype], f"metadata '{key}'")
    etype = _value_type(cur, cur.scalar("I", f"metadata '{key}' array type"), f"metadata '{key}' array")
    count = cur.scalar("Q", f"metadata '{key}' array count")
    layout.kv_types[key] = (GGUFValueType.ARRAY, etype, count)
    if etype == GGUFValueType.ARRAY:
        raise cur.fail(f"metadata '{key}' is an array of arrays (not used by this format)")
    if etype == GGUFValueType.STRING:
        cur.need(count * 8, f"metadata '{key}' array of {count} strings")  # each has an 8-byte length at least
        for i in range(count):
            n = cur.scalar("Q", f"metadata '{key}' element {i} length")
            cur.skip(n, f"metadata '{key}' element {i}")
        return None
    cur.skip(count * struct.calcsize("<" + _SCALAR[etype]), f"metadata '{key}' array of {count} {etype.name}")
    return None


def tensor_nbytes(cur: _Cursor, name: str, shape: tuple[int, ...], ttype: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[ttype]
    n = 1
    for d in shape:
        n *= d
    if shape[0] % block:
        raise cur.fail(f"tensor '{name}' row length {shape[0]} is not a multiple of the {ttype.name} block size {block}")
    return n // block * type_size


def read_layout(path: str | Path) -> GGUFLayout:
    """Walk the header, key/values and tensor infos of `path`; FormatError on anything inconsistent."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise FormatError(f"{path}: not a valid GGUF file (empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _walk(mm, path)
    except OSError as e:
        raise FormatError(f"{path}: cannot read GGUF file ({e})") from None


def _walk(buf, path: Path) -> GGUFLayout:
    cur = _Cursor(buf, path)
    try:
        cur.need(24, "header")
        if bytes(buf[:4]) != MAGIC:
            raise FormatError(f"{path}: not a valid GGUF file (magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
        cur.pos = 4
        version = cur.scalar("I", "version")
        if version not in VERSIONS:
            raise cur.fail(f"version {version} is not supported (expected {' or '.join(map(str, VERSIONS))}; big-endian files are not read)")
        n_tensors, n_kv = cur.scalar("Q", "tensor count"), cur.scalar("Q", "metadata count")
        # the smallest key/value is 13 bytes (empty key, type, one byte); a tensor info 32 bytes
        if n_kv * 13 > cur.remaining():
            raise cur.fail(f"metadata count {n_kv} cannot fit in the {cur.remaining()} bytes left")
        if n_tensors * 32 > cur.remaining():
            raise cur.fail(f"tensor count {n_tensors} cannot fit in the {cur.remaining()} bytes left")
        layout = GGUFLayout(version, DEFAULT_ALIGNMENT, 0, cur.size)
        alignment = None
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in layout.kv_types:
                raise cur.fail(f"metadata key '{key}' appears twice")
            vtype = _value_type(cur, cur.scalar("I", f"metadata '{key}' type"), f"metadata '{key}'")
            value = _read_value(cur, vtype, key, layout, keep=key == "general.alignment")
            if vtype != GGUFValueType.ARRAY:
                layout.kv_types[key] = (vtype, None, 1)
            if key == "general.alignment":
                if vtype != GGUFValueType.UINT32 or value == 0 or value & (value - 1):
                    raise cur.fail(f"general.alignment must be a non-zero power of two (uint32), got {value!r}")
                alignment = value
        layout.alignment = alignment or DEFAULT_ALIGNMENT
        infos = []
        for i in range(n_tensors):
            name = cur.string(f"tensor #{i} name")
            if name in layout.tensors:
                raise cur.fail(f"tensor '{name}' appears twice")
            n_dims = cur.scalar("I", f"tensor '{name}' dimension count")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            shape = tuple(cur.scalar("Q", f"tensor '{name}' dimension") for _ in range(n_dims))
            if any(d == 0 or d > 8 * cur.size for d in shape):  # no type packs 8 values in a byte
                raise cur.fail(f"tensor '{name}' has impossible dimensions {list(shape)}")
            raw_type = cur.scalar("I", f"tensor '{name}' type")
            try:
                ttype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise cur.fail(f"tensor '{name}' has unknown type {raw_type}") from None
            if ttype not in GGML_QUANT_SIZES:
                raise cur.fail(f"tensor '{name}' has type {ttype.name}, which has no known size")
            offset = cur.scalar("Q", f"tensor '{name}' offset")
            info = TensorInfo(name, shape, ttype, offset, tensor_nbytes(cur, name, shape, ttype))
            layout.tensors[name] = info
            infos.append(info)
        pad = -cur.pos % layout.alignment
        layout.data_start = cur.pos + pad
        data_size = cur.size - layout.data_start
        if data_size < 0:
            raise cur.fail(f"the data section would start at byte {layout.data_start}, past the end of the {cur.size}-byte file")
        end_prev, prev = 0, None
        for t in sorted(infos, key=lambda t: t.offset):
            if t.offset % layout.alignment:
                raise cur.fail(f"tensor '{t.name}' offset {t.offset} is not aligned to {layout.alignment} bytes")
            if t.offset + t.nbytes > data_size:
                raise cur.fail(f"tensor '{t.name}' (offset {t.offset}, {t.nbytes} bytes) runs past the end of the "
                               f"{data_size}-byte data section (truncated file or bad offset)")
            if t.offset < end_prev:
                raise cur.fail(f"tensor '{t.name}' (offset {t.offset}) overlaps tensor '{prev}'")
            end_prev, prev = t.offset + t.nbytes, t.name
        return layout
    except (struct.error, OverflowError, ValueError) as e:  # defensive: any arithmetic surprise is a bad file
        raise cur.fail(f"unreadable at offset {cur.pos} ({e})") from None


def check_tensor_table(path: Path, layout: GGUFLayout, expected: dict[str, tuple[int, ...]]) -> None:
    """Every expected tensor present with its shape (given slowest dimension first, as in PyTorch)."""
    for name, shape in expected.items():
        t = layout.tensors.get(name)
        if t is None:
            raise FormatError(f"{path}: missing tensor '{name}'")
        if t.shape[::-1] != tuple(shape):
            raise FormatError(f"{path}: tensor '{name}' has shape {list(t.shape[::-1])}, expected {list(shape)}")


def check_tokenizer_arrays(path: Path, layout: GGUFLayout, fields, vocab_size: int) -> None:
    """The tokenizer's arrays have one entry per token; token types and special ids are in range."""
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        kind = layout.kv_types.get(key)
        if kind is None:
            continue
        if kind[0] != GGUFValueType.ARRAY:
            raise FormatError(f"{path}: metadata '{key}' should be an array, found {kind[0].name}")
        if kind[2] != vocab_size:
            raise FormatError(f"{path}: metadata '{key}' has {kind[2]} entries, expected vocab_size {vocab_size}")
    want = {"tokenizer.ggml.tokens": GGUFValueType.STRING, "tokenizer.ggml.token_type": GGUFValueType.INT32,
            "tokenizer.ggml.scores": GGUFValueType.FLOAT32, "tokenizer.ggml.merges": GGUFValueType.STRING}
    for key, etype in want.items():
        kind = layout.kv_types.get(key)
        if kind is not None and kind[0] == GGUFValueType.ARRAY and kind[2] and kind[1] != etype:
            raise FormatError(f"{path}: metadata '{key}' holds {kind[1].name} elements, expected {etype.name}")
    if "tokenizer.ggml.token_type" in fields:
        types = fields["tokenizer.ggml.token_type"].contents()
        bad = [v for v in types if v not in TOKEN_TYPES]
        if bad:
            raise FormatError(f"{path}: metadata 'tokenizer.ggml.token_type' holds invalid token type {bad[0]}")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        f = fields.get(key)
        if f is None:
            continue
        value = f.contents()
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size:
            raise FormatError(f"{path}: metadata '{key}' = {value!r} is not a token id below vocab_size {vocab_size}")
