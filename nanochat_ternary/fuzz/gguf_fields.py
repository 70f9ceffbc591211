"""Where the structural fields of a valid GGUF sit, so the fuzzer can lie in exactly those places.

Why this module exists: random bytes rarely land on the 8 bytes of a string array's count or a
tensor's offset, and those are the fields whose lies hung or fooled the loader. This walks a
known-good file (the seed, written by our exporter) and records each count, length, type and
offset with its position and width; it is test tooling, separate from the validator it tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class Field:
    kind: str  # count | length | value_type | tensor_type | offset | dim | n_dims | version
    pos: int
    width: int
    value: int
    where: str  # e.g. "tokenizer.ggml.token_type count"


@dataclass
class GGUFMap:
    fields: list[Field]
    header_end: int  # end of the tensor infos
    data_start: int


def map_gguf(data: bytes) -> GGUFMap:
    fields: list[Field] = []
    pos = 0

    def u(width: int, kind: str | None = None, where: str = "") -> int:
        nonlocal pos
        value = struct.unpack_from({4: "<I", 8: "<Q"}[width], data, pos)[0]
        if kind:
            fields.append(Field(kind, pos, width, value, where))
        pos += width
        return value

    def string(where: str) -> str:
        nonlocal pos
        n = u(8, "length", where)
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    pos = 4
    u(4, "version", "version")
    n_tensors, n_kv = u(8, "count", "tensor count"), u(8, "count", "metadata count")
    alignment = 32
    for _ in range(n_kv):
        key = string("key")
        vtype = u(4, "value_type", key)
        if vtype == STRING:
            string(key)
        elif vtype == ARRAY:
            etype = u(4, "value_type", f"{key} element type")
            count = u(8, "count", f"{key} count")
            if etype != STRING:
                pos += count * _SIZES[etype]
            for i in range(count if etype == STRING else 0):
                if i < 4:  # the first few lengths are targets; the rest are just skipped
                    string(f"{key}[{i}]")
                else:
                    pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        else:
            if key == "general.alignment":
                alignment = struct.unpack_from("<I", data, pos)[0]
            pos += _SIZES[vtype]
    for _ in range(n_tensors):
        name = string("tensor name")
        n_dims = u(4, "n_dims", name)
        for _ in range(n_dims):
            u(8, "dim", name)
        u(4, "tensor_type", name)
        u(8, "offset", name)
    return GGUFMap(fields, pos, pos + (-pos % alignment))
