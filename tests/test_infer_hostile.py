"""Hostile GGUF files (issue 17): lying counts, unknown types, wrapping offsets -> FormatError fast,
and a few hundred fuzz cases per format through the real loaders."""

import struct
import time

import pytest

from helpers import make_tiny_gguf
from nanochat_ternary.errors import FormatError
from nanochat_ternary.fuzz.commands import fuzz
from nanochat_ternary.fuzz.gguf_fields import map_gguf
from nanochat_ternary.fuzz.mutate import put_uint
from nanochat_ternary.infer.gguf_model import read_gguf_model


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    path = make_tiny_gguf(tmp_path_factory.mktemp("hostile"))[0]
    data = path.read_bytes()
    return path.parent, data, map_gguf(data)


def _field(fmap, kind, where):
    return next(f for f in fmap.fields if f.kind == kind and f.where == where)


def _reject(folder, data, *words):
    bad = folder / "bad.gguf"
    bad.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(FormatError) as e:
        read_gguf_model(bad)
    assert time.perf_counter() - t0 < 1.0
    for w in ("bad.gguf", *words):
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("count", [2**40, 2**60, 2**64 - 1])
def test_huge_token_type_count(seed, count):
    folder, data, fmap = seed
    f = _field(fmap, "count", "tokenizer.ggml.token_type count")
    _reject(folder, put_uint(data, f.pos, 8, count), "tokenizer.ggml.token_type", "array")


def test_unknown_array_element_type(seed):
    folder, data, fmap = seed
    f = _field(fmap, "value_type", "tokenizer.ggml.token_type element type")
    _reject(folder, put_uint(data, f.pos, 4, 99), "tokenizer.ggml.token_type", "unknown value type 99")


@pytest.mark.parametrize("offset", [2**64 - 32, 2**63, 1 << 40])
def test_offset_outside_data(seed, offset):
    folder, data, fmap = seed
    f = _field(fmap, "offset", "token_embd.weight")
    _reject(folder, put_uint(data, f.pos, 8, offset), "token_embd.weight", "past the end")


def test_misaligned_and_overlapping_offsets(seed):
    folder, data, fmap = seed
    f = _field(fmap, "offset", "output_norm.weight")
    _reject(folder, put_uint(data, f.pos, 8, f.value + 4), "output_norm.weight", "not aligned")
    other = next(g for g in fmap.fields if g.kind == "offset" and g.value != f.value)
    _reject(folder, put_uint(data, f.pos, 8, other.value), "overlaps")


def test_unknown_tensor_type_and_token_type_values(seed):
    folder, data, fmap = seed
    f = _field(fmap, "tensor_type", "blk.0.attn_q.weight")
    _reject(folder, put_uint(data, f.pos, 4, 4), "blk.0.attn_q.weight", "unknown type 4")
    count = _field(fmap, "count", "tokenizer.ggml.token_type count")
    first = count.pos + 8  # the first int32 token type
    _reject(folder, data[:first] + struct.pack("<i", 99) + data[first + 4:], "tokenizer.ggml.token_type", "invalid token type 99")


def test_tensor_dimension_lie(seed):
    folder, data, fmap = seed
    f = next(g for g in fmap.fields if g.kind == "dim" and g.where == "blk.1.ffn_up.weight")
    _reject(folder, put_uint(data, f.pos, 8, f.value * 2), "blk.1.ffn_up.weight")


@pytest.mark.parametrize("fmt,cases", [("gguf", 200), ("mhc", 300), ("tokenizer", 200), ("config", 200), ("checkpoint", 100)])
def test_fuzz_smoke(fmt, cases):
    out = fuzz(fmt, cases, seed=1)
    assert out["cases"] == cases and out["rejected"] > 0
    assert out["ok"], out["failures"]
    if fmt == "gguf":  # the cases carry the export's .mtp sidecar: harmless mutants load as the original model
        assert out["accepted_original"] > 0, out["by_kind"]
